"""Exercise 7 (conservative DPO): the check accepts the solution of 11 and rejects plausible wrong answers.

Only the cells of exercise 7 run (with the notebook's `check`), not the experiments of the other exercises.
"""

import nbformat
import pytest
import torch
import torch.nn.functional as F

from run_notebooks import NOTEBOOK_DIR

SOLUTIONS = NOTEBOOK_DIR / "11-solutions.ipynb"
EXERCISES = NOTEBOOK_DIR / "10-exercises.ipynb"


def exercise_7_namespace(path) -> dict:
    """`check`, then the code cells after the heading of exercise 7, with the check's own call left out."""
    cells = nbformat.read(path, as_version=4).cells
    start = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## Exercise 7"))
    namespace = {}
    check_cell = next(c for c in cells if c.cell_type == "code" and "def check(" in c.source)
    # the check cell also loads the tokenizer and data; only `check` itself is needed here
    source = check_cell.source[check_cell.source.index("def check(") :]
    exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - our own notebook
    for cell in cells[start:]:
        if cell.cell_type == "code":
            exec(compile(cell.source.split("\ncheck(7")[0], str(path), "exec"), namespace)  # noqa: S102
    return namespace


def z_of(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


WRONG = {
    "smoothing on the wrong term": lambda pc, pr, rc, rr, beta=0.1, smoothing=0.1: (
        -smoothing * F.logsigmoid(z_of(pc, pr, rc, rr, beta))
        - (1 - smoothing) * F.logsigmoid(-z_of(pc, pr, rc, rr, beta))
    ).mean(),
    "beta left out": lambda pc, pr, rc, rr, beta=0.1, smoothing=0.1: (
        -(1 - smoothing) * F.logsigmoid(z_of(pc, pr, rc, rr, 1.0))
        - smoothing * F.logsigmoid(-z_of(pc, pr, rc, rr, 1.0))
    ).mean(),
    "reference left out": lambda pc, pr, rc, rr, beta=0.1, smoothing=0.1: (
        -(1 - smoothing) * F.logsigmoid(beta * (pc - pr)) - smoothing * F.logsigmoid(-beta * (pc - pr))
    ).mean(),
    "same sign in both terms (plain DPO)": lambda pc, pr, rc, rr, beta=0.1, smoothing=0.1: (
        -(1 - smoothing) * F.logsigmoid(z_of(pc, pr, rc, rr, beta))
        - smoothing * F.logsigmoid(z_of(pc, pr, rc, rr, beta))
    ).mean(),
    "summed instead of averaged": lambda pc, pr, rc, rr, beta=0.1, smoothing=0.1: (
        -(1 - smoothing) * F.logsigmoid(z_of(pc, pr, rc, rr, beta))
        - smoothing * F.logsigmoid(-z_of(pc, pr, rc, rr, beta))
    ).sum(),
    "per-pair losses, not one number": lambda pc, pr, rc, rr, beta=0.1, smoothing=0.1: (
        -(1 - smoothing) * F.logsigmoid(z_of(pc, pr, rc, rr, beta))
        - smoothing * F.logsigmoid(-z_of(pc, pr, rc, rr, beta))
    ),
}


def run_check(namespace, capsys) -> str:
    capsys.readouterr()
    namespace["check"](7, namespace["problems_7"])
    return capsys.readouterr().out


def test_the_solution_passes(capsys):
    assert run_check(exercise_7_namespace(SOLUTIONS), capsys) == "Exercise 7: PASS\n"


def test_the_untouched_stub_is_not_done_yet(capsys):
    assert run_check(exercise_7_namespace(EXERCISES), capsys).startswith("Exercise 7: not done yet")


@pytest.mark.parametrize("mistake", WRONG)
def test_a_plausible_wrong_answer_fails(capsys, mistake):
    namespace = exercise_7_namespace(SOLUTIONS)
    namespace["conservative_dpo_loss"] = WRONG[mistake]
    assert run_check(namespace, capsys).startswith("Exercise 7: FAIL\n  - beta=")


def test_with_no_smoothing_the_solution_is_dpo():
    import utils

    solution = exercise_7_namespace(SOLUTIONS)["conservative_dpo_loss"]
    logprobs = [torch.randn(4) for _ in range(4)]
    torch.testing.assert_close(solution(*logprobs, beta=0.3, smoothing=0.0), utils.dpo_loss(*logprobs, beta=0.3)[0])
