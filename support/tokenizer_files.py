"""GPT-2's tokenizer files: their hashes, checking a folder, loading the tokenizer from it or from tiktoken's cache."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from support.files import DEFAULT_CACHE_DIR, atomic_write_bytes

TOKENIZER_DIR_ENV = "GPT2_TOKENIZER_DIR"  # a folder holding GPT-2's encoder.json and vocab.bpe

GPT2_VOCAB_FILES = {  # file name -> (download URL, sha256); tiktoken checks the same hashes
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}


class TokenizerUnavailableError(RuntimeError):
    """GPT-2's vocabulary files could be neither downloaded nor found locally."""


def check_tokenizer_folder(folder: Path) -> None:
    """Both vocabulary files present, readable, and byte-identical to GPT-2's originals."""
    try:
        for name in GPT2_VOCAB_FILES:
            if not (folder / name).is_file():
                raise TokenizerUnavailableError(
                    f"{folder / name}: missing (a GPT-2 tokenizer folder needs {' and '.join(GPT2_VOCAB_FILES)})"
                )
        contents = {name: (folder / name).read_bytes() for name in GPT2_VOCAB_FILES}
    except OSError as exc:  # e.g. a folder or a file without read permission
        raise TokenizerUnavailableError(f"{exc.filename or folder}: cannot be read ({exc.strerror or exc})") from None
    for name, (_, sha256) in GPT2_VOCAB_FILES.items():
        if hashlib.sha256(contents[name]).hexdigest() != sha256:
            raise TokenizerUnavailableError(
                f"{folder / name}: not GPT-2's original file (sha256 differs); download it again"
            )


@lru_cache(maxsize=4)
def tokenizer_from_folder(folder: Path):
    """GPT-2's tokenizer from a folder holding its encoder.json and vocab.bpe (checked against their hashes)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    check_tokenizer_folder(folder)
    # The same regex and special token as tiktoken's own "gpt2" encoding; only the files are local.
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(folder / "vocab.bpe"), encoder_json_file=str(folder / "encoder.json")
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: len(ranks)},  # 50256: right after the BPE tokens, as in tiktoken's "gpt2"
    )


def tiktoken_gpt2():
    """tiktoken's own "gpt2" encoding, downloaded once into the project's cache; a clear error when that fails."""
    import tiktoken

    if "TIKTOKEN_CACHE_DIR" not in os.environ and "DATA_GYM_CACHE_DIR" not in os.environ:
        # Keep tiktoken's download inside the project, so a prepared folder works offline.
        os.environ["TIKTOKEN_CACHE_DIR"] = str(DEFAULT_CACHE_DIR / "tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # tiktoken raises requests' errors, or ValueError on a bad hash
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename:  # the disk, not the network
            cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
            raise TokenizerUnavailableError(
                f"Could not save GPT-2's tokenizer in {cache} ({exc.strerror}). Fix: make that folder writable, "
                f"or set TIKTOKEN_CACHE_DIR to a writable folder, or {TOKENIZER_DIR_ENV} to a folder holding "
                "encoder.json and vocab.bpe."
            ) from None
        raise TokenizerUnavailableError(
            "Could not load GPT-2's tokenizer: tiktoken needs to download encoder.json and vocab.bpe "
            f"and that failed ({type(exc).__name__}).\n"
            "Fix, either:\n"
            "  - on a machine with network, run `make download` once (fills .cache/tiktoken), or\n"
            f"  - set {TOKENIZER_DIR_ENV}=/path/to/folder holding encoder.json and vocab.bpe."
        ) from None


def install_tokenizer_files(source_dir: str | Path, cache_dir: str | Path) -> Path:
    """Copy encoder.json and vocab.bpe into a tiktoken cache folder, named as tiktoken expects.

    Point TIKTOKEN_CACHE_DIR at `cache_dir` afterwards and tiktoken.get_encoding("gpt2") works offline.
    """
    source_dir, cache_dir = Path(source_dir), Path(cache_dir)
    check_tokenizer_folder(source_dir)
    for name, (url, _) in GPT2_VOCAB_FILES.items():
        atomic_write_bytes(cache_dir / hashlib.sha1(url.encode()).hexdigest(), (source_dir / name).read_bytes())
    return cache_dir
