"""support/fast.py: the bf16 generation copy is made once, its packed layers compute what nn.Linear does,
and its output head picks the float32 head's token. Correctness only; benchmarks/ measure speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import utils
from support import fast
from test_bf16 import PROMPTS, tiny_model

needs_packing = pytest.mark.skipif(
    not fast.packing_works(), reason="this torch build has no oneDNN packed bf16 linear; copies stay plain"
)


def test_bf16_generation_copy_is_reused_until_the_weights_change():
    model = tiny_model()
    first = utils._model_in_dtype(model, torch.bfloat16)
    assert utils._model_in_dtype(model, torch.bfloat16) is first  # no new copy per call
    optimizer = utils.create_optimizer(model, lr=1e-2)  # fused AdamW: does not bump parameter versions
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    second = utils._model_in_dtype(model, torch.bfloat16)
    assert second is not first
    assert torch.equal(second.tok_emb.weight, model.tok_emb.weight.detach().to(torch.bfloat16))
    with torch.no_grad():
        model.trf_blocks[0].att.qkv.weight.add_(1.0)  # an edit in place
    third = utils._model_in_dtype(model, torch.bfloat16)
    assert third is not second
    model.load_state_dict(tiny_model(seed=3).state_dict())
    assert utils._model_in_dtype(model, torch.bfloat16) is not third
    assert utils._model_in_dtype(model, None) is model  # float32 generation uses the model itself


def test_cached_copy_generates_what_a_fresh_copy_does():
    model = tiny_model()
    prompt = torch.tensor([PROMPTS[1]])
    fast.forget_copies()
    fresh = utils.generate(model, prompt, 12, 64, dtype=torch.bfloat16)
    cached = utils.generate(model, prompt, 12, 64, dtype=torch.bfloat16)
    assert torch.equal(fresh, cached)


@needs_packing
def test_packed_copy_computes_what_the_plain_copy_does(monkeypatch):
    model = tiny_model()
    plain = utils._copy_in_dtype(model, torch.bfloat16)
    idx = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        monkeypatch.setattr(fast, "FUSE_GELU", False)
        unfused = fast.packed_for_inference(utils._copy_in_dtype(model, torch.bfloat16))
        assert isinstance(unfused.trf_blocks[0].ff.layers[0], fast.PackedLinear)
        # the same kernels' sums, only packed ahead: bit-identical hidden states
        hidden = [m.final_norm(m.trf_blocks[1](m.trf_blocks[0](m.tok_emb(idx)))) for m in (plain, unfused)]
        assert torch.equal(*hidden)
        monkeypatch.setattr(fast, "FUSE_GELU", True)
        fused = fast.packed_for_inference(utils._copy_in_dtype(model, torch.bfloat16))
        assert isinstance(fused.trf_blocks[0].ff.layers[1], torch.nn.Identity)  # GELU runs inside the first Linear
        a, b = fused(idx), plain(idx)
    assert a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max() <= 0.02 * b.abs().max()  # GELU before rounding rather than after: bf16 noise


def near_tie_head(vocab: int = 5000, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 head weight and bf16 inputs whose two best logits are closer than bf16 can tell apart."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, d, generator=g)
    x = torch.randn(8, d, generator=g).to(torch.bfloat16)
    for row in range(x.size(0)):
        logits = F.linear(x[row].float(), weight)
        best, second = logits.topk(2).indices.tolist()
        # nudge the runner-up to within 1e-4 of the best (bf16 steps by 0.03 to 0.25 at these sizes)
        direction = x[row].float() / x[row].float().norm() ** 2
        gap = logits[best] - logits[second] - (1e-4 if row % 2 else -1e-4)
        weight[second] += gap * direction
    return weight, x


@needs_packing
def test_rescored_head_picks_the_float32_argmax_where_bf16_would_tie():
    weight, x = near_tie_head()
    head = fast.RescoredHead(weight)
    exact = F.linear(x.float(), weight)
    logits = head(x)
    assert logits.dtype == torch.float32
    assert torch.equal(logits.argmax(dim=1), exact.argmax(dim=1))
    rounded = exact.to(torch.bfloat16)  # what a bf16 head returns: the top two are the same number
    top2 = rounded.float().topk(2, dim=1).values
    assert (top2[:, 0] == top2[:, 1]).sum() >= 4
    assert head.rows_rescored == x.size(0) and head.rows_in_float32 == 0
    best = exact.topk(8, dim=1).indices
    assert torch.allclose(logits.gather(1, best), exact.gather(1, best), rtol=1e-5, atol=1e-5)


@needs_packing
def test_rescored_head_falls_back_to_float32_when_it_cannot_tell():
    weight, x = near_tie_head(seed=1)
    weight[100:200] = weight[0]  # a hundred tokens with the very same logit: more than the candidates
    x[0] = 0.0  # all logits 0: no short list
    head = fast.RescoredHead(weight, candidates=16)
    logits = head(x)
    exact = F.linear(x.float(), weight)
    assert head.rows_in_float32 >= 1
    assert torch.equal(logits.argmax(dim=1), exact.argmax(dim=1))
    assert torch.equal(logits[0], exact[0])


@needs_packing
def test_bf16_copy_greedy_matches_a_float32_head_on_its_own_hidden_states():
    model = tiny_model()
    low = utils._model_in_dtype(model, torch.bfloat16)
    assert isinstance(low.out_head, fast.RescoredHead)
    idx = torch.tensor([PROMPTS[0], PROMPTS[3][:4]])
    with torch.no_grad():
        hidden = low.final_norm(torch.nn.Sequential(*low.trf_blocks)(low.tok_emb(idx) + low.pos_emb.weight[:4]))
        exact = F.linear(hidden.float(), model.out_head.weight)
        assert torch.equal(low.out_head(hidden).argmax(-1), exact.argmax(-1))


def test_without_packing_the_copy_stays_plain(monkeypatch):
    monkeypatch.setattr(fast, "_packing_works", False)
    fast.forget_copies()
    low = utils._model_in_dtype(tiny_model(), torch.bfloat16)
    assert type(low.trf_blocks[0].att.qkv) is torch.nn.Linear
    assert low.out_head.weight.dtype == torch.float32
    fast.forget_copies()


@needs_packing
def test_packed_copy_of_a_lora_model():
    model = utils.apply_lora(tiny_model(), rank=4)
    low = utils._model_in_dtype(model, torch.bfloat16)
    assert isinstance(low.trf_blocks[0].att.qkv.base, fast.PackedLinear)
    ref = utils.generate(utils._copy_in_dtype(model, torch.bfloat16), torch.tensor([PROMPTS[2]]), 5, 64)
    assert utils.generate(low, torch.tensor([PROMPTS[2]]), 5, 64).shape == ref.shape
