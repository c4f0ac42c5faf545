"""Input checks of the course functions: a clear one-line error naming the entry and field (or the argument)
instead of a crash deep inside torch or a silently wrong result."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from support.jsonio import DatasetError, check_json_value


def check_entry(entry, where: str, fields: Sequence[str]) -> None:
    """An object whose `fields` are strings and whose text is clean; else a DatasetError naming place and field."""
    if not isinstance(entry, dict):
        raise DatasetError(
            f"{where}: expected an object with {', '.join(map(repr, fields))}, got {type(entry).__name__}"
        )
    check_json_value(entry, where)
    _check_fields(entry, where, fields)


def _check_fields(entry: dict, where: str, fields: Sequence[str]) -> None:
    for name in fields:
        if name not in entry:
            raise DatasetError(f"{where}: missing field '{name}'")
        if not isinstance(entry[name], str):
            raise DatasetError(f"{where}: field '{name}' must be a string, got {type(entry[name]).__name__}")


def check_entries(data, source: str, required: Sequence[str]) -> list[dict]:
    """`data` itself if it is a list of entries whose `required` fields are non-empty strings and whose
    optional `input` is a string or null; else a DatasetError naming the entry and the field."""
    if not isinstance(data, list):
        raise DatasetError(f"{source}: expected a JSON list of entries, got {type(data).__name__}")
    for index, entry in enumerate(data):
        where = f"{source}: entry {index}"
        check_entry(entry, where, required)
        if entry.get("input") is not None:
            _check_fields(entry, where, ("input",))
        for name in required:
            if not entry[name].strip():
                raise DatasetError(f"{where}: field '{name}' is empty")
    return data


def check_responses(entries, source: str, fields: Sequence[str]) -> list[dict]:
    """A non-empty list of objects whose `fields` are strings; else a DatasetError naming entry and field."""
    if not isinstance(entries, list):
        raise DatasetError(f"{source}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        raise DatasetError(f"{source}: no entries to evaluate")
    for index, entry in enumerate(entries):
        check_entry(entry, f"{source}: entry {index}", fields)
    return entries


def integer_ids(token_ids: Sequence, where: str) -> list[int]:
    """`token_ids` as Python ints; a ValueError naming `where` for a float, a string or a negative ID."""
    ids = []
    for token in token_ids:
        try:
            ids.append(operator.index(token))  # ints, NumPy ints, integer tensors; not 2.0, not "7"
        except TypeError:
            raise ValueError(f"{where} holds {token!r} ({type(token).__name__}): token IDs must be integers") from None
    if ids and min(ids) < 0:
        raise ValueError(f"{where} holds the negative token ID {min(ids)}")
    return ids


def check_collate_args(batch: Sequence, pad_token_id: int, allowed_max_length: int | None) -> None:
    """A ValueError naming the argument of custom_collate_fn that cannot work."""
    if len(batch) == 0:
        raise ValueError("batch is empty: nothing to collate")
    if allowed_max_length is not None and (not isinstance(allowed_max_length, int) or allowed_max_length < 1):
        raise ValueError(f"allowed_max_length must be None or an integer >= 1, got {allowed_max_length!r}")
    if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be an integer token ID >= 0, got {pad_token_id!r}")


def check_token_ids(ids: torch.Tensor, name: str, vocab_size: int) -> None:
    """Integer token IDs the model can embed; else a ValueError naming `name`."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token IDs, got dtype {ids.dtype}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0].item()
        raise ValueError(f"{name} holds the token ID {bad}, outside this model's vocabulary 0..{vocab_size - 1}")


def check_idx(idx: torch.Tensor, vocab_size: int) -> None:
    """generate()'s `idx`: a (batch, tokens) tensor of token IDs in the vocabulary, at least one of each."""
    if idx.dim() != 2:
        raise ValueError(
            f"idx must be (batch, tokens), got shape {tuple(idx.shape)}; text_to_token_ids() adds the batch dimension"
        )
    if idx.size(0) == 0 or idx.size(1) == 0:
        raise ValueError(f"idx must hold at least one prompt of at least one token, got shape {tuple(idx.shape)}")
    check_token_ids(idx, "idx", vocab_size)


def vocabulary_error(inputs: torch.Tensor, targets: torch.Tensor, exc: IndexError) -> ValueError:
    """The error for a batch whose token IDs the model cannot embed (torch's own names no token)."""
    return ValueError(
        f"a token ID of this batch is outside the model's vocabulary (largest input "
        f"{int(inputs.max())}, largest target {int(targets.max())}): a pad_token_id or a "
        f"tokenizer made for another model? ({exc})"
    )


def check_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int, vocab_size: int) -> None:
    """At least one prompt, none empty, every token ID (and the padding) in the vocabulary."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        check_token_ids(torch.as_tensor(prompt), f"prompts[{i}]", vocab_size)
    check_token_ids(torch.tensor(pad_token_id), "pad_token_id", vocab_size)


def check_generation_args(
    max_new_tokens: int, context_size: int, temperature: float, top_k: int | None, batch_size: int | None = None
) -> None:
    """A ValueError naming the argument, instead of an empty result or a crash deep inside torch."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(context_size, int) or context_size < 1:
        raise ValueError(f"context_size must be an integer >= 1, got {context_size!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (all at once) or an integer >= 1, got {batch_size!r}")
