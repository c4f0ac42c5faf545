"""Every notebook runs top to bottom in a fresh kernel and reproduces its committed outputs.

The tests run in the smoke configuration (LLM_SMOKE=1: the small untrained model, a few steps), which is
what a machine without GPT-2's weights runs too. Cells tagged `needs-gpt2` (their output depends on
OpenAI's weights) and `varies` (timings, machine facts) are not compared. The `executed` fixture
(tests/conftest.py) runs each notebook once per session, shared with tests/test_exercises.py.
"""

import random
import re
from pathlib import Path

import nbformat
import pytest
import torch

import utils
from run_notebooks import NEEDS_GPT2, NOTEBOOK_DIR, VARIES, cell_tags

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def comparable_outputs(cell) -> list:
    """A cell's outputs as text; streams joined (how the kernel chunks them varies), images by kind only."""
    streams, rest = {}, []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            streams[output.name] = streams.get(output.name, "") + output.text
        elif output.output_type in ("execute_result", "display_data"):
            data = output.get("data", {})
            rest.append("<image>" if "image/png" in data else data.get("text/plain", ""))
        else:
            rest.append(output.output_type)
    return sorted(streams.items()) + rest


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS[:4]] == ["01", "02", "03", "04"]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_fresh_kernel(executed, path):
    nb = executed(path)  # raises CellExecutionError on the first failing cell
    for cell in code_cells(nb):
        assert not any(output.output_type == "error" for output in cell.outputs)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_reproduced(executed, path):
    committed = nbformat.read(path, as_version=4)
    fresh = executed(path)
    compared = 0
    for index, (old, new) in enumerate(zip(code_cells(committed), code_cells(fresh))):
        if {NEEDS_GPT2, VARIES} & set(cell_tags(old)):
            continue
        assert comparable_outputs(new) == comparable_outputs(old), f"code cell {index + 1} of {path.name}"
        compared += 1
    assert compared > 0, f"{path.name}: no committed output to compare"


# --- no absolute path of the machine that ran a notebook in its committed outputs ---

MACHINE_PATH = re.compile(
    r"(?<![\w.~])(?:/(?:work|tmp|home|root|Users|var/folders|private|mnt|opt|srv)/"  # Unix and macOS homes, temp
    r"|[A-Za-z]:[\\/]+(?:Users|Documents and Settings|Windows|Temp)\b)"  # Windows drives
)


def output_text(output) -> str:
    """Everything an output shows as text: streams, plain/HTML/Markdown data, an error's traceback."""
    parts = [output.get("text", "")] + output.get("traceback", []) + [output.get("evalue", "")]
    data = output.get("data", {})
    parts += [data.get(kind, "") for kind in ("text/plain", "text/html", "text/markdown", "application/json")]
    return "\n".join(p if isinstance(p, str) else "".join(p) if isinstance(p, list) else str(p) for p in parts)


def absolute_paths(nb, repo_root=utils.REPO_ROOT) -> list[str]:
    """Each place where an output holds a machine's absolute path (cell number: the path found)."""
    found = []
    extra = {str(repo_root), str(Path.home())} - {"/"}
    for number, cell in enumerate(code_cells(nb), start=1):
        for output in cell.get("outputs", []):
            text = output_text(output)
            hits = [m.group(0) for m in MACHINE_PATH.finditer(text)] + [e for e in extra if e in text]
            found += [f"code cell {number}: {text[text.find(hit) :][:80]!r}" for hit in hits]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_absolute_path(path):
    problems = absolute_paths(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}: print paths relative to the repository:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "text",
    [
        "or copy it to /work/main/.cache/data/f92ec6eb1e-alpaca_data.json.",
        "saved /tmp/tmpab12/checkpoint.safetensors",
        "/home/alice/course/runs/gpt2-small-test-responses.json (110 entries)",
        'File "/root/.venv/lib/python3.12/site-packages/torch/nn/modules/module.py", line 1',
        "C:\\Users\\alice\\course\\instruction-data.json",
        "/Users/bob/Library/Caches/huggingface/hub",
    ],
)
def test_absolute_path_check_catches_planted_paths(text):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)])]
    )
    assert absolute_paths(nb), text


@pytest.mark.parametrize(
    "text",
    [
        ".cache/data/f92ec6eb1e-alpaca_data.json",
        "runs/gpt2-small-test-responses.json (110 entries)",
        "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
        "1/2 of 3/4",
        "checkpoints/gpt2-small-instruct.safetensors",
        "input and output / target",
    ],
)
def test_absolute_path_check_passes_relative_paths_and_urls(text):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)])]
    )
    assert absolute_paths(nb, repo_root=Path("/nonexistent-repo")) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    """What a reader on GitHub sees: executed top to bottom, no errors, no stand-in passed off as GPT-2."""
    cells = code_cells(nbformat.read(path, as_version=4))
    counts = [cell.execution_count for cell in cells if cell.execution_count is not None]
    assert counts and counts[0] == 1 and all(a < b for a, b in zip(counts, counts[1:])), counts
    # Only a needs-gpt2 cell may be left unexecuted (its outputs are stripped without the weights).
    assert all(cell.execution_count is not None for cell in cells if NEEDS_GPT2 not in cell_tags(cell))
    assert not any(output.output_type == "error" for cell in cells for output in cell.outputs)
    text = "".join(str(output) for cell in cells for output in cell.outputs)
    assert "UNTRAINED stand-in" not in text, "a stand-in's output is committed"


def notebook_function(notebook_prefix: str, name: str):
    """Run a notebook's cells in order until one defines `name`; return that function."""
    path = next(NOTEBOOK_DIR.glob(f"{notebook_prefix}*.ipynb"))
    namespace = {}
    for cell in code_cells(nbformat.read(path, as_version=4)):
        exec(compile(cell.source, str(path), "exec"), namespace)  # noqa: S102 - our own notebook
        if name in namespace:
            return namespace[name]
    raise AssertionError(f"{path.name} defines no {name}")


def test_notebook_alpaca_prompt_agrees_with_utils(dataset):
    alpaca_prompt = notebook_function("02", "alpaca_prompt")
    for entry in dataset:
        assert alpaca_prompt(entry) == utils.format_input(entry, "alpaca")


def test_notebook_collate_agrees_with_utils():
    draft_collate = notebook_function("03", "draft_collate")
    rng = random.Random(0)
    for _ in range(200):
        batch = [[rng.randrange(50256) for _ in range(rng.randint(1, 30))] for _ in range(rng.randint(1, 6))]
        for ours, theirs in zip(draft_collate(batch), utils.custom_collate_fn(batch)):
            assert torch.equal(ours, theirs)
