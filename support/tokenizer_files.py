"""GPT-2's two vocabulary files: their hashes, checking a folder, installing them where tiktoken looks."""

from __future__ import annotations

import hashlib
from pathlib import Path

from support.files import atomic_write_bytes

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


def install_tokenizer_files(source_dir: str | Path, cache_dir: str | Path) -> Path:
    """Copy encoder.json and vocab.bpe into a tiktoken cache folder, named as tiktoken expects.

    Point TIKTOKEN_CACHE_DIR at `cache_dir` afterwards and tiktoken.get_encoding("gpt2") works offline.
    """
    source_dir, cache_dir = Path(source_dir), Path(cache_dir)
    check_tokenizer_folder(source_dir)
    for name, (url, _) in GPT2_VOCAB_FILES.items():
        atomic_write_bytes(cache_dir / hashlib.sha1(url.encode()).hexdigest(), (source_dir / name).read_bytes())
    return cache_dir
