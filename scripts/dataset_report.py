"""Statistics of an instruction dataset, as printed in DATASET.md.

    python scripts/dataset_report.py [instruction-data.json]
"""
import json
import statistics
import sys
from collections import Counter

import utils


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else utils.DEFAULT_DATA_PATH
    data = utils.load_instruction_data(path)
    tokenizer = utils.get_tokenizer()
    print(f"entries: {len(data)}")
    print(f"empty input: {sum(not e['input'] for e in data)} ({sum(not e['input'] for e in data) / len(data):.1%})")
    for style in utils.PROMPT_STYLES:
        lengths = [len(utils.encode_text(utils.format_example(e, style), tokenizer)) for e in data]
        print(f"{style} tokens (prompt + response): min {min(lengths)}, median {statistics.median(lengths):g}, "
              f"mean {statistics.mean(lengths):.1f}, max {max(lengths)}")
    output_lengths = [len(utils.encode_text(e["output"], tokenizer)) for e in data]
    print(f"output tokens: median {statistics.median(output_lengths):g}, max {max(output_lengths)}")
    pairs = utils.find_near_duplicates(data, threshold=0.9)
    print(f"near-duplicate pairs (3-gram cosine >= 0.9): {len(pairs)}")
    tasks_path = utils.REPO_ROOT / "data" / "instruction-data-tasks.json"
    if path == utils.DEFAULT_DATA_PATH and tasks_path.exists():
        counts = Counter(label["task"] for label in json.loads(tasks_path.read_text(encoding="utf-8")))
        print(f"task types: {len(counts)}\n")
        print("| task type | entries |\n|---|---|")
        for task, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            print(f"| {task.replace('_', ' ')} | {n} |")


if __name__ == "__main__":
    main()
