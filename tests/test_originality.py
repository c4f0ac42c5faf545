"""instruction-data.json against the book's chapter 7 dataset, and the project's data pipeline on the book's data.

The book's file is in ../shared/reference/ (see its README): it is used for checks only. Entries 50 and 999
are the two that the course's specification takes from it on purpose.
"""
import re
import statistics
from collections import Counter

import pytest
import torch

import utils
from utils import REPO_ROOT

BOOK_PATH = REPO_ROOT.parent / "shared" / "reference" / "book-ch07-instruction-data.json"
SHARED_WITH_THE_BOOK = {50, 999}  # required by the specification, identical in both datasets
SAME_WORDING = 0.6  # character-3-gram cosine of instruction + input from which two questions read alike
NEAR_COPY = 0.9  # ... and from which they are near copies, whatever their content

pytestmark = pytest.mark.skipif(not BOOK_PATH.exists(), reason=f"the book's dataset is not at {BOOK_PATH}")


@pytest.fixture(scope="module")
def ours():
    return utils.load_instruction_data()


@pytest.fixture(scope="module")
def book():
    return utils.load_instruction_data(BOOK_PATH)


QUOTED = re.compile(r"""['"‘’“”]([^'"‘’“”]+)['"‘’“”]""")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# a capitalised word that does not start the text or a sentence: a name, a place, a symbol (Fe, CO2)
NAME = re.compile(r"(?<![.?!:]\s)(?<!^)\b[A-Z][\w-]*")


WORD = re.compile(r"[a-z][a-z-]{2,}")


def content_signature(entry: dict, common_words: frozenset[str] = frozenset()) -> frozenset[str]:
    """What a question is about: its numbers, quoted words, capitalised names, and its input text.

    Two questions with the same template ("What is the plural of ...?") but other content differ here.
    A question with none of these ("What is the atomic number of neon?") is about its uncommon words:
    those not in `common_words`, the words that many questions share.
    """
    question = entry["instruction"]
    quoted = {q.strip(" .,!?").lower() for q in QUOTED.findall(question)}
    numbers = set(NUMBER.findall(question))
    names = {name.lower().removesuffix("'s") for name in NAME.findall(QUOTED.sub(" ", question))} - {"i"}
    text = " ".join(entry["input"].lower().split())
    signature = {*(f"quoted:{q}" for q in quoted), *(f"number:{n}" for n in numbers),
                 *(f"name:{n}" for n in names), *([f"input:{text}"] if text else [])}
    if not signature:
        signature = {f"word:{w}" for w in WORD.findall(question.lower()) if w not in common_words}
    return frozenset(signature)


def common_words(*datasets: list[dict], share: float = 0.01) -> frozenset[str]:
    """Words found in at least `share` of all the questions: the templates' words, not their content."""
    questions = [set(WORD.findall(e["instruction"].lower())) for data in datasets for e in data]
    counts = Counter(word for words in questions for word in words)
    return frozenset(word for word, n in counts.items() if n >= share * len(questions))


def test_content_signature_tells_content_from_template():
    plural = {"instruction": "What is the plural of 'mouse'?", "input": ""}
    assert content_signature(plural) == content_signature({"instruction": "Give the plural form of 'mouse'.",
                                                           "input": ""})
    assert content_signature(plural) != content_signature({"instruction": "What is the plural of 'foot'?",
                                                           "input": ""})
    capital = content_signature({"instruction": "What is the capital of Kenya?", "input": ""})
    assert capital == content_signature({"instruction": "Tell me Kenya's capital.", "input": ""}) == {"name:kenya"}
    assert content_signature({"instruction": "Convert 5 miles to kilometers.", "input": ""}) == {"number:5"}
    assert content_signature({"instruction": "Rewrite in the passive voice.", "input": "The cat ate."}) \
        == {"input:the cat ate."}
    common = frozenset({"what", "the", "atomic", "number"})
    neon = content_signature({"instruction": "What is the atomic number of neon?", "input": ""}, common)
    assert neon == {"word:neon"}


def same_questions(ours: list[dict], book: list[dict]) -> list[str]:
    common = common_words(ours, book)
    found = []
    for i, j, similarity in utils.find_near_duplicates(ours, threshold=SAME_WORDING, other=book):
        if i in SHARED_WITH_THE_BOOK:
            continue
        if similarity >= NEAR_COPY or content_signature(ours[i], common) == content_signature(book[j], common):
            found.append(f"entry {i} ~ book {j} ({similarity:.2f}): {ours[i]['instruction']!r} {ours[i]['input']!r} / "
                         f"{book[j]['instruction']!r} {book[j]['input']!r}")
    return found


def test_no_entry_asks_a_book_question(ours, book):
    assert same_questions(ours, book) == []


def test_the_check_finds_a_book_question_in_other_words(ours, book):
    index = next(j for j, entry in enumerate(book) if entry["instruction"] == "What is the capital of Japan?")
    planted = [*ours, {"instruction": "Tell me the capital of Japan.", "input": "", "output": "Tokyo."},
               {"instruction": "Tell me the capital of Peru.", "input": "", "output": "Lima."}]
    found = same_questions(planted, book)
    assert len(found) == 1 and found[0].startswith(f"entry {len(ours)} ~ book {index} ")


def test_no_output_is_copied_from_the_book(ours, book):
    book_outputs = {entry["output"].strip() for entry in book}
    copied = [i for i, entry in enumerate(ours) if entry["output"].strip() in book_outputs]
    assert sorted(copied) == sorted(SHARED_WITH_THE_BOOK)


def test_entries_shared_on_purpose_are_the_books(ours, book):
    for index in SHARED_WITH_THE_BOOK:
        assert ours[index] == book[index]


# --- the project's data pipeline on a dataset we did not write ---

def test_pipeline_runs_on_the_books_dataset(book, tokenizer):
    assert len(book) == 1100 and all(set(entry) >= {"instruction", "input", "output"} for entry in book)
    train, val, test = utils.split_dataset(book)
    assert len(train) + len(val) + len(test) == len(book)
    assert len(train) >= 935 and len(val) >= 55 and len(test) > 100  # a repeated question can tip a split by one
    train_keys = {(e["instruction"], e["input"]) for e in train}
    assert not train_keys & {(e["instruction"], e["input"]) for e in test}  # no question in two splits
    for style in utils.PROMPT_STYLES:
        for entry in book:
            text = utils.format_example(entry, style)
            assert utils.extract_response(text, style) == entry["output"].strip()
    lengths = [len(utils.encode_text(utils.format_example(entry), tokenizer)) for entry in book]
    assert max(lengths) < 1024 and statistics.median(lengths) > 20
    train_loader, val_loader, test_loader = utils.create_dataloaders(train, val, test, tokenizer, batch_size=8,
                                                                     mask_prompt=True)
    batches = 0
    for loader in (train_loader, val_loader, test_loader):
        for inputs, targets in loader:
            assert inputs.shape == targets.shape and inputs.dtype == torch.int64
            assert (inputs[:, 1:] == targets[:, :-1]).logical_or(targets[:, :-1] == utils.IGNORE_INDEX).all()
            assert (targets != utils.IGNORE_INDEX).any(dim=1).all()  # every example keeps some target
            batches += 1
    assert batches == len(train) // 8 + -(-len(val) // 8) + -(-len(test) // 8)
