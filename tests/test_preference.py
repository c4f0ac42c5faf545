"""Preference data (preference-data.json) and DPO (notebook 09): the data, the loss against the paper, a short run.

The loss is checked against a direct, loop-by-loop implementation of eq. 7 of Rafailov et al. 2023
("Direct Preference Optimization: Your Language Model is Secretly a Reward Model", arXiv:2305.18290) in float64.
"""

import copy
import json
import math
import subprocess
import sys
from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader

import utils
from utils import IGNORE_INDEX, DatasetError

REPO_ROOT = utils.REPO_ROOT


@pytest.fixture(scope="module")
def pairs():
    return utils.load_preference_data()


# --- the data ---


def test_every_pair_links_to_its_instruction_entry(pairs, dataset):
    assert len(pairs) == len(dataset)
    for pair in pairs:
        entry = dataset[pair["index"]]
        assert (pair["instruction"], pair["input"]) == (entry["instruction"], entry["input"])
        assert pair["chosen"] == entry["output"]


def test_both_answers_are_non_empty_and_differ(pairs):
    for index, pair in enumerate(pairs):
        assert pair["chosen"].strip() and pair["rejected"].strip(), index
        assert pair["chosen"].strip() != pair["rejected"].strip(), index


def test_each_axis_changes_what_it_says(pairs, dataset):
    outputs = {entry["output"] for entry in dataset}
    axes = {pair["axis"] for pair in pairs}
    assert axes == {"wrong number", "padded", "evasive", "off-topic"}
    for pair in pairs:
        chosen, rejected = pair["chosen"], pair["rejected"]
        if pair["axis"] == "padded":  # the right answer inside filler
            assert chosen in rejected and len(rejected) > len(chosen) + 40
        elif pair["axis"] == "wrong number":  # same words, another number
            assert [c for c in chosen if not c.isdigit()] == [c for c in rejected if not c.isdigit()]
        elif pair["axis"] == "off-topic":  # another entry's answer
            assert rejected in outputs
        else:
            assert chosen not in rejected and rejected not in outputs


def test_preference_split_follows_the_instruction_split(pairs, dataset):
    """A prompt lands in the same split as in instruction finetuning: no val/test prompt is trained on."""

    def prompt(e):
        return e["instruction"], e["input"]

    for kwargs in ({}, {"train_frac": 0.5, "val_frac": 0.2, "seed": 7}):
        instruction_parts = utils.split_dataset(dataset, **kwargs)
        preference_parts = utils.split_preference_data(pairs, dataset, **kwargs)
        for ours, theirs in zip(preference_parts, instruction_parts):
            assert sorted(map(prompt, ours)) == sorted(map(prompt, theirs))
        train, val, test = ({prompt(p) for p in part} for part in preference_parts)
        assert not train & test and not train & val and not val & test


def test_off_topic_answers_come_from_the_same_split(pairs, dataset):
    """An off-topic rejected answer is another entry's output: from a test entry, it would leak into training."""
    parts = utils.split_preference_data(pairs, dataset)
    for part in parts:
        outputs = {pair["chosen"] for pair in part}
        for pair in part:
            if pair["axis"] == "off-topic":
                assert pair["rejected"] in outputs


def test_the_generator_rebuilds_the_committed_file():
    result = subprocess.run(
        [sys.executable, "scripts/make_preference_data.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"instruction": "Q", "chosen": "A"}, "entry 1: missing field 'rejected'"),
        ({"instruction": "Q", "chosen": "A", "rejected": 3}, "entry 1: field 'rejected' must be a string, got int"),
        ({"instruction": "Q", "chosen": "  ", "rejected": "B"}, "entry 1: field 'chosen' is empty"),
        ({"instruction": "Q", "chosen": "Same.", "rejected": "Same. "}, "entry 1: field 'rejected' is the same answer"),
        ({"instruction": "Q", "input": 5, "chosen": "A", "rejected": "B"}, "entry 1: field 'input' must be a string"),
        ("just text", "entry 1: expected an object"),
    ],
)
def test_bad_entries_are_named_by_file_index_and_field(tmp_path, entry, message):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([{"instruction": "Q", "chosen": "A", "rejected": "B"}, entry]))
    with pytest.raises(DatasetError) as err:
        utils.load_preference_data(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_a_pair_without_its_prompt_in_the_instruction_data_is_refused(dataset):
    stray = [{"instruction": "Not in the data at all?", "input": "", "chosen": "A", "rejected": "B"}]
    with pytest.raises(DatasetError, match="preference pair 0: its instruction and input are not in"):
        utils.split_preference_data(stray, dataset)


# --- the loss against the paper ---


def direct_sequence_logprob(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """sum over real targets t of log softmax(logits[t])[target[t]], one position at a time."""
    total = 0.0
    for position, target in enumerate(targets.tolist()):
        if target != IGNORE_INDEX:
            row = logits[position].tolist()
            top = max(row)
            total += row[target] - (top + math.log(sum(math.exp(x - top) for x in row)))
    return total


def direct_dpo(pc: float, pr: float, rc: float, rr: float, beta: float) -> tuple[float, float, float]:
    """Eq. 7: -log sigma(beta log(pi(yw)/ref(yw)) - beta log(pi(yl)/ref(yl))), and the two implicit rewards."""
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    return -math.log(1 / (1 + math.exp(-(chosen - rejected)))), chosen, rejected


def random_preference_batch(generator: torch.Generator, n_pairs: int, length: int, vocab: int):
    """Token rows as preference_collate_fn builds them: prompts of random length, answers, end-of-text, padding."""
    examples = []
    for _ in range(n_pairs):
        prompt = torch.randint(
            0, vocab - 1, (int(torch.randint(1, length // 2, (1,), generator=generator)),), generator=generator
        ).tolist()
        answers = [
            torch.randint(
                0, vocab - 1, (int(torch.randint(1, length // 2, (1,), generator=generator)),), generator=generator
            ).tolist()
            for _ in range(2)
        ]
        examples.append(
            utils.PreferenceExample(*(utils.TokenizedExample(prompt + answer, len(prompt)) for answer in answers))
        )
    batch = utils.preference_collate_fn(examples)
    # the end-of-text token (and padding) becomes the last ID of this small vocabulary
    inputs, targets = (t.masked_fill(t == utils.PAD_TOKEN_ID, vocab - 1) for t in (batch.inputs, batch.targets))
    return batch._replace(inputs=inputs, targets=targets)


@pytest.mark.parametrize("seed, n_pairs, beta", [(0, 1, 0.1), (1, 3, 0.1), (2, 4, 0.5), (3, 2, 2.0)])
def test_dpo_loss_and_rewards_equal_the_published_formula(seed, n_pairs, beta):
    generator = torch.Generator().manual_seed(seed)
    vocab = 11
    batch = random_preference_batch(generator, n_pairs, length=16, vocab=vocab)
    assert (batch.targets == IGNORE_INDEX).any()  # prompt masking and padding are both exercised
    policy_logits, reference_logits = (
        torch.randn(*batch.targets.shape, vocab, generator=generator, dtype=torch.float64) * 3 for _ in range(2)
    )
    policy, reference = (utils.sequence_logprobs(logits, batch.targets) for logits in (policy_logits, reference_logits))
    loss, chosen_rewards, rejected_rewards = utils.dpo_loss(*policy.chunk(2), *reference.chunk(2), beta=beta)

    direct = [
        [direct_sequence_logprob(logits[row], batch.targets[row]) for row in range(2 * n_pairs)]
        for logits in (policy_logits, reference_logits)
    ]
    expected = [
        direct_dpo(direct[0][i], direct[0][n_pairs + i], direct[1][i], direct[1][n_pairs + i], beta)
        for i in range(n_pairs)
    ]
    assert loss.item() == pytest.approx(sum(e[0] for e in expected) / n_pairs, abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([e[1] for e in expected], abs=1e-6)
    assert rejected_rewards.tolist() == pytest.approx([e[2] for e in expected], abs=1e-6)
    margins = (chosen_rewards - rejected_rewards).tolist()
    assert margins == pytest.approx([e[1] - e[2] for e in expected], abs=1e-6)


def test_masked_and_padded_positions_do_not_count():
    """Changing the logits at a -100 target (prompt or padding) changes nothing; at an answer token it does."""
    generator = torch.Generator().manual_seed(5)
    batch = random_preference_batch(generator, 3, length=16, vocab=7)
    logits = torch.randn(*batch.targets.shape, 7, generator=generator, dtype=torch.float64)
    before = utils.sequence_logprobs(logits, batch.targets)
    noisy = logits.clone()
    ignored = batch.targets == IGNORE_INDEX
    noisy[ignored] += torch.randn(int(ignored.sum()), 7, generator=generator, dtype=torch.float64) * 10
    assert torch.equal(utils.sequence_logprobs(noisy, batch.targets), before)
    row, position = (~ignored).nonzero()[0].tolist()
    noisy[row, position] += 1.0
    noisy[row, position, batch.targets[row, position]] += 2.0  # the answer token's share rises
    after = utils.sequence_logprobs(noisy, batch.targets)
    assert after[row] > before[row]


def test_the_loss_starts_at_log_2_when_policy_equals_reference():
    lp = torch.randn(4)
    loss, chosen, rejected = utils.dpo_loss(lp[:2], lp[2:], lp[:2], lp[2:])
    assert loss.item() == pytest.approx(math.log(2))
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0


# --- a short run on the stand-in ---


def standin(seed: int = 0) -> utils.GPTModel:
    torch.manual_seed(seed)
    return utils.GPTModel(utils.GPT_CONFIGS["tiny"]).eval()


@pytest.fixture(scope="module")
def preference_loaders(tokenizer, pairs, dataset):
    train, val, _ = utils.split_preference_data(pairs, dataset)
    # small: the stand-in's output layer still has GPT-2's 50,257 logits per position
    train_set = utils.PreferenceDataset(train[:40], tokenizer)
    val_set = utils.PreferenceDataset(val[:12], tokenizer)
    make = partial(DataLoader, batch_size=2, collate_fn=utils.preference_collate_fn)
    return train_set, val_set, make


def test_precomputed_reference_logprobs_give_the_same_loss(preference_loaders):
    train_set, _, make = preference_loaders
    policy, reference = standin(1), standin(2)  # different models: the reference's part is visible in the loss
    batch = next(iter(make(train_set)))
    with_model = utils.dpo_loss_batch(policy, reference, batch, "cpu")
    stored = copy.copy(train_set)
    stored.examples = train_set.examples[:4]
    utils.precompute_reference_logprobs(reference, stored, "cpu", batch_size=3)  # other batches: other padding
    assert train_set.examples[0].reference_logprobs is None  # the copy's list was replaced, not changed
    stored_batch = next(iter(make(stored)))
    assert stored_batch.reference_logprobs is not None
    without_model = utils.dpo_loss_batch(policy, None, stored_batch, "cpu")
    for a, b in zip(with_model, without_model):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)
    assert with_model[1].abs().min() > 1e-2  # the two models differ: the reference term is not zero


def test_a_few_dpo_steps_raise_held_out_accuracy_and_margin(preference_loaders):
    train_set, val_set, make = preference_loaders
    torch.manual_seed(0)
    policy, reference = standin(0), standin(0)
    train_loader = make(train_set, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    history = utils.train_dpo(
        policy,
        reference,
        train_loader,
        make(val_set, batch_size=4),
        optimizer,
        "cpu",
        num_steps=8,
        eval_freq=8,
        beta=0.1,
    )
    assert history.steps == [0, 8]
    assert history.val_accuracies[0] == 0.5 and history.val_margins[0] == 0  # policy == reference at step 0
    assert history.val_losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert history.val_accuracies[-1] >= 0.75, history
    assert history.val_margins[-1] > 0.5, history
    assert history.val_losses[-1] < history.val_losses[0] - 0.1, history
    # the reference stayed frozen
    for p, q in zip(reference.parameters(), standin(0).parameters()):
        assert torch.equal(p, q)


# --- notebook 09's drafts agree with utils ---


def test_notebook_drafts_agree_with_utils():
    from test_notebooks import notebook_function

    draft_loss = notebook_function("09-preference", "draft_dpo_loss")
    draft_logprobs = notebook_function("09-preference", "draft_sequence_logprobs")
    generator = torch.Generator().manual_seed(0)
    for beta in (0.1, 0.5, 3.0):
        logprobs = [torch.randn(6, generator=generator, dtype=torch.float64) * 8 for _ in range(4)]
        for ours, theirs in zip(draft_loss(*logprobs, beta=beta), utils.dpo_loss(*logprobs, beta=beta)):
            torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    for n_pairs in (1, 3):
        batch = random_preference_batch(generator, n_pairs, length=14, vocab=9)
        logits = torch.randn(*batch.targets.shape, 9, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(
            draft_logprobs(logits, batch.targets), utils.sequence_logprobs(logits, batch.targets), atol=1e-10, rtol=0
        )


# --- the command line: finetune.py --dpo ---


def test_finetune_dpo_smoke_runs_from_a_checkpoint(tmp_path, tokenizer, capsys):
    import finetune

    start = tmp_path / "model.safetensors"
    from support.checkpoints import save_checkpoint

    save_checkpoint(start, standin(3))
    assert finetune.main(["--smoke", "--dpo", str(start), "--out", str(tmp_path / "dpo")]) == 0
    metrics = json.loads((tmp_path / "dpo" / "dpo-metrics.json").read_text())
    assert metrics["history"]["steps"] == [0, 4, 8] and metrics["start"] == str(start)
    assert metrics["history"]["val_accuracies"][0] == 0.5
    tuned = utils.load_checkpoint(standin(0), tmp_path / "dpo" / "dpo-model.safetensors")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), standin(3).parameters()))
    # a second run into the same folder is refused, with one line naming the fix
    capsys.readouterr()
    assert finetune.main(["--smoke", "--dpo", str(start), "--out", str(tmp_path / "dpo")]) == 1
    assert (
        "already holds a run (dpo-model.safetensors, dpo-metrics.json, dpo-checkpoint.safetensors)"
        in capsys.readouterr().err
    )


def test_finetune_dpo_names_a_missing_start(tmp_path, capsys):
    import finetune

    assert finetune.main(["--smoke", "--dpo", str(tmp_path / "nothing.safetensors"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "nothing.safetensors" in err and len(err.strip().splitlines()) <= 2, err


# --- the DPO loop on train_model's hooks: checkpoints, resume, the finite-loss stop ---


def small_dpo_run(train_set, val_set, make, steps: int, hooks, lr: float = 1e-3) -> utils.GPTModel:
    policy, reference = standin(0), standin(0)
    train = copy.copy(train_set)
    train.examples = train_set.examples[:8]  # 4 batches of 2: an epoch ends inside the run
    val = copy.copy(val_set)
    val.examples = val_set.examples[:2]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    loader = make(train, shuffle=True, generator=torch.Generator().manual_seed(0))
    utils.train_dpo(policy, reference, loader, make(val), optimizer, "cpu", num_steps=steps, eval_freq=100, hooks=hooks)
    return policy


def test_a_resumed_dpo_run_ends_with_the_same_weights(tmp_path, preference_loaders):
    trainer = pytest.importorskip("support.trainer", reason="support/ (issue 20, branch layout) is not merged yet")
    TrainingRun = trainer.TrainingRun

    straight = small_dpo_run(*preference_loaders, steps=6, hooks=TrainingRun(seed=1, progress=False))
    path = tmp_path / "dpo-checkpoint.safetensors"
    small_dpo_run(*preference_loaders, steps=6, hooks=TrainingRun(path, seed=1, max_steps=3, progress=False))
    assert path.exists()
    resumed = small_dpo_run(*preference_loaders, steps=6, hooks=TrainingRun(path, resume=True, seed=1, progress=False))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_diverging_dpo_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, preference_loaders):
    trainer = pytest.importorskip("support.trainer", reason="support/ (issue 20, branch layout) is not merged yet")
    TrainingRun = trainer.TrainingRun

    path = tmp_path / "dpo-checkpoint.safetensors"
    with pytest.raises(utils.TrainingError, match="diverged"):
        small_dpo_run(
            *preference_loaders, steps=6, lr=1e30, hooks=TrainingRun(path, seed=1, save_every=1, progress=False)
        )
    saved = utils.load_checkpoint(standin(5), path)  # loads: only finite weights were ever saved
    assert all(torch.isfinite(p).all() for p in saved.parameters())
