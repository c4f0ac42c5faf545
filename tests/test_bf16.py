"""bf16 paths: generation with a bfloat16 copy of the model, and bf16 autocast training, agree with float32.

Correctness only (agreement and tolerances); speed is measured by benchmarks/, not here.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import support.precision
import utils
from utils import GPT_CONFIGS, GPTModel, generate, generate_batch

TINY = GPT_CONFIGS["tiny"]


def tiny_model(seed: int = 0) -> GPTModel:
    """The untrained tiny model (random weights; speed and agreement checks only)."""
    torch.manual_seed(seed)
    return GPTModel(TINY).eval()


PROMPTS = [[15496, 11, 995, 0], [464, 2068, 7586, 21831, 18045, 625, 262], [40, 1101], [7454, 2402, 257, 640, 612]]


def test_bf16_generation_leaves_the_model_in_float32():
    model = tiny_model()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    generate_batch(model, PROMPTS, 5, 64, dtype=torch.bfloat16)
    generate(model, torch.tensor([PROMPTS[0]]), 5, 64, dtype=torch.bfloat16)
    for name, p in model.state_dict().items():
        assert p.dtype == torch.float32, name
        assert torch.equal(p, before[name]), name


def test_bf16_logits_close_to_float32():
    model = tiny_model()
    bf16 = utils._model_in_dtype(model, torch.bfloat16)
    assert bf16 is not model and bf16.tok_emb.weight.dtype == torch.bfloat16
    idx = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        ref, low = model(idx), bf16(idx).float()
    # bf16 keeps 8 bits of mantissa: relative errors of a few 1e-3 per op, growing through the layers.
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max()


def test_bf16_greedy_token_agrees_with_float32_where_float32_is_not_nearly_tied():
    """Next-token argmax over 200 random contexts: bf16 picks fp32's token wherever fp32's top-2 margin is clear.

    A random model has flat logits, so some of its top-2 margins are smaller than bf16's rounding
    and may flip; those are excluded, and the test also checks they are a minority.
    """
    model = tiny_model()
    low = utils._model_in_dtype(model, torch.bfloat16)
    torch.manual_seed(1)
    idx = torch.randint(0, TINY["vocab_size"], (200, 16))
    with torch.no_grad():
        ref, bf16 = model(idx, last_only=True)[:, -1], low(idx, last_only=True)[:, -1]
    assert bf16.dtype == torch.float32  # the head returns float32 logits: no ties made by rounding them
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02 * ref.std(dim=-1)
    assert clear.float().mean() >= 0.5, f"only {clear.float().mean():.0%} of the margins are clear"
    same = ref.argmax(-1) == bf16.argmax(-1)
    assert same[clear].all(), f"{int((~same[clear]).sum())} of {int(clear.sum())} clear argmaxes differ"
    assert same.float().mean() >= 0.9


def test_bf16_copy_keeps_the_head_in_float32():
    model = tiny_model()
    low = utils._model_in_dtype(model, torch.bfloat16)
    assert utils._model_in_dtype(model, None) is model and utils._model_in_dtype(model, torch.float32) is model
    with torch.no_grad():
        logits = low(torch.tensor([PROMPTS[1]]), last_only=True)[0, -1]
        rounded = logits.to(torch.bfloat16).float()  # what a bf16 head would return
    # A float32 head gives (nearly) every token its own logit; bf16's 8-bit mantissa would collapse
    # the 50,257 logits onto a few thousand values, and greedy decoding would break the ties by index.
    assert logits.dtype == torch.float32
    assert logits.unique().numel() > 0.9 * TINY["vocab_size"] > 5 * rounded.unique().numel()
    ref = generate_batch(model, PROMPTS, 6, 64)
    assert [len(t) for t in generate_batch(model, PROMPTS, 6, 64, dtype=torch.bfloat16)] == [len(t) for t in ref]
    cached = generate(model, torch.tensor([PROMPTS[3]]), 6, 64, dtype=torch.bfloat16)
    uncached = generate(model, torch.tensor([PROMPTS[3]]), 6, 64, dtype=torch.bfloat16, use_cache=False)
    assert cached.shape == uncached.shape == (1, len(PROMPTS[3]) + 6)


def test_bf16_generation_of_a_lora_model():
    base = tiny_model()
    model = utils.apply_lora(copy.deepcopy(base), rank=4)
    torch.manual_seed(3)
    for module in model.modules():  # B starts at zero; a trained adapter changes the output
        if isinstance(module, utils.LoRALinear):
            module.lora_B.data.normal_(std=0.5)
    idx = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        ref, without_lora = model(idx), base(idx)
        low = utils._model_in_dtype(model, torch.bfloat16)(idx).float()
    # the bf16 copy keeps the adapters: close to the LoRA model's float32 logits, not to the base model's
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max() < (without_lora - ref).abs().max()
    tokens = generate_batch(model, PROMPTS, 4, 64, dtype=torch.bfloat16)
    assert [len(t) for t in tokens] == [4] * len(PROMPTS)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_generation_dtype_must_be_floating_point():
    with pytest.raises(ValueError, match="dtype"):
        generate_batch(tiny_model(), PROMPTS, 2, 64, dtype=torch.int64)


def test_generate_responses_in_bf16(tokenizer, monkeypatch):
    entries = [{"instruction": "Name a colour.", "input": "", "output": "Blue."}]
    model = tiny_model()
    copies = []
    real_copy = utils._model_in_dtype
    monkeypatch.setattr(utils, "_model_in_dtype", lambda m, dtype: copies.append(dtype) or real_copy(m, dtype))
    out = utils.generate_responses(model, entries, tokenizer, max_new_tokens=3, progress=False, dtype=torch.bfloat16)
    assert torch.bfloat16 in copies  # the answers come from a bfloat16 copy of the model
    prompt = utils.encode_text(utils.format_prompt(entries[0]), tokenizer)
    expected = generate_batch(
        model, [prompt], 3, TINY["context_length"], eos_id=utils.PAD_TOKEN_ID, dtype=torch.bfloat16
    )[0]
    assert out[0]["model_response"] == tokenizer.decode(expected).strip() and out[0]["output"] == "Blue."


def test_bf16_autocast_training_loss_tracks_float32(tokenizer, dataset):
    """Three steps each way on the same batches: the losses agree within 2% (tolerance of the bf16 path)."""
    train, val, test = utils.split_dataset(dataset[:60])
    loader, _, _ = utils.create_dataloaders(train, val, test, tokenizer, batch_size=4, allowed_max_length=64)
    batches = [b for _, b in zip(range(3), loader)]
    torch.manual_seed(0)
    base = GPTModel(TINY)
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = copy.deepcopy(base).train()
        optimizer = utils.create_optimizer(model, lr=1e-3)
        losses[name] = []
        for inputs, targets in batches:
            loss = utils.calc_loss_batch(inputs, targets, model, "cpu", autocast_dtype=dtype)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
        assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps weights float32
        assert all(
            s.dtype == torch.float32
            for state in optimizer.state.values()
            for s in state.values()
            if torch.is_tensor(s) and s.is_floating_point()
        )  # and AdamW's moments
    assert losses["bf16"] != losses["fp32"]  # autocast did run in bf16 (identical losses: it was ignored)
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert abs(a - b) <= 0.02 * a, losses
    assert losses["fp32"][-1] < losses["fp32"][0]  # the steps did train


def test_finetune_has_the_gen_bf16_flag():
    import finetune

    assert finetune.parse_args(["--gen-bf16"]).gen_bf16 is True
    assert finetune.parse_args([]).gen_bf16 is False


@pytest.mark.parametrize("attention_in_float32", [True, False])
def test_bf16_training_step_gradients_track_float32(monkeypatch, attention_in_float32):
    """A bf16 autocast backward pass, attention in float32 (utils' default on CPU) or in bf16, gives float32's gradient
    direction."""
    monkeypatch.setattr(support.precision, "CPU_BF16_ATTENTION_IN_FLOAT32", attention_in_float32)
    model = tiny_model().train()
    torch.manual_seed(2)
    inputs = torch.randint(0, TINY["vocab_size"], (2, 24))
    targets = inputs.roll(-1, dims=1)
    grads = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model.zero_grad(set_to_none=True)
        utils.calc_loss_batch(inputs, targets, model, "cpu", autocast_dtype=dtype).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    cosine = F.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.99, f"cosine similarity {cosine:.4f}"
