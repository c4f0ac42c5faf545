"""Files that are never half-written: atomic writes, and cleaning up after a killed one."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache"  # downloads, the tokenizer files, the hub probe's memo

_TEMP_SUFFIX = ".tmp"  # atomic_destination's folders are named ".<file name>.<random>.tmp"


@contextlib.contextmanager
def atomic_destination(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`; when the block completes, the file replaces `path` in one rename.

    If the block fails or is interrupted, `path` keeps its old content and the temporary file is removed.
    The temporary file sits in a private folder (".<name>.<random>.tmp" beside `path`), so whatever a
    writer adds next to it (safetensors writes its own temporary copy) goes with it; after a SIGKILL,
    remove_stale_temporaries finds what is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # ordinary permissions, not those of a private temporary file
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # "No space left on device" alone names no file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Remove what an atomic write of one of `names` in `folder` left when it was killed; returns the paths.

    Only call it when no other process is writing those files.
    """
    removed = []
    for name in names:
        for stale in Path(folder).glob(f".{glob.escape(name)}.*{_TEMP_SUFFIX}"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_destination)."""
    with atomic_destination(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _finite_or_none(obj):
    """`obj` with every NaN or infinite float replaced by None (JSON's null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(value) for value in obj]
    return obj


def atomic_write_json(path: str | Path, obj) -> Path:
    """Write `obj` as indented UTF-8 JSON, atomically.

    Strict JSON that every parser reads: NaN and infinities are written as null.
    """
    obj = _finite_or_none(obj)
    try:
        data = (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" has no UTF-8: keep it as a \u escape
        data = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("ascii")
    return atomic_write_bytes(path, data)
