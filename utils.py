"""The course code of the instruction-finetuning notebooks, in notebook order.

Each section's header names the notebook that teaches it (01-instruction-dataset ... 10-exercises);
the notebooks build each piece step by step and then import the finished version from here.
What a learner need not read (atomic files, strict JSON, network deadlines, the checkpoint format,
resume, DDP) lives in the support/ package; this file imports from it, never the other way round.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

# Machinery a learner need not read (support/ never imports this file): input checks, safe files,
# strict JSON, downloads with deadlines, the checkpoint format, the Ollama client, bf16 speed-ups.
from support.checkpoints import load_checkpoint  # noqa: F401 (notebooks 07 and 08 import it from here)
from support.checks import (
    check_collate_args,
    check_entries,
    check_entry,
    check_generation_args,
    check_idx,
    check_prompts,
    check_responses,
    integer_ids,
    vocabulary_error,
)
from support.experiments import ExperimentResult, failed_experiment
from support.fast import cached_copy
from support.files import DEFAULT_CACHE_DIR, REPO_ROOT, atomic_write_bytes, atomic_write_json  # noqa: F401
from support.jsonio import DatasetError, parse_json_bytes, read_json_file
from support.network import WeightsUnavailableError, download_file, hub_download, verify_hub_file
from support.ollama import OLLAMA_CHAT_URL, OLLAMA_JUDGE_MODEL, OllamaUnavailableError, chat_content, require_model
from support.precision import attention_inputs, attention_precision
from support.scores import judge_summary, parse_score
from support.tokenizer_files import (
    TOKENIZER_DIR_ENV,
    TokenizerUnavailableError,  # noqa: F401 (get_tokenizer's error, caught from here)
    tiktoken_gpt2,
    tokenizer_from_folder,
)
from support.trainer import TrainingError, TrainingRun, check_loop_args, progress_bar, seed_everything
from support.weights import check_weights_fit, read_safetensors, weight_problem

DEFAULT_DATA_PATH = REPO_ROOT / "instruction-data.json"
PAD_TOKEN_ID = 50256  # GPT-2's <|endoftext|>; doubles as the padding token
IGNORE_INDEX = -100  # the default ignore_index of torch.nn.functional.cross_entropy


# --- 01 instruction dataset: load, validate and split the data ---


def validate_instruction_data(data, source: str = "<data>") -> list[dict]:
    """Checked, normalised copies of the entries: non-empty `instruction` and `output`; `input` may be missing."""
    entries = []
    for entry in check_entries(data, source, required=("instruction", "output")):
        # A missing or null input means "no input". Fields keep the file format's order.
        entry = {"instruction": entry["instruction"], "input": "", "output": entry["output"], **entry}
        entries.append(entry | {"input": entry["input"] or ""})
    return entries


def parse_instruction_data(payload: bytes, source: str = "<data>") -> list[dict]:
    """An instruction dataset from the bytes of a JSON file: parse_json_bytes, then validate_instruction_data."""
    return validate_instruction_data(parse_json_bytes(payload, source), source)


def load_instruction_data(
    source: str | Path = DEFAULT_DATA_PATH, cache_dir: str | Path = DEFAULT_CACHE_DIR, download_deadline: float = 120.0
) -> list[dict]:
    """Load an instruction dataset from a JSON file or an http(s) URL (downloaded within `download_deadline` s)."""
    source = str(source)
    is_url = source.startswith(("http://", "https://"))
    path = (
        download_file(source, cache_dir, deadline=download_deadline, check=parse_instruction_data)
        if is_url
        else Path(source)
    )
    data = read_json_file(path)
    return validate_instruction_data(data, source=str(path))


def split_dataset(
    data: Sequence[dict], train_frac: float = 0.85, val_frac: float = 0.05, seed: int = 123
) -> tuple[list[dict], list[dict], list[dict]]:
    """Shuffle and split into train/val/test (the rest is test); entries sharing (instruction, input) stay together."""
    if not (0 < train_frac and 0 <= val_frac and train_frac + val_frac <= 1):
        raise ValueError(f"bad split fractions: train={train_frac}, val={val_frac}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for entry in data:
        groups.setdefault((entry["instruction"], entry.get("input", "")), []).append(entry)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_train, n_val = int(len(data) * train_frac), int(len(data) * val_frac)
    train, val, test = [], [], []
    for key in keys:
        target = train if len(train) < n_train else val if len(val) < n_val else test
        target.extend(groups[key])
    return train, val, test


# --- 02 prompt formatting: one source of truth per prompt template ---


@dataclass(frozen=True)
class PromptStyle:
    """A prompt template: the prompt, the optional input block, and the text that opens the response."""

    name: str
    instruction_template: str  # contains {instruction}
    input_template: str  # contains {input}; used only when the entry has an input
    response_prefix: str  # sits between the prompt and the response


PROMPT_STYLES = {
    "alpaca": PromptStyle(
        name="alpaca",
        instruction_template=(
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request."
            "\n\n### Instruction:\n{instruction}"
        ),
        input_template="\n\n### Input:\n{input}",
        response_prefix="\n\n### Response:\n",
    ),
    # Phi-3's chat turns. GPT-2 has never seen these markers: they are plain text to its
    # tokenizer and cost several tokens each. GPT-2's <|endoftext|> (appended at batching)
    # closes the assistant turn, so no <|end|> follows the response.
    "phi3": PromptStyle(
        name="phi3",
        instruction_template="<|user|>\n{instruction}",
        input_template="\n{input}",
        response_prefix="<|end|>\n<|assistant|>\n",
    ),
}


def get_prompt_style(style: str | PromptStyle) -> PromptStyle:
    if isinstance(style, PromptStyle):
        return style
    try:
        return PROMPT_STYLES[style]
    except KeyError:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {sorted(PROMPT_STYLES)}") from None


def format_input(entry: dict, style: str | PromptStyle = "alpaca") -> str:
    """The instruction (and input, if any) as the model sees it, without the response part."""
    style = get_prompt_style(style)
    text = style.instruction_template.format(instruction=entry["instruction"])
    if entry.get("input"):
        text += style.input_template.format(input=entry["input"])
    return text


def format_prompt(entry: dict, style: str | PromptStyle = "alpaca") -> str:
    """What generation feeds the model: the formatted input followed by the response opener."""
    return format_input(entry, style) + get_prompt_style(style).response_prefix


def format_response(entry: dict, style: str | PromptStyle = "alpaca") -> str:
    """The response part of a training example, e.g. "\\n\\n### Response:\\n" + output for Alpaca."""
    return get_prompt_style(style).response_prefix + entry["output"]


def format_example(entry: dict, style: str | PromptStyle = "alpaca") -> str:
    """A whole training example as text: prompt, response opener and the desired output."""
    return format_input(entry, style) + format_response(entry, style)


# --- 03 tokenization and batching: GPT-2's tokenizer through tiktoken ---


def get_tokenizer(local_dir: str | Path | None = None):
    """GPT-2's tokenizer (tiktoken, 50,257 tokens) from `local_dir` or $GPT2_TOKENIZER_DIR, else tiktoken's "gpt2"."""
    local_dir = local_dir or os.environ.get(TOKENIZER_DIR_ENV)
    if local_dir:
        return tokenizer_from_folder(Path(local_dir).resolve())
    return tiktoken_gpt2()


def encode_text(text: str, tokenizer) -> list[int]:
    """Token IDs of `text`. A literal "<|endoftext|>" in data is treated as plain text, never as the special token."""
    return tokenizer.encode(text, disallowed_special=())


# --- 03 tokenization and batching: tokenized examples, padding, shifted targets, -100 masking ---


class TokenizedExample(NamedTuple):
    """One training example: its token IDs and how many of them belong to the prompt."""

    token_ids: list[int]
    prompt_length: int


class InstructionDataset(Dataset):
    """Formats and tokenizes every entry once: prompt and output apart, so the prompt is an exact token prefix."""

    def __init__(self, data: Sequence[dict], tokenizer, style: str | PromptStyle = "alpaca"):
        # Checked here too: entries built in code skip load_instruction_data (a DatasetError names the entry).
        self.data = validate_instruction_data(list(data), source="InstructionDataset data")
        self.style = get_prompt_style(style)
        self.examples = []
        for entry in self.data:
            prompt_ids = encode_text(format_prompt(entry, self.style), tokenizer)
            output_ids = encode_text(entry["output"], tokenizer)
            self.examples.append(TokenizedExample(prompt_ids + output_ids, len(prompt_ids)))

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.examples[index]

    def __len__(self) -> int:
        return len(self.examples)


def custom_collate_fn(
    batch: Sequence[Sequence[int] | TokenizedExample],
    pad_token_id: int = PAD_TOKEN_ID,
    ignore_index: int = IGNORE_INDEX,
    allowed_max_length: int | None = None,
    mask_prompt: bool = False,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of token-ID lists and build (inputs, targets) for next-token training.

    - Each sequence gets one end-of-text, then padding; targets are the inputs shifted left by one.
    - Targets after the first end-of-text are `ignore_index` (that end-of-text stays: the model learns to stop);
      mask_prompt=True masks the targets that predict prompt tokens too (needs TokenizedExample items).
    - allowed_max_length cuts to that many positions (a cut sequence keeps its real next token; a warning counts them).
    Masking is by position, not by token value, so an end-of-text inside the content is kept.
    """
    check_collate_args(batch, pad_token_id, allowed_max_length)
    examples = [item if isinstance(item, TokenizedExample) else TokenizedExample(list(item), 0) for item in batch]
    if mask_prompt and not all(isinstance(item, TokenizedExample) for item in batch):
        raise ValueError("mask_prompt=True needs TokenizedExample items (token_ids, prompt_length)")
    n_cut = 0
    if allowed_max_length is not None:
        # Cut before padding: one huge example must not pad the whole batch to its length first.
        # allowed_max_length positions need one token more (the last target), so that one is kept.
        n_cut = sum(len(ex.token_ids) > allowed_max_length for ex in examples)
        examples = [ex._replace(token_ids=ex.token_ids[: allowed_max_length + 1]) for ex in examples]
    for i, ex in enumerate(examples):
        if len(ex.token_ids) == 0:
            raise ValueError(f"batch[{i}] has no tokens")
        examples[i] = ex._replace(token_ids=integer_ids(ex.token_ids, f"batch[{i}]"))
    padded_length = max(len(ex.token_ids) for ex in examples) + 1
    inputs, targets = [], []
    for ex in examples:
        sequence = list(ex.token_ids) + [pad_token_id] * (padded_length - len(ex.token_ids))
        target = sequence[1:]
        first_padding_target = len(ex.token_ids)  # this target is the end-of-text we keep
        target[first_padding_target:] = [ignore_index] * (len(target) - first_padding_target)
        if mask_prompt:
            # target j predicts token j+1: the prompt's tokens 1..p-1 are targets 0..p-2
            # (capped at the row: a prompt_length beyond the sequence must not grow the target list)
            n_masked = min(max(ex.prompt_length - 1, 0), len(target))
            target[:n_masked] = [ignore_index] * n_masked
        inputs.append(sequence[:-1])
        targets.append(target)
    inputs_tensor, targets_tensor = torch.tensor(inputs), torch.tensor(targets)
    if allowed_max_length is not None and inputs_tensor.shape[1] > allowed_max_length:
        if n_cut:
            warnings.warn(
                f"{n_cut} of {len(examples)} sequences are longer than allowed_max_length="
                f"{allowed_max_length} and were cut (their end-of-text target is lost)",
                stacklevel=2,
            )
        inputs_tensor = inputs_tensor[:, :allowed_max_length]
        targets_tensor = targets_tensor[:, :allowed_max_length]
    if device is not None:
        inputs_tensor, targets_tensor = inputs_tensor.to(device), targets_tensor.to(device)
    return inputs_tensor, targets_tensor


# --- 04 dataloaders: batches from the splits, on the right device ---


def get_device(preferred: str | None = None) -> torch.device:
    """cuda if available, else Apple's mps, else cpu. $LLM_DEVICE (e.g. "cpu") overrides."""
    preferred = preferred or os.environ.get("LLM_DEVICE")
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def create_dataloaders(
    train_data: Sequence[dict],
    val_data: Sequence[dict],
    test_data: Sequence[dict],
    tokenizer,
    batch_size: int = 8,
    style: str | PromptStyle = "alpaca",
    mask_prompt: bool = False,
    allowed_max_length: int | None = 1024,
    num_workers: int = 0,
    seed: int = 123,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train loader (shuffled with `seed`, last partial batch dropped) and val/test loaders (in order)."""
    collate = partial(custom_collate_fn, mask_prompt=mask_prompt, allowed_max_length=allowed_max_length)

    def loader(data, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(seed) if train else None
        return DataLoader(
            InstructionDataset(data, tokenizer, style),
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            collate_fn=collate,
            num_workers=num_workers,
            generator=generator,
        )

    return loader(train_data, True), loader(val_data, False), loader(test_data, False)


def padding_efficiency(loader: Iterable, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of target positions that carry a real (unmasked) target, over a whole loader."""
    real = total = 0
    for _, targets in loader:
        real += int((targets != ignore_index).sum())
        total += targets.numel()
    return real / total if total else 0.0


# --- 05 gpt2 model: GPT-2 written from scratch ---

_GPT2_SHARED = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True}

GPT_CONFIGS = {
    "gpt2-small": {**_GPT2_SHARED, "emb_dim": 768, "n_layers": 12, "n_heads": 12},  # 124M
    "gpt2-medium": {**_GPT2_SHARED, "emb_dim": 1024, "n_layers": 24, "n_heads": 16},  # 355M
    "gpt2-large": {**_GPT2_SHARED, "emb_dim": 1280, "n_layers": 36, "n_heads": 20},  # 774M
    "gpt2-xl": {**_GPT2_SHARED, "emb_dim": 1600, "n_layers": 48, "n_heads": 25},  # 1558M
    # UNTRAINED: no pretrained weights exist for it. Random init, gibberish output; only for
    # smoke runs and CI where the real checkpoints cannot be downloaded. 6.5M parameters.
    "tiny": {**_GPT2_SHARED, "context_length": 256, "emb_dim": 64, "n_layers": 2, "n_heads": 2},
}

HF_REPOS = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


class KVCache:
    """Every layer's keys and values so far, so a new token costs one position; `is_real` is False at left padding."""

    def __init__(self, model: GPTModel, batch_size: int, max_len: int):
        cfg, weight = model.cfg, model.tok_emb.weight
        shape = (cfg["n_layers"], batch_size, cfg["n_heads"], max_len, cfg["emb_dim"] // cfg["n_heads"])
        self.keys = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        self.values = torch.zeros_like(self.keys)
        self.is_real = torch.zeros(batch_size, max_len, dtype=torch.bool, device=weight.device)
        self.max_len = max_len
        self.length = 0  # positions filled, the same for every row; GPTModel.forward advances it

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys/values (batch, heads, tokens, head_dim); return all of them so far."""
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (e.g. drop prompts that have finished)."""
        self.keys, self.values, self.is_real = self.keys[:, rows], self.values[:, rows], self.is_real[rows]

    def reset(self) -> None:
        self.length = 0
        self.is_real.zero_()


class MultiHeadAttention(nn.Module):
    """Causal self-attention. One Linear computes queries, keys and values (GPT-2's c_attn)."""

    def __init__(self, cfg: dict, layer_idx: int):
        super().__init__()
        if cfg["emb_dim"] % cfg["n_heads"]:
            raise ValueError(f"emb_dim={cfg['emb_dim']} is not divisible by n_heads={cfg['n_heads']}")
        self.n_heads = cfg["n_heads"]
        self.layer_idx = layer_idx  # which slot of a KVCache this layer uses
        self.dropout = cfg["drop_rate"]
        # W_query, W_key and W_value stacked into one matrix: one matmul instead of three.
        self.qkv = nn.Linear(cfg["emb_dim"], 3 * cfg["emb_dim"], bias=cfg["qkv_bias"])
        self.out_proj = nn.Linear(cfg["emb_dim"], cfg["emb_dim"])

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (b, t, d) -> (b, heads, t, head_dim): every head attends independently
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        # Without a mask, is_causal is right only when queries and keys are the same positions;
        # a single new token after cached ones may see every key, so no causal mask then.
        with attention_precision(q):
            out = F.scaled_dot_product_attention(
                *attention_inputs(q, k, v),
                attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=attn_mask is None and t == k.size(2),
            ).to(x.dtype)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            nn.GELU(approximate="tanh"),  # GPT-2 was trained with the tanh approximation
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(self, cfg: dict, layer_idx: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg["emb_dim"], eps=1e-5)
        self.att = MultiHeadAttention(cfg, layer_idx)
        self.norm2 = nn.LayerNorm(cfg["emb_dim"], eps=1e-5)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), attn_mask, cache))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """GPT-2, configured by a dict such as GPT_CONFIGS["gpt2-small"]."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.ModuleList([TransformerBlock(cfg, i) for i in range(cfg["n_layers"])])
        self.final_norm = nn.LayerNorm(cfg["emb_dim"], eps=1e-5)
        # A separate matrix, as in the book. OpenAI's GPT-2 reuses tok_emb.weight here;
        # load_gpt2_weights copies it in. (To tie: model.out_head.weight = model.tok_emb.weight.)
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pad_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (batch, tokens, vocab_size) for token IDs `idx` (batch, tokens).

        cache: a KVCache; `idx` then holds only the tokens that follow the cached ones.
        pad_mask: (batch, tokens), False at left padding: attention and positions skip it, so a padded row
            gets the logits it would get alone.
        last_only: the last position's logits only, (batch, 1, vocab_size): all that generation needs.
        """
        b, t = idx.shape
        past = cache.length if cache is not None else 0
        if past + t > self.cfg["context_length"]:
            raise ValueError(
                f"{past + t} tokens exceed context_length={self.cfg['context_length']}; "
                f"keep only the last {self.cfg['context_length']} (idx[:, -context_length:])"
            )
        real = pad_mask if pad_mask is not None else torch.ones_like(idx, dtype=torch.bool)
        if cache is not None:
            real_before = cache.is_real[:, :past].sum(dim=1, keepdim=True)
            cache.is_real[:, past : past + t] = real
            keys_real = cache.is_real[:, : past + t]
        else:
            real_before, keys_real = 0, real
        # Positions count real tokens only, so a left-padded prompt starts at 0 as it would alone.
        pos = (real_before + real.cumsum(dim=1) - 1).clamp(min=0)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))

        attn_mask = None  # plain causal attention: all that training needs
        if (cache is not None or pad_mask is not None) and (not keys_real.all() or (past > 0 and t > 1)):
            q_pos = torch.arange(past, past + t, device=idx.device)[:, None]
            k_pos = torch.arange(past + t, device=idx.device)
            # Each query sees the real tokens up to itself. A padding query sees only itself: a
            # softmax row with nothing to attend to would be NaN (its output is never used).
            attn_mask = ((k_pos <= q_pos) & keys_real[:, None, :]) | (k_pos == q_pos)
            attn_mask = attn_mask[:, None]  # the same for every head

        for block in self.trf_blocks:
            x = block(x, attn_mask, cache)
        if cache is not None:
            cache.length += t
        if last_only:
            x = x[:, -1:]
        return self.out_head(self.final_norm(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once), or of those with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- 06 pretrained weights: OpenAI's GPT-2 from the Hugging Face Hub ---


def download_gpt2_weights(
    model_name: str = "gpt2-small",
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    deadline: float = 3600.0,
) -> Path:
    """Path of OpenAI's GPT-2 model.safetensors from the Hugging Face Hub: downloaded once, checked (sha256)."""
    if model_name not in HF_REPOS:
        hint = " ('tiny' is an untrained demo model: use build_gpt2('tiny'))" if model_name == "tiny" else ""
        raise ValueError(f"no pretrained weights for {model_name!r}{hint}; choose one of {sorted(HF_REPOS)}")
    if not force_download and (cached := cached_gpt2_weights(model_name, cache_dir)) is not None:
        verify_hub_file(cached, model_name)
        return cached
    return hub_download(model_name, HF_REPOS[model_name], cache_dir, force_download, deadline)


def cached_gpt2_weights(model_name: str = "gpt2-small", cache_dir: str | Path | None = None) -> Path | None:
    """Path of GPT-2's model.safetensors if it is in the Hugging Face cache, else None (never the network)."""
    if model_name not in HF_REPOS:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(HF_REPOS[model_name], "model.safetensors", cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


# Our parameter names -> the names in OpenAI's GPT-2 checkpoint (as Hugging Face stores it).
_CHECKPOINT_NAMES = [
    ("tok_emb.", "wte."),
    ("pos_emb.", "wpe."),
    ("trf_blocks.", "h."),
    ("final_norm.", "ln_f."),
    ("out_head.", "lm_head."),
    (".norm1.", ".ln_1."),
    (".norm2.", ".ln_2."),
    (".att.qkv.", ".attn.c_attn."),
    (".att.out_proj.", ".attn.c_proj."),
    (".ff.layers.0.", ".mlp.c_fc."),
    (".ff.layers.2.", ".mlp.c_proj."),
]
# GPT-2 uses Conv1D layers, which store their weights as (in_features, out_features): the
# transpose of nn.Linear's.
_CONV1D_WEIGHT = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
# The causal-mask buffers some checkpoints carry: not parameters, GPTModel builds its own mask.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def gpt2_checkpoint_name(name: str) -> str:
    """The name in OpenAI's GPT-2 checkpoint of our parameter `name` (e.g. "trf_blocks.0.att.qkv.weight")."""
    for ours, theirs in _CHECKPOINT_NAMES:
        name = name.replace(ours, theirs)
    return name


def is_conv1d_weight(checkpoint_name: str) -> bool:
    """True if the checkpoint stores this weight as Conv1D does: (in, out), nn.Linear's transpose."""
    return bool(_CONV1D_WEIGHT.fullmatch(checkpoint_name))


def load_gpt2_weights(model: GPTModel, path: str | Path) -> GPTModel:
    """Copy a GPT-2 checkpoint (Hugging Face's model.safetensors, or its folder) into `model`; returns the model.

    Without "lm_head.weight" the head reuses the token embedding, as OpenAI's GPT-2 does. A missing, left-over,
    wrongly shaped, non-float or non-finite tensor raises a ValueError naming it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    checkpoint = {key.removeprefix("transformer."): tensor for key, tensor in read_safetensors(path).items()}
    checkpoint = {key: tensor for key, tensor in checkpoint.items() if not _MASK_BUFFER.fullmatch(key)}
    if "lm_head.weight" not in checkpoint and "wte.weight" in checkpoint:
        checkpoint["lm_head.weight"] = checkpoint["wte.weight"]  # tied head

    state, missing, wrong_shape, bad_values = {}, [], [], []
    for name, param in model.state_dict().items():
        key = gpt2_checkpoint_name(name)
        transposed = is_conv1d_weight(key)
        expected = tuple(reversed(param.shape)) if transposed else tuple(param.shape)
        if key not in checkpoint:
            missing.append(f"{key} {expected}")
            continue
        tensor = checkpoint.pop(key)
        if tuple(tensor.shape) != expected:
            wrong_shape.append(f"{key}: checkpoint has {tuple(tensor.shape)}, the model needs {expected}")
        elif problem := weight_problem(tensor):
            bad_values.append(f"{key}: {problem}")
        else:
            state[name] = tensor.t() if transposed else tensor
    extra = [f"{key} {tuple(tensor.shape)}" for key, tensor in checkpoint.items()]
    check_weights_fit(path, model.cfg, missing, wrong_shape, extra, bad_values)
    if model.out_head.weight is model.tok_emb.weight and not torch.equal(
        state["out_head.weight"], state["tok_emb.weight"]
    ):
        raise ValueError(f"{path} has a separate lm_head.weight, but this model ties out_head to tok_emb")
    model.load_state_dict(state)
    return model


def build_gpt2(model_name: str = "gpt2-small", weights_path: str | Path | None = None) -> GPTModel:
    """A GPTModel for GPT_CONFIGS[model_name] with OpenAI's weights (or `weights_path`), in eval mode.

    "tiny" is UNTRAINED: it stays randomly initialised unless you pass weights_path.
    """
    if model_name not in GPT_CONFIGS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(GPT_CONFIGS)}")
    model = GPTModel(GPT_CONFIGS[model_name])
    if weights_path is not None or model_name != "tiny":
        load_gpt2_weights(model, weights_path or download_gpt2_weights(model_name))
    return model.eval()


SMOKE_ENV = "LLM_SMOKE"  # set to 1: notebooks use the small untrained model and a few steps (tests, CI)


def smoke_mode() -> bool:
    """True when $LLM_SMOKE asks for the quick configuration."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() not in ("", "0", "false", "no")


_WEIGHTS_FAILED: set[str] = set()


def load_gpt2_or_standin(model_name: str = "gpt2-small") -> tuple[GPTModel, str]:
    """GPT-2 with OpenAI's weights, or the UNTRAINED `tiny` stand-in ($LLM_SMOKE, no weights); returns (model, label).

    Show the label next to every output, so that a stand-in's text is never taken for GPT-2's.
    """
    if not smoke_mode() and model_name not in _WEIGHTS_FAILED:
        try:
            return build_gpt2(model_name), f"{model_name} (OpenAI's pretrained weights)"
        except WeightsUnavailableError as err:
            _WEIGHTS_FAILED.add(model_name)  # one look for the weights per session is enough
            print(f"{err}\n-> Continuing with the UNTRAINED stand-in model instead.")
    elif model_name in _WEIGHTS_FAILED:
        print(f"{model_name}: weights unavailable (see above); using the UNTRAINED stand-in model.")
    label = "UNTRAINED stand-in ('tiny' config, random weights): its text is gibberish, not GPT-2's"
    torch.manual_seed(123)
    return build_gpt2("tiny"), label


def model_name_of(model: GPTModel) -> str:
    """The GPT_CONFIGS name whose config `model` has (e.g. "gpt2-small", "tiny")."""
    return next((name for name, cfg in GPT_CONFIGS.items() if cfg == model.cfg), "custom")


def instruct_checkpoint_path(model: GPTModel) -> Path:
    """Where notebook 07 saves the finetuned model and notebook 08 looks for it."""
    return REPO_ROOT / "checkpoints" / f"{model_name_of(model)}-instruct.safetensors"


# --- 06 pretrained weights: generation, greedy or sampled, with a KV cache, one prompt or many ---


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """Token IDs of `text` as a (1, tokens) tensor, the shape generate() takes."""
    return torch.tensor(encode_text(text, tokenizer))[None]


def token_ids_to_text(ids: torch.Tensor | list[int], tokenizer) -> str:
    """Text of token IDs given as a list, a (tokens,) tensor or a (1, tokens) tensor."""
    if isinstance(ids, torch.Tensor):
        ids = ids.squeeze(0).tolist()
    return tokenizer.decode(ids)


def _next_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """One token per row of logits (batch, vocab): the argmax at temperature 0, else a sample."""
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if not torch.isfinite(probs).all():  # a tiny temperature overflowed: shift the best logit to 0 first
        logits = logits.float()
        probs = torch.softmax((logits - logits.amax(dim=-1, keepdim=True)) / temperature, dim=-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)  # torch's global RNG, as in the book
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def _generators(seed: int | None, n: int, device: torch.device) -> list[torch.Generator] | None:
    # One generator per row, all seeded alike: a prompt samples the same tokens whatever else
    # shares its batch.
    if seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(n)]


@torch.no_grad()
def _generate_cached(
    model: GPTModel,
    idx: torch.Tensor,
    pad_mask: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    seed: int | None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """New tokens of every row of a left-padded batch (eos excluded), with a KVCache; on_token sees each one."""
    results: list[list[int]] = [[] for _ in range(idx.size(0))]
    if max_new_tokens <= 0:
        return results
    idx, pad_mask = idx[:, -context_size:], pad_mask[:, -context_size:]
    rows = list(range(idx.size(0)))  # the original row of every row still generating
    generators = _generators(seed, len(rows), idx.device)
    cache = KVCache(model, len(rows), min(context_size, idx.size(1) + max_new_tokens))
    logits = model(idx, cache, pad_mask, last_only=True)[:, -1]
    for step in range(max_new_tokens):
        next_tok = _next_token(logits, temperature, top_k, generators)
        going = next_tok != eos_id if eos_id is not None else torch.ones_like(next_tok, dtype=torch.bool)
        for row, token, go in zip(rows, next_tok.tolist(), going.tolist()):
            if go:
                results[row].append(token)
                if on_token is not None:
                    on_token(row, token)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():  # drop finished rows, so they cost nothing from now on
            keep = going.nonzero().squeeze(1)
            rows = [rows[i] for i in keep.tolist()]
            if generators is not None:
                generators = [generators[i] for i in keep.tolist()]
            idx, pad_mask, next_tok = idx[keep], pad_mask[keep], next_tok[keep]
            cache.keep_rows(keep)
        idx = torch.cat([idx, next_tok[:, None]], dim=1)
        pad_mask = torch.cat([pad_mask, pad_mask.new_ones(len(rows), 1)], dim=1)
        if cache.length < cache.max_len:
            logits = model(next_tok[:, None], cache)[:, -1]
        else:
            # The window is full and slides on: every token moves one position left, so the
            # cached keys are stale. Encode the last context_size tokens afresh, as the
            # uncached loop does (slower, but the same result).
            cache.reset()
            window, window_mask = idx[:, -context_size:], pad_mask[:, -context_size:]
            logits = model(window, cache, window_mask, last_only=True)[:, -1]
    return results


def _model_in_dtype(model: GPTModel, dtype: torch.dtype | None) -> GPTModel:
    """`model` itself when `dtype` is None or already its dtype; else a copy of it with its weights in `dtype`.

    The logits stay float32, and greedy decoding picks what a float32 output head would: bf16 keeps
    8 bits of mantissa, so two top logits such as 89.7 and 89.3 would both round to 89.5, and the
    pick would go by index. The caller's model is left as it is (it may still be training); the
    copy is made directly in `dtype`, without a second float32 copy, and works for LoRA too. It is
    kept until the model's weights change (support/fast.py also makes it faster).
    """
    if dtype is None or model.tok_emb.weight.dtype == dtype:
        return model
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype such as torch.bfloat16, got {dtype}")
    return cached_copy(model, dtype, _copy_in_dtype)  # made once, reused until the weights change


def _copy_in_dtype(model: GPTModel, dtype: torch.dtype) -> GPTModel:
    head = {id(p) for p in model.out_head.parameters()}
    memo = {
        id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in model.parameters() if id(p) not in head
    }
    low = copy.deepcopy(model, memo)  # a tied head (the same tensor as tok_emb) is cast with it
    if low.out_head.weight.dtype != dtype:
        low.out_head.register_forward_pre_hook(lambda module, args: (args[0].to(module.weight.dtype),))
    return low


@torch.no_grad()
def generate(
    model: GPTModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    dtype: torch.dtype | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """`idx` (batch, tokens) with up to `max_new_tokens` generated tokens appended. Call model.eval() first.

    - temperature 0: greedy; above 0: sample from softmax(logits / temperature), within the `top_k` best if given.
      `seed` gives every row its own seeded generator (reproducible); without it, torch's global RNG.
    - eos_id: a row stops at its first eos_id (not appended; rows that stopped earlier are filled with it).
    - Only the last `context_size` tokens are fed to the model, so generation can run past the context window.
    - use_cache=True keeps every layer's keys and values (KVCache); False recomputes the whole context every
      step, as in the book. Both give the same tokens up to float rounding.
    - dtype=torch.bfloat16 runs a bfloat16 copy of the model (faster on CPUs with native bf16); None: as it is.
    - on_token(row, token_id) sees each new token as it is chosen (streaming; needs use_cache=True).
    """
    check_idx(idx, model.cfg["vocab_size"])
    check_generation_args(max_new_tokens, context_size, temperature, top_k)
    if on_token is not None and not use_cache:
        raise ValueError("on_token needs use_cache=True")
    context_size = min(context_size, model.cfg["context_length"])
    model = _model_in_dtype(model, dtype)
    if use_cache:
        pad_mask = torch.ones_like(idx, dtype=torch.bool)
        new = _generate_cached(
            model, idx, pad_mask, max_new_tokens, context_size, temperature, top_k, eos_id, seed, on_token
        )
        width = max(len(row) for row in new)
        filler = eos_id if eos_id is not None else 0  # 0 never appears: without eos rows are full
        new = torch.tensor(
            [row + [filler] * (width - len(row)) for row in new], dtype=idx.dtype, device=idx.device
        ).view(idx.size(0), width)
        return torch.cat([idx, new], dim=1)

    generators = _generators(seed, idx.size(0), idx.device)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        next_tok = _next_token(logits, temperature, top_k, generators)
        if eos_id is not None:
            next_tok = next_tok.masked_fill(done, eos_id)
            done |= next_tok == eos_id
            if done.all():
                break
        idx = torch.cat([idx, next_tok[:, None]], dim=1)
    return idx


@torch.no_grad()
def generate_batch(
    model: GPTModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    context_size: int,
    eos_id: int | None = None,
    pad_token_id: int = PAD_TOKEN_ID,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> list[list[int]]:
    """Generate for many prompts of different lengths at once; returns each prompt's new tokens (eos excluded).

    Prompts are left-padded and a padding mask hides the padding, so each prompt gets the tokens generate() gives
    it alone (up to float rounding). batch_size: at most this many prompts at once (similar lengths together).
    Sampling, seed and dtype work as in generate().
    """
    check_prompts(prompts, pad_token_id, model.cfg["vocab_size"])
    check_generation_args(max_new_tokens, context_size, temperature, top_k, batch_size)
    device = model.tok_emb.weight.device
    context_size = min(context_size, model.cfg["context_length"])
    model = _model_in_dtype(model, dtype)  # once for all batches
    results: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    step = batch_size or len(prompts)
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        width = len(prompts[chunk[0]])  # the longest, as lengths are sorted
        idx = torch.full((len(chunk), width), pad_token_id, dtype=torch.long, device=device)
        pad_mask = torch.zeros(len(chunk), width, dtype=torch.bool, device=device)
        for row, i in enumerate(chunk):
            n = len(prompts[i])
            idx[row, width - n :] = torch.as_tensor(prompts[i], dtype=torch.long, device=device)
            pad_mask[row, width - n :] = True
        new = _generate_cached(model, idx, pad_mask, max_new_tokens, context_size, temperature, top_k, eos_id, seed)
        for i, tokens in zip(chunk, new):
            results[i] = tokens
    return results


def generate_responses(
    model: GPTModel,
    entries: Sequence[dict],
    tokenizer,
    style: str | PromptStyle = "alpaca",
    max_new_tokens: int = 256,
    batch_size: int = 32,
    progress: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> list[dict]:
    """Each entry with the answer to format_prompt(entry, style) added as "model_response"; options as in generate()."""
    from tqdm import tqdm

    model.eval()
    model = _model_in_dtype(model, dtype)  # once, not per batch
    prompts = [encode_text(format_prompt(entry, style), tokenizer) for entry in entries]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
    responses = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc="responses", unit="batch", disable=not progress):
        chunk = order[start : start + batch_size]
        new_tokens = generate_batch(
            model,
            [prompts[i] for i in chunk],
            max_new_tokens,
            context_size=model.cfg["context_length"],
            eos_id=PAD_TOKEN_ID,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
        )
        for i, tokens in zip(chunk, new_tokens):
            responses[i] = tokenizer.decode(tokens).strip()
    return [{**entry, "model_response": response} for entry, response in zip(entries, responses)]


# --- 07 finetuning: the loss, the training loop and its hooks, the loss plot ---


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _loss_sum(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    model: nn.Module,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the real targets of a batch, and how many there are."""
    inputs, targets = inputs.to(device), targets.to(device)
    try:
        with _autocast(torch.device(device), autocast_dtype):
            logits = model(inputs)
        # The softmax over 50k classes is done in float32 even under autocast: bf16 would round it badly.
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    except IndexError as exc:  # torch's "index out of range in self" names no token
        raise vocabulary_error(inputs, targets, exc) from None
    return loss, int((targets != IGNORE_INDEX).sum())


def calc_loss_batch(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    model: nn.Module,
    device: str | torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the real (not -100) targets of one batch; a batch without any is a ValueError."""
    loss, n_real = _loss_sum(inputs, targets, model, device, autocast_dtype)
    if n_real == 0:
        raise ValueError(
            f"this batch has no real target: all {targets.numel()} targets are {IGNORE_INDEX} "
            "(padding or a masked prompt), so there is no loss to average"
        )
    return loss / n_real


@torch.no_grad()
def _loss_totals(
    loader: Iterable,
    model: nn.Module,
    device: str | torch.device,
    num_batches: int | None,
    autocast_dtype: torch.dtype | None,
) -> tuple[float, int]:
    total, n_real = 0.0, 0
    for inputs, targets in itertools.islice(loader, num_batches):
        loss, n = _loss_sum(inputs, targets, model, device, autocast_dtype)
        total, n_real = total + loss.item(), n_real + n
    return total, n_real


def calc_loss_loader(
    loader: Iterable,
    model: nn.Module,
    device: str | torch.device,
    num_batches: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Mean cross-entropy over every real target of the first `num_batches` batches (default: all); nan if none.

    Weighted by tokens, not by batches. Does not switch the model to eval mode (evaluate_model does).
    """
    total, n_real = _loss_totals(loader, model, device, num_batches, autocast_dtype)
    return total / n_real if n_real else float("nan")


def evaluate_model(
    model: nn.Module,
    train_batches: Iterable,
    val_loader: Iterable,
    device: str | torch.device,
    eval_iter: int,
    autocast_dtype: torch.dtype | None = None,
    hooks: TrainingHooks | None = None,
) -> tuple[float, float]:
    """(train loss, val loss) on the first `eval_iter` batches of each, in eval mode (`hooks` sum over processes)."""
    was_training = model.training
    model.eval()
    try:
        totals = [
            *_loss_totals(train_batches, model, device, eval_iter, autocast_dtype),
            *_loss_totals(val_loader, model, device, eval_iter, autocast_dtype),
        ]
    finally:
        model.train(was_training)
    train_total, train_n, val_total, val_n = totals if hooks is None else hooks.sum_over_processes(totals)
    return (train_total / train_n if train_n else float("nan"), val_total / val_n if val_n else float("nan"))


def create_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW over the parameters that train (all, or only LoRA's); torch's fused kernel where it has one (faster)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@dataclass
class TrainHistory:
    """Losses at every evaluation: the optimizer step, and the real target tokens trained on by then."""

    steps: list[int] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    tokens_seen: list[int] = field(default_factory=list)

    def record(self, step: int, train_loss: float, val_loss: float, tokens_seen: int) -> None:
        self.steps.append(step)
        self.train_losses.append(train_loss)
        self.val_losses.append(val_loss)
        self.tokens_seen.append(tokens_seen)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    """Where a run is; a checkpoint stores it beside the weights and optimizer state."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress
    batches_done: int = 0  # micro-batches of that epoch already trained on
    tokens_seen: int = 0  # real target tokens trained on: padding and -100 (masked) targets not counted
    positions_seen: int = 0  # every input position processed, padding included (what the FLOPs are spent on)
    last_loss: float = float("nan")  # training loss of the last optimizer step
    seed: int = 123
    grad_accum_steps: int = 1
    batches_per_epoch: int = 0
    settings: dict = field(default_factory=dict)  # what else shapes the run (lr, data, ...): a resume must match
    history: TrainHistory = field(default_factory=TrainHistory)

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(**{**d, "history": TrainHistory(**d["history"])})

    def count_step(self, loss: float, n_batches: int, n_real: int, n_positions: int) -> None:
        """Book one optimizer step over `n_batches` micro-batches with `n_real` real targets."""
        self.step, self.last_loss = self.step + 1, loss
        self.batches_done += n_batches
        self.tokens_seen += n_real
        self.positions_seen += n_positions


def _optimizer_step(
    model: nn.Module,
    window: Sequence[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    hooks: TrainingHooks,
) -> tuple[float, int, int]:
    """One update from a window of micro-batches; returns (mean loss, real targets, input positions).

    Each micro-batch's summed loss is divided by the real targets of the whole window, so k micro-batches
    give exactly the gradient of one batch k times as large.
    """
    n_real = sum(int((targets != IGNORE_INDEX).sum()) for _, targets in window)
    n_positions = sum(inputs.numel() for inputs, _ in window)
    n_real, n_positions = (int(n) for n in hooks.sum_over_processes([n_real, n_positions]))
    total = 0.0
    optimizer.zero_grad(set_to_none=True)
    for i, (inputs, targets) in enumerate(window):
        with hooks.micro_batch(last=i == len(window) - 1):
            loss, _ = _loss_sum(inputs, targets, model, device, autocast_dtype)
            (loss / max(n_real, 1)).backward()
        total += loss.item()
    optimizer.step()
    total = hooks.sum_over_processes([total])[0]
    return total / max(n_real, 1), n_real, n_positions


class TrainingHooks:
    """What train_model calls at fixed points of the loop; these defaults change nothing.

    support.trainer.TrainingRun implements them for checkpoints, resume, timed saves and DDP (see support/__init__.py).
    """

    progress = True  # show a progress bar

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> nn.Module:
        return model  # the model to train (it may load a checkpoint into model, optimizer and state first)

    def epoch_batches(self, loader: Iterable, epoch: int) -> Iterator:
        return iter(loader)

    def micro_batch(self, last: bool):
        return contextlib.nullcontext()

    def sum_over_processes(self, values: list[float]) -> list[float]:
        return values

    def should_stop(self, state: TrainState) -> bool:
        return False

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass


def _training_hooks(hooks: TrainingHooks | None, checkpoint_path: str | Path | None, resume: bool) -> TrainingHooks:
    """The hooks train_model calls: the caller's, a TrainingRun for checkpoint_path, or the do-nothing defaults."""
    if hooks is not None and checkpoint_path is not None:
        raise ValueError("give checkpoint_path to the hooks (TrainingRun(checkpoint_path, ...)), not to both")
    if hooks is not None:
        return hooks
    return TrainingRun(checkpoint_path, resume) if checkpoint_path is not None else TrainingHooks()


def train_model(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
    grad_accum_steps: int = 1,
    autocast_dtype: torch.dtype | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    hooks: TrainingHooks | None = None,
) -> TrainHistory:
    """Finetune `model`; returns the loss history.

    - One optimizer step per `grad_accum_steps` micro-batches (the loader's batches).
    - Every `eval_freq` steps (and after the last one) train and val loss on `eval_iter` batches each;
      the train batches are always the same ones, so the two curves compare point to point.
    - autocast_dtype=torch.bfloat16: the forward pass runs under torch.autocast (mixed precision).
    - checkpoint_path: a checkpoint after every epoch and at the end; resume=True continues from it.
    - on_epoch_end(state) runs after each epoch, in eval mode: e.g. print a sample answer.
    - hooks: anything else (timed saves, max_steps, several processes): see TrainingHooks.
    """
    hooks = _training_hooks(hooks, checkpoint_path, resume)
    check_loop_args(train_loader, grad_accum_steps, eval_freq)
    device = torch.device(device)
    model.to(device)
    state = TrainState(grad_accum_steps=grad_accum_steps, batches_per_epoch=len(train_loader))
    trained = hooks.on_train_start(model, optimizer, state)  # may resume: weights, optimizer, RNG, state
    with torch.random.fork_rng(devices=[]):  # picking them must not shift the training RNG
        train_eval_batches = list(itertools.islice(hooks.epoch_batches(train_loader, 0), eval_iter))

    def evaluate() -> None:
        if not state.history.steps or state.history.steps[-1] != state.step:  # not evaluated at this step yet
            with torch.random.fork_rng(devices=[]):
                train_loss, val_loss = evaluate_model(
                    model, train_eval_batches, val_loader, device, eval_iter, autocast_dtype, hooks
                )
            state.history.record(state.step, train_loss, val_loss, state.tokens_seen)
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")

    total_steps = math.ceil(len(train_loader) / grad_accum_steps) * num_epochs
    with progress_bar(total_steps, state.step, hooks.progress) as bar:
        trained.train()
        stop = hooks.should_stop(state)
        for epoch in range(state.epoch, num_epochs):
            # after a resume, skip the batches of this epoch that were trained on already
            batches = itertools.islice(hooks.epoch_batches(train_loader, epoch), state.batches_done, None)
            while not stop and (window := list(itertools.islice(batches, grad_accum_steps))):
                loss, n_real, n_positions = _optimizer_step(trained, window, optimizer, device, autocast_dtype, hooks)
                state.count_step(loss, len(window), n_real, n_positions)
                bar.update(1)
                stop = state.step >= total_steps or hooks.should_stop(state)
                if state.step % eval_freq == 0 or stop:
                    evaluate()
                epoch_done = state.batches_done == len(train_loader)
                if epoch_done:
                    state.epoch, state.batches_done = epoch + 1, 0
                hooks.on_step_end(state)  # e.g. save a checkpoint
                if epoch_done and on_epoch_end is not None:
                    with torch.random.fork_rng(devices=[]):  # a sample must not shift the training RNG
                        model.eval()
                        on_epoch_end(state)
                        trained.train()
            if stop:
                break
        evaluate()  # nothing to do when the last step was evaluated already
        hooks.on_train_end(state)
    return state.history


# --- 08 generation and evaluation: offline metrics, and an LLM judge served by a local Ollama ---

RESPONSE_FIELDS = ("output", "model_response")  # what the offline metrics read from each entry


_TRAILING_PUNCTUATION = " .!?,;:"


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace, no trailing punctuation: "Blue. " -> "blue"."""
    return " ".join(text.lower().split()).rstrip(_TRAILING_PUNCTUATION)


def exact_match(prediction: str, reference: str) -> bool:
    """True when both answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer  # imported here: it pulls in nltk, which slows `import utils`

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] of stemmed, lower-cased words (ASCII letters and digits only: "café" -> "caf")."""
    return _rouge_l_scorer().score(reference, prediction)["rougeL"].fmeasure


def evaluate_responses(entries: list[dict], source: str = "<responses>") -> dict:
    """Exact match and ROUGE-L of every `model_response` against its `output`, averaged over the entries."""
    entries = check_responses(entries, source, RESPONSE_FIELDS)
    matches = sum(exact_match(e["model_response"], e["output"]) for e in entries)
    rouge = [rouge_l(e["model_response"], e["output"]) for e in entries]
    n = len(entries)
    return {"n": n, "exact_match": matches / n, "exact_match_count": matches, "rouge_l": sum(rouge) / n}


# The judge: a larger model served by Ollama (https://ollama.com) grades every response.


def judge_prompt(entry: dict, style: str | PromptStyle = "alpaca") -> str:
    """The grading request for one entry: the prompt as the finetuned model saw it, the reference, the response."""
    check_entry(entry, "judge_prompt", ("instruction", *RESPONSE_FIELDS))
    return (
        "You are grading the answer a small language model gave to a task.\n\n"
        "The model was given this prompt:\n"
        f"{format_input(entry, style)}\n\n"
        "A correct answer is:\n"
        f"{entry['output']}\n\n"
        "The model answered:\n"
        f"{entry['model_response']}\n\n"
        "Compare the model's answer with the correct answer and grade it with an integer from 0 "
        "(wrong, empty or off-topic) to 100 (as good as the correct answer).\n"
        "Respond with the integer number only."
    )


def judge_responses(
    entries: list[dict],
    model: str = OLLAMA_JUDGE_MODEL,
    url: str = OLLAMA_CHAT_URL,
    style: str | PromptStyle = "alpaca",
    seed: int = 123,
    timeout: float = 120.0,
    source: str = "<responses>",
    progress: bool = True,
) -> dict:
    """Ask the judge to score every entry's `model_response` from 0 to 100.

    Returns {"model", "n", "n_judged", "n_scored", "mean" (of parsed scores), "scores" (None: unparsed, never 0),
    "unparsed": {"count", "indices"}, "replies", "error"}. Bad entries or a missing judge raise before any
    request; a failure later keeps the scores so far (the first `n_judged` entries) and `error` says why.
    """
    from tqdm import tqdm

    entries = check_responses(entries, source, ("instruction", *RESPONSE_FIELDS))
    require_model(model, url, min(timeout, 10.0))
    scores: list[int | None] = [None] * len(entries)
    replies: list[str | None] = [None] * len(entries)
    error = None
    n_judged = 0
    for index, entry in enumerate(tqdm(entries, desc=f"judging with {model}", unit="entry", disable=not progress)):
        try:
            content = chat_content(judge_prompt(entry, style), model, url, seed, timeout)
        except OllamaUnavailableError as exc:
            error = f"entry {index}: {exc}"
            break
        replies[index] = content if isinstance(content, str) else None
        try:
            scores[index] = parse_score(replies[index])
        except Exception:  # noqa: BLE001 - one reply that breaks the parser costs that reply only
            scores[index] = None
        n_judged += 1
    return judge_summary(model, scores, replies, n_judged, error)


# --- 09 preference tuning: DPO on pairs of a better and a worse answer ---

DEFAULT_PREFERENCE_PATH = REPO_ROOT / "preference-data.json"


def validate_preference_data(data, source: str = "<data>") -> list[dict]:
    """Checked, normalised copies of the pairs: non-empty `instruction`, and a `chosen` and `rejected` that differ."""
    pairs = check_entries(data, source, required=("instruction", "chosen", "rejected"))
    for index, pair in enumerate(pairs):
        if pair["chosen"].strip() == pair["rejected"].strip():
            raise DatasetError(f"{source}: entry {index}: field 'rejected' is the same answer as 'chosen'")
    return [{"input": "", **pair} | {"input": pair.get("input") or ""} for pair in pairs]


def load_preference_data(path: str | Path = DEFAULT_PREFERENCE_PATH) -> list[dict]:
    """Load and validate a preference dataset (a JSON list of instruction/input/chosen/rejected objects)."""
    return validate_preference_data(read_json_file(path), source=str(path))


def split_preference_data(
    pairs: Sequence[dict], instruction_data: Sequence[dict], **split_args
) -> tuple[list[dict], list[dict], list[dict]]:
    """Train/val/test pairs, each in the split that split_dataset(instruction_data, **split_args) gives its prompt."""
    split_of = {}
    for part, entries in enumerate(split_dataset(instruction_data, **split_args)):
        for entry in entries:
            split_of[(entry["instruction"], entry["input"])] = part
    parts: tuple[list[dict], list[dict], list[dict]] = ([], [], [])
    for index, pair in enumerate(pairs):
        key = (pair["instruction"], pair.get("input", ""))
        if key not in split_of:
            raise DatasetError(
                f"preference pair {index}: its instruction and input are not in the instruction "
                "data, so its split is unknown"
            )
        parts[split_of[key]].append(pair)
    return parts


class PreferenceExample(NamedTuple):
    """One pair, tokenized: prompt + chosen, prompt + rejected, and (once computed) the reference's log-probs."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    reference_logprobs: tuple[float, float] | None = None


class PreferenceDataset(Dataset):
    """Tokenizes every pair once: the same prompt tokens before each answer, as in InstructionDataset."""

    def __init__(self, pairs: Sequence[dict], tokenizer, style: str | PromptStyle = "alpaca"):
        self.pairs = list(pairs)
        self.examples = []
        for pair in self.pairs:
            prompt_ids = encode_text(format_prompt(pair, style), tokenizer)
            chosen, rejected = (
                TokenizedExample(prompt_ids + encode_text(pair[answer], tokenizer), len(prompt_ids))
                for answer in ("chosen", "rejected")
            )
            self.examples.append(PreferenceExample(chosen, rejected))

    def __getitem__(self, index: int) -> PreferenceExample:
        return self.examples[index]

    def __len__(self) -> int:
        return len(self.examples)


class PreferenceBatch(NamedTuple):
    """Rows 0..B-1 hold prompt + chosen, rows B..2B-1 prompt + rejected; targets are -100 but for the answers."""

    inputs: torch.Tensor
    targets: torch.Tensor
    reference_logprobs: torch.Tensor | None  # (2B,) in the same row order, when precomputed


def preference_collate_fn(batch: Sequence[PreferenceExample], allowed_max_length: int | None = None) -> PreferenceBatch:
    """Chosen rows then rejected rows, padded by custom_collate_fn with the prompt masked (answers are the targets)."""
    rows = [pair.chosen for pair in batch] + [pair.rejected for pair in batch]
    inputs, targets = custom_collate_fn(rows, mask_prompt=True, allowed_max_length=allowed_max_length)
    reference = None
    if all(pair.reference_logprobs is not None for pair in batch):
        reference = torch.tensor(
            [pair.reference_logprobs[0] for pair in batch] + [pair.reference_logprobs[1] for pair in batch]
        )
    return PreferenceBatch(inputs, targets, reference)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt) per row: the summed log-probs of the real (not -100) targets, in float32 at least."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    token_losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return -token_losses.view(targets.shape).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss (Rafailov et al. 2023, eq. 7) from sequence log-probs; returns (loss, chosen, rejected rewards).

    An answer's reward is beta * (log pi(answer) - log pi_ref(answer)); the loss is -log sigmoid(chosen - rejected
    reward), averaged. The rewards come back detached: they are for watching.
    """
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def pair_logprobs(model: nn.Module, batch: PreferenceBatch, device: str | torch.device) -> torch.Tensor:
    """Sequence log-probs of every row of a preference batch under `model`: (2B,), chosen rows first."""
    return sequence_logprobs(model(batch.inputs.to(device)), batch.targets.to(device))


def dpo_loss_batch(
    policy: nn.Module,
    reference: nn.Module | None,
    batch: PreferenceBatch,
    device: str | torch.device,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dpo_loss on one batch: the policy's log-probs with gradients, the reference's (or precomputed ones) without."""
    policy_chosen, policy_rejected = pair_logprobs(policy, batch, device).chunk(2)
    if batch.reference_logprobs is not None:
        reference_logprobs = batch.reference_logprobs.to(device)
    elif reference is None:
        raise ValueError("no reference model and no precomputed reference log-probs in the batch")
    else:
        with torch.no_grad():
            reference_logprobs = pair_logprobs(reference, batch, device)
    reference_chosen, reference_rejected = reference_logprobs.chunk(2)
    return dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)


@torch.no_grad()
def precompute_reference_logprobs(
    reference: nn.Module,
    dataset: PreferenceDataset,
    device: str | torch.device,
    batch_size: int = 8,
    allowed_max_length: int | None = None,
) -> PreferenceDataset:
    """Store the reference model's log-probs in every pair of `dataset` (in place), so the reference can be freed."""
    reference.eval()
    for start in range(0, len(dataset), batch_size):
        pairs = dataset.examples[start : start + batch_size]
        batch = preference_collate_fn([pair._replace(reference_logprobs=None) for pair in pairs], allowed_max_length)
        chosen, rejected = pair_logprobs(reference, batch, device).cpu().chunk(2)
        for offset, pair in enumerate(pairs):
            dataset.examples[start + offset] = pair._replace(
                reference_logprobs=(chosen[offset].item(), rejected[offset].item())
            )
    return dataset


@torch.no_grad()
def evaluate_preferences(
    policy: nn.Module,
    reference: nn.Module | None,
    loader: Iterable,
    device: str | torch.device,
    beta: float = 0.1,
    num_batches: int | None = None,
) -> dict[str, float]:
    """DPO loss, reward margin and preference accuracy (a tie counts half) over the first `num_batches` of a loader."""
    was_training = policy.training
    policy.eval()
    losses, margins = [], []
    try:
        for batch in itertools.islice(loader, num_batches):
            loss, chosen, rejected = dpo_loss_batch(policy, reference, batch, device, beta)
            losses.append(loss.item() * len(chosen))
            margins.append(chosen - rejected)
    finally:
        policy.train(was_training)
    margins = torch.cat(margins)
    accuracy = ((margins > 0).float() + 0.5 * (margins == 0).float()).mean()
    return {"loss": sum(losses) / len(margins), "margin": margins.mean().item(), "accuracy": accuracy.item()}


@dataclass
class DPOHistory:
    """Held-out loss, reward margin and preference accuracy at every evaluation, by optimizer step."""

    steps: list[int] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_margins: list[float] = field(default_factory=list)
    val_accuracies: list[float] = field(default_factory=list)


def train_dpo(
    policy: nn.Module,
    reference: nn.Module | None,
    train_loader: DataLoader,
    val_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device,
    num_steps: int,
    eval_freq: int,
    eval_iter: int | None = None,
    beta: float = 0.1,
    hooks: TrainingHooks | None = None,
) -> DPOHistory:
    """Preference-tune `policy` against a frozen `reference` (None: log-probs precomputed) for `num_steps` steps.

    The loop of 07 with dpo_loss_batch as the loss, evaluated every `eval_freq` steps; `hooks` as in train_model.
    """
    hooks = hooks or TrainingHooks()
    if len(train_loader) == 0:
        raise TrainingError("the train loader yields no batches: fewer training pairs than the batch size?")
    device = torch.device(device)
    policy.to(device)
    if reference is not None:
        reference.to(device).eval().requires_grad_(False)
    state = TrainState(batches_per_epoch=len(train_loader))
    trained = hooks.on_train_start(policy, optimizer, state)  # may resume: weights, optimizer, RNG, state
    history = DPOHistory()

    def evaluate(train_loss: float) -> None:
        with torch.random.fork_rng(devices=[]):  # evaluation must not shift the training RNG
            scores = evaluate_preferences(policy, reference, val_loader, device, beta, eval_iter)
        history.steps.append(state.step)
        history.train_losses.append(train_loss)
        history.val_losses.append(scores["loss"])
        history.val_margins.append(scores["margin"])
        history.val_accuracies.append(scores["accuracy"])

    evaluate(float("nan"))  # where the run starts: margin 0, accuracy 0.5 when policy == reference
    trained.train()
    stop = state.step >= num_steps or hooks.should_stop(state)
    while not stop:
        # after a resume, skip the batches of this epoch that were trained on already
        for batch in itertools.islice(hooks.epoch_batches(train_loader, state.epoch), state.batches_done, None):
            optimizer.zero_grad(set_to_none=True)
            with hooks.micro_batch(last=True):
                loss, _, _ = dpo_loss_batch(trained, reference, batch, device, beta)
                loss.backward()
            optimizer.step()
            state.step, state.last_loss = state.step + 1, loss.item()
            state.batches_done += 1
            state.tokens_seen += int((batch.targets != IGNORE_INDEX).sum())  # answer tokens: both of each pair
            stop = state.step >= num_steps or hooks.should_stop(state)
            if state.step % eval_freq == 0 or stop:
                evaluate(state.last_loss)
            if state.batches_done == len(train_loader):
                state.epoch, state.batches_done = state.epoch + 1, 0
            hooks.on_step_end(state)  # e.g. the finite-loss stop, a checkpoint
            if stop:
                break
    hooks.on_train_end(state)
    return history


# --- 10 exercises: LoRA, low-rank adapters on the frozen model ---

LORA_TARGETS = ("att.qkv", "att.out_proj", "ff.layers.0", "ff.layers.2")  # Linear layers inside a TransformerBlock


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + (alpha / rank) * x @ A @ B, B starting at 0."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base, self.rank, self.alpha = base, rank, alpha
        self.scaling = alpha / rank
        for param in base.parameters():
            param.requires_grad_(False)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(base.in_features, rank, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features, dtype=weight.dtype, device=weight.device))
        # Initialised through the (rank, in_features) view so fan_in is in_features, as for nn.Linear's own weight.
        nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A @ self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Fold (alpha / rank) * A @ B into the base weight and return that plain nn.Linear."""
        # nn.Linear stores its weight as (out_features, in_features): the transpose of A @ B.
        self.base.weight += (self.lora_A @ self.lora_B).T.to(self.base.weight.dtype) * self.scaling
        return self.base


def _replace_module(root: nn.Module, dotted_name: str, new: nn.Module) -> None:
    parent_name, _, child = dotted_name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def apply_lora(model: nn.Module, rank: int = 16, alpha: float = 16, targets: Sequence[str] = LORA_TARGETS) -> nn.Module:
    """Freeze `model`, then wrap the `targets` Linear layers of each transformer block in LoRALinear (in place)."""
    for param in model.parameters():
        param.requires_grad_(False)
    for block in model.trf_blocks:
        for name in targets:
            try:
                layer = block.get_submodule(name)
            except AttributeError:
                raise ValueError(f"no layer {name!r} in a transformer block; LoRA targets are {LORA_TARGETS}") from None
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"{name!r} is a {type(layer).__name__}, LoRA wraps nn.Linear layers only")
            _replace_module(block, name, LoRALinear(layer, rank, alpha))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear with its merged nn.Linear: same outputs, no extra matmuls, plain GPT weights."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace_module(model, name, module.merge())
    return model


# --- 10 exercises: experiments, one finetuning run start to end, for comparisons ---


def fitting_subset(
    data: Sequence[dict], tokenizer, n: int, max_tokens: int, style: str | PromptStyle = "alpaca"
) -> list[dict]:
    """The first `n` entries whose training example is at most `max_tokens` tokens long (quick to train on a CPU)."""
    subset = []
    for entry in data:
        if len(subset) == n:
            break
        if len(encode_text(format_example(entry, style), tokenizer)) <= max_tokens:
            subset.append(entry)
    return subset


def score_answers(entries: list[dict]) -> dict:
    """evaluate_responses() plus the standard error of the mean ROUGE-L: how far apart two runs may land by chance."""
    scores = evaluate_responses(entries)
    per_entry = [rouge_l(e["model_response"], e["output"]) for e in entries]
    n = len(per_entry)
    variance = sum((x - scores["rouge_l"]) ** 2 for x in per_entry) / (n - 1) if n > 1 else float("nan")
    return {**scores, "rouge_l_stderr": math.sqrt(variance / n)}


def run_experiment(
    name: str,
    train_data: Sequence[dict],
    val_data: Sequence[dict],
    test_data: Sequence[dict],
    tokenizer,
    model_name: str = "gpt2-small",
    style: str | PromptStyle = "alpaca",
    mask_prompt: bool = False,
    allowed_max_length: int | None = 1024,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    lr: float = 5e-5,
    batch_size: int = 8,
    num_epochs: int = 1,
    eval_freq: int = 5,
    eval_iter: int = 5,
    max_new_tokens: int = 64,
    seed: int = 123,
    device: str | None = None,
    keep_model: bool = False,
    progress: bool = True,
) -> ExperimentResult:
    """Finetune a fresh `model_name` on `train_data`, answer `test_data` greedily, score the answers.

    Only the options you pass differ between two runs (LoRA: `lora_rank` > 0, alpha defaults to the rank).
    A run that fails returns a row with status "failed: <error>" instead of raising, so the table keeps it.
    """
    settings = {"model_name": model_name, "style": get_prompt_style(style).name, "mask_prompt": mask_prompt}
    settings |= {"allowed_max_length": allowed_max_length, "lora_rank": lora_rank, "lr": lr, "seed": seed}
    try:
        device = get_device(device)
        train_loader, val_loader, _ = create_dataloaders(
            train_data, val_data, test_data, tokenizer, batch_size, style, mask_prompt, allowed_max_length, seed=seed
        )
        if len(train_loader) == 0:
            raise ValueError(f"{len(train_data)} training examples do not fill one batch of {batch_size}")
        model, label = load_gpt2_or_standin(model_name)
        if lora_rank:
            seed_everything(seed)  # LoRA's A matrices start random
            apply_lora(model, rank=lora_rank, alpha=lora_alpha if lora_alpha is not None else lora_rank)
        model.to(device)
        start = time.perf_counter()
        with warnings.catch_warnings():  # allowed_max_length cuts are expected here; the caller chose them
            warnings.filterwarnings("ignore", message=".*longer than allowed_max_length.*")
            hooks = TrainingRun(seed=seed, progress=progress)
            optimizer = create_optimizer(model, lr=lr)
            history = train_model(
                model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter, hooks=hooks
            )
        seconds = time.perf_counter() - start
        responses = generate_responses(model, test_data, tokenizer, style, max_new_tokens, progress=progress)
        scores = score_answers(responses)
    except Exception as exc:  # noqa: BLE001 - the table reports it; KeyboardInterrupt still stops the run
        return failed_experiment(name, exc, settings)
    return ExperimentResult(
        name,
        model_label=label,
        settings=settings,
        history=history,
        scores=scores,
        responses=responses,
        trainable_parameters=count_parameters(model, trainable_only=True),
        train_examples=len(train_data),
        train_seconds=seconds,
        model=model if keep_model else None,
    )
