"""Shared helpers for the instruction-finetuning series.

Each helper is defined once here and imported by every notebook, script and test.
Sections follow the order in which the notebooks meet them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_DATA_PATH = REPO_ROOT / "instruction-data.json"
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache"

PAD_TOKEN_ID = 50256  # GPT-2's <|endoftext|>; doubles as the padding token
IGNORE_INDEX = -100  # the default ignore_index of torch.nn.functional.cross_entropy


# --- files: atomic writes, so an interrupted run never leaves half a file ---

def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    """Write `obj` as indented UTF-8 JSON, atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


# --- data: load and validate an instruction dataset ---

class DatasetError(ValueError):
    """An instruction dataset that cannot be used as it is; the message names file, entry and field."""


def download_file(url: str, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Download `url` into `cache_dir` once; later calls reuse the local copy (works offline)."""
    name = Path(urllib.request.urlparse(url).path).name or "download"
    digest = hashlib.sha1(url.encode()).hexdigest()[:10]
    local_path = Path(cache_dir) / "data" / f"{digest}-{name}"
    if local_path.exists():
        return local_path
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except OSError as exc:
        raise DatasetError(
            f"Could not download {url} ({exc}).\n"
            f"Fix: download it on a machine with network and pass the local path instead, "
            f"or copy it to {local_path}."
        ) from None
    return atomic_write_bytes(local_path, payload)


def validate_instruction_data(data, source: str = "<data>") -> list[dict]:
    """Check the structure of an instruction dataset and return normalised copies of its entries.

    Every entry needs non-empty strings `instruction` and `output`; `input` may be
    missing (it becomes "") or a string. Other keys are kept as they are.
    """
    if not isinstance(data, list):
        raise DatasetError(f"{source}: expected a JSON list of entries, got {type(data).__name__}")
    entries = []
    for index, entry in enumerate(data):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: expected an object with 'instruction', 'input', 'output', "
                               f"got {type(entry).__name__}")
        for field in ("instruction", "output"):
            if field not in entry:
                raise DatasetError(f"{where}: missing field '{field}'")
        # A missing or null input means "no input". Fields keep the file format's order.
        entry = {"instruction": entry["instruction"], "input": "", "output": entry["output"], **entry}
        if entry["input"] is None:
            entry["input"] = ""
        for field in ("instruction", "input", "output"):
            if not isinstance(entry[field], str):
                raise DatasetError(f"{where}: field '{field}' must be a string, "
                                   f"got {type(entry[field]).__name__}")
        for field in ("instruction", "output"):
            if not entry[field].strip():
                raise DatasetError(f"{where}: field '{field}' is empty")
        entries.append(entry)
    return entries


def load_instruction_data(source: str | Path = DEFAULT_DATA_PATH,
                          cache_dir: str | Path = DEFAULT_CACHE_DIR) -> list[dict]:
    """Load an instruction dataset from a JSON file path or an http(s) URL (cached locally)."""
    source = str(source)
    path = download_file(source, cache_dir) if source.startswith(("http://", "https://")) else Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    return validate_instruction_data(data, source=str(path))


def split_dataset(data: Sequence[dict], train_frac: float = 0.85, val_frac: float = 0.05,
                  seed: int = 123) -> tuple[list[dict], list[dict], list[dict]]:
    """Shuffle and split into train/val/test (the rest goes to test).

    Entries that share (instruction, input) always land in the same split, so the test set
    never asks a question the model was trained on.
    """
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


def find_near_duplicates(data: Sequence[dict], threshold: float = 0.9, n: int = 3) -> list[tuple[int, int, float]]:
    """Pairs of entries whose instruction + input are alike: cosine similarity of character n-gram counts.

    Returns (i, j, similarity) for every pair at or above `threshold`, most similar first.
    """
    import numpy as np

    texts = [" ".join(f"{e['instruction']} {e.get('input', '')}".lower().split()) for e in data]
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for row, text in enumerate(texts):
        for k in range(max(len(text) - n + 1, 1)):
            rows.append(row)
            cols.append(vocabulary.setdefault(text[k:k + n], len(vocabulary)))
    counts = np.zeros((len(texts), len(vocabulary)), dtype=np.float32)
    np.add.at(counts, (rows, cols), 1.0)
    counts /= np.linalg.norm(counts, axis=1, keepdims=True)
    similarity = counts @ counts.T
    i, j = np.nonzero(np.triu(similarity >= threshold - 1e-6, k=1))
    pairs = [(int(a), int(b), float(similarity[a, b])) for a, b in zip(i, j)]
    return sorted(pairs, key=lambda pair: -pair[2])


# --- formatting: one source of truth per prompt template ---

@dataclass(frozen=True)
class PromptStyle:
    """A prompt template: the prompt, the optional input block, and the text that opens the response."""
    name: str
    instruction_template: str  # contains {instruction}
    input_template: str        # contains {input}; used only when the entry has an input
    response_prefix: str       # sits between the prompt and the response


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


def extract_response(generated_text: str, style: str | PromptStyle = "alpaca") -> str:
    """The model's answer from a decoded generation that may still contain the prompt."""
    prefix = get_prompt_style(style).response_prefix
    if prefix in generated_text:
        generated_text = generated_text.split(prefix, 1)[1]
    return generated_text.replace("<|endoftext|>", "").strip()


# --- tokenizer: GPT-2's BPE through tiktoken, online or from local files ---

GPT2_VOCAB_FILES = {  # file name -> (download URL, sha256); tiktoken checks the same hashes
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}
TOKENIZER_DIR_ENV = "GPT2_TOKENIZER_DIR"


class TokenizerUnavailableError(RuntimeError):
    """GPT-2's vocabulary files could be neither downloaded nor found locally."""


def _check_tokenizer_folder(folder: Path) -> None:
    """Both vocabulary files present, and byte-identical to GPT-2's originals."""
    for name in GPT2_VOCAB_FILES:
        if not (folder / name).is_file():
            raise TokenizerUnavailableError(f"{folder / name}: missing (a GPT-2 tokenizer folder needs "
                                            f"{' and '.join(GPT2_VOCAB_FILES)})")
    for name, (_, sha256) in GPT2_VOCAB_FILES.items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != sha256:
            raise TokenizerUnavailableError(f"{folder / name}: not GPT-2's original file (sha256 differs); "
                                            f"download it again")


def install_tokenizer_files(source_dir: str | Path, cache_dir: str | Path) -> Path:
    """Copy encoder.json and vocab.bpe into a tiktoken cache folder, named as tiktoken expects.

    Point TIKTOKEN_CACHE_DIR at `cache_dir` afterwards and tiktoken.get_encoding("gpt2") works offline.
    """
    source_dir, cache_dir = Path(source_dir), Path(cache_dir)
    _check_tokenizer_folder(source_dir)
    for name, (url, _) in GPT2_VOCAB_FILES.items():
        atomic_write_bytes(cache_dir / hashlib.sha1(url.encode()).hexdigest(), (source_dir / name).read_bytes())
    return cache_dir


@lru_cache(maxsize=4)
def _tokenizer_from_folder(folder: Path):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    _check_tokenizer_folder(folder)
    # The same regex and special token as tiktoken's own "gpt2" encoding; only the files are local.
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(folder / "vocab.bpe"),
                                            encoder_json_file=str(folder / "encoder.json"))
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={ENDOFTEXT: PAD_TOKEN_ID})


def get_tokenizer(local_dir: str | Path | None = None):
    """GPT-2's tokenizer (a tiktoken Encoding with 50,257 tokens).

    Looks in this order: `local_dir`, the folder in $GPT2_TOKENIZER_DIR (both must hold
    encoder.json and vocab.bpe), then tiktoken's own cache ($TIKTOKEN_CACHE_DIR) or download.
    Never falls back to another tokenizer.
    """
    import tiktoken

    local_dir = local_dir or os.environ.get(TOKENIZER_DIR_ENV)
    if local_dir:
        return _tokenizer_from_folder(Path(local_dir).resolve())
    if "TIKTOKEN_CACHE_DIR" not in os.environ and "DATA_GYM_CACHE_DIR" not in os.environ:
        # Keep tiktoken's download inside the project, so a prepared folder works offline.
        os.environ["TIKTOKEN_CACHE_DIR"] = str(DEFAULT_CACHE_DIR / "tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # tiktoken raises requests' errors, or ValueError on a bad hash
        raise TokenizerUnavailableError(
            "Could not load GPT-2's tokenizer: tiktoken needs to download encoder.json and vocab.bpe "
            f"and that failed ({type(exc).__name__}).\n"
            "Fix, either:\n"
            "  - on a machine with network, run `make download` once (fills .cache/tiktoken), or\n"
            f"  - set {TOKENIZER_DIR_ENV}=/path/to/folder holding encoder.json and vocab.bpe."
        ) from None


def encode_text(text: str, tokenizer) -> list[int]:
    """Token IDs of `text`. A literal "<|endoftext|>" in data is treated as plain text, never as the special token."""
    return tokenizer.encode(text, disallowed_special=())


# --- batching: tokenized examples, padding, shifted targets, -100 masking ---

class TokenizedExample(NamedTuple):
    """One training example: its token IDs and how many of them belong to the prompt."""
    token_ids: list[int]
    prompt_length: int


class InstructionDataset(Dataset):
    """Formats and tokenizes every entry once, up front.

    The prompt (including the response opener) and the output are tokenized separately and
    joined, so the prompt used at generation time is always an exact token prefix.
    """

    def __init__(self, data: Sequence[dict], tokenizer, style: str | PromptStyle = "alpaca"):
        self.data = list(data)
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


def _as_example(item) -> TokenizedExample:
    if isinstance(item, TokenizedExample):
        return item
    return TokenizedExample(list(item), 0)


def custom_collate_fn(batch: Sequence[Sequence[int] | TokenizedExample],
                      pad_token_id: int = PAD_TOKEN_ID, ignore_index: int = IGNORE_INDEX,
                      allowed_max_length: int | None = None, mask_prompt: bool = False,
                      device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of token-ID lists and build (inputs, targets) for next-token training.

    - Each sequence gets one end-of-text token, then padding up to the longest sequence + 1.
    - inputs drop the last position; targets are the same tokens shifted left by one.
    - Target positions after the first end-of-text are set to `ignore_index`; that first
      end-of-text stays, so the model learns where a response ends.
    - mask_prompt=True also sets the targets that predict prompt tokens to `ignore_index`
      (needs TokenizedExample items, which carry the prompt length).
    - allowed_max_length cuts inputs and targets to that many positions. A cut sequence keeps
      its real next token as the last target (its response does go on; teaching the model to stop
      there would be wrong) and a warning says how many sequences were cut.
    Masking is by position, not by token value, so an end-of-text inside the content is kept.
    """
    examples = [_as_example(item) for item in batch]
    if mask_prompt and not all(isinstance(item, TokenizedExample) for item in batch):
        raise ValueError("mask_prompt=True needs TokenizedExample items (token_ids, prompt_length)")
    padded_length = max(len(ex.token_ids) for ex in examples) + 1
    inputs, targets = [], []
    for ex in examples:
        sequence = list(ex.token_ids) + [pad_token_id] * (padded_length - len(ex.token_ids))
        target = sequence[1:]
        first_padding_target = len(ex.token_ids)  # this target is the end-of-text we keep
        target[first_padding_target:] = [ignore_index] * (len(target) - first_padding_target)
        if mask_prompt:
            # target j predicts token j+1: the prompt's tokens 1..p-1 are targets 0..p-2
            n_masked = max(ex.prompt_length - 1, 0)
            target[:n_masked] = [ignore_index] * n_masked
        inputs.append(sequence[:-1])
        targets.append(target)
    inputs_tensor, targets_tensor = torch.tensor(inputs), torch.tensor(targets)
    if allowed_max_length is not None and inputs_tensor.shape[1] > allowed_max_length:
        n_cut = sum(len(ex.token_ids) > allowed_max_length for ex in examples)
        if n_cut:
            warnings.warn(f"{n_cut} of {len(examples)} sequences are longer than allowed_max_length="
                          f"{allowed_max_length} and were cut (their end-of-text target is lost)",
                          stacklevel=2)
        inputs_tensor = inputs_tensor[:, :allowed_max_length]
        targets_tensor = targets_tensor[:, :allowed_max_length]
    if device is not None:
        inputs_tensor, targets_tensor = inputs_tensor.to(device), targets_tensor.to(device)
    return inputs_tensor, targets_tensor


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


def create_dataloaders(train_data: Sequence[dict], val_data: Sequence[dict], test_data: Sequence[dict],
                       tokenizer, batch_size: int = 8, style: str | PromptStyle = "alpaca",
                       mask_prompt: bool = False, allowed_max_length: int | None = 1024,
                       num_workers: int = 0, seed: int = 123) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train loader (shuffled with `seed`, last partial batch dropped) and val/test loaders (in order)."""
    collate = partial(custom_collate_fn, mask_prompt=mask_prompt, allowed_max_length=allowed_max_length)

    def loader(data, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(seed) if train else None
        return DataLoader(InstructionDataset(data, tokenizer, style), batch_size=batch_size,
                          shuffle=train, drop_last=train, collate_fn=collate,
                          num_workers=num_workers, generator=generator)

    return loader(train_data, True), loader(val_data, False), loader(test_data, False)


def padding_efficiency(loader: Iterable, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of target positions that carry a real (unmasked) target, over a whole loader."""
    real = total = 0
    for _, targets in loader:
        real += int((targets != ignore_index).sum())
        total += targets.numel()
    return real / total if total else 0.0


# --- plots: pictures for the notebooks, readable on a projector ---

# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
COLORS = {"prompt": "#56B4E9", "response": "#E69F00", "end": "#009E73", "padding": "#BBBBBB",
          "masked": "#FFFFFF", "accent": "#D55E00", "text": "#222222"}


def _token_label(token_id: int, tokenizer, width: int = 7) -> str:
    if token_id == IGNORE_INDEX:
        return "-100"
    if token_id == PAD_TOKEN_ID:
        return "<eot>"
    text = tokenizer.decode([token_id]).replace("\n", "\\n").replace(" ", "\u2423")
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def plot_batch(inputs: torch.Tensor, targets: torch.Tensor, tokenizer, prompt_lengths: Sequence[int] | None = None,
               lengths: Sequence[int] | None = None, first_column: int = 0, n_columns: int = 16, title: str = ""):
    """Draw a window of a batch as a grid: for each example an input row and a target row.

    Colours: prompt tokens, response tokens, the end-of-text that is learned, padding, and
    masked (-100) targets. `lengths` (tokens before padding) tells end-of-text from padding.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    n_rows, width = inputs.shape
    columns = range(first_column, min(first_column + n_columns, width))
    lengths = lengths or [int((row != PAD_TOKEN_ID).nonzero().max()) + 1 if (row != PAD_TOKEN_ID).any() else 0
                          for row in inputs]
    prompt_lengths = prompt_lengths or [0] * n_rows

    def category(row: int, pos: int, token: int, is_target: bool) -> str:
        seq_pos = pos + 1 if is_target else pos  # a target at pos is the token at pos + 1
        if token == IGNORE_INDEX:
            return "masked"
        if seq_pos >= lengths[row]:
            return "end" if seq_pos == lengths[row] else "padding"
        return "prompt" if seq_pos < prompt_lengths[row] else "response"

    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 1.6, 1.05 * n_rows * 2 + 0.9), dpi=100)
    y = 0
    for row in range(n_rows):
        for label, tensor, is_target in (("input", inputs, False), ("target", targets, True)):
            ax.text(-0.15, y + 0.5, f"{label} {row}", ha="right", va="center", fontsize=11, color=COLORS["text"])
            for x, pos in enumerate(columns):
                token = int(tensor[row, pos])
                kind = category(row, pos, token, is_target)
                ax.add_patch(Rectangle((x, y), 0.94, 0.9, facecolor=COLORS[kind], edgecolor="#666666",
                                       hatch="//" if kind == "masked" else None, linewidth=0.8))
                ax.text(x + 0.47, y + 0.58, _token_label(token, tokenizer), ha="center", va="center", fontsize=9.5,
                        color=COLORS["accent"] if kind == "masked" else COLORS["text"], fontweight="bold")
                ax.text(x + 0.47, y + 0.22, "" if token == IGNORE_INDEX else str(token), ha="center", va="center",
                        fontsize=7.5, color="#333333")
            y += 1
        y += 0.35
    for x, pos in enumerate(columns):
        ax.text(x + 0.47, -0.25, str(pos), ha="center", va="center", fontsize=8, color="#555555")
    ax.set_xlim(-1.6, len(columns))
    ax.set_ylim(y, -0.6)
    ax.axis("off")
    legend = [Patch(facecolor=COLORS[k], edgecolor="#666666", hatch="//" if k == "masked" else None, label=label)
              for k, label in (("prompt", "prompt"), ("response", "response"), ("end", "end-of-text (learned)"),
                               ("padding", "padding"), ("masked", "masked target (-100)"))]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=5, frameon=False, fontsize=10)
    if title:
        ax.set_title(title, fontsize=13)
    fig.patch.set_facecolor("white")  # readable on GitHub's dark theme too
    fig.tight_layout()
    return fig
