"""The checkpoint format (safetensors), its validation, and resuming a run from it."""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import torch
import torch.nn as nn

from support.files import atomic_destination

# Checkpoints: safetensors only (plain tensors and a JSON header, nothing is unpickled on load).
# One file holds everything, so a single os.replace makes a new checkpoint appear atomically:
#   - model weights under their state_dict names; a tied weight (out_head sharing tok_emb's
#     tensor) is stored once and named in the metadata, because safetensors refuses shared tensors;
#   - optimizer tensors as "optimizer.<param index>.<name>", its settings as JSON metadata;
#   - torch's RNG state as "rng.torch", and TrainState (counters, history, settings) as JSON metadata;
#   - a CRC-32 of every tensor AND of every metadata entry ("metadata:<key>" in the checksums), so
#     a file damaged on disk, or edited by hand (a learning rate, a step counter), is refused rather
#     than trained on. A file of this format without checksums is refused too: only a plain weights
#     file from elsewhere (no format mark, no optimizer, no training state) may come without them.
#     CRC-32 catches damage and careless edits, not a forger who recomputes it.
# A checkpoint saved without optimizer and state is a plain weights file.
# Loading checks everything (names, shapes, dtypes, finite values, checksums) before it touches
# the model, the optimizer or the RNG: a bad file changes nothing and names the culprit.
CHECKPOINT_FORMAT = "gpt-instruct-checkpoint/1"
_OPTIMIZER_PREFIX, _RNG_PREFIX = "optimizer.", "rng."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, or from another model or run. The message names the file."""


def _model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict with each shared tensor once, and {alias: stored name} for the others."""
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
        )
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, aliases


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _checksum(tensor: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes (damage on disk can leave values that look plausible)."""
    flat = tensor.detach().contiguous().view(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def _is_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in `tensor`. A NaN or infinity anywhere makes the sum NaN or infinite, so a finite
    sum settles it at once (isfinite over every element is several times slower); only an infinite or NaN
    sum, possibly an overflow of large finite values, needs the element-wise check."""
    if not tensor.is_floating_point():
        return True
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # safetensors writes the file itself: no second copy of a checkpoint (gigabytes) in memory.
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_destination(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # e.g. "I/O error: No space left on device"
            raise OSError(f"{path} could not be written ({exc}); its previous content is kept") from None


def save_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, state=None
) -> Path:
    """Write model weights (and optionally optimizer state and the training state) to one safetensors file, atomically.

    Refuses (CheckpointError) to write NaN or infinite values: the previous file stays as it was.
    """
    path = Path(path)
    tensors, aliases = _model_tensors(model)
    metadata = {"format": CHECKPOINT_FORMAT, "tied": json.dumps(aliases)}
    if hasattr(model, "cfg"):
        metadata["config"] = json.dumps(model.cfg)
    if optimizer is not None:
        saved = optimizer.state_dict()
        scalars = {}
        for index, param_state in saved["state"].items():
            for name, value in param_state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{_OPTIMIZER_PREFIX}{index}.{name}"] = value.detach().to("cpu").contiguous()
                else:
                    scalars[f"{index}.{name}"] = value
        metadata["optimizer"] = json.dumps(
            {"param_groups": saved["param_groups"], "scalars": scalars}, default=_json_default
        )
    if state is not None:
        metadata["train_state"] = json.dumps(dataclasses.asdict(state))
        tensors[f"{_RNG_PREFIX}torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, rng in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"{_RNG_PREFIX}cuda.{i}"] = rng
    for name, tensor in tensors.items():
        if not _is_finite(tensor):
            raise CheckpointError(
                f"{path} not written: {name} holds NaN or infinite values (did the training "
                "diverge?); the file keeps its previous content"
            )
    metadata["checksums"] = json.dumps(checksums_of(tensors, metadata))
    _atomic_save_safetensors(tensors, path, metadata)
    return path


_METADATA_CHECKSUM = "metadata:"  # a checksums key for a metadata entry; no tensor name holds ":"


def checksums_of(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, int]:
    """The "checksums" entry for a checkpoint: a CRC-32 per tensor and per metadata entry."""
    sums = {name: _checksum(tensor) for name, tensor in tensors.items()}
    sums.update(
        {
            f"{_METADATA_CHECKSUM}{key}": zlib.crc32(value.encode("utf-8"))
            for key, value in metadata.items()
            if key != "checksums"
        }
    )
    return sums


def _metadata_json(metadata: dict[str, str], key: str, path: Path, kind: type = dict):
    """One JSON entry of a checkpoint's metadata, checked to be there and of the right kind."""
    if key not in metadata:
        raise CheckpointError(f"{path}: its metadata has no {key!r} entry (not written by save_checkpoint, or damaged)")
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: its metadata entry {key!r} is damaged (not a JSON {kind.__name__})")
    return value


def _read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a save_checkpoint file, checked against the file's checksums."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors, metadata = {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if "checksums" not in metadata:  # only a plain weights file from elsewhere may come without checksums
        ours = {"format", "train_state", "optimizer"} & set(metadata) or any(
            name.startswith((_OPTIMIZER_PREFIX, _RNG_PREFIX)) for name in tensors
        )
        if ours:
            raise CheckpointError(
                f"{path}: its metadata has no checksums, which every checkpoint this code writes "
                "carries: the file is damaged or edited; refused"
            )
        return tensors, metadata
    checksums = _metadata_json(metadata, "checksums", path)
    for name in sorted(name for name in set(checksums) | set(tensors) if not name.startswith(_METADATA_CHECKSUM)):
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} is missing: the file is damaged")
        if checksums.get(name) != _checksum(tensors[name]):
            raise CheckpointError(f"{path}: tensor {name} does not match its checksum: the file is damaged")
    entries = {key for key in metadata if key != "checksums"}
    entries |= {name[len(_METADATA_CHECKSUM) :] for name in checksums if name.startswith(_METADATA_CHECKSUM)}
    for key in sorted(entries):
        if key not in metadata:
            raise CheckpointError(f"{path}: its metadata entry {key!r} is missing: the file is damaged")
        expected = checksums.get(f"{_METADATA_CHECKSUM}{key}")
        if expected is None:
            raise CheckpointError(
                f"{path}: its metadata entry {key!r} has no checksum (edited, damaged, or written "
                "by an older version of this code): refused"
            )
        if expected != zlib.crc32(metadata[key].encode("utf-8")):
            raise CheckpointError(
                f"{path}: its metadata entry {key!r} does not match its checksum (edited by hand or damaged): refused"
            )
    return tensors, metadata


def _checked_weights(
    model: nn.Module, tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path
) -> dict[str, torch.Tensor]:
    """The model's state_dict from a checkpoint, every tensor checked: present, shape, dtype, finite."""
    weights = {k: v for k, v in tensors.items() if not k.startswith((_OPTIMIZER_PREFIX, _RNG_PREFIX))}
    tied = _metadata_json(metadata, "tied", path) if "tied" in metadata else {}
    for alias, name in tied.items():
        if name not in weights:
            raise CheckpointError(f"{path}: {alias} is tied to {name}, which the file does not hold")
        weights[alias] = weights[name]
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        hint = ""
        if any("lora_" in k for k in unexpected):
            hint = " It holds LoRA weights: call apply_lora(model, rank, alpha) before loading."
        elif any("lora_" in k for k in missing):
            hint = " It holds no LoRA weights: load it before apply_lora, or merge_lora before saving."
        raise CheckpointError(
            f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}." + hint
        )
    for name, target in expected.items():
        tensor = weights[name]
        if tensor.shape != target.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model needs {tuple(target.shape)}"
            )
        if tensor.dtype != target.dtype:
            raise CheckpointError(f"{path}: {name} is {tensor.dtype}, the model needs {target.dtype}")
        if not _is_finite(tensor):
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values")
    for alias, name in _model_tensors(model)[1].items():
        # Loading two different tensors into one shared tensor would silently keep only the last.
        if not torch.equal(weights[alias], weights[name]):
            raise CheckpointError(
                f"{path} has separate {name} and {alias}, but this model ties them; load it into an untied model"
            )
    return weights


def _load_weights(
    model: nn.Module, tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path
) -> None:
    model.load_state_dict(_checked_weights(model, tensors, metadata, path))


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights of a save_checkpoint file into `model` (same architecture); returns the model.

    Re-ties shared weights. A LoRA checkpoint needs apply_lora() on the model first (same rank).
    A damaged or unfitting file raises CheckpointError (a ValueError) and leaves the model as it was.
    """
    tensors, metadata = _read_checkpoint(path)
    _load_weights(model, tensors, metadata, path)
    return model


def _checked_train_state(metadata: dict[str, str], path: Path, state_class: type):
    saved = _metadata_json(metadata, "train_state", path)
    names = {f.name for f in dataclasses.fields(state_class)}
    unknown, missing = sorted(set(saved) - names), sorted(names - set(saved) - {"settings"})
    if unknown or missing:
        raise CheckpointError(
            f"{path}: its train_state has unknown fields {unknown} and lacks {missing} "
            "(written by another version of this code, or damaged)"
        )
    try:
        state = state_class.from_dict(saved)
    except TypeError as exc:
        raise CheckpointError(f"{path}: its train_state history is damaged ({exc})") from None
    counters = (
        "step",
        "epoch",
        "batches_done",
        "tokens_seen",
        "positions_seen",
        "grad_accum_steps",
        "batches_per_epoch",
    )
    bad = [name for name in counters if type(getattr(state, name)) is not int or getattr(state, name) < 0]
    if bad or type(state.seed) is not int or not isinstance(state.settings, dict):
        raise CheckpointError(f"{path}: its train_state is damaged ({', '.join(bad) or 'seed or settings'})")
    return state


def _setting_differences(saved, current) -> list[str]:
    """'name: checkpoint X, this run Y' for every setting that differs between a checkpoint and this run."""
    pairs = {
        name: (getattr(saved, name), getattr(current, name))
        for name in ("seed", "grad_accum_steps", "batches_per_epoch")
    }
    for key in sorted(set(saved.settings) | set(current.settings)):
        pairs[key] = (saved.settings.get(key, "(not recorded)"), current.settings.get(key, "(not recorded)"))
    return [f"{name}: checkpoint {old!r}, this run {new!r}" for name, (old, new) in pairs.items() if old != new]


def _checked_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path
) -> dict:
    """The optimizer's state_dict from a checkpoint, checked against this optimizer's parameters.

    A state tensor of the wrong shape must never reach the optimizer: the fused AdamW kernel
    would read and write past its end.
    """
    saved = _metadata_json(metadata, "optimizer", path)
    groups, scalars = saved.get("param_groups"), saved.get("scalars", {})
    current = optimizer.state_dict()["param_groups"]
    if (
        not isinstance(groups, list)
        or len(groups) != len(current)
        or not isinstance(scalars, dict)
        or any(not isinstance(g, dict) or g.get("params") != c["params"] for g, c in zip(groups, current))
    ):
        raise CheckpointError(
            f"{path}: its optimizer has other parameter groups than this run's (another model, or other LoRA settings?)"
        )
    for group in groups:
        numbers = [group.get(key) for key in ("lr", "weight_decay", "eps") if key in group]
        numbers += list(group.get("betas", []))
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
            raise CheckpointError(f"{path}: its optimizer settings are damaged ({group.get('lr')=})")
        if "betas" in group:
            group["betas"] = tuple(group["betas"])  # JSON made the tuple a list
    params = {
        index: param
        for c, group in zip(current, optimizer.param_groups)
        for index, param in zip(c["params"], group["params"])
    }

    param_state: dict[int, dict] = {}
    entries = [
        (key[len(_OPTIMIZER_PREFIX) :], tensor) for key, tensor in tensors.items() if key.startswith(_OPTIMIZER_PREFIX)
    ] + list(scalars.items())
    for key, value in entries:
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) not in params or not name:
            raise CheckpointError(f"{path}: {_OPTIMIZER_PREFIX}{key} belongs to no parameter of this optimizer")
        param = params[int(index)]
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if value.shape != param.shape or value.dtype != param.dtype:
                raise CheckpointError(
                    f"{path}: {_OPTIMIZER_PREFIX}{key} is {value.dtype} {tuple(value.shape)}, "
                    f"its parameter {param.dtype} {tuple(param.shape)}"
                )
        elif isinstance(value, torch.Tensor):
            value_ok = value.is_floating_point() or value.dtype == torch.int64
            if not value_ok or not _is_finite(value) or value.item() < 0:
                raise CheckpointError(f"{path}: {_OPTIMIZER_PREFIX}{key} is damaged ({value})")
        if isinstance(value, torch.Tensor) and not _is_finite(value):
            raise CheckpointError(f"{path}: {_OPTIMIZER_PREFIX}{key} holds NaN or infinite values")
        param_state.setdefault(int(index), {})[name] = value

    # Every parameter needs the same complete state (or none, before the first step).
    required = set().union(*(state.keys() for state in param_state.values())) if param_state else set()
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and param_state:
        required |= {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if current[0].get("amsgrad") else set())
    for index in params if param_state else []:
        lacking = sorted(required - param_state.get(index, {}).keys())
        if lacking:
            raise CheckpointError(
                f"{path}: {_OPTIMIZER_PREFIX}{index}.{lacking[0]} is missing (the optimizer state is incomplete)"
            )
    return {"state": param_state, "param_groups": groups}


def _checked_rng_state(tensors: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    rng = tensors.get(f"{_RNG_PREFIX}torch")
    expected = torch.get_rng_state()
    if rng is None or rng.dtype != expected.dtype or rng.shape != expected.shape:
        raise CheckpointError(f"{path}: {_RNG_PREFIX}torch (the random number generator's state) is missing or damaged")
    return rng


def resume_from(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, expected):
    """Restore weights, optimizer state and RNG from a training checkpoint; returns its training state.

    `expected` is this run's state (utils.TrainState): its class reads the saved one, and its seed,
    batch counts and settings must match the checkpoint's.

    Everything is checked first (CheckpointError names the file and what is wrong); the model,
    the optimizer and the RNG are only touched once the whole checkpoint has passed.
    """
    path = Path(path)
    tensors, metadata = _read_checkpoint(path)
    if "train_state" not in metadata or "optimizer" not in metadata:
        raise CheckpointError(f"{path} holds weights only, not a training run to resume")
    state = _checked_train_state(metadata, path, type(expected))
    differences = _setting_differences(state, expected)
    if differences:
        raise CheckpointError(
            f"{path} was written with other settings ({'; '.join(differences)}): resuming "
            "would not continue the same run. Use the checkpoint's settings, or start afresh "
            "without resume."
        )
    weights = _checked_weights(model, tensors, metadata, path)
    optimizer_state = _checked_optimizer_state(optimizer, tensors, metadata, path)
    rng = _checked_rng_state(tensors, path)

    model.load_state_dict(weights)
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng)
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith(f"{_RNG_PREFIX}cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state
