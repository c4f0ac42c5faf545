"""Build preference-data.json from instruction-data.json: one (chosen, rejected) pair per instruction entry.

    python scripts/make_preference_data.py            # writes preference-data.json (deterministic)
    python scripts/make_preference_data.py --check    # exit 1 if the committed file differs from a rebuild
    python scripts/make_preference_data.py --report   # pairs per axis and split (the table in DATASET.md)

`chosen` is always the entry's own output. `rejected` differs from it along one axis, named in `axis`:

- "wrong number": the answer with its last number changed (task types with one checkable numeric answer only,
  where any other number is wrong);
- "padded": the right answer wrapped in filler before and after (concise beats padded);
- "evasive": a polite non-answer that dodges the question (answering beats dodging);
- "off-topic": a fluent answer to another question of another task type, from the SAME split of the
  instruction data, so that no test answer ever appears in a training pair.

Nothing here comes from another preference dataset: the rejected texts are made from our own instruction data
and the phrase pools below, written for this project.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import utils  # noqa: E402 (after the path is set)

TASKS_PATH = REPO_ROOT / "data" / "instruction-data-tasks.json"
SEED = 2023

# Task types whose output holds one numeric answer: changing its last number always makes it wrong.
NUMERIC_TASKS = {
    "arithmetic",
    "unit_conversion",
    "percentages",
    "squares_roots",
    "counting",
    "list_statistics",
    "rectangle_geometry",
    "extract_numbers",
    "sort_numbers",
}

PADDING_BEFORE = [
    "Great question! Many people wonder about this, so let me walk you through it.",
    "Sure, I would be happy to help with that. Let me think about it for a moment.",
    "Thanks for asking! This is a really interesting one, and I enjoyed thinking about it.",
    "Okay, so, to give you the answer you are looking for, here is what I came up with.",
    "What a fun thing to ask. Before anything else, let me say that I will do my best here.",
    "Absolutely! I always like requests like this one, so here goes.",
    "Let me see. There are a few ways to look at this, but after some thought,",
    "Of course. As an assistant, I am glad to take a look at this for you.",
]
PADDING_AFTER = [
    "I hope this helps, and please feel free to ask me anything else at all!",
    "Let me know if you would like me to explain any part of that in more detail.",
    "That is my answer, but of course you are welcome to double-check it yourself.",
    "Thanks again for the question; it was a pleasure to answer it.",
    "Does that make sense? I am always here if you have more questions.",
    "I really enjoyed this one. Have a wonderful rest of your day!",
    "If anything is unclear, just say so and I will happily go over it again.",
    "So that is basically it, more or less, in a nutshell.",
]
EVASIVE = [
    "That is an interesting question, but I would rather not give a definite answer to it.",
    "I am not sure about that one. You might want to look it up somewhere else.",
    "It really depends on a lot of things, so there is no simple answer I can give.",
    "Good question! Unfortunately, I cannot help with that right now.",
    "There are many opinions on this, and I would not want to pick one over the others.",
    "Let me get back to you on that later, once I have had more time to think.",
    "I would need more information before I could say anything useful about this.",
    "That is a bit outside of what I can answer, sorry about that.",
]
NUMBER = re.compile(r"\d+")


def wrong_number(text: str, rng: random.Random) -> str:
    """`text` with its last run of digits changed by a small nonzero amount (never below 0)."""
    match = list(NUMBER.finditer(text))[-1]
    value = int(match.group())
    delta = rng.choice([1, 2, 3, 10])
    if rng.random() < 0.5 and value - delta >= 0:
        delta = -delta
    new = str(value + delta).zfill(len(match.group()))  # keeps a leading zero, as in "0.05"
    return text[: match.start()] + new + text[match.end() :]


def build(instruction_data: list[dict], tasks: list[str], seed: int = SEED) -> list[dict]:
    """One preference pair per instruction entry, in the instruction file's order."""
    rng = random.Random(seed)
    split_of = {}
    for name, part in zip(("train", "val", "test"), utils.split_dataset(instruction_data)):
        for entry in part:
            split_of[id(entry)] = name
    by_split: dict[str, list[int]] = {}
    for index, entry in enumerate(instruction_data):
        by_split.setdefault(split_of[id(entry)], []).append(index)
    pairs = []
    for index, (entry, task) in enumerate(zip(instruction_data, tasks)):
        output = entry["output"]
        if task in NUMERIC_TASKS and NUMBER.search(output):
            axis, rejected = "wrong number", wrong_number(output, rng)
        else:
            axis = rng.choice(["padded", "evasive", "off-topic"])
            if axis == "padded":
                rejected = f"{rng.choice(PADDING_BEFORE)} {output} {rng.choice(PADDING_AFTER)}"
            elif axis == "evasive":
                rejected = rng.choice(EVASIVE)
            else:
                candidates = [
                    i
                    for i in by_split[split_of[id(entry)]]
                    if tasks[i] != task and instruction_data[i]["output"] != output
                ]
                rejected = instruction_data[rng.choice(candidates)]["output"]
        pairs.append(
            {
                "index": index,
                "instruction": entry["instruction"],
                "input": entry["input"],
                "axis": axis,
                "chosen": output,
                "rejected": rejected,
            }
        )
    return pairs


def report(pairs: list[dict], instruction_data: list[dict]) -> None:
    """Pairs per axis in each split (the split of instruction finetuning, by utils.split_preference_data)."""
    parts = dict(zip(("train", "val", "test"), utils.split_preference_data(pairs, instruction_data)))
    axes = sorted({pair["axis"] for pair in pairs})
    print(f"{'axis':14}" + "".join(f"{name:>7}" for name in parts) + f"{'all':>7}")
    for axis in axes + [None]:
        counts = [sum(axis in (None, pair["axis"]) for pair in part) for part in parts.values()]
        print(f"{axis or 'all':14}" + "".join(f"{n:>7}" for n in counts) + f"{sum(counts):>7}")
    words = [len(pair[field].split()) for pair in pairs for field in ("chosen", "rejected")]
    print(
        f"words per answer: chosen median {sorted(words[0::2])[len(pairs) // 2]}, "
        f"rejected median {sorted(words[1::2])[len(pairs) // 2]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=utils.DEFAULT_PREFERENCE_PATH)
    parser.add_argument("--check", action="store_true", help="compare with the file on disk instead of writing")
    parser.add_argument("--report", action="store_true", help="print pairs per axis and split of the file on disk")
    args = parser.parse_args(argv)
    if args.report:
        report(utils.load_preference_data(args.out), utils.load_instruction_data())
        return 0
    instruction_data = utils.load_instruction_data()
    tasks = [item["task"] for item in json.loads(TASKS_PATH.read_text())]
    pairs = build(instruction_data, tasks)
    text = json.dumps(pairs, indent=1, ensure_ascii=False) + "\n"
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs from a rebuild'}")
        return 0 if same else 1
    utils.atomic_write_bytes(args.out, text.encode("utf-8"))
    print(f"wrote {args.out} ({len(pairs)} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
