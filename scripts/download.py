"""Fetch everything the series downloads, ahead of time, so the notebooks then run offline.

    python scripts/download.py                      # tokenizer + GPT-2 small (124M)
    python scripts/download.py --models gpt2-small gpt2-medium
    python scripts/download.py --data-url URL       # also cache an extra dataset (e.g. for the exercises)

Files land in .cache/ (tokenizer, datasets) and the Hugging Face cache (weights; $HF_HOME moves it).
Without network it says so within a few seconds, once per item.
"""
import argparse
import os
import sys

import utils
from support.network import HUB_FAILURE_FILE

RETRY = "Connect this machine to the network and run this command again"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["gpt2-small"], choices=sorted(utils.HF_REPOS),
                        help="GPT-2 sizes whose weights to download (default: gpt2-small)")
    parser.add_argument("--data-url", action="append", default=[], help="a dataset URL to cache as well")
    args = parser.parse_args(argv)
    # This command is the fix the other messages point to, so it checks the network afresh
    # rather than trusting a failure remembered from earlier.
    HUB_FAILURE_FILE.unlink(missing_ok=True)
    problems = []
    try:
        tokenizer = utils.get_tokenizer()
        print(f"tokenizer: ok ({tokenizer.n_vocab} tokens)")
    except utils.TokenizerUnavailableError as err:
        cause = str(err).splitlines()[0]
        problems.append(f"tokenizer: {cause}\n  {RETRY}, or set {utils.TOKENIZER_DIR_ENV}=/path/to/folder "
                        "holding GPT-2's encoder.json and vocab.bpe.")
    for url in args.data_url:
        try:
            print(f"dataset: {utils.download_file(url)}")
        except utils.DatasetError as err:
            problems.append(f"dataset: {err}")
    for name in args.models:
        try:
            print(f"{name}: {utils.download_gpt2_weights(name)}")
        except utils.WeightsUnavailableError as err:
            hub_cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
            problems.append(f"{name} weights: {err.reason}.\n  {RETRY}, or copy a Hugging Face cache that holds "
                            f"{utils.HF_REPOS[name]} to {hub_cache}.")
    if problems:
        print("\nNot everything could be downloaded:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print("\nAll set: the notebooks can now run without network.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
