"""GPT-2 model, weight loading and generation.

Checkpoints are small random GPT-2s written by transformers itself, so no download is needed.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from utils import (
    GPT_CONFIGS,
    HF_REPOS,
    GPTModel,
    KVCache,
    WeightsUnavailableError,
    build_gpt2,
    download_gpt2_weights,
    generate,
    generate_batch,
    load_gpt2_weights,
    text_to_token_ids,
    token_ids_to_text,
)

VOCAB = 384
SMALL_CFG = {
    "vocab_size": VOCAB,
    "context_length": 64,
    "emb_dim": 64,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


def random_hf_model(tied: bool, cfg: dict = SMALL_CFG, seed: int = 0) -> GPT2LMHeadModel:
    """A transformers GPT-2 with every parameter (biases and LayerNorms too) drawn at random.

    std=1 makes logits spread out, so greedy decoding varies its tokens and has no near-ties.
    """
    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        n_positions=cfg["context_length"],
        vocab_size=cfg["vocab_size"],
        tie_word_embeddings=tied,
        bos_token_id=cfg["vocab_size"] - 1,
        eos_token_id=cfg["vocab_size"] - 1,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            torch.nn.init.normal_(param, std=1.0)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"tied"/"untied": (transformers model, path of its model.safetensors)}."""
    result = {}
    for name, tied in (("tied", True), ("untied", False)):
        hf = random_hf_model(tied, seed=1 if tied else 2)
        folder = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folder)
        result[name] = (hf, folder / "model.safetensors")
    return result


@pytest.fixture(scope="module")
def model(checkpoints):
    """Our GPTModel holding the tied checkpoint."""
    return load_gpt2_weights(GPTModel(SMALL_CFG), checkpoints["tied"][1]).eval()


def rewrite(path, tmp_path, change) -> str:
    """A copy of a checkpoint whose tensors dict went through change(dict)."""
    tensors = load_file(path)
    tensors = change(tensors) or tensors
    out = tmp_path / "changed.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, out)
    return out


def prompts_of_lengths(lengths, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB - 1, (n,), generator=g).tolist() for n in lengths]


# --- model ---


def test_configs_and_parameter_counts():
    assert set(GPT_CONFIGS) == {"gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny"}
    assert set(HF_REPOS) == set(GPT_CONFIGS) - {"tiny"}
    # Hugging Face's parameter counts of the tied GPT-2s; our untied head adds vocab x emb.
    expected = {
        "gpt2-small": 124_439_808,
        "gpt2-medium": 354_823_168,
        "gpt2-large": 774_030_080,
        "gpt2-xl": 1_557_611_200,
    }
    for name, count in expected.items():
        with torch.device("meta"):  # shapes only, no memory
            gpt = GPTModel(GPT_CONFIGS[name])
        total = sum(p.numel() for p in gpt.parameters())
        assert total - gpt.out_head.weight.numel() == count, name


def test_forward_shape_and_layer_names():
    torch.manual_seed(0)
    gpt = GPTModel(GPT_CONFIGS["tiny"])
    logits = gpt(torch.randint(0, 50257, (2, 10)))
    assert logits.shape == (2, 10, 50257)
    assert {name for name, _ in gpt.named_children()} >= {"tok_emb", "pos_emb", "trf_blocks", "final_norm", "out_head"}
    with pytest.raises(ValueError, match="context_length"):
        gpt(torch.zeros(1, 257, dtype=torch.long))


def test_left_padding_does_not_change_logits(model):
    prompt = torch.tensor(prompts_of_lengths([9]))
    alone = model(prompt)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), prompt], dim=1)
    pad_mask = torch.tensor([[False] * 5 + [True] * 9])
    with torch.no_grad():
        assert torch.allclose(model(padded, pad_mask=pad_mask)[:, 5:], alone, atol=1e-4)


def test_kv_cache_logits_equal_full_forward(model):
    ids = torch.tensor(prompts_of_lengths([20, 20]))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model, batch_size=2, max_len=20)
        pieces = [model(ids[:, :12], cache), model(ids[:, 12:15], cache)]
        pieces += [model(ids[:, i : i + 1], cache) for i in range(15, 20)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-4)


# --- pretrained weights ---


@pytest.mark.parametrize("kind", ["tied", "untied"])
@pytest.mark.parametrize("prefix", ["as saved", "stripped", "added"])
def test_logits_match_transformers(checkpoints, tmp_path, kind, prefix):
    hf, path = checkpoints[kind]
    assert ("lm_head.weight" in load_file(path)) == (kind == "untied")
    if prefix == "stripped":
        path = rewrite(path, tmp_path, lambda t: {k.removeprefix("transformer."): v for k, v in t.items()})
    elif prefix == "added":
        path = rewrite(
            path,
            tmp_path,
            lambda t: {
                (k if k.startswith(("transformer.", "lm_head")) else "transformer." + k): v for k, v in t.items()
            },
        )
    gpt = load_gpt2_weights(GPTModel(SMALL_CFG), path).eval()
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_mask_buffers_are_ignored(checkpoints, tmp_path):
    hf, path = checkpoints["tied"]

    def add_buffers(t):  # what OpenAI's original checkpoints carry
        t["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        t["h.1.attn.masked_bias"] = torch.tensor(-1e4)
        return {k.removeprefix("transformer."): v for k, v in t.items()}

    gpt = load_gpt2_weights(GPTModel(SMALL_CFG), rewrite(path, tmp_path, add_buffers)).eval()
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_build_gpt2_tiny(tmp_path):
    assert not build_gpt2("tiny").training  # untrained, and no download attempted
    hf = random_hf_model(tied=True, cfg=GPT_CONFIGS["tiny"])
    hf.save_pretrained(tmp_path)
    gpt = build_gpt2("tiny", weights_path=tmp_path)  # a folder holding model.safetensors
    ids = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(gpt(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_truncated_file_names_the_file(checkpoints, tmp_path):
    data = checkpoints["tied"][1].read_bytes()
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsUnavailableError, match="download it again") as info:
        load_gpt2_weights(GPTModel(SMALL_CFG), broken)
    assert str(broken) in str(info.value)
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        load_gpt2_weights(GPTModel(SMALL_CFG), tmp_path / "absent.safetensors")


def test_wrong_shape_names_the_key(checkpoints, tmp_path):
    def shrink(t):
        t["transformer.wpe.weight"] = t["transformer.wpe.weight"][:32]

    path = rewrite(checkpoints["tied"][1], tmp_path, shrink)
    with pytest.raises(ValueError, match=r"wpe\.weight: checkpoint has \(32, 64\), the model needs \(64, 64\)"):
        load_gpt2_weights(GPTModel(SMALL_CFG), path)


def test_missing_and_extra_keys_are_named(checkpoints, tmp_path):
    def change(t):
        del t["transformer.h.1.ln_2.bias"]
        t["transformer.h.2.ln_1.weight"] = torch.ones(64)

    path = rewrite(checkpoints["tied"][1], tmp_path, change)
    with pytest.raises(ValueError) as info:
        load_gpt2_weights(GPTModel(SMALL_CFG), path)
    message = str(info.value)
    assert "missing (1)" in message and "h.1.ln_2.bias" in message
    assert "unexpected (1)" in message and "h.2.ln_1.weight" in message


def test_untied_checkpoint_into_tied_model_is_refused(checkpoints):
    gpt = GPTModel(SMALL_CFG)
    gpt.out_head.weight = gpt.tok_emb.weight
    with pytest.raises(ValueError, match="ties out_head"):
        load_gpt2_weights(gpt, checkpoints["untied"][1])


def test_offline_download_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        download_gpt2_weights("gpt2-small", cache_dir=tmp_path)
    message = str(info.value)
    assert "openai-community/gpt2" in message and "HF_HUB_OFFLINE" in message
    assert "utils.download_gpt2_weights('gpt2-small'" in message  # pre-download command
    assert "weights_path=" in message and "build_gpt2('tiny')" in message
    with pytest.raises(ValueError, match="untrained"):
        download_gpt2_weights("tiny")


# --- generation ---


def greedy_alone(gpt, prompt, max_new_tokens, context_size, **kwargs):
    """New tokens of one prompt by generate() on it alone."""
    out = generate(gpt, torch.tensor([prompt]), max_new_tokens, context_size, **kwargs)
    return out[0, len(prompt) :].tolist()


def test_greedy_varies_tokens(model):
    # Guards the other generation tests: a model that repeats one token would prove little.
    for prompt in prompts_of_lengths([4, 11]):
        assert len(set(greedy_alone(model, prompt, 20, 64))) >= 3


def test_cached_equals_uncached(model):
    for prompt in prompts_of_lengths([1, 5, 17, 30]):
        ids = torch.tensor([prompt])
        assert torch.equal(generate(model, ids, 20, 64), generate(model, ids, 20, 64, use_cache=False))
    # Past the context window the cached path re-encodes the cropped window each step.
    ids = torch.tensor(prompts_of_lengths([12, 12]))
    assert torch.equal(generate(model, ids, 15, 16), generate(model, ids, 15, 16, use_cache=False))


def test_greedy_matches_transformers(checkpoints):
    for kind in ("tied", "untied"):
        hf, path = checkpoints[kind]
        gpt = load_gpt2_weights(GPTModel(SMALL_CFG), path).eval()
        for prompt in prompts_of_lengths([3, 14]):
            ids = torch.tensor([prompt])
            theirs = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=20,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            assert torch.equal(generate(gpt, ids, 20, 64), theirs)


def test_batched_equals_one_by_one(model):
    prompts = prompts_of_lengths([3, 25, 1, 12, 7])
    alone = [greedy_alone(model, p, 12, 64) for p in prompts]
    assert generate_batch(model, prompts, 12, 64, pad_token_id=0) == alone
    assert generate_batch(model, prompts, 12, 64, pad_token_id=0, batch_size=2) == alone
    # cropped to a 16-token window: the 25-token prompt is cut, and all rows slide past it
    cropped = [greedy_alone(model, p, 12, 16) for p in prompts]
    assert generate_batch(model, prompts, 12, 16, pad_token_id=0) == cropped


def test_batched_rows_stop_at_their_own_eos(model):
    prompts = prompts_of_lengths([3, 25, 1, 12, 7])
    full = [greedy_alone(model, p, 12, 64) for p in prompts]

    def stops(token):  # where each row would stop with eos_id=token
        return [row.index(token) if token in row else len(row) for row in full]

    eos = max({t for row in full for t in row}, key=lambda t: (len(set(stops(t))), -sum(stops(t))))
    assert len(set(stops(eos))) >= 3 and min(stops(eos)) < 12  # rows stop at different steps
    expected = [row[:stop] for row, stop in zip(full, stops(eos))]
    assert [greedy_alone(model, p, 12, 64, eos_id=eos) for p in prompts] == expected
    assert generate_batch(model, prompts, 12, 64, eos_id=eos, pad_token_id=0) == expected


def test_generate_eos_fills_finished_rows(model):
    prompts = prompts_of_lengths([6, 6])
    full = [greedy_alone(model, p, 10, 64) for p in prompts]
    eos = full[0][2]
    n_steps = max(row.index(eos) if eos in row else 10 for row in full)
    for use_cache in (True, False):
        out = generate(model, torch.tensor(prompts), 10, 64, eos_id=eos, use_cache=use_cache)[:, 6:].tolist()
        assert len(out[0]) == n_steps
        for row, new in zip(full, out):
            stop = row.index(eos) if eos in row else 10
            assert new == (row[:stop] + [eos] * n_steps)[:n_steps]


def test_sampling_is_reproducible(model):
    ids = torch.tensor(prompts_of_lengths([8]))
    first = generate(model, ids, 20, 64, temperature=1.5, top_k=50, seed=123)
    assert torch.equal(first, generate(model, ids, 20, 64, temperature=1.5, top_k=50, seed=123))
    assert torch.equal(first, generate(model, ids, 20, 64, temperature=1.5, top_k=50, seed=123, use_cache=False))
    assert not torch.equal(first, generate(model, ids, 20, 64, temperature=1.5, top_k=50, seed=124))
    # top_k=1 leaves only the argmax
    assert torch.equal(generate(model, ids, 20, 64, temperature=1.0, top_k=1, seed=5), generate(model, ids, 20, 64))


def test_batched_sampling_equals_one_by_one(model):
    prompts = prompts_of_lengths([4, 19, 9])
    settings = dict(temperature=1.0, top_k=20, seed=7)
    alone = [greedy_alone(model, p, 10, 64, **settings) for p in prompts]
    assert generate_batch(model, prompts, 10, 64, pad_token_id=0, **settings) == alone


def test_text_helpers(tokenizer):
    ids = text_to_token_ids("Hello <|endoftext|>", tokenizer)
    assert ids.shape[0] == 1 and 50256 not in ids.tolist()[0]  # a literal <|endoftext|> is plain text
    assert token_ids_to_text(ids, tokenizer) == "Hello <|endoftext|>"
    assert token_ids_to_text(ids[0].tolist(), tokenizer) == "Hello <|endoftext|>"


def test_standin_is_labelled_untrained_and_the_failure_is_remembered(monkeypatch, capsys):
    import utils

    calls = []

    def unavailable(model_name, *args, **kwargs):
        calls.append(model_name)
        raise utils.WeightsUnavailableError("no network (test)")

    monkeypatch.delenv("LLM_SMOKE", raising=False)
    monkeypatch.setattr(utils, "download_gpt2_weights", unavailable)
    monkeypatch.setattr(utils, "_WEIGHTS_FAILED", set())
    model, label = utils.load_gpt2_or_standin("gpt2-small")
    assert model.cfg == GPT_CONFIGS["tiny"] and "UNTRAINED" in label
    assert "no network (test)" in capsys.readouterr().out
    _, label_again = utils.load_gpt2_or_standin("gpt2-small")
    assert calls == ["gpt2-small"] and "UNTRAINED" in label_again  # no second wait for the network

    monkeypatch.setenv("LLM_SMOKE", "1")
    monkeypatch.setattr(utils, "_WEIGHTS_FAILED", set())
    _, smoke_label = utils.load_gpt2_or_standin("gpt2-medium")
    assert calls == ["gpt2-small"] and "UNTRAINED" in smoke_label  # smoke mode never downloads
