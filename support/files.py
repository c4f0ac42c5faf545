"""Files that are never half-written: atomic writes, cleaning up after a killed one, and the output-folder lock.

How runs keep your files safe (use the same pieces for every new command: DPO, chat, ...):

- Atomic writes. atomic_destination writes into a private folder ".<name>.<random>.tmp" beside the
  target, fsyncs, then renames over the target: a kill leaves the old file whole.
- Marked temporaries. That private folder holds a marker file (TEMP_MARKER) naming this program, the
  host and the writing process. remove_stale_temporaries removes only folders that carry the marker,
  whose writer is no longer running on this host: a user's file or folder that merely looks like a
  temporary (".model.safetensors.old.tmp") is never touched, nor is a live writer's temporary.
- The output-folder lock. OutputFolderLock takes an exclusive flock on "<out>/.lock" for the whole
  run; a second run in the same folder is refused at once with the holder's pid, host and start
  time. The lock file stays (an empty-looking leftover is harmless: the kernel releases the lock when
  the holder dies). Take the lock before looking at or cleaning the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache"  # downloads, the tokenizer files, the hub probe's memo

_TEMP_SUFFIX = ".tmp"  # atomic_destination's folders are named ".<file name>.<random>.tmp"
TEMP_MARKER = ".atomic-write-owner.json"  # inside each of them: who made it (see is_stale_temporary)
_PROGRAM = "gpt-instruct atomic_destination"


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
        (tmp_dir / TEMP_MARKER).write_text(json.dumps(_owner()), encoding="utf-8")
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


def _owner() -> dict:
    return {"program": _PROGRAM, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale_temporary(candidate: Path) -> bool:
    """True for a folder that atomic_destination made (its marker says so) and whose writer is gone."""
    if candidate.is_symlink() or not candidate.is_dir():
        return False
    try:
        owner = json.loads((candidate / TEMP_MARKER).read_text(encoding="utf-8"))
        if owner.get("program") != _PROGRAM:
            return False
        if owner.get("host") == socket.gethostname() and _process_alive(int(owner["pid"])):
            return False  # a writer that is still at work
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # no readable marker: not provably ours
    return True


def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Remove what an atomic write of one of `names` in `folder` left when it was killed; returns the paths.

    Only folders that carry atomic_destination's marker and whose writer is gone (see is_stale_temporary);
    anything else with a similar name belongs to someone else and stays.
    """
    removed = []
    for name in names:
        for stale in Path(folder).glob(f".{glob.escape(name)}.*{_TEMP_SUFFIX}"):
            if is_stale_temporary(stale):
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
    return removed


class FolderInUseError(RuntimeError):
    """Another run holds the output folder's lock; the message says which."""


class OutputFolderLock:
    """An exclusive lock on an output folder for the life of one run (see the module docstring).

    with OutputFolderLock(out):   # FolderInUseError if another run holds it
        ...                       # check, clean and write the folder
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.NAME
        self._file = None

    def acquire(self) -> OutputFolderLock:
        file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            try:
                owner = json.loads(holder)
                who = (
                    f"process {owner['pid']} on {owner['host']}, started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner['started']))}"
                )
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise FolderInUseError(
                f"{self.path.parent} is in use by another run ({who}): wait for it to end, or choose another --out"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps(_owner()))
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None

    def __enter__(self) -> OutputFolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


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
