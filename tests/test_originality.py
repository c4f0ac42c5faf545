"""instruction-data.json against the book's chapter 7 dataset, and the project's data pipeline on the book's data.

The book's file is in ../shared/reference/ (see its README): it is used for checks only. Entries 50 and 999
are the two that the course's specification takes from it on purpose.
"""

import statistics

import pytest
import torch

import utils
from dataset_report import (
    BOOK_PATH,
    SHARED_WITH_THE_BOOK,
    content_signature,
    content_words,
    same_content,
    same_questions,
)

pytestmark = pytest.mark.skipif(not BOOK_PATH.exists(), reason=f"the book's dataset is not at {BOOK_PATH}")


@pytest.fixture(scope="module")
def ours():
    return utils.load_instruction_data()


@pytest.fixture(scope="module")
def book():
    return utils.load_instruction_data(BOOK_PATH)


def test_content_signature_tells_content_from_template():
    plural = {"instruction": "What is the plural of 'mouse'?", "input": ""}
    assert content_signature(plural) == content_signature(
        {"instruction": "Give the plural form of 'mouse'.", "input": ""}
    )
    assert content_signature(plural) != content_signature({"instruction": "What is the plural of 'foot'?", "input": ""})
    capital = content_signature({"instruction": "What is the capital of Kenya?", "input": ""})
    assert capital == content_signature({"instruction": "Tell me Kenya's capital.", "input": ""}) == {"name:kenya"}
    assert content_signature({"instruction": "Convert 5 miles to kilometers.", "input": ""}) == {"number:5"}
    assert content_signature({"instruction": "Rewrite in the passive voice.", "input": "The cat ate."}) == {
        "input:the cat ate."
    }
    common = frozenset({"what", "the", "atomic", "number"})
    neon = content_signature({"instruction": "What is the atomic number of neon?", "input": ""}, common)
    assert neon == {"word:neon"}


def described(pairs: list[tuple[int, int, float]], ours: list[dict], book: list[dict]) -> list[str]:
    return [
        f"entry {i} ~ book {j} ({s:.2f}): {ours[i]['instruction']!r} {ours[i]['input']!r} / "
        f"{book[j]['instruction']!r} {book[j]['input']!r}"
        for i, j, s in pairs
    ]


def test_no_entry_asks_a_book_question(ours, book):
    assert described(same_questions(ours, book), ours, book) == []


def test_no_entry_has_a_book_entrys_content(ours, book):
    """The stronger rule: content words as sets, numbers and quotes normalised, both orders of a pair."""
    assert described(same_content(ours, book), ours, book) == []


def test_content_words_normalise_numbers_quotes_and_plurals():
    assert content_words("Convert two thousand forty-five meters.") == content_words("Convert 2,045 meter")
    assert content_words("What is the opposite of 'hot'?") == content_words("What is the opposite of hot?")
    assert content_words("Name the capital of Japan.") == content_words("Japan's capital?") == {"capital", "japan"}
    assert content_words("twenty one") == {"21"} and content_words("one hundred and five") == {"105"}


def book_entry(book, instruction):
    return next(j for j, entry in enumerate(book) if entry["instruction"] == instruction)


# Planted copies of book entries, one per way of disguising them; each has its own output, so the
# identical-output check cannot be what catches it. Facts only: no book sentence is kept whole.
PLANTED = {
    "an added word": (
        "What is the capital of Japan?",
        {"instruction": "What is the capital city of Japan?", "input": "", "output": "Tokyo."},
    ),
    "'two' for '2'": (
        "Convert 2 liters to milliliters.",
        {"instruction": "Convert two liters into milliliters.", "input": "", "output": "That makes 2,000 milliliters."},
    ),
    "dropped quotes": (
        "What is the opposite of 'hot'?",
        {"instruction": "What is the opposite of hot?", "input": "", "output": "Cold."},
    ),
    "a phrase moved into the input": (
        "Name the author of 'Pride and Prejudice'.",
        {
            "instruction": "Name the author of this novel.",
            "input": "Pride and Prejudice",
            "output": "It was written by Jane Austen.",
        },
    ),
    "a reversed pair (conversion)": (
        "Convert 3 meters to centimeters.",
        {"instruction": "How many meters are 300 centimeters?", "input": "", "output": "300 centimeters are 3 meters."},
    ),
    "a reversed pair (capital)": (
        "What is the capital of Japan?",
        {"instruction": "Tokyo is the capital of which country?", "input": "", "output": "Japan."},
    ),
    "a paraphrase": (
        "What is the largest planet in our solar system?",
        {"instruction": "In the solar system, which planet is the largest one?", "input": "", "output": "Jupiter."},
    ),
}


@pytest.mark.parametrize("kind", PLANTED)
def test_the_stronger_check_catches_a_planted_copy(ours, book, kind):
    instruction, planted = PLANTED[kind]
    target = book_entry(book, instruction)
    assert planted["output"].strip() != book[target]["output"].strip()
    found = same_content([*ours, planted], book)
    assert [(i, j) for i, j, _ in found if i == len(ours)] and all(i == len(ours) for i, _, _ in found), found
    assert target in {j for i, j, _ in found}, f"{kind}: matched {found}, not book entry {target}"


def test_the_stronger_check_lets_other_content_through(ours, book):
    """The same task with other content is not a copy: another capital, other numbers, another word."""
    others = [
        {"instruction": "What is the capital of Peru?", "input": "", "output": "Lima."},
        {"instruction": "Convert 7 liters to milliliters.", "input": "", "output": "That makes 7,000 milliliters."},
        {"instruction": "What is the opposite of 'sturdy'?", "input": "", "output": "Flimsy."},
    ]
    assert same_content([*ours, *others], book) == []


def test_the_check_finds_a_book_question_in_other_words(ours, book):
    index = next(j for j, entry in enumerate(book) if entry["instruction"] == "What is the capital of Japan?")
    planted = [
        *ours,
        {"instruction": "Tell me the capital of Japan.", "input": "", "output": "Tokyo."},
        {"instruction": "Tell me the capital of Peru.", "input": "", "output": "Lima."},
    ]
    assert [(i, j) for i, j, _ in same_questions(planted, book)] == [(len(ours), index)]


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
            assert text.removeprefix(utils.format_prompt(entry, style)).strip() == entry["output"].strip()
    lengths = [len(utils.encode_text(utils.format_example(entry), tokenizer)) for entry in book]
    assert max(lengths) < 1024 and statistics.median(lengths) > 20
    train_loader, val_loader, test_loader = utils.create_dataloaders(
        train, val, test, tokenizer, batch_size=8, mask_prompt=True
    )
    batches = 0
    for loader in (train_loader, val_loader, test_loader):
        for inputs, targets in loader:
            assert inputs.shape == targets.shape and inputs.dtype == torch.int64
            assert (inputs[:, 1:] == targets[:, :-1]).logical_or(targets[:, :-1] == utils.IGNORE_INDEX).all()
            assert (targets != utils.IGNORE_INDEX).any(dim=1).all()  # every example keeps some target
            batches += 1
    assert batches == len(train) // 8 + -(-len(val) // 8) + -(-len(test) // 8)
