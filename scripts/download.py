"""Fetch everything the series downloads, ahead of time, so the notebooks then run offline.

    python scripts/download.py                      # tokenizer + GPT-2 small (124M)
    python scripts/download.py --models gpt2-small gpt2-medium
    python scripts/download.py --data-url URL       # also cache an extra dataset (e.g. for the exercises)

Files land in .cache/ (tokenizer, datasets) and the Hugging Face cache (weights; $HF_HOME moves it).
"""
import argparse
import sys

import utils


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["gpt2-small"], choices=sorted(utils.HF_REPOS),
                        help="GPT-2 sizes whose weights to download (default: gpt2-small)")
    parser.add_argument("--data-url", action="append", default=[], help="a dataset URL to cache as well")
    args = parser.parse_args()
    problems = []
    try:
        tokenizer = utils.get_tokenizer()
        print(f"tokenizer: ok ({tokenizer.n_vocab} tokens)")
    except utils.TokenizerUnavailableError as err:
        problems.append(str(err))
    for url in args.data_url:
        try:
            print(f"dataset: {utils.download_file(url)}")
        except utils.DatasetError as err:
            problems.append(str(err))
    for name in args.models:
        try:
            print(f"{name}: {utils.download_gpt2_weights(name)}")
        except utils.WeightsUnavailableError as err:
            problems.append(str(err))
    if problems:
        print("\nNot everything could be downloaded:\n\n" + "\n\n".join(problems), file=sys.stderr)
        return 1
    print("\nAll set: the notebooks can now run without network.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
