"""Exercises (08) and solutions (09): every solution passes its check, every untouched stub fails it.

Also the experiment helpers in utils.py: a run returns its history, and a table never drops a row.
"""
import re

import nbformat
import pytest
import torch
import utils
from run_notebooks import NOTEBOOK_DIR

EXERCISES = NOTEBOOK_DIR / "10-exercises.ipynb"
SOLUTIONS = NOTEBOOK_DIR / "11-solutions.ipynb"
CHECK_CALL = re.compile(r"^check\((\d+), ", re.MULTILINE)
RESULT_LINE = re.compile(r"^Exercise (\d+): (PASS|FAIL|not done yet)", re.MULTILINE)


def check_cells(nb) -> dict[int, nbformat.NotebookNode]:
    """Exercise number -> the code cell that runs its check."""
    cells = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and (match := CHECK_CALL.search(cell.source)):
            cells[int(match.group(1))] = cell
    return cells


def printed(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def test_both_notebooks_have_the_same_six_checks():
    exercises, solutions = (check_cells(nbformat.read(p, as_version=4)) for p in (EXERCISES, SOLUTIONS))
    assert sorted(exercises) == sorted(solutions) == [1, 2, 3, 4, 5, 6]
    for number in exercises:  # a check the solutions pass is the very check the learner runs
        assert exercises[number].source == solutions[number].source, f"check {number} differs between 08 and 09"


@pytest.mark.notebooks
def test_every_solution_passes_its_check(executed):
    nb = executed(SOLUTIONS)
    checks = check_cells(nb)
    results = {}
    for number, cell in checks.items():
        lines = RESULT_LINE.findall(printed(cell))
        assert len(lines) == 1, f"check {number} printed {printed(cell)!r}"
        results[int(lines[0][0])] = lines[0][1]
    assert results == {number: "PASS" for number in checks}
    all_text = "".join(printed(cell) for cell in nb.cells if cell.cell_type == "code")
    assert len(re.findall(r"^Exercise \d+: PASS$", all_text, re.MULTILINE)) == len(checks) == 6


@pytest.mark.notebooks
def test_every_untouched_stub_fails_its_check(executed):
    checks = check_cells(executed(EXERCISES))
    assert len(checks) == 6
    for number, cell in checks.items():
        text = printed(cell)
        assert f"Exercise {number}: not done yet" in text, text
        assert "PASS" not in text


def test_committed_exercises_show_failing_checks_and_no_solution():
    nb = nbformat.read(EXERCISES, as_version=4)
    for number, cell in check_cells(nb).items():
        assert f"Exercise {number}: not done yet" in printed(cell)
    stubs = [cell.source for cell in nb.cells if "raise NotImplementedError  # your code here" in cell.source]
    assert len(stubs) == 6  # one stub cell per exercise
    # The solutions' own code cells (the runs aside, which 08 leaves to the learner) and what they print
    # appear nowhere in 08.
    solution_only = [cell for cell in nbformat.read(SOLUTIONS, as_version=4).cells
                     if cell.cell_type == "code" and "needs-gpt2" not in cell.metadata.get("tags", [])
                     and cell.source not in {c.source for c in nb.cells}]
    assert len(solution_only) >= 6, "09 should have a solution cell per exercise"
    exercise_text = "\n".join(cell.source for cell in nb.cells) + "".join(
        printed(cell) for cell in nb.cells if cell.cell_type == "code")
    for cell in solution_only:
        assert cell.source not in exercise_text
        assert not printed(cell) or printed(cell) not in exercise_text


def test_committed_solutions_pass_every_check():
    for number, cell in check_cells(nbformat.read(SOLUTIONS, as_version=4)).items():
        assert printed(cell) == f"Exercise {number}: PASS\n"


def _solutions_namespace(upto: int) -> dict:
    """09's cells run in order up to (not including) the check of exercise `upto`: its solution is defined."""
    namespace = {}
    for cell in nbformat.read(SOLUTIONS, as_version=4).cells:
        if cell.cell_type != "code" or "needs-gpt2" in cell.metadata.get("tags", []):
            continue
        if (match := CHECK_CALL.search(cell.source)) and int(match.group(1)) == upto:
            definitions = cell.source.split("\ncheck(")[0]  # the problems_N function, without running it
            exec(compile(definitions, str(SOLUTIONS), "exec"), namespace)  # noqa: S102 - our own notebook
            return namespace
        if "varies" in cell.metadata.get("tags", []):
            namespace.update(alpaca_data=None, download_problem="not attempted in tests")
            continue
        exec(compile(cell.source, str(SOLUTIONS), "exec"), namespace)  # noqa: S102 - our own notebook
    raise AssertionError(f"no check for exercise {upto}")


def test_a_check_catches_an_off_by_one_in_prompt_masking(capsys):
    namespace = _solutions_namespace(2)
    capsys.readouterr()  # what the earlier cells printed
    right = namespace["masked_collate"]

    def off_by_one(batch, **kwargs):  # masks the first response token too
        inputs, targets = right(batch, **kwargs)
        for row, ex in enumerate(batch):
            targets[row, :ex.prompt_length] = utils.IGNORE_INDEX
        return inputs, targets

    namespace["check"](2, namespace["problems_2"])
    assert capsys.readouterr().out == "Exercise 2: PASS\n"
    namespace["masked_collate"] = off_by_one
    namespace["check"](2, namespace["problems_2"])
    assert capsys.readouterr().out.startswith("Exercise 2: FAIL\n  - targets differ")


def test_a_check_catches_lora_without_scaling(capsys):
    namespace = _solutions_namespace(5)
    capsys.readouterr()  # what the earlier cells printed

    class Unscaled(namespace["MyLoRALinear"]):
        def forward(self, x):
            return self.base(x) + x @ self.lora_A @ self.lora_B

    namespace["MyLoRALinear"] = Unscaled
    namespace["check"](5, namespace["problems_5"])
    assert "forward differs from utils.LoRALinear" in capsys.readouterr().out


def test_a_check_catches_temperature_multiplied_instead_of_divided(capsys):
    namespace = _solutions_namespace(4)
    capsys.readouterr()  # what the earlier cells printed
    right = namespace["sample_next_token"]
    namespace["sample_next_token"] = lambda logits, temperature=0.0, top_k=None: right(
        logits, 1 / temperature if temperature else 0.0, top_k)
    namespace["check"](4, namespace["problems_4"])
    assert capsys.readouterr().out.startswith("Exercise 4: FAIL\n  - temperature=0.5")


# --- the experiment helpers ---

def test_fitting_subset_takes_the_first_short_entries_in_order(tokenizer, dataset):
    lengths = [len(utils.encode_text(utils.format_example(e), tokenizer)) for e in dataset[:100]]
    subset = utils.fitting_subset(dataset[:100], tokenizer, n=5, max_tokens=50)
    assert subset == [e for e, n in zip(dataset[:100], lengths) if n <= 50][:5]
    assert utils.fitting_subset(dataset[:10], tokenizer, n=5, max_tokens=1) == []


def test_results_table_keeps_skipped_and_failed_rows():
    ok = utils.ExperimentResult("ran", history=utils.TrainHistory([5], [2.0], [2.5], [100]),
                                scores={"exact_match": 0.1, "rouge_l": 0.4, "rouge_l_stderr": 0.05},
                                trainable_parameters=10, train_examples=8, train_seconds=1.0)
    table = utils.results_table([ok, utils.skipped_experiment("52k", "no data: no network"),
                                 utils.ExperimentResult("broken", status="failed: ValueError: bad")])
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].split()[:2] == ["ran", "8"] and "0.400 ± 0.050" in lines[2] and "2.500" in lines[2]
    assert lines[3].startswith("52k") and lines[3].endswith("skipped: no data: no network")
    assert lines[4].startswith("broken") and lines[4].endswith("failed: ValueError: bad")


def test_a_run_that_cannot_train_becomes_a_failed_row(monkeypatch, tokenizer, dataset):
    monkeypatch.setenv(utils.SMOKE_ENV, "1")
    result = utils.run_experiment("too little data", dataset[:3], dataset[3:5], dataset[5:7], tokenizer,
                                  batch_size=8, progress=False)
    assert not result.ok
    assert result.status == "failed: ValueError: 3 training examples do not fill one batch of 8"
    assert result.settings["mask_prompt"] is False
    assert "too little data" in utils.results_table([result])


def test_run_experiment_returns_history_scores_and_answers(monkeypatch, tokenizer, dataset):
    monkeypatch.setenv(utils.SMOKE_ENV, "1")
    result = utils.run_experiment("masked, cut, LoRA", dataset[:4], dataset[4:6], dataset[6:8], tokenizer,
                                  style="phi3", mask_prompt=True, allowed_max_length=32, lora_rank=2,
                                  batch_size=2, eval_freq=1, eval_iter=1, max_new_tokens=3, progress=False)
    assert result.ok, result.status
    assert result.history.steps == [1, 2]
    assert all(loss == loss for loss in result.history.val_losses)  # not nan
    # the tiny model: 2 blocks, emb_dim 64; rank 2 on qkv (64->192), out (64->64), ff (64->256, 256->64)
    assert result.trainable_parameters == 2 * 2 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    assert [r["instruction"] for r in result.responses] == [e["instruction"] for e in dataset[6:8]]
    assert set(result.scores) >= {"exact_match", "rouge_l", "rouge_l_stderr"}
    assert result.settings == {"model_name": "gpt2-small", "style": "phi3", "mask_prompt": True,
                               "allowed_max_length": 32, "lora_rank": 2, "lr": 5e-5, "seed": 123}


def test_score_answers_standard_error():
    entries = [{"output": "a b", "model_response": "a b"}, {"output": "a b", "model_response": "c d"}]
    scores = utils.score_answers(entries)
    assert scores["rouge_l"] == pytest.approx(0.5)
    assert scores["rouge_l_stderr"] == pytest.approx(0.5)  # sample sd 0.707 / sqrt(2)


def test_generate_responses_samples_reproducibly_whatever_the_batch_size(tokenizer, dataset):
    torch.manual_seed(0)
    model = utils.GPTModel(utils.GPT_CONFIGS["tiny"]).eval()
    entries = dataset[:5]

    def answers(**options):
        return [r["model_response"] for r in utils.generate_responses(model, entries, tokenizer, max_new_tokens=8,
                                                                      progress=False, **options)]

    greedy = answers()
    assert answers(temperature=0.0, seed=7) == greedy  # temperature 0 ignores the seed
    sampled = answers(temperature=1.5, seed=7, batch_size=5)
    assert answers(temperature=1.5, seed=7, batch_size=2) == sampled  # every prompt has its own generator
    assert sampled != greedy
    assert answers(temperature=1.5, seed=8, batch_size=5) != sampled
    assert answers(temperature=1.5, top_k=1, seed=7) == greedy  # top-1 sampling is greedy
