"""Notebooks 07 and 08: the training loop's checkpoint cadence and per-epoch hook, 07's hand-written
training step against utils, and the teaching examples of 08.

The training runs use the very small GPT of test_training (vocabulary of 256, synthetic tokens):
checkpoint cadence and hooks do not depend on the model's size.
"""

import contextlib
import io
import re

import nbformat
import pytest
import torch

import support.trainer
import utils
from run_notebooks import NEEDS_GPT2, NOTEBOOK_DIR, cell_tags
from test_notebooks import notebook_function
from test_training import assert_same_weights, run, small_model, synthetic_loader
from utils import calc_loss_batch, create_optimizer, generate


@pytest.fixture
def checkpoint_writes(monkeypatch):
    """Counts every checkpoint train_model writes: the step at which each was written."""
    written = []
    real_save = support.trainer.save_checkpoint

    def counting_save(path, model, optimizer=None, state=None):
        written.append(state.step)
        return real_save(path, model, optimizer, state)

    monkeypatch.setattr(support.trainer, "save_checkpoint", counting_save)
    return written


def test_defaults_write_one_checkpoint_per_epoch(tmp_path, checkpoint_writes):
    # 16 examples in batches of 2: 8 steps per epoch. Evaluating after every step (eval_freq=1,
    # the worst case) must not write a checkpoint each time.
    path = tmp_path / "checkpoint.safetensors"
    run(small_model(), synthetic_loader(2), num_epochs=3, eval_freq=1, checkpoint_path=path)
    assert checkpoint_writes == [8, 16, 24]
    assert path.exists()


def test_a_max_steps_stop_saves_where_it_stopped(tmp_path, checkpoint_writes):
    run(
        small_model(),
        synthetic_loader(2),
        num_epochs=3,
        eval_freq=1,
        max_steps=11,
        checkpoint_path=tmp_path / "checkpoint.safetensors",
    )
    assert checkpoint_writes == [8, 11]


def test_save_every_steps_adds_to_the_epoch_ends(tmp_path, checkpoint_writes):
    run(
        small_model(),
        synthetic_loader(2),
        num_epochs=2,
        save_every=3,
        checkpoint_path=tmp_path / "checkpoint.safetensors",
    )
    assert checkpoint_writes == [3, 6, 8, 9, 12, 15, 16]


def test_save_every_minutes_follows_the_clock(tmp_path, checkpoint_writes, monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(support.trainer.time, "monotonic", lambda: clock["now"])

    def tick(state):  # each step "takes" 40 s, counted after the step's save check
        clock["now"] += 40.0

    run(
        small_model(),
        synthetic_loader(2),
        num_epochs=1,
        save_every_minutes=1.0,
        callback=tick,
        checkpoint_path=tmp_path / "checkpoint.safetensors",
    )
    # Step k checks at 40·(k-1) s: step 3 (80 s) is the first due, then every second step
    # (80 s after the last save), and step 8 ends the epoch.
    assert checkpoint_writes == [3, 5, 7, 8]


def test_on_epoch_end_runs_once_per_epoch_in_eval_mode_without_changing_training():
    # Dropout on: if the hook shifted the RNG or left the model in eval mode, the weights would differ.
    reference = small_model(drop_rate=0.1)
    run(reference, synthetic_loader(2), num_epochs=2, seed=7)

    model, calls = small_model(drop_rate=0.1), []

    def sample(state):
        calls.append((state.epoch, model.training))
        prompt = torch.tensor([[1, 2, 3]])
        generate(model, prompt, max_new_tokens=4, context_size=64, temperature=1.0, top_k=5)  # draws random numbers

    run(model, synthetic_loader(2), num_epochs=2, seed=7, on_epoch_end=sample)
    assert calls == [(1, False), (2, False)]
    assert model.training
    assert_same_weights(reference, model)


def test_notebook_training_step_agrees_with_utils():
    """07's draft of one step gives the loss of calc_loss_batch and the weights of one step of train_model."""
    training_step = notebook_function("07", "training_step")
    loader = synthetic_loader(16, shuffle=False)  # one batch: the whole synthetic set, with padding
    inputs, targets = next(iter(loader))
    assert (targets == utils.IGNORE_INDEX).any()

    drafted = small_model(seed=3)
    with torch.no_grad():
        expected_loss = calc_loss_batch(inputs, targets, drafted, "cpu").item()
    drafted.train()
    loss = training_step(drafted, create_optimizer(drafted, lr=1e-2), inputs, targets)
    assert loss == pytest.approx(expected_loss, rel=1e-6)

    looped, losses = small_model(seed=3), []
    run(
        looped,
        loader,
        max_steps=1,
        optimizer=create_optimizer(looped, lr=1e-2),
        callback=lambda state: losses.append(state.last_loss),
    )
    assert losses == [pytest.approx(loss, rel=1e-6)]
    for (name, a), b in zip(drafted.state_dict().items(), looped.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(drafted.tok_emb.weight, small_model(seed=3).tok_emb.weight)  # the step did something


def notebook_cells(prefix: str):
    path = next(NOTEBOOK_DIR.glob(f"{prefix}*.ipynb"))
    return nbformat.read(path, as_version=4).cells


def test_notebook07_training_call_writes_one_checkpoint_per_epoch(tmp_path, checkpoint_writes):
    """07's train_model call, with the keywords it passes, checkpoints once per epoch and shows a sample each epoch."""
    import ast

    calls = [
        node
        for cell in notebook_cells("07")
        if cell.cell_type == "code" and "checkpoint_path=" in cell.source
        for node in ast.walk(ast.parse(cell.source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "train_model"
    ]
    assert len(calls) == 1, "07 trains the model with one train_model call that saves checkpoints"
    # the same keywords with small values: a keyword added to the notebook's call must be added here too
    values = {
        "num_epochs": 2,
        "eval_freq": 1,
        "eval_iter": 1,
        "autocast_dtype": None,
        "checkpoint_path": tmp_path / "checkpoint.safetensors",
        "resume": False,
    }
    samples = []
    values["on_epoch_end"] = lambda state: samples.append(state.epoch)
    keywords = {k.arg for k in calls[0].keywords}
    assert keywords <= set(values), f"07 passes {sorted(keywords - set(values))}: extend this test"
    model = small_model()
    utils.train_model(
        model,
        synthetic_loader(2),
        synthetic_loader(4, shuffle=False),
        create_optimizer(model, lr=1e-2),
        "cpu",
        **{k: values[k] for k in keywords},
    )
    assert checkpoint_writes == [8, 16]
    assert samples == ([1, 2] if "on_epoch_end" in keywords else [])


@pytest.mark.parametrize("prefix", ["06", "07", "08"])
def test_each_needs_gpt2_cell_has_an_expectation_beside_it(prefix):
    """Next to every needs-gpt2 cell, a markdown cell says what the reader will see."""
    cells = notebook_cells(prefix)
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and NEEDS_GPT2 in cell_tags(cell):
            neighbours = [cells[j] for j in (i - 1, i + 1) if 0 <= j < len(cells)]
            assert any(c.cell_type == "markdown" for c in neighbours), f"{prefix} cell {i}: {cell.source[:60]}"


def test_notebooks_cite_loss_figures_with_the_model_size():
    """The book's 3.83 before finetuning and 0.30/0.66 after are gpt2-medium's, never small's."""
    text = "\n".join(cell.source for cell in notebook_cells("07") if cell.cell_type == "markdown")
    for figure in ("3.8", "0.30", "0.66"):
        for line in text.splitlines():
            if figure in line:
                assert "medium" in line, line


def printed(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output.output_type == "stream")


def test_notebook08_metric_examples_match_utils():
    """The hand-made pairs of 08 and their committed scores agree with utils' metrics."""
    cells = [cell for cell in notebook_cells("08") if cell.cell_type == "code"]
    (cell,) = [cell for cell in cells if "metric_examples" in cell.source and "exact_match(" in cell.source]
    namespace = {}
    pairs_cell = next(c for c in cells if c.source.lstrip().startswith("metric_examples"))
    exec(compile(pairs_cell.source, "08", "exec"), namespace)  # noqa: S102 - our own notebook
    pairs = namespace["metric_examples"]
    assert 2 <= len(pairs) <= 4
    output = printed(cell)
    for prediction, reference in pairs:
        rouge = f"{utils.rouge_l(prediction, reference):.2f}"
        match = "yes" if utils.exact_match(prediction, reference) else "no"
        assert re.search(rf"{re.escape(match)}\s+{re.escape(rouge)}", output), (prediction, output)


def test_notebook08_prints_the_judge_prompt():
    cells = [cell for cell in notebook_cells("08") if cell.cell_type == "code" and "judge_prompt(" in cell.source]
    assert cells and NEEDS_GPT2 not in cell_tags(cells[0])
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(cells[0].source, "08", "exec"), namespace)  # noqa: S102 - our own notebook
    entry = next(value for value in namespace.values() if isinstance(value, dict) and "model_response" in value)
    assert printed(cells[0]) == utils.judge_prompt(entry) + "\n"
    assert "### Instruction:" in printed(cells[0])


def test_notebook08_prints_answers_compactly():
    """The answers cell prints one line per answer: no run of blank lines from a stand-in's output."""
    (cell,) = [c for c in notebook_cells("08") if c.cell_type == "code" and "shorten(" in c.source]
    namespace = {}
    exec(compile(cell.source.split('print(f"[{model_label}]')[0], "08", "exec"), namespace)  # noqa: S102
    shorten = namespace["shorten"]
    assert shorten("\n\n\n\n") == repr("\n\n\n\n")
    assert len(shorten("word " * 200)) <= 90 and "\n" not in shorten("a\nb" * 50)
    assert shorten("Lima.") == "'Lima.'"


# --- what a reader without GPT-2's weights still sees (issue 21) ---


def _standin_cells(prefix):
    return [
        c
        for c in notebook_cells(prefix)
        if c.cell_type == "code" and NEEDS_GPT2 not in cell_tags(c) and c.source.startswith("# untrained stand-in")
    ]


def test_07_shows_the_standin_loss_plot_in_a_cell_apart():
    (cell,) = _standin_cells("07")
    assert "plot_losses(" in cell.source and "untrained stand-in" in printed(cell)
    assert any("image/png" in o.get("data", {}) for o in cell.outputs), "the committed plot is missing"
    assert any(NEEDS_GPT2 in cell_tags(c) and "plot_losses(history" in c.source for c in notebook_cells("07"))


def test_08_shows_the_standin_score_table_beside_reference_points():
    (cell,) = _standin_cells("08")
    table = printed(cell)
    assert "untrained stand-in" in table and "the reference itself" in table and "100.0%" in table
    assert any(NEEDS_GPT2 in cell_tags(c) and "evaluate_responses(responses)" in c.source for c in notebook_cells("08"))


def test_08_sets_up_ollama_step_by_step():
    text = "\n".join(c.source for c in notebook_cells("08") if c.cell_type == "markdown")
    for step in (
        "ollama.com/install.sh",
        "ollama serve",
        "ollama pull llama3.2",
        "curl http://localhost:11434",
        "connection refused",
        "model not found",
    ):
        assert step in text, step
    assert "0.6 s per answer" in text and "ch07.ipynb" in text  # the judge's time, with its source
