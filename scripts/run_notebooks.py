"""Run the notebooks headless, each in a fresh kernel, and report how each one went.

    python scripts/run_notebooks.py --out build/notebooks     # executed copies (make run)
    python scripts/run_notebooks.py --inplace                 # refresh committed outputs
    python scripts/run_notebooks.py --inplace notebooks/03-*.ipynb
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NEEDS_GPT2 = "needs-gpt2"  # tag of a cell whose output depends on OpenAI's pretrained weights
VARIES = "varies"          # tag of a cell whose output changes from run to run (timings, machine facts)


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


def execute_notebook(path: Path, timeout: int = 1800, nb: nbformat.NotebookNode | None = None) -> nbformat.NotebookNode:
    """Execute a notebook top to bottom in a fresh kernel, working directory = its folder."""
    nb = nb if nb is not None else nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write executed copies into this folder")
    where.add_argument("--inplace", action="store_true", help="overwrite the notebooks with their outputs")
    args = parser.parse_args()
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    # Outputs that need OpenAI's weights are committed only when they came from those weights.
    import utils
    have_weights = utils.cached_gpt2_weights("gpt2-small") is not None and not utils.smoke_mode()
    failed = []
    for path in paths:
        start = time.perf_counter()
        print(f"running {path.name} ...", flush=True)
        target = path if args.inplace else args.out / path.name
        nb = nbformat.read(path, as_version=4)
        try:
            execute_notebook(path, nb=nb)
            status = "ok"
        except CellExecutionError as exc:
            status = "FAILED"
            if args.inplace:
                nb = None  # keep the committed version rather than half an execution
            # The last line of the kernel's message names the error; the saved copy has the rest.
            lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in str(exc).strip().splitlines() if line.strip()]
            failed.append(f"{path.name}: {lines[-1] if lines else exc}")
        if nb is not None and args.inplace and not have_weights:
            stripped = strip_needs_gpt2_outputs(nb)
            if stripped:
                print(f"  no GPT-2 weights: outputs of {stripped} {NEEDS_GPT2} cells left empty")
        if nb is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
        print(f"  {status} in {time.perf_counter() - start:.0f} s" + (f" -> {target}" if nb is not None else ""))
    if failed:
        print("\nThese notebooks stopped with an error:\n  " + "\n  ".join(failed))
        return 1
    print(f"\nAll {len(paths)} notebooks ran." + ("" if args.inplace else f" Executed copies are in {args.out}/."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
