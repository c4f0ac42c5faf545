"""instruction-data.json: shape, mix, length, uniqueness, and every answer that a program can check."""

import json
import math
import random
import re
import statistics
from collections import Counter

import pytest

import utils
from support.near_duplicates import find_near_duplicates
from utils import REPO_ROOT

DATA_PATH = REPO_ROOT / "instruction-data.json"
TASKS_PATH = REPO_ROOT / "data" / "instruction-data-tasks.json"

ENTRY_50 = {
    "instruction": "Identify the correct spelling of the following word.",
    "input": "Ocassion",
    "output": "The correct spelling is 'Occasion.'",
}
ENTRY_999 = {
    "instruction": "What is an antonym of 'complicated'?",
    "input": "",
    "output": "An antonym of 'complicated' is 'simple'.",
}


@pytest.fixture(scope="module")
def data():
    return json.loads(DATA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tasks(data):
    labels = json.loads(TASKS_PATH.read_text(encoding="utf-8"))
    assert len(labels) == len(data)
    for index, (label, entry) in enumerate(zip(labels, data)):
        assert label["instruction"] == entry["instruction"], f"task label {index} is out of step with the data"
    return [label["task"] for label in labels]


# --- shape and mix ---


def test_exactly_1100_entries_with_three_string_fields(data):
    assert len(data) == 1100
    for index, entry in enumerate(data):
        assert list(entry) == ["instruction", "input", "output"], index
        assert all(isinstance(value, str) for value in entry.values()), index
        assert entry["instruction"].strip() and entry["output"].strip(), index
        assert entry["input"] == entry["input"].strip(), index
    assert utils.load_instruction_data(DATA_PATH) == data  # the project's own loader accepts it


def test_file_is_indented_utf8(data):
    text = DATA_PATH.read_text(encoding="utf-8")
    assert text.startswith("[\n ") and text.count("\n") > 4 * len(data)


def test_entries_50_and_999_are_the_ones_the_slides_show(data):
    assert data[50] == ENTRY_50
    assert data[999] == ENTRY_999


def test_about_70_percent_have_no_input(data):
    share = sum(not entry["input"] for entry in data) / len(data)
    assert 0.62 <= share <= 0.78, share


def test_task_mix(tasks):
    counts = Counter(tasks)
    assert len(counts) >= 60
    task, most = counts.most_common(1)[0]
    assert most / len(tasks) <= 0.20, task


def test_lengths_keep_cpu_finetuning_cheap(data, tokenizer):
    lengths = [len(utils.encode_text(utils.format_example(entry), tokenizer)) for entry in data]
    assert 45 <= statistics.median(lengths) <= 65
    assert max(lengths) <= 120, data[lengths.index(max(lengths))]


LIST_LINE = re.compile(r"(\d+)\. \S")  # a numbered step: "1. Stop at the curb."


def test_list_answers_survive_formatting_and_tokenization(data, tokenizer):
    listed = [entry for entry in data if "\n" in entry["output"]]
    assert 40 <= len(listed) <= 60, len(listed)
    for entry in listed:
        output = entry["output"]
        lines = output.split("\n")
        assert 2 <= len(lines) <= 9 and all(line == line.strip() and line for line in lines), output
        numbers = [int(m.group(1)) for m in map(LIST_LINE.match, lines) if m]
        assert numbers == list(range(1, len(numbers) + 1)), output  # numbered steps count 1, 2, 3, ...
        for style in utils.PROMPT_STYLES:
            text = utils.format_example(entry, style)
            assert text.removeprefix(utils.format_prompt(entry, style)) == output
            assert tokenizer.decode(utils.encode_text(text, tokenizer)) == text
        example = utils.InstructionDataset([entry], tokenizer)[0]
        assert tokenizer.decode(example.token_ids[example.prompt_length :]) == output


BRITISH = re.compile(
    r"\b(colour|favourite|centre|metre|litre|grey|neighbour|theatre|travelled|programme|trousers|"
    r"jewellery|tyre|aeroplane|organise|realise|honour|flavour|behaviour|mum)s?\b",
    re.IGNORECASE,
)


def test_card_conventions(data):
    """DATASET.md promises US spelling and complete questions: no blank left for the reader to fill."""
    for index, entry in enumerate(data):
        text = " ".join(entry.values())
        assert not BRITISH.search(text), (index, BRITISH.search(text).group())
        for question in (entry["instruction"], entry["input"]):
            if "___" in question:  # the answer restates the sentence with the blank filled in
                after_blank = question.split("___", 1)[1].strip(" .!?").split(".")[0]
                assert after_blank in entry["output"] and "___" not in entry["output"], index
        # a quoted abbreviation keeps its case at the start of a sentence: not 'A.m.' for 'a.m.'
        opening = re.match(r"'[A-Z][a-z]*\.'", entry["output"])
        assert not (
            opening and opening.group() not in entry["instruction"] and opening.group().lower() in entry["instruction"]
        ), index


def test_no_duplicate_questions(data):
    keys = Counter((entry["instruction"], entry["input"]) for entry in data)
    assert [key for key, n in keys.items() if n > 1] == []


def test_no_near_duplicates(data):
    pairs = find_near_duplicates(data, threshold=0.9)
    described = [f"{i} ~ {j} ({s:.2f}): {data[i]['instruction']!r} / {data[j]['instruction']!r}" for i, j, s in pairs]
    assert described == []


def test_near_duplicate_finder_finds_them():
    data = [
        {"instruction": "What is the capital of France?", "input": ""},
        {"instruction": "What is the capital of Frances?", "input": ""},
        {"instruction": "Sort these numbers.", "input": "3, 1, 2"},
    ]
    assert [(i, j) for i, j, _ in find_near_duplicates(data)] == [(0, 1)]


def brute_force_near_duplicates(data, other, threshold, n=3):
    """The whole similarity matrix at once: the reference the blocked finder must agree with."""
    import numpy as np

    texts = [" ".join(f"{e['instruction']} {e['input']}".lower().split()) for e in [*data, *other]]
    vocabulary = {}
    counts = [Counter(t[k : k + n] for k in range(max(len(t) - n + 1, 1))) for t in texts]
    for c in counts:
        for gram in c:
            vocabulary.setdefault(gram, len(vocabulary))
    matrix = np.zeros((len(texts), len(vocabulary)))
    for row, c in enumerate(counts):
        for gram, k in c.items():
            matrix[row, vocabulary[gram]] = k
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    similarity = matrix[: len(data)] @ matrix[len(data) :].T
    return {(int(i), int(j)): float(similarity[i, j]) for i, j in zip(*np.nonzero(similarity >= threshold - 1e-6))}


def synthetic_entries(count, seed):
    rng = random.Random(seed)
    words = [f"{rng.choice('bcdfghklmnprst')}{rng.choice('aeiou')}{rng.choice('lmnrst')}" for _ in range(60)]
    entries = [
        {"instruction": " ".join(rng.choices(words, k=rng.randint(2, 9))), "input": "", "output": "x"}
        for _ in range(count)
    ]
    for _ in range(count // 20):  # plant near-duplicates: a copy with one letter changed
        source = rng.choice(entries)["instruction"]
        k = rng.randrange(len(source))
        entries[rng.randrange(count)] = {"instruction": source[:k] + "z" + source[k + 1 :], "input": "", "output": "x"}
    return entries


def test_blocked_near_duplicates_match_the_whole_matrix():
    data = synthetic_entries(3000, seed=1)
    expected = {(i, j): s for (i, j), s in brute_force_near_duplicates(data, data, 0.8).items() if i < j}
    found = find_near_duplicates(data, threshold=0.8, block_size=97)  # blocks that do not divide 3000
    assert len(found) > 100
    assert {(i, j) for i, j, _ in found} == set(expected)
    assert all(math.isclose(s, expected[i, j], abs_tol=1e-5) for i, j, s in found)
    assert [s for _, _, s in found] == sorted((s for _, _, s in found), reverse=True)


def test_near_duplicates_between_two_datasets():
    data, other = synthetic_entries(400, seed=2), synthetic_entries(700, seed=3)
    other[5] = dict(data[7])  # one exact copy across the two
    expected = brute_force_near_duplicates(data, other, 0.7)
    found = find_near_duplicates(data, threshold=0.7, other=other, block_size=64)
    assert (7, 5) in expected and {(i, j) for i, j, _ in found} == set(expected)
    assert all(math.isclose(s, expected[i, j], abs_tol=1e-5) for i, j, s in found)


# --- answers that a program can check ---

NUMBER = r"-?\d+(?:\.\d+)?"


def plain_numbers(text: str) -> list[float]:
    # "1,000" counts as one number in outputs
    return [
        float(n.replace(",", ""))
        for n in re.findall(r"(?<![\d.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\d.,])-?\d+(?:\.\d+)?", text)
    ]


def assert_states(output: str, expected: float, tolerance: float = 0.006):
    found = plain_numbers(output)
    assert any(math.isclose(value, expected, abs_tol=tolerance) for value in found), (
        f"expected {expected:g} in the output, found {found}"
    )


A, B = f"({NUMBER})", f"({NUMBER})"
ARITHMETIC = [
    (rf"subtract {A} from {B}", lambda a, b: b - a),
    (rf"difference between {A} and {B}", lambda a, b: a - b),
    (rf"quotient of {A} and {B}", lambda a, b: a / b),
    (rf"divide {A} by {B}", lambda a, b: a / b),
    (rf"multiply {A} by {B}", lambda a, b: a * b),
    (rf"product of {A} and {B}", lambda a, b: a * b),
    (rf"(?:add|sum of) {A} (?:and|to) {B}", lambda a, b: a + b),
    (rf"{A} ?(?:plus|\+) ?{B}", lambda a, b: a + b),
    (rf"{A} ?(?:minus|-) ?{B}", lambda a, b: a - b),
    (rf"{A} ?(?:times|multiplied by|x|\*|×) ?{B}", lambda a, b: a * b),
    (rf"{A} ?(?:divided by|/|÷) ?{B}", lambda a, b: a / b),
]


def check_arithmetic(entry):
    text = f"{entry['instruction']} {entry['input']}".lower()
    assert len(re.findall(NUMBER, text)) == 2, "arithmetic entries state exactly two numbers"
    for pattern, operation in ARITHMETIC:
        match = re.search(pattern, text)
        if match:
            a, b = float(match.group(1)), float(match.group(2))
            return assert_states(entry["output"], round(operation(a, b), 2))
    raise AssertionError("no operation recognised")


UNITS = {  # unit -> (quantity, size in a base unit)
    "millimeter": ("length", 0.001),
    "centimeter": ("length", 0.01),
    "meter": ("length", 1.0),
    "kilometer": ("length", 1000.0),
    "inch": ("length", 0.0254),
    "foot": ("length", 0.3048),
    "yard": ("length", 0.9144),
    "mile": ("length", 1609.344),
    "gram": ("mass", 0.001),
    "kilogram": ("mass", 1.0),
    "pound": ("mass", 0.45359237),
    "ounce": ("mass", 0.45359237 / 16),
    "ton": ("mass", 1000.0),
    "milliliter": ("volume", 0.001),
    "liter": ("volume", 1.0),
    "second": ("time", 1.0),
    "minute": ("time", 60.0),
    "hour": ("time", 3600.0),
    "day": ("time", 86400.0),
    "week": ("time", 604800.0),
    "celsius": ("temperature", None),
    "fahrenheit": ("temperature", None),
}
UNIT_PATTERN = (
    r"\b(millimeters?|centimeters?|kilometers?|meters?|inch(?:es)?|foot|feet|yards?|miles?|kilograms?|"
    r"grams?|pounds?|ounces?|tons?|tonnes?|milliliters?|liters?|seconds?|minutes?|hours?|days?|weeks?|"
    r"celsius|fahrenheit)\b"
)


def unit_name(word: str) -> str:
    word = word.lower()
    special = {
        "celsius": "celsius",
        "feet": "foot",
        "foot": "foot",
        "inches": "inch",
        "inch": "inch",
        "tonne": "ton",
        "tonnes": "ton",
    }
    return special.get(word, word[:-1] if word.endswith("s") else word)


def check_unit_conversion(entry):
    text = f"{entry['instruction']} {entry['input']}"
    values = re.findall(NUMBER, text)
    assert len(values) == 1, "unit conversions state exactly one number"
    number = re.search(NUMBER, text)
    units = [(m.start(), unit_name(m.group(1))) for m in re.finditer(UNIT_PATTERN, text, flags=re.IGNORECASE)]
    assert len({u for _, u in units}) == 2, f"expected two units, found {units}"
    source = min(units, key=lambda u: (u[0] < number.end(), u[0]))[1]  # the unit right after the number
    target = next(u for _, u in units if u != source)
    value = float(number.group())
    (kind_a, size_a), (kind_b, size_b) = UNITS[source], UNITS[target]
    assert kind_a == kind_b, f"{source} and {target} measure different things"
    if kind_a == "temperature":
        expected = value * 9 / 5 + 32 if source == "celsius" else (value - 32) * 5 / 9
    else:
        expected = value * size_a / size_b
    assert_states(entry["output"], expected, tolerance=max(0.006, abs(expected) * 0.01))


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


def check_sort_numbers(entry):
    values = [float(v) for v in comma_list(entry["input"])]
    descending = re.search(
        r"descending|largest to smallest|highest to lowest|greatest to least|biggest to smallest",
        entry["instruction"],
        flags=re.IGNORECASE,
    )
    assert [float(v) for v in comma_list(entry["output"].rstrip("."))] == sorted(values, reverse=bool(descending))


def check_sort_words(entry):
    words = comma_list(entry["input"])
    assert comma_list(entry["output"].rstrip(".")) == sorted(words, key=str.lower)


def quoted(text: str) -> list[str]:
    return re.findall(r"'([^']+)'", text)


def check_counting(entry):
    instruction = entry["instruction"].lower()
    if "vowel" in instruction:
        expected = sum(ch in "aeiou" for ch in quoted(entry["instruction"])[0].lower())
    elif "letter" in instruction:
        expected = sum(ch.isalpha() for ch in quoted(entry["instruction"])[0])
    elif "word" in instruction:
        expected = len(entry["input"].split())
    else:
        raise AssertionError("counting: vowels, letters or words")
    assert plain_numbers(entry["output"]) == [expected]


# Checked by hand, independently of the dataset's authors. A new plural or past-tense entry
# fails the test until its word is added here. A tuple lists forms that are all standard.
PLURALS = {
    "mouse": "mice",
    "child": "children",
    "cactus": ("cacti", "cactuses"),
    "analysis": "analyses",
    "box": "boxes",
    "tooth": "teeth",
    "goose": "geese",
    "woman": "women",
    "man": "men",
    "leaf": "leaves",
    "city": "cities",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "knife": "knives",
    "wife": "wives",
    "foot": "feet",
    "crisis": "crises",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "hero": "heroes",
    "bus": "buses",
    "baby": "babies",
    "phenomenon": "phenomena",
    "criterion": "criteria",
    "ox": "oxen",
    "key": "keys",
    "church": "churches",
    "person": "people",
    "louse": "lice",
    "wolf": "wolves",
    "half": "halves",
    "radius": "radii",
    "fungus": "fungi",
    "thesis": "theses",
    "dish": "dishes",
    "glass": "glasses",
    "calf": "calves",
    "thief": "thieves",
    "loaf": "loaves",
    "cherry": "cherries",
    "moose": "moose",
}
PAST_TENSES = {
    "swim": "swam",
    "go": "went",
    "eat": "ate",
    "walk": "walked",
    "buy": "bought",
    "teach": "taught",
    "jump": "jumped",
    "write": "wrote",
    "sing": "sang",
    "play": "played",
    "think": "thought",
    "stop": "stopped",
    "fly": "flew",
    "try": "tried",
    "bring": "brought",
    "choose": "chose",
    "cry": "cried",
    "freeze": "froze",
    "carry": "carried",
    "catch": "caught",
    "dance": "danced",
    "run": "ran",
    "see": "saw",
    "take": "took",
    "give": "gave",
    "drink": "drank",
    "speak": "spoke",
    "break": "broke",
    "drive": "drove",
    "ride": "rode",
    "fall": "fell",
    "feel": "felt",
    "keep": "kept",
    "sleep": "slept",
    "begin": "began",
    "know": "knew",
    "grow": "grew",
    "throw": "threw",
    "draw": "drew",
    "sit": "sat",
    "stand": "stood",
    "win": "won",
    "lose": "lost",
    "find": "found",
    "tell": "told",
    "sell": "sold",
    "read": "read",
    "plan": "planned",
    "study": "studied",
    "climb": "climbed",
    "smile": "smiled",
    "cook": "cooked",
    "open": "opened",
    "weave": "wove",
    "forgive": "forgave",
    "bend": "bent",
    "shake": "shook",
    "lend": "lent",
    "hide": "hid",
}


def check_plural(entry):
    singular, plural = quoted(entry["instruction"])[0], quoted(entry["output"])[-1]
    assert singular in PLURALS, f"{singular!r} is not in the checked list of plurals"
    accepted = PLURALS[singular]
    assert plural in (accepted if isinstance(accepted, tuple) else (accepted,))


def check_past_tense(entry):
    verb, past = quoted(entry["instruction"])[0], quoted(entry["output"])[-1]
    assert verb in PAST_TENSES, f"{verb!r} is not in the checked list of past tenses"
    assert past == PAST_TENSES[verb]


def title_words(text: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def check_case_conversion(entry):
    instruction, text = entry["instruction"].lower(), entry["input"]
    if "upper" in instruction or "capital letters" in instruction:
        expected = {text.upper()}
    elif "lower" in instruction:
        expected = {text.lower()}
    else:
        expected = {title_words(text), title_words(text.lower())}
    assert entry["output"] in expected


def check_extract_numbers(entry):
    found = re.findall(r"\d+(?:[.,]\d+)*", entry["input"])
    assert entry["output"] == ", ".join(found)


def is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, int(n**0.5) + 1))


def check_primes_parity(entry):
    n = int(re.search(r"\d+", entry["instruction"]).group())
    output = entry["output"]
    if "prime" in entry["instruction"].lower():
        assert output.startswith("Yes" if is_prime(n) else "No")
    else:
        words = set(re.findall(r"\b(even|odd)\b", output.lower()))
        assert words == {"even" if n % 2 == 0 else "odd"}


def check_percentages(entry):
    match = re.search(rf"({NUMBER})% of \$?({NUMBER})", f"{entry['instruction']} {entry['input']}")
    assert match, "percentages: 'P% of N'"
    assert_states(entry["output"], float(match.group(1)) * float(match.group(2)) / 100)


def check_squares_roots(entry):
    text = entry["instruction"].lower()
    n = float(re.search(NUMBER, text).group())
    if "cube root" in text:
        expected = round(n ** (1 / 3))
    elif "square root" in text:
        expected = math.sqrt(n)
    elif "cube" in text:
        expected = n**3
    elif "square" in text:
        expected = n**2
    else:
        raise AssertionError("squares_roots: square, square root, cube or cube root")
    assert_states(entry["output"], expected)


ROMAN = [
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
]


def to_roman(n: int) -> str:
    out = ""
    for value, letters in ROMAN:
        while n >= value:
            out, n = out + letters, n - value
    return out


def check_roman_numerals(entry):
    text = f"{entry['instruction']} {entry['input']}"
    digits = re.findall(r"\d+", text)
    if digits:
        assert re.search(rf"\b{to_roman(int(digits[0]))}\b", entry["output"]), f"expected {to_roman(int(digits[0]))}"
    else:
        numeral = max(re.findall(r"\b[IVXLCDM]+\b", text), key=len)
        value = next(n for n in range(1, 4000) if to_roman(n) == numeral)
        assert_states(entry["output"], value)


def check_list_statistics(entry):
    values = [float(v) for v in comma_list(entry["input"])]
    instruction = entry["instruction"].lower()
    if "average" in instruction or "mean" in instruction:
        expected = round(statistics.mean(values), 2)
    elif re.search(r"sum|total|add", instruction):
        expected = sum(values)
    elif re.search(r"largest|maximum|greatest|highest|biggest", instruction):
        expected = max(values)
    elif re.search(r"smallest|minimum|lowest|least", instruction):
        expected = min(values)
    else:
        raise AssertionError("list_statistics: sum, average, largest or smallest")
    assert_states(entry["output"], expected)


def check_rectangle_geometry(entry):
    text = f"{entry['instruction']} {entry['input']}".lower()
    sides = [float(v) for v in re.findall(NUMBER, text)]
    if len(sides) == 1:
        sides *= 2  # a square
    assert len(sides) == 2, "rectangle: length and width, or a square's side"
    a, b = sides
    expected = a * b if "area" in text else 2 * (a + b) if "perimeter" in text else None
    assert expected is not None, "rectangle: area or perimeter"
    assert_states(entry["output"], expected)


CHECKERS = {
    "arithmetic": check_arithmetic,
    "unit_conversion": check_unit_conversion,
    "sort_numbers": check_sort_numbers,
    "sort_words": check_sort_words,
    "counting": check_counting,
    "plurals": check_plural,
    "past_tense": check_past_tense,
    "case_conversion": check_case_conversion,
    "extract_numbers": check_extract_numbers,
    "primes_parity": check_primes_parity,
    "percentages": check_percentages,
    "squares_roots": check_squares_roots,
    "roman_numerals": check_roman_numerals,
    "list_statistics": check_list_statistics,
    "rectangle_geometry": check_rectangle_geometry,
}


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_every_checkable_answer_is_right(data, tasks, task):
    checked, wrong = 0, []
    for index, (entry, label) in enumerate(zip(data, tasks)):
        if label != task:
            continue
        checked += 1
        try:
            CHECKERS[task](entry)
        except Exception as exc:  # a checker that cannot parse an entry counts as a failure too
            wrong.append(f"entry {index} {entry}: {exc}")
    assert checked >= 5, f"only {checked} {task} entries"
    assert wrong == []


@pytest.mark.parametrize(
    "checker, entry",
    [
        (check_arithmetic, {"instruction": "What is 7 times 8?", "input": "", "output": "7 times 8 is 54."}),
        (check_arithmetic, {"instruction": "Subtract 4 from 10.", "input": "", "output": "The answer is -6."}),
        (
            check_unit_conversion,
            {"instruction": "Convert 2 kilometers to meters.", "input": "", "output": "It is 200 meters."},
        ),
        (
            check_unit_conversion,
            {
                "instruction": "What is 100 degrees Celsius in degrees Fahrenheit?",
                "input": "",
                "output": "It is 100 degrees Fahrenheit.",
            },
        ),
        (check_sort_numbers, {"instruction": "Sort in descending order.", "input": "3, 9, 1", "output": "1, 3, 9"}),
        (
            check_sort_words,
            {"instruction": "Sort alphabetically.", "input": "pear, Apple, fig", "output": "fig, Apple, pear"},
        ),
        (
            check_counting,
            {"instruction": "How many vowels are in the word 'banana'?", "input": "", "output": "It has 4."},
        ),
        (check_case_conversion, {"instruction": "Convert to uppercase.", "input": "hi there", "output": "HI there"}),
        (check_primes_parity, {"instruction": "Is 91 a prime number?", "input": "", "output": "Yes, 91 is prime."}),
        (check_roman_numerals, {"instruction": "Convert 14 to Roman numerals.", "input": "", "output": "It is XVI."}),
        (check_list_statistics, {"instruction": "Find the average.", "input": "1, 2, 4", "output": "The mean is 2."}),
    ],
)
def test_checkers_catch_wrong_answers(checker, entry):
    with pytest.raises(AssertionError):
        checker(entry)


# --- the report behind DATASET.md's numbers ---


def test_dataset_report_prints_the_statistics(tmp_path, capsys):
    import dataset_report

    path = tmp_path / "two.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Name a color.", "input": "", "output": "- Blue\n- Red"},
                {"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
            ]
        ),
        encoding="utf-8",
    )
    dataset_report.main([str(path), "--reference", str(tmp_path / "absent.json")])
    printed = capsys.readouterr().out
    assert "entries: 2\nempty input: 1 (50.0%)" in printed
    assert "list-style or multi-line outputs: 1" in printed and "against the book" not in printed


def test_dataset_report_on_an_empty_file_says_so(tmp_path):
    import dataset_report

    path = tmp_path / "empty.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"empty\.json has no entries"):
        dataset_report.main([str(path)])
