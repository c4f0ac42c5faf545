"""Training loop, checkpoints and resume, LoRA, length-grouped batching, and finetune.py end to end.

Most tests use a very small GPT (vocabulary of 256) on synthetic token sequences: the mechanics
are the same as for GPT-2, at a fraction of the cost. Real examples and the real tokenizer appear
where the property is about them (loss on real data, padding efficiency, the pipeline).
"""

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import utils
from helpers import SMALL_CFG, VOCAB, train_with_hooks
from support.batching import LengthGroupedBatchSampler, length_grouped_loader
from support.checkpoints import save_checkpoint
from utils import (
    GPT_CONFIGS,
    IGNORE_INDEX,
    GPTModel,
    LoRALinear,
    TokenizedExample,
    apply_lora,
    calc_loss_batch,
    calc_loss_loader,
    count_parameters,
    create_optimizer,
    custom_collate_fn,
    load_checkpoint,
    merge_lora,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def small_model(seed: int = 0, drop_rate: float = 0.0, tied: bool = False) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel({**SMALL_CFG, "drop_rate": drop_rate})
    if tied:
        model.out_head.weight = model.tok_emb.weight
    return model


def synthetic_examples(n: int = 16, seed: int = 0) -> list[TokenizedExample]:
    """Random token sequences of 6-30 tokens, the first 2-5 of them the "prompt"."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(6, 31, (), generator=g))
        tokens = torch.randint(0, VOCAB - 1, (length,), generator=g).tolist()
        examples.append(TokenizedExample(tokens, int(torch.randint(2, 6, (), generator=g))))
    return examples


def synthetic_loader(batch_size: int, examples=None, shuffle: bool = True, mask_prompt: bool = False) -> DataLoader:
    collate = partial(custom_collate_fn, pad_token_id=VOCAB - 1, mask_prompt=mask_prompt)
    return DataLoader(
        examples or synthetic_examples(),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=torch.Generator() if shuffle else None,
    )


def run(model, loader, optimizer=None, **kwargs):
    optimizer = optimizer or create_optimizer(model, lr=1e-2)  # fused AdamW where available
    kwargs = {"num_epochs": 1, "eval_freq": 2, "eval_iter": 1, "progress": False, **kwargs}
    return train_with_hooks(model, loader, synthetic_loader(4, shuffle=False), optimizer, "cpu", **kwargs)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


# --- loss and training loop ---


def test_calc_loss_batch_is_the_mean_over_real_targets():
    model = small_model().eval()
    inputs, targets = next(iter(synthetic_loader(4, mask_prompt=True)))
    logits = model(inputs)
    real = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[real], targets[real])
    torch.testing.assert_close(calc_loss_batch(inputs, targets, model, "cpu"), expected)


def test_loss_decreases_on_real_examples(tokenizer, dataset):
    torch.manual_seed(0)
    model = GPTModel(GPT_CONFIGS["tiny"])  # UNTRAINED: starts near ln(50257) = 10.8
    short = sorted(dataset, key=lambda e: len(utils.format_example(e)))[:10]  # cheap steps
    train_loader, val_loader, _ = utils.create_dataloaders(short[:8], short[8:], short[8:], tokenizer, batch_size=4)
    before = calc_loss_loader(train_loader, model, "cpu")
    history = train_with_hooks(
        model,
        train_loader,
        val_loader,
        create_optimizer(model, lr=3e-3),
        "cpu",
        num_epochs=3,
        eval_freq=3,
        eval_iter=1,
        progress=False,
    )
    after = calc_loss_loader(train_loader, model, "cpu")
    assert history.steps == [3, 6]
    assert after < before - 0.5, (before, after)
    assert history.train_losses[-1] < history.train_losses[0]


def test_gradient_accumulation_equals_one_big_batch():
    # Four micro-batches of 2 and one batch of 8 hold the same examples (same shuffle), but are
    # padded differently; causal attention keeps padding out of the real positions, so the
    # updates agree up to float rounding. Plain SGD: Adam would amplify rounding in tiny gradients.
    results = []
    for batch_size, accum in ((8, 1), (2, 4)):
        model = small_model()
        history = run(
            model,
            synthetic_loader(batch_size, mask_prompt=True),
            torch.optim.SGD(model.parameters(), lr=0.5),
            grad_accum_steps=accum,
            eval_freq=1,
        )
        results.append((model, history))
    (big, h_big), (accumulated, h_acc) = results
    assert h_big.steps == h_acc.steps == [1, 2]
    assert h_big.tokens_seen == h_acc.tokens_seen
    for (name, x), y in zip(big.state_dict().items(), accumulated.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(h_big.val_losses, h_acc.val_losses, atol=1e-5, rtol=1e-5)


def test_same_seed_same_run_other_seed_other_run():
    def once(seed):
        model = small_model(drop_rate=0.2)  # dropout: the RNG matters beyond the data order
        return model, run(model, synthetic_loader(4), num_epochs=2, seed=seed)

    (a, ha), (b, hb), (c, _) = once(7), once(7), once(8)
    assert_same_weights(a, b)
    assert ha == hb
    assert not torch.equal(a.trf_blocks[0].att.qkv.weight, c.trf_blocks[0].att.qkv.weight)


def test_tokens_seen_counts_only_real_targets():
    loader = synthetic_loader(4, mask_prompt=True)  # 16 examples: four full batches, nothing dropped
    real = sum(int((targets != IGNORE_INDEX).sum()) for _, targets in loader)
    positions = sum(targets.numel() for _, targets in loader)
    history = run(small_model(), loader, eval_freq=4)
    assert history.tokens_seen == [real]
    assert real < positions  # padding and the masked prompts were left out


# --- checkpoints and resume ---


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_checkpoint_round_trip(tmp_path, tied):
    model = small_model(seed=1, tied=tied).eval()
    path = save_checkpoint(tmp_path / "model.safetensors", model)
    stored = load_file(path)  # a plain safetensors file
    assert ("out_head.weight" in stored) is not tied  # a tied head is stored once
    fresh = load_checkpoint(small_model(seed=2, tied=tied), path).eval()
    assert (fresh.out_head.weight is fresh.tok_emb.weight) is tied
    x = torch.randint(0, VOCAB, (2, 12))
    assert torch.equal(model(x), fresh(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_untied_checkpoint_refuses_a_tied_model(tmp_path):
    path = save_checkpoint(tmp_path / "model.safetensors", small_model(tied=False))
    with pytest.raises(ValueError, match="ties them"):
        load_checkpoint(small_model(tied=True), path)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("how", ["max_steps", "exception"])
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path, how):
    # 16 examples, micro-batches of 2, 2 per step: 4 steps per epoch, 8 in all. Dropout on, so
    # the restored RNG state matters as much as the restored weights, optimizer and data order.
    config = {"num_epochs": 2, "grad_accum_steps": 2, "seed": 5}
    reference = small_model(drop_rate=0.1)
    history = run(reference, synthetic_loader(2), **config)

    path = tmp_path / "checkpoint.safetensors"
    model = small_model(drop_rate=0.1)
    if how == "max_steps":
        run(model, synthetic_loader(2), checkpoint_path=path, max_steps=6, **config)  # stops mid epoch 2
    else:

        def crash(state):
            if state.step == 5:
                raise Interrupt

        with pytest.raises(Interrupt):  # the last checkpoint is from step 3, in epoch 1
            run(model, synthetic_loader(2), checkpoint_path=path, save_every=3, callback=crash, **config)

    resumed = small_model(seed=99, drop_rate=0.1)  # weights come from the checkpoint
    resumed_history = run(resumed, synthetic_loader(2), checkpoint_path=path, resume=True, **config)
    assert_same_weights(reference, resumed)
    assert resumed_history.steps[-1] == history.steps[-1] == 8
    assert resumed_history.tokens_seen[-1] == history.tokens_seen[-1]


def test_resume_refuses_other_settings(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    run(small_model(), synthetic_loader(2), checkpoint_path=path, max_steps=2)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        run(small_model(), synthetic_loader(4), checkpoint_path=path, resume=True)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "checkpoint.safetensors"
    model = small_model()
    save_checkpoint(path, model)
    before = path.read_bytes()

    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with torch.no_grad():
        model.tok_emb.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


# --- LoRA ---


def test_lora_starts_as_the_base_model_and_trains_only_its_matrices():
    model = small_model().eval()
    x = torch.randint(0, VOCAB, (2, 10))
    before = model(x)
    apply_lora(model, rank=4, alpha=8)
    assert torch.equal(model(x), before)  # B = 0: the update is exactly zero

    lora_layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(lora_layers) == 4 * SMALL_CFG["n_layers"]
    for layer in lora_layers:
        torch.nn.init.normal_(layer.lora_B, std=0.1)  # else A gets zero gradients
    model(x).sum().backward()
    for name, param in model.named_parameters():
        is_lora = name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")
        assert param.requires_grad is is_lora, name
        assert (param.grad is not None) is is_lora, name

    # r * (in + out) for qkv (d, 3d), out_proj (d, d), and the feed-forward (d, 4d), (4d, d): 16 r d per block
    d = SMALL_CFG["emb_dim"]
    assert count_parameters(model, trainable_only=True) == 16 * 4 * d * SMALL_CFG["n_layers"]
    assert count_parameters(model) == count_parameters(small_model()) + 16 * 4 * d * SMALL_CFG["n_layers"]


def test_merged_lora_gives_the_same_outputs_as_plain_gpt_weights():
    model = apply_lora(small_model(), rank=4, alpha=8).eval()
    for layer in model.modules():
        if isinstance(layer, LoRALinear):
            torch.nn.init.normal_(layer.lora_B, std=0.1)
    x = torch.randint(0, VOCAB, (2, 10))
    unmerged = model(x)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert list(model.state_dict()) == list(small_model().state_dict())  # plain GPTModel names again
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)


# --- length-grouped batching ---


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 500), max_size=120),
    batch_size=st.integers(1, 9),
    chunk_batches=st.integers(1, 5),
    seed=st.integers(0, 10**6),
    epoch=st.integers(0, 3),
)
def test_length_grouped_sampler_yields_every_index_once(lengths, batch_size, chunk_batches, seed, epoch):
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=seed, chunk_batches=chunk_batches)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert len(batches) == len(sampler)
    assert all(1 <= len(batch) <= batch_size for batch in batches)


def test_length_grouped_sampler_is_seeded_and_reshuffles_every_epoch():
    lengths = list(range(200))

    def batches(seed, epoch):
        sampler = LengthGroupedBatchSampler(lengths, 8, seed=seed, chunk_batches=5)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(1, 0) == batches(1, 0)
    assert batches(1, 0) != batches(1, 1)
    assert batches(1, 0) != batches(2, 0)


def test_length_grouping_pads_little_on_the_real_train_split(tokenizer, dataset):
    train, val, test = utils.split_dataset(dataset)
    train_loader, _, _ = utils.create_dataloaders(train, val, test, tokenizer, batch_size=8)
    grouped = length_grouped_loader(train_loader, seed=123)
    assert len(grouped) == len(train_loader)
    grouped_efficiency = utils.padding_efficiency(grouped)
    assert grouped_efficiency >= 0.9
    assert grouped_efficiency > utils.padding_efficiency(train_loader)


# --- finetune.py ---


def run_finetune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu"}  # nothing may reach the network
    return subprocess.run(
        [sys.executable, "finetune.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_finetune_smoke_runs_end_to_end_offline(tmp_path):
    # --judge at a port where nothing listens: the judge is skipped with its fix, the rest completes
    dead_judge = f"http://127.0.0.1:{free_port()}/api/chat"
    result = run_finetune("--smoke", "--out", str(tmp_path), "--judge", "--judge-url", dead_judge)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "judge skipped" in result.stderr and "ollama serve" in result.stderr
    assert "Traceback" not in result.stderr
    assert "UNTRAINED" in result.stdout
    responses = json.loads((tmp_path / "test-responses.json").read_text(encoding="utf-8"))
    assert len(responses) == 5
    for entry in responses:
        assert {"instruction", "input", "output"} <= entry.keys()
        assert isinstance(entry["model_response"], str)
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["evaluation"]["n"] == 5 and 0.0 <= metrics["evaluation"]["rouge_l"] <= 1.0
    assert metrics["untrained_start"] is True
    assert "ollama serve" in metrics["judge"]["error"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_file(tmp_path / "model.safetensors")
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_finetune_bad_data_gives_one_clear_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "Say hi.", "input": ""}]), encoding="utf-8")
    result = run_finetune("--smoke", "--data", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "entry 0: missing field 'output'" in result.stderr
    assert "Traceback" not in result.stderr


def test_finetune_missing_weights_give_one_clear_message(tmp_path):
    result = run_finetune(
        "--model", "gpt2-small", "--weights", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "out")
    )
    assert result.returncode != 0
    assert "nope.safetensors: no such file" in result.stderr
    assert "Traceback" not in result.stderr
