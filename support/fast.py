"""Faster bf16 generation, and nothing a learner need read: the bf16 copy of a model is made once and
kept until the weights change, its Linear layers run on weights packed once for the CPU's matmul
kernels, and its output head runs in bf16 without changing which token greedy decoding picks.

utils._model_in_dtype calls cached_copy. The packed layers compute nn.Linear's exact sums; the one
difference from the plain bf16 copy is GELU, applied to the float32 sum before it is rounded to bf16
rather than after (tests/test_fast.py checks both). benchmarks/bench_generation.py measures the speed
against transformers and prints how often the output head had to fall back to float32.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

# --- one copy per model, reused until its weights change ---

_steps_taken = 0  # every optimizer.step() anywhere bumps it: the fused AdamW kernel leaves _version as it was


def _count_step(optimizer, args, kwargs) -> None:
    global _steps_taken
    _steps_taken += 1


register_optimizer_step_post_hook(_count_step)
_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_key(model: nn.Module) -> tuple:
    # data_ptr: a parameter replaced; _version: changed in place (load_state_dict, copy_, foreach
    # optimizers); _steps_taken: any optimizer step.
    return (_steps_taken, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters()))


def cached_copy(model: nn.Module, dtype: torch.dtype, make: Callable[[nn.Module, torch.dtype], nn.Module]) -> nn.Module:
    """make(model, dtype), sped up for inference (packed_for_inference), reused while `model`'s weights are
    unchanged. At most one copy per model is kept; it goes when the model does."""
    key = (dtype, _weights_key(model))
    hit = _copies.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    _copies.pop(model, None)  # free the stale copy before making the next one
    low = packed_for_inference(make(model, dtype))
    _copies[model] = (key, low)
    return low


def forget_copies() -> None:
    """Drop every cached copy (frees their memory)."""
    _copies.clear()


# --- Linear layers on weights packed once (oneDNN) ---

_packing_works: bool | None = None
# Linear then GELU in one kernel: GELU sees the float32 sum, so results differ from the plain bf16
# copy by bf16 rounding (False: bit-identical to it).
FUSE_GELU = True


def packing_works() -> bool:
    """Whether this torch has oneDNN's packed bf16 linear and it gives nn.Linear's exact result here."""
    global _packing_works
    if _packing_works is None:
        try:
            gen = torch.Generator().manual_seed(0)
            w, b, x = (torch.randn(*shape, generator=gen).to(torch.bfloat16) for shape in ((48, 32), (48,), (5, 32)))
            packed = torch.ops.mkldnn._reorder_linear_weight(w)
            _packing_works = torch.equal(
                torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""), F.linear(x, w, b)
            )
        except (AttributeError, RuntimeError, NotImplementedError):
            _packing_works = False
    return _packing_works


class PackedLinear(nn.Module):
    """An inference-only bf16 nn.Linear whose weight is reordered once into the layout oneDNN's kernel
    reads: F.linear reorders it on every call, which costs about as much as the product itself when a
    few rows are multiplied (one new token per prompt)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: str | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        self.register_buffer("bias", None if bias is None else bias.detach())
        # A GELU that follows is applied inside the kernel, before the bf16 rounding (not after it).
        self.activation, self.approximate = ("gelu", gelu) if gelu is not None else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed_weight, self.bias, self.activation, [], self.approximate
        )


class RescoredHead(nn.Module):
    """The output head of a bf16 copy: float32 logits whose argmax is the float32 head's.

    bf16 logits are too coarse to pick from: at GPT-2's logit sizes (30 to 100) bf16 steps by 0.25 or
    0.5, so near-equal top logits would tie and greedy decoding would pick by token index. A float32
    head reads the whole 50,257 x d float32 matrix for every token, the slowest step of bf16 decoding.

    Here the weight is split into its bf16 rounding and the bf16 rounding of what is left: two fast
    packed products whose sum misses the float32 logit by at most 2^-8 of its size (the first product's
    rounding) plus about 2^-16 of |x||w| (what the split leaves out; the bound allows 2^-13, for the
    float32 sums). The `candidates` best are recomputed in float32. When the best recomputed logit beats
    the next-best approximation by more than twice that error, the float32 argmax is among them (the
    other logits stay approximate); a row where it does not (too close to call) gets the whole float32
    head.
    """

    def __init__(self, weight: torch.Tensor, candidates: int = 64):
        super().__init__()
        weight = weight.detach()
        high = weight.to(torch.bfloat16)
        self.register_buffer("weight", weight)  # float32 (vocab, d): the copy's own head weight, not another
        self.high = PackedLinear(high)
        self.low = PackedLinear((weight - high.float()).to(torch.bfloat16))
        self.register_buffer("largest_row_norm", weight.norm(dim=1).max())
        self.candidates = min(candidates, weight.size(0))
        self.rows_rescored = self.rows_in_float32 = 0  # how often each path ran (bench_generation prints it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.size(-1)).to(torch.bfloat16)
        x32 = x.float()
        logits = self.high(x).float().add_(self.low(x).float())
        best, token = torch.topk(logits, self.candidates, dim=1)
        exact = torch.einsum("rd,rkd->rk", x32, self.weight[token])
        next_best = best[:, -1]
        error = next_best.abs() * 2**-7 + x32.norm(dim=1) * self.largest_row_norm * 2**-13 + 1e-5
        logits.scatter_(1, token, exact)
        unsure = exact.amax(dim=1) <= next_best + 2 * error
        if unsure.any():
            logits[unsure] = F.linear(x32[unsure], self.weight)
        self.rows_rescored += int((~unsure).sum())
        self.rows_in_float32 += int(unsure.sum())
        return logits.view(*shape, -1)


def packed_for_inference(model: nn.Module) -> nn.Module:
    """`model` (a no-grad bf16 copy on the CPU) with its bf16 nn.Linear layers packed and a float32 output
    head replaced by RescoredHead; anything else, or where packing does not work, is returned as it is."""
    weight = getattr(getattr(model, "tok_emb", None), "weight", None)
    if weight is None or weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not packing_works():
        return model
    head = getattr(model, "out_head", None)
    if type(head) is nn.Linear and head.weight.dtype == torch.float32 and head.bias is None:
        model.out_head = RescoredHead(head.weight)  # the cast-to-float32 hook goes with the old module
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16:
                after = children[i + 1][1] if i + 1 < len(children) else None
                if FUSE_GELU and isinstance(parent, nn.Sequential) and type(after) is nn.GELU:
                    setattr(parent, name, PackedLinear(child.weight, child.bias, gelu=after.approximate))
                    setattr(parent, children[i + 1][0], nn.Identity())
                else:
                    setattr(parent, name, PackedLinear(child.weight, child.bias))
    return model


__all__ = ["PackedLinear", "RescoredHead", "cached_copy", "forget_copies", "packed_for_inference", "packing_works"]
