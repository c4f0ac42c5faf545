"""Talk to your model: a local chat page on the finetuned checkpoint (`make chat`).

    python chat.py                          # http://127.0.0.1:8000, the newest finetuned checkpoint
    python chat.py --checkpoint runs/lora/model.safetensors --port 8001
    python chat.py --host 0.0.0.0           # the whole room can reach it (a warning says so)

Which model answers:
    - "finetuned": the newest of checkpoints/*-instruct.safetensors (notebook 07-finetuning) and
      runs/**/model.safetensors (finetune.py --out), or --checkpoint;
    - "base": GPT-2 with OpenAI's weights if they are cached (`make download`), else the UNTRAINED
      stand-in; the page says which. Compare mode asks both the same prompt, side by side.

How it works: the standard library's HTTP server; answers stream as server-sent events, one event
per token, produced by utils.generate (KV cache) through its on_token hook. One lock keeps the model
to one answer at a time: other browsers wait in a short queue, each reading only its own stream.
The page (chat_page/) writes every text with textContent, never as HTML. README explains why this
is not Gradio or Chainlit.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import torch

from utils import (
    GPT_CONFIGS,
    PAD_TOKEN_ID,
    PROMPT_STYLES,
    GPTModel,
    build_gpt2,
    cached_gpt2_weights,
    encode_text,
    format_prompt,
    generate,
    get_tokenizer,
    load_checkpoint,
    model_name_of,
    smoke_mode,
)

REPO_ROOT = Path(__file__).resolve().parent
PAGE_DIR = REPO_ROOT / "chat_page"
PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/chat.js": ("chat.js", "text/javascript"),
    "/chat.css": ("chat.css", "text/css"),
}
# The page's scripts come only from this server; even text that slipped into the page as HTML could not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
STANDIN_LABEL = "UNTRAINED stand-in ('tiny' config, random weights): gibberish, not GPT-2"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond is refused with a message that says so."""

    max_chars: int = 2000  # instruction and input together
    max_new_tokens: int = 500
    max_temperature: float = 2.0
    max_waiting: int = 8  # requests queued behind the one generating
    max_body_bytes: int = 64_000


@dataclass
class ChatModel:
    key: str  # "finetuned" or "base"
    label: str  # shown on the page: what this model really is
    model: GPTModel


class RequestError(ValueError):
    """A request the page must refuse; the message is shown to the user as is."""


class Stopped(Exception):
    """Raised from the token hook to end a generation early (Stop button, Ctrl+C)."""


@dataclass
class Generation:
    """One validated request."""

    model: ChatModel
    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_k: int | None
    stop: threading.Event = field(default_factory=threading.Event)


# --- which models: checkpoint discovery and loading ---


def find_finetuned_checkpoint(root: Path = REPO_ROOT) -> Path | None:
    """The newest finetuned model notebook 07-finetuning or finetune.py wrote under `root`, if any."""
    candidates = [*root.glob("checkpoints/*-instruct.safetensors"), *root.glob("runs/**/model.safetensors")]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def checkpoint_config(path: Path) -> dict:
    """The model config save_checkpoint stored in the file's metadata (read from the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return json.loads(metadata["config"])
    except KeyError:
        raise SystemExit(f"chat: {path} holds no model config (not written by save_checkpoint)") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise SystemExit(f"chat: {path} is not a readable checkpoint ({exc})") from None


def standin_model() -> GPTModel:
    """The untrained 'tiny' model, seeded as load_gpt2_or_standin seeds it (the smoke runs' starting point)."""
    torch.manual_seed(123)
    return build_gpt2("tiny")


def base_model(model_name: str) -> ChatModel:
    """GPT-2 with OpenAI's weights when they are on disk (never downloads), else the stand-in."""
    weights = None if smoke_mode() else cached_gpt2_weights(model_name)
    if weights is None:
        return ChatModel("base", STANDIN_LABEL, standin_model())
    return ChatModel(
        "base", f"{model_name} base (OpenAI's pretrained weights, not finetuned)", build_gpt2(model_name, weights)
    )


def load_models(checkpoint: Path | None, model_name: str = "gpt2-small") -> tuple[dict[str, ChatModel], str]:
    """The finetuned model (if there is a checkpoint) and its base model; plus a note for the page."""
    if checkpoint is None:
        base = base_model(model_name)
        return {"base": base}, (
            f"No finetuned checkpoint found (run notebook 07-finetuning or finetune.py): answering with {base.label}."
        )
    config = checkpoint_config(checkpoint)
    model = GPTModel(config)
    try:
        load_checkpoint(model, checkpoint)
    except ValueError as exc:
        raise SystemExit(f"chat: {exc}") from None
    name = model_name_of(model)
    where = checkpoint.relative_to(REPO_ROOT) if checkpoint.is_relative_to(REPO_ROOT) else checkpoint
    untrained = " (finetuned from the UNTRAINED stand-in: gibberish)" if name == "tiny" else ""
    tuned = ChatModel("finetuned", f"{name} finetuned: {where}{untrained}", model.eval())
    base = ChatModel("base", STANDIN_LABEL, standin_model()) if name == "tiny" else base_model(name)
    return {"finetuned": tuned, "base": base}, ""


# --- the server ---


class ChatApp:
    """The models, the tokenizer and the lock that lets one answer use the model at a time."""

    def __init__(self, models: dict[str, ChatModel], tokenizer, note: str = "", limits: Limits = Limits()):
        self.models, self.tokenizer, self.note, self.limits = models, tokenizer, note, limits
        self.model_lock = threading.Lock()
        self.state_lock = threading.Lock()  # guards the counters and `running`
        self.running: dict[str, Generation] = {}  # request id -> its generation, for /api/stop
        self.waiting = 0
        self.generating = 0
        self.counts = {"finished": 0, "stopped": 0, "disconnected": 0}
        self.shutting_down = threading.Event()

    def info(self) -> dict:
        return {
            "models": {key: m.label for key, m in self.models.items()},
            "note": self.note,
            "styles": sorted(PROMPT_STYLES),
            "limits": vars(self.limits),
        }

    def status(self) -> dict:
        with self.state_lock:
            return {"generating": self.generating, "waiting": self.waiting, **self.counts}

    def count(self, outcome: str) -> None:
        with self.state_lock:
            self.counts[outcome] += 1

    def parse(self, body: dict) -> Generation:
        """A Generation from the page's JSON, or RequestError saying what is wrong and what is allowed."""
        lim = self.limits
        instruction, extra = body.get("instruction", ""), body.get("input", "")
        if not isinstance(instruction, str) or not isinstance(extra, str):
            raise RequestError("instruction and input must be text")
        if not instruction.strip():
            raise RequestError("Type an instruction first.")
        if len(instruction) + len(extra) > lim.max_chars:
            raise RequestError(
                f"Too long: instruction and input have {len(instruction) + len(extra):,} characters "
                f"together; the limit is {lim.max_chars:,}."
            )
        key = body.get("model") or next(iter(self.models))
        if key not in self.models:
            raise RequestError(f"No {key!r} model here; this page has: {', '.join(self.models)}.")
        style = body.get("style", "alpaca")
        if style not in PROMPT_STYLES:
            raise RequestError(f"Unknown prompt style {style!r}; choose one of {', '.join(sorted(PROMPT_STYLES))}.")
        max_new = _number(body.get("max_new_tokens", 100), int, "Max new tokens", 1, lim.max_new_tokens)
        temperature = _number(body.get("temperature", 0.0), float, "Temperature", 0.0, lim.max_temperature)
        vocab = self.models[key].model.cfg["vocab_size"]
        top_k = body.get("top_k")
        top_k = None if top_k in (None, "", 0) else _number(top_k, int, "Top-k", 1, vocab)
        prompt = format_prompt({"instruction": instruction, "input": extra}, style)
        ids = encode_text(prompt, self.tokenizer)
        context = self.models[key].model.cfg["context_length"]
        if len(ids) + max_new > context:
            raise RequestError(
                f"Too long for the model: the prompt is {len(ids)} tokens and {max_new} new tokens "
                f"would pass its {context}-token window; shorten the text or lower max new tokens."
            )
        return Generation(self.models[key], prompt, ids, max_new, temperature, top_k)

    def run(self, gen: Generation, send) -> None:
        """Answer `gen`, calling send(event, data) for every event; raises OSError when the client is gone."""
        request_id = secrets.token_hex(16)
        with self.state_lock:
            if self.waiting >= self.limits.max_waiting:
                raise RequestError(f"Busy: {self.waiting} answers are waiting already; try again in a moment.")
            self.running[request_id] = gen
            self.waiting += 1
        in_queue, holding = True, False
        try:
            send(
                "meta",
                {
                    "id": request_id,
                    "model": gen.model.key,
                    "label": gen.model.label,
                    "prompt": gen.prompt,
                    "prompt_tokens": len(gen.prompt_ids),
                },
            )
            while not (holding := self.model_lock.acquire(timeout=0.2)) and not self._ending(gen):
                # Tells the page why nothing comes yet, and finds a closed page while it waits.
                send("queued", self.status())
            if self._ending(gen):
                self.count("stopped")
                send("done", {"reason": "stopped", "text": "", "tokens": 0, "seconds": 0.0})
                return
            with self.state_lock:
                self.waiting, self.generating, in_queue = self.waiting - 1, self.generating + 1, False
            send("started", {})
            self._generate(gen, send)
        except OSError:
            self.count("disconnected")
            raise
        finally:
            with self.state_lock:
                self.running.pop(request_id, None)
                if in_queue:
                    self.waiting -= 1
                else:
                    self.generating -= 1
            if holding:
                self.model_lock.release()

    def _generate(self, gen: Generation, send) -> None:
        new_ids: list[int] = []
        start = time.perf_counter()

        def on_token(row: int, token: int) -> None:
            if self._ending(gen):
                raise Stopped
            new_ids.append(token)
            send("token", {"id": token, "text": self.tokenizer.decode(new_ids)})

        reason = "stopped"
        try:
            generate(
                gen.model.model,
                torch.tensor([gen.prompt_ids]),
                gen.max_new_tokens,
                context_size=gen.model.model.cfg["context_length"],
                temperature=gen.temperature,
                top_k=gen.top_k,
                eos_id=PAD_TOKEN_ID,
                on_token=on_token,
            )
            reason = "max_new_tokens" if len(new_ids) == gen.max_new_tokens else "end_of_text"
        except Stopped:
            pass
        self.count("stopped" if reason == "stopped" else "finished")
        send(
            "done",
            {
                "reason": reason,
                "text": self.tokenizer.decode(new_ids),
                "tokens": len(new_ids),
                "seconds": round(time.perf_counter() - start, 3),
            },
        )

    def _ending(self, gen: Generation) -> bool:
        return gen.stop.is_set() or self.shutting_down.is_set()

    def stop(self, request_id: str) -> bool:
        with self.state_lock:
            gen = self.running.get(request_id)
        if gen is not None:
            gen.stop.set()
        return gen is not None


def _number(value, kind: type, name: str, low, high):
    """`value` as an int or float within [low, high], or a RequestError naming the field and its range."""
    try:
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise RequestError(
            f"{name} must be {'a whole number' if kind is int else 'a number'}, got {str(value)[:20]!r}."
        ) from None
    if not low <= number <= high:  # also refuses NaN
        raise RequestError(f"{name} must be between {low} and {high}, got {number}.")
    return number


class ChatHandler(BaseHTTPRequestHandler):
    server_version = "course-chat"
    timeout = 60  # seconds a silent connection may hold its thread
    app: ChatApp  # set on the subclass that make_server creates
    # On 127.0.0.1 only these Host headers: a web page that points its own name at 127.0.0.1
    # (DNS rebinding) gets nothing. None: any (listening on the room's network).
    allowed_hosts: set[str] | None = None

    def _host_refused(self) -> bool:
        if self.allowed_hosts is None or self.headers.get("Host") in self.allowed_hosts:
            return False
        self._send_json(
            HTTPStatus.FORBIDDEN, {"error": f"Open this page at http://127.0.0.1:{self.server.server_port}/"}
        )
        return True

    def log_message(self, format, *args):  # one quiet line per request would flood a workshop terminal
        pass

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        if self._host_refused():
            return
        path = urlsplit(self.path).path
        if path in PAGE_FILES:
            name, kind = PAGE_FILES[path]
            body = (PAGE_DIR / name).read_bytes()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        elif path == "/api/info":
            self._send_json(HTTPStatus.OK, self.app.info())
        elif path == "/api/status":
            self._send_json(HTTPStatus.OK, self.app.status())
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {path}"})

    def _read_json(self) -> dict:
        origin = self.headers.get("Origin")
        if origin and urlsplit(origin).netloc != self.headers.get("Host"):
            raise RequestError("Requests from other sites are refused.")  # another tab's page posting here
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError("The request has no length.") from None
        if not 0 <= length <= self.app.limits.max_body_bytes:
            raise RequestError(
                f"The request is too large ({length:,} bytes; the limit is {self.app.limits.max_body_bytes:,})."
            )
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise RequestError("The request is not JSON.") from None
        if not isinstance(body, dict):
            raise RequestError("The request must be a JSON object.")
        return body

    def do_POST(self) -> None:
        if self._host_refused():
            return
        path = urlsplit(self.path).path
        try:
            body = self._read_json()
            if path == "/api/prompt":
                gen = self.app.parse(body)
                self._send_json(HTTPStatus.OK, {"prompt": gen.prompt, "prompt_tokens": len(gen.prompt_ids)})
            elif path == "/api/stop":
                self._send_json(HTTPStatus.OK, {"stopped": self.app.stop(str(body.get("id", "")))})
            elif path == "/api/generate":
                self._stream(self.app.parse(body))
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {path}"})
        except RequestError as err:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except OSError:
            pass  # the browser went away; nothing to answer

    def _stream(self, gen: Generation) -> None:
        started = False

        def send(event: str, data: dict) -> None:
            nonlocal started
            if not started:  # headers only once the request is accepted, so a refusal is still a plain 400
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                started = True
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        self.app.run(gen, send)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def make_server(app: ChatApp, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for `app`; call serve_forever() (port 0 picks a free port: server.server_port)."""
    handler = type("BoundChatHandler", (ChatHandler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    if host in LOOPBACK_HOSTS:
        handler.allowed_hosts = {f"{name}:{server.server_port}" for name in ("127.0.0.1", "localhost", "[::1]")}
    server.daemon_threads = True  # Ctrl+C does not wait for a browser that keeps a stream open
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A local chat page on your finetuned GPT-2.")
    p.add_argument(
        "--checkpoint", type=Path, help="a finetuned model (default: the newest one in checkpoints/ or runs/)"
    )
    p.add_argument("--no-checkpoint", action="store_true", help="ignore finetuned checkpoints: the base model only")
    p.add_argument(
        "--model",
        default="gpt2-small",
        choices=[n for n in GPT_CONFIGS if n != "tiny"],
        help="base model when there is no checkpoint (default: gpt2-small)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0: the whole network)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    args = p.parse_args(argv)

    if args.checkpoint is not None and not args.checkpoint.is_file():
        p.error(f"--checkpoint {args.checkpoint}: no such file")
    checkpoint = None if args.no_checkpoint else (args.checkpoint or find_finetuned_checkpoint())
    models, note = load_models(checkpoint, args.model)
    app = ChatApp(models, get_tokenizer(), note)
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        print(
            f"chat: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); try another --port",
            file=sys.stderr,
        )
        return 1
    for m in models.values():
        print(f"chat: {m.key}: {m.label}")
    if note:
        print(f"chat: {note}")
    if args.host not in LOOPBACK_HOSTS:
        print(
            f"chat: WARNING: listening on {args.host}: anyone on this network can open the page and use this "
            "computer's CPU. Stop with Ctrl+C when the session is over.",
            file=sys.stderr,
        )
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"chat: serving on http://{shown_host}:{server.server_port}/  (Ctrl+C stops)", flush=True)
    if args.host in ("0.0.0.0", ""):
        print(f"chat: others open http://<this computer's address>:{server.server_port}/ (`hostname -I` shows it)")
    # Ctrl+C even when started in the background (where a shell ignores it); `kill` stops it as cleanly.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not break the shutdown
        app.shutting_down.set()  # running answers end at their next token
        # Wait for that, and keep the model: torch must not compute in a thread while Python shuts down.
        app.model_lock.acquire(timeout=10)
        server.server_close()
    print("chat: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
