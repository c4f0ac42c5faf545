"""Run the notebooks headless, each in a fresh kernel, and report how each one went.

    python scripts/run_notebooks.py --out build/notebooks     # executed copies (make run)
    python scripts/run_notebooks.py --inplace                 # refresh committed outputs
    python scripts/run_notebooks.py --inplace notebooks/03-*.ipynb

Before running anything it checks the prerequisites once (GPT-2's tokenizer; whether GPT-2's weights
are cached) and stops with the whole fix if one is missing. Every notebook runs even when an earlier
one fails (an error in a cell, a cell timeout, a dead kernel, an unreadable notebook); the summary
lists each failure with its whole message. Notebooks are written atomically: an interrupted run
never leaves an empty or half-written .ipynb.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NEEDS_GPT2 = "needs-gpt2"  # tag of a cell whose output depends on OpenAI's pretrained weights
VARIES = "varies"  # tag of a cell whose output changes from run to run (timings, machine facts)
CELL_TIMEOUT = 1800  # seconds one cell may take

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def cell_tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def strip_needs_gpt2_outputs(nb: nbformat.NotebookNode) -> int:
    """Empty the outputs of every `needs-gpt2` cell (they came from a stand-in); returns how many."""
    stripped = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and NEEDS_GPT2 in cell_tags(cell):
            cell.outputs, cell.execution_count = [], None
            stripped += 1
    return stripped


def execute_notebook(
    path: Path, timeout: int = CELL_TIMEOUT, nb: nbformat.NotebookNode | None = None
) -> nbformat.NotebookNode:
    """Execute a notebook top to bottom in a fresh kernel, working directory = its folder.

    The kernel talks over Unix sockets in a private temporary folder (IPC), not over
    unencrypted TCP; that also keeps ipykernel from warning about TCP once per notebook.
    """
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = nb if nb is not None else nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="nbkernel-") as sockets:
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            config=config,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    return nb


def write_notebook(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write `nb` atomically: `path` holds either its old content or the whole new notebook.

    What an earlier write of the same notebook left when it was killed goes first (only temporaries this
    program made and whose writer is gone: see support/files.py).
    """
    from support.files import atomic_write_bytes, remove_stale_temporaries

    remove_stale_temporaries(path.parent, [path.name])
    text = nbformat.writes(nb)
    atomic_write_bytes(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()


def describe_failure(exc: BaseException) -> str:
    """The whole message of what stopped a notebook (not only its last line)."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    if isinstance(exc, CellExecutionError):
        return f"{exc.ename}: {_plain(exc.evalue)}" if exc.ename else _plain(str(exc))
    if isinstance(exc, CellTimeoutError):
        return f"a cell ran longer than its time limit ({_plain(str(exc).splitlines()[0])})"
    if isinstance(exc, DeadKernelError):
        return f"the kernel died (out of memory, or a crash in native code): {_plain(str(exc))}"
    return f"{type(exc).__name__}: {_plain(str(exc))}"


def check_prerequisites() -> tuple[bool, list[str]]:
    """(ready, lines to print): the tokenizer must load; the weights are reported, not required."""
    import utils

    lines = []
    try:
        utils.get_tokenizer()
        lines.append("tokenizer: ok")
        ready = True
    except utils.TokenizerUnavailableError as err:
        lines.append(f"tokenizer: MISSING; every notebook needs it.\n{err}")
        ready = False
    cached = utils.cached_gpt2_weights("gpt2-small")
    if utils.smoke_mode():
        lines.append(
            f"GPT-2 weights: not used ({utils.SMOKE_ENV} is set: notebooks 06-11 use the UNTRAINED "
            "stand-in model and a few training steps)"
        )
    elif cached:
        lines.append(f"GPT-2 weights: cached ({cached})")
    else:
        lines.append(
            "GPT-2 weights: not cached, so notebooks 06-11 use the UNTRAINED stand-in model and say "
            "so. To get them: run `make download` on a machine with network."
        )
    return ready, lines


def run_one(path: Path, target: Path, inplace: bool, have_weights: bool) -> tuple[str | None, bool]:
    """Execute one notebook and save it; returns (None or the reason it failed, whether `target` was written)."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # not JSON, not a notebook, unreadable: report it and go on
        return f"could not read the notebook: {describe_failure(exc)}", False
    failure = None
    try:
        execute_notebook(path, timeout=CELL_TIMEOUT, nb=nb)
    except Exception as exc:  # a cell error, a timeout, a dead kernel: report it and go on
        failure = describe_failure(exc)
    if inplace and failure:
        return failure, False  # keep the committed version rather than half an execution
    if inplace and not have_weights:
        stripped = strip_needs_gpt2_outputs(nb)
        if stripped:
            print(f"  no GPT-2 weights: outputs of {stripped} {NEEDS_GPT2} cells left empty")
    try:
        write_notebook(nb, target)  # with --out, a failed run's copy shows where it stopped
    except OSError as exc:  # a full or read-only disk: the old file stays as it was
        return (failure + "\n" if failure else "") + f"could not save {target}: {exc}", False
    return failure, True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write executed copies into this folder")
    where.add_argument("--inplace", action="store_true", help="overwrite the notebooks with their outputs")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))

    import utils

    ready, lines = check_prerequisites()
    print("\n".join(lines), flush=True)
    if not ready:
        print("\nNo notebook was run: fix the above first.", file=sys.stderr)
        return 2
    # Outputs that need OpenAI's weights are committed only when they came from those weights.
    have_weights = utils.cached_gpt2_weights("gpt2-small") is not None and not utils.smoke_mode()
    failed = []
    for path in paths:
        start = time.perf_counter()
        print(f"running {path.name} ...", flush=True)
        target = path if args.inplace else args.out / path.name
        failure, written = run_one(path, target, args.inplace, have_weights)
        if failure:
            failed.append(f"{path.name}:\n    " + failure.replace("\n", "\n    "))
        wrote = f" -> {target}" if written else ""
        print(f"  {'FAILED' if failure else 'ok'} in {time.perf_counter() - start:.0f} s{wrote}", flush=True)
    if failed:
        print(f"\n{len(failed)} of {len(paths)} notebooks stopped with an error:\n  " + "\n  ".join(failed))
        return 1
    print(f"\nAll {len(paths)} notebooks ran." + ("" if args.inplace else f" Executed copies are in {args.out}/."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
