"""Network reads with an overall deadline: data downloads, the Hugging Face Hub probe.

A socket timeout only bounds each single wait, so a server that sends one byte every few seconds
would otherwise never time out: every request here also gets a deadline for the whole exchange.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

from support.files import DEFAULT_CACHE_DIR, REPO_ROOT, atomic_write_bytes, atomic_write_json
from support.jsonio import DatasetError, parse_json_bytes

MAX_ERROR_BODY = 64 * 1024  # bytes of an HTTP error's body that are read (and at most 300 characters kept)


def download_file(
    url: str,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    timeout: float = 30.0,
    deadline: float = 600.0,
    check: Callable[[bytes, str], object] | None = None,
) -> Path:
    """Download `url` into `cache_dir` once; later calls reuse the local copy (works offline).

    - `check(body, url)` raises a DatasetError for a body that is not what we want (by default:
      parse_json_bytes; utils.load_instruction_data passes parse_instruction_data). It runs before the file
      enters the cache, so an HTML error page or a cut-off body is never cached; a cached copy that fails it
      is downloaded again.
    - `timeout` bounds each wait for the server, `deadline` the whole download (seconds).
    """
    check = check or parse_json_bytes
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    digest = hashlib.sha1(url.encode()).hexdigest()[:10]
    local_path = Path(cache_dir) / "data" / f"{digest}-{name}"
    stale = None
    if local_path.exists():
        try:
            check(local_path.read_bytes(), str(local_path))
            return local_path
        except DatasetError as exc:  # e.g. written by an older version that cached anything
            stale = exc
            warnings.warn(f"The cached copy is not usable, downloading it again: {exc}", stacklevel=2)
    # shown relative to the repository: committed notebook outputs hold no path of the build machine
    shown = local_path.relative_to(REPO_ROOT) if local_path.is_relative_to(REPO_ROOT) else local_path
    fix = f"Fix: download it on a machine with network and pass the local path instead, or copy it to {shown}."
    if stale is not None:
        fix = f"The cached copy is not usable either: {stale}\n{fix}"
    try:
        payload = fetch(url, timeout, deadline)
    except DeadlineExceeded:
        raise DatasetError(
            f"Could not download {url}: it took longer than {deadline:g} s overall "
            f"(a slow or stalled server; allow more with deadline=SECONDS, or finetune.py --download-deadline SECONDS)."
            f"\n{fix}"
        ) from None
    except TimeoutError:
        raise DatasetError(f"Could not download {url}: the server sent nothing for {timeout:g} s.\n{fix}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DatasetError(f"Could not download {url} ({exc}).\n{fix}") from None
    try:
        check(payload, url)
    except DatasetError as exc:
        raise DatasetError(f"Downloaded {url}, but it is not usable, so it was not cached:\n{exc}") from None
    return atomic_write_bytes(local_path, payload)


HUB_PROBE_TIMEOUT = 2.0  # seconds to wait for the Hub before calling it unreachable


HUB_FAILURE_MEMORY = 600  # seconds a failed probe is remembered, so the next notebooks do not wait again


HUB_FAILURE_FILE = DEFAULT_CACHE_DIR / "hub-unreachable.json"


def _probe(url: str) -> str | None:
    """None if the server at `url` answers at all (any HTTP status), else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_PROBE_TIMEOUT).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except Exception as exc:  # DNS failure, refused, timed out, TLS: all mean "not reachable from here"
        return str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    return None


def hub_unreachable_reason() -> str | None:
    """None when the Hugging Face Hub can be reached, else the reason, within about HUB_PROBE_TIMEOUT s.

    A failure is remembered in .cache/ for HUB_FAILURE_MEMORY seconds, so that notebooks in new
    kernels learn it at once instead of probing again.
    """
    try:
        memo = json.loads(HUB_FAILURE_FILE.read_text(encoding="utf-8"))
        age = time.time() - float(memo["time"])
        if 0 <= age < HUB_FAILURE_MEMORY:
            return f"{memo['reason']} (found {age:.0f} s ago; delete {HUB_FAILURE_FILE} to check again now)"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no memo, or a damaged one: probe
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    result: list[str | None] = []
    # A thread bounds the whole probe, DNS lookup included (urlopen's timeout does not cover DNS).
    probe = threading.Thread(target=lambda: result.append(_probe(endpoint)), daemon=True)
    probe.start()
    probe.join(HUB_PROBE_TIMEOUT + 0.5)
    reason = result[0] if result else f"no answer within {HUB_PROBE_TIMEOUT:.0f} s"
    if reason is None:
        HUB_FAILURE_FILE.unlink(missing_ok=True)
        return None
    reason = f"{endpoint} cannot be reached: {reason}"
    try:
        atomic_write_json(HUB_FAILURE_FILE, {"time": time.time(), "reason": reason})
    except OSError:
        pass  # a read-only checkout: the next kernel probes again, no harm
    return reason


class DeadlineExceeded(TimeoutError):
    """The whole exchange took longer than its deadline."""


class ConnectionDropped(ConnectionError):
    """The server closed or reset the connection before its answer was complete."""


# How a connection that was open ends early (RemoteDisconnected is a ConnectionResetError).
_DROPPED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


class _Deadline:
    """Shuts down the sockets of one request when its time is up, which wakes a blocked read."""

    def __init__(self, seconds: float):
        self.seconds, self.expired, self._finished = seconds, False, False
        self._sockets: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shutdown(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            if not self._finished:
                self.expired = True
                for sock in self._sockets:
                    self._shutdown(sock)

    @staticmethod
    def _shutdown(sock) -> None:
        try:  # the plain socket's shutdown, also for TLS: it only has to wake the reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._finished = True
        self._timer.cancel()


def _watched_connection(connection_class, deadline: _Deadline, host, **kwargs):
    """An http.client connection whose socket `deadline` can shut down."""
    connection = connection_class(host, **kwargs)
    # The plain socket, as soon as it exists (a proxy's CONNECT answer is read on it), and after
    # connect() the socket that carries the request, which for https is a new TLS socket.
    connection._create_connection = lambda *args, **kw: deadline.watch(socket.create_connection(*args, **kw))
    connect = connection.connect

    def connect_and_watch():
        connect()
        deadline.watch(connection.sock)

    connection.connect = connect_and_watch
    return connection


class _WatchConnections:
    deadline: _Deadline

    def do_open(self, http_class, request, **kwargs):
        return super().do_open(partial(_watched_connection, http_class, self.deadline), request, **kwargs)


class _WatchedHTTPHandler(_WatchConnections, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPSHandler(_WatchConnections, urllib.request.HTTPSHandler):
    pass


def fetch(request: str | urllib.request.Request, timeout: float, deadline: float, proxies: dict | None = None) -> bytes:
    """The whole body of `request`: `timeout` bounds each wait for the server, `deadline` the whole exchange.

    Raises DeadlineExceeded, ConnectionDropped, or urllib's own errors. An HTTPError for an error
    status carries the body the server sent with it as `error_body` (read within the deadline too).
    """
    clock = _Deadline(deadline)
    handlers = [urllib.request.ProxyHandler(proxies), _WatchedHTTPHandler(), _WatchedHTTPSHandler()]
    for handler in handlers[1:]:
        handler.deadline = clock
    opener = urllib.request.build_opener(*handlers)
    try:
        with clock:
            try:
                with opener.open(request, timeout=min(timeout, deadline)) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                try:
                    exc.error_body = exc.read(MAX_ERROR_BODY)  # an explanation, not a 50 MB page
                except (OSError, http.client.HTTPException):
                    exc.error_body = b""
                raise
    except (OSError, http.client.HTTPException) as exc:
        if clock.expired:
            raise DeadlineExceeded(f"no complete answer within {deadline:g} s") from None
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, _DROPPED):
            exc = exc.reason  # reset while the request was being sent
        if isinstance(exc, http.client.IncompleteRead):
            expected = f" of {len(exc.partial) + exc.expected}" if exc.expected is not None else ""
            raise ConnectionDropped(
                f"the server closed the connection after {len(exc.partial)}{expected} bytes of its answer"
            ) from None
        if isinstance(exc, _DROPPED):
            raise ConnectionDropped(
                f"the server closed the connection before answering completely ({type(exc).__name__}: {exc})"
            ) from None
        raise
    if clock.expired:  # the cut can look like a normal end of a body sent without a length
        raise DeadlineExceeded(f"no complete answer within {deadline:g} s")
    return body


class WeightsUnavailableError(RuntimeError):
    """Pretrained GPT-2 weights could be neither downloaded nor read; the message says how to fix it.

    `reason` is the cause alone (no advice), for callers that give their own advice.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _weights_fix(model_name: str, repo: str, cache_dir: str | Path | None) -> str:
    cache_arg = f", cache_dir={str(cache_dir)!r}" if cache_dir is not None else ""
    return (
        "Fix, either:\n"
        "  - run `make download` once on a machine with network (it fills the Hugging Face cache,\n"
        "    ~/.cache/huggingface or $HF_HOME; copy that folder here if this machine has no network), or in Python:\n"
        f"        utils.download_gpt2_weights('{model_name}'{cache_arg})\n"
        f"    or: hf download {repo} model.safetensors   (older huggingface_hub: huggingface-cli download)\n"
        "  - pass the path of a model.safetensors you already have:\n"
        f"        utils.build_gpt2('{model_name}', weights_path='/path/to/model.safetensors')\n"
        "  - or try the code on the UNTRAINED demo model (its output is gibberish): utils.build_gpt2('tiny')"
    )


def hub_download(
    model_name: str,
    repo: str,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    deadline: float = 3600.0,
) -> Path:
    """`repo`'s model.safetensors through huggingface_hub (its cache, resuming, progress bar).

    One short probe (or a failure remembered from the last few minutes) tells within about 2 s
    whether the Hub can be reached. With HF_HUB_OFFLINE=1 nothing is downloaded. Any failure raises
    WeightsUnavailableError, which says how to fix it (`model_name` is the name those fixes use).
    """
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported; read it again so that setting it
    # later (e.g. in a notebook) works too.
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        reason = "HF_HUB_OFFLINE is set and they are not in the local cache"
        raise WeightsUnavailableError(
            f"Could not get the {model_name} weights ({repo}, model.safetensors): {reason}. "
            f"Unset HF_HUB_OFFLINE to download.\n{_weights_fix(model_name, repo, cache_dir)}",
            reason,
        )
    unreachable = hub_unreachable_reason()
    if unreachable:
        raise WeightsUnavailableError(
            f"{model_name} weights: not in the Hugging Face cache, and {unreachable}. "
            "Fix: run `make download` on a machine with network (or copy its ~/.cache/huggingface here).",
            unreachable,
        )
    # huggingface_hub retries a response cut off half-way without end and has no overall deadline, so it
    # runs in a child process that is stopped at `deadline`; its partial file is resumed next time.
    child = subprocess.Popen(
        [sys.executable, "-c", _HUB_CHILD, repo, str(cache_dir or ""), str(force_download)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        answer, _ = child.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        reason = f"the download took longer than {deadline:g} s overall (a slow or stalled connection)"
        raise WeightsUnavailableError(
            f"Could not get the {model_name} weights ({repo}, model.safetensors) from the Hugging Face Hub: {reason}. "
            "What arrived is kept and the next try resumes it; allow more time with deadline=SECONDS.\n"
            f"{_weights_fix(model_name, repo, cache_dir)}",
            reason,
        ) from None
    except BaseException:  # Ctrl-C: the child goes too
        os.killpg(child.pid, signal.SIGKILL)
        raise
    try:
        result = json.loads(answer.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"error": f"the download process ended with code {child.returncode}"}
    if "error" in result:  # HTTP errors, a full disk, a network that drops mid-way: all end up here
        reason = result["error"]
        raise WeightsUnavailableError(
            f"Could not get the {model_name} weights ({repo}, model.safetensors) from the Hugging Face Hub "
            f"({reason}).\n{_weights_fix(model_name, repo, cache_dir)}",
            reason,
        )
    path = Path(result["path"])
    verify_hub_file(path, model_name)
    return path


HUB_DOWNLOAD_DEADLINE = 3600.0  # seconds for one GPT-2 weights download in all (gpt2-xl is 6.4 GB)
_HUB_CHILD = """
import json, sys
repo, cache_dir, force = sys.argv[1], sys.argv[2] or None, sys.argv[3] == "True"
try:
    from huggingface_hub import hf_hub_download
    print(json.dumps({"path": hf_hub_download(repo, "model.safetensors", cache_dir=cache_dir, force_download=force)}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0][:200]}))
"""
_VERIFIED: dict[tuple, bool] = {}  # (blob, size, mtime) of files already checked in this process


def verify_hub_file(path: Path, model_name: str) -> None:
    """A Hugging Face cache file must hash to the name of its blob (the file's ETag: sha256, or git's sha1).

    huggingface_hub names the blob after the ETag the server announced but never checks the bytes; a
    download damaged on the way, or bytes written into the cache later, would load silently. A file
    that fails is deleted (the next try downloads it again) and WeightsUnavailableError says so. A
    cache file that is not a link to a blob (a copied cache) carries no hash to check.
    """
    if not path.is_symlink():
        return
    blob = path.resolve()
    expected = blob.name.lower()
    if not (len(expected) in (40, 64) and all(c in "0123456789abcdef" for c in expected)):
        return
    stat = blob.stat()
    key = (str(blob), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key):
        return
    digest = hashlib.sha256() if len(expected) == 64 else hashlib.sha1(b"blob %d\0" % stat.st_size)
    with open(blob, "rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        reason = f"{path} does not match its hash {expected[:12]}... (damaged in transit or on disk); deleted"
        raise WeightsUnavailableError(
            f"The {model_name} weights in the Hugging Face cache: {reason}. Download them again (the next call does).",
            reason,
        )
    _VERIFIED[key] = True
