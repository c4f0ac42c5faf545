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

import support.network
import utils

RETRY = "Connect this machine to the network and run this command again"


def main(argv=None) -> int:
    """Exit status 1 when a required part failed (the tokenizer, a --data-url); missing weights alone give 0,
    since every notebook runs without them (on an untrained stand-in), unless --require-weights."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="*",
        default=["gpt2-small"],
        choices=sorted(utils.HF_REPOS),
        help="GPT-2 sizes whose weights to download (default: gpt2-small)",
    )
    parser.add_argument("--data-url", action="append", default=[], help="a dataset URL to cache as well")
    parser.add_argument(
        "--require-weights",
        action="store_true",
        help="fail (exit 1) when the weights could not be downloaded (a workshop machine)",
    )
    args = parser.parse_args(argv)
    # This command is the fix the other messages point to, so it checks the network afresh
    # rather than trusting a failure remembered from earlier.
    support.network.HUB_FAILURE_FILE.unlink(missing_ok=True)
    fine, failed = [], []  # failed: (required?, "what: why. fix")
    try:
        fine.append(f"tokenizer ({utils.get_tokenizer().n_vocab} tokens)")
    except utils.TokenizerUnavailableError as err:
        cause = str(err).splitlines()[0]
        failed.append(
            (
                True,
                f"tokenizer (every notebook needs it): {cause}\n  {RETRY}, or set "
                f"{utils.TOKENIZER_DIR_ENV}=/path/to/folder holding GPT-2's encoder.json and vocab.bpe.",
            )
        )
    for url in args.data_url:
        try:
            fine.append(f"dataset {utils.download_file(url)}")
        except utils.DatasetError as err:
            failed.append((True, f"dataset: {err}"))
    for name in args.models:
        print(f"{name} weights: looking in the Hugging Face cache, else downloading ...", flush=True)
        try:
            fine.append(f"{name} weights ({utils.download_gpt2_weights(name)})")
        except utils.WeightsUnavailableError as err:
            hub_cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
            optional = (
                ""
                if args.require_weights
                else (" (optional: without them notebooks 06-11 use an UNTRAINED stand-in and say so)")
            )
            failed.append(
                (
                    args.require_weights,
                    f"{name} weights{optional}: {err.reason}.\n  {RETRY}, or copy a "
                    f"Hugging Face cache that holds {utils.HF_REPOS[name]} to {hub_cache}.",
                )
            )
    print()
    for line in fine:
        print(f"ok       {line}")
    sys.stdout.flush()
    for required, line in failed:
        print(f"{'FAILED' if required else 'MISSING'}  {line}", file=sys.stderr)
    if any(required for required, _ in failed):
        print("Not everything the course needs could be downloaded: see the FAILED lines.", file=sys.stderr)
        return 1
    if failed:
        print("The notebooks can now run without network, on the UNTRAINED stand-in instead of GPT-2's weights.")
        return 0
    print("All set: the notebooks can now run without network.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
