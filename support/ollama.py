"""Talking to a local Ollama server (the LLM judge): requests with deadlines, errors that say how to fix them."""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from support.network import ConnectionDropped, fetch

OLLAMA_CHAT_URL = "http://localhost:11434/api/chat"


OLLAMA_JUDGE_MODEL = "llama3.2"


RETRY_STATUSES = (429, 500, 502, 503, 504)  # answers after which the same request is tried again
RETRY_DELAYS = (1.0, 4.0, 16.0)  # seconds before each new try (exponential backoff); then the error stands


class OllamaUnavailableError(RuntimeError):
    """No usable judge: the Ollama server is unreachable, lacks the model, or answered something unexpected."""


def _ollama_url(url: str, path: str) -> str:
    """`url` with its path replaced, e.g. .../api/chat -> .../api/tags. A bare http://host:port works too."""
    return urllib.parse.urlsplit(url)._replace(path=path, query="", fragment="").geturl()


def _unreachable_message(url: str, reason: str, model: str) -> str:
    return (
        f"No Ollama server answered at {_ollama_url(url, '')} ({reason}).\n"
        "The LLM judge needs a running Ollama server. Fix:\n"
        "  1. install Ollama from https://ollama.com\n"
        "  2. start the server: `ollama serve` (keep it running in another terminal)\n"
        f"  3. fetch the judge model: `ollama pull {model}`\n"
        "If your server runs elsewhere, pass its address: --judge-url http://HOST:11434/api/chat "
        "(url=... in Python)."
    )


def _request_json(url: str, payload: dict | None, timeout: float, model: str = OLLAMA_JUDGE_MODEL) -> dict:
    """GET (payload None) or POST JSON to an Ollama endpoint; every failure becomes an OllamaUnavailableError.

    `timeout` bounds the whole exchange, not just each wait: a server that drips its answer is cut off too.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OllamaUnavailableError(f"{url!r} is not a usable URL; expected e.g. {OLLAMA_CHAT_URL}")
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    # Like Ollama's own client, never send loopback traffic through an http_proxy from the environment.
    proxies = {} if parts.hostname in ("localhost", "127.0.0.1", "::1") else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        body = fetch(request, timeout, timeout, proxies)
    except urllib.error.HTTPError as exc:  # the server is up but refuses; Ollama explains why in {"error": ...}
        try:
            detail = json.loads(exc.error_body).get("error", "")
        except (ValueError, AttributeError, RecursionError):
            detail = ""
        if exc.code == 404 and re.search(r"model .* not found", str(detail)):  # a model never pulled
            raise OllamaUnavailableError(f"Ollama at {url}: {detail}.\nFix: `ollama pull {model}`") from None
        detail = str(detail)
        if len(detail) > 300:  # a huge error page must not end up whole in metrics.json
            detail = detail[:300] + f"... ({len(detail):,} characters in all)"
        error = OllamaUnavailableError(
            f"Ollama at {url} answered HTTP {exc.code} {exc.reason}: {detail or 'no details'}"
        )
        error.retryable = exc.code in RETRY_STATUSES  # busy or a passing fault: worth another try
        raise error from None
    except TimeoutError:  # connected, but the reply is late or comes too slowly
        raise OllamaUnavailableError(
            f"Ollama at {url} did not answer within {timeout:g} s. The first request "
            f"loads the model, which can be slow on a CPU: allow more with timeout=SECONDS (finetune.py "
            f"--judge-timeout SECONDS)."
        ) from None
    except ConnectionDropped as exc:  # it answered, then hung up: a crash, a restart or something that is not Ollama
        raise OllamaUnavailableError(
            f"Ollama at {url}: {exc}. If the server restarted or ran out of memory, its log says why; then try again."
        ) from None
    except urllib.error.URLError as exc:  # no connection at all (a timeout here happened while connecting)
        reason = f"no connection within {timeout:g} s" if isinstance(exc.reason, TimeoutError) else str(exc.reason)
        raise OllamaUnavailableError(_unreachable_message(url, reason, model)) from None
    except (OSError, http.client.HTTPException) as exc:  # e.g. a server that does not speak HTTP
        raise OllamaUnavailableError(
            f"Ollama at {url} gave an unusable answer ({type(exc).__name__}: {exc}); is this an Ollama server?"
        ) from None
    try:
        reply = json.loads(body)
    except (ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict):
        raise OllamaUnavailableError(f"{url} did not answer with a JSON object; is this an Ollama server?")
    return reply


def ollama_models(url: str = OLLAMA_CHAT_URL, timeout: float = 5.0, model: str = OLLAMA_JUDGE_MODEL) -> list[str]:
    """Names of the models the server has pulled, e.g. ["llama3.2:latest"] (via GET /api/tags).

    `model` only goes into the `ollama pull` advice of the error raised when no server answers.
    """
    tags_url = _ollama_url(url, "/api/tags")
    reply = _request_json(tags_url, None, timeout, model)
    models = reply.get("models")
    if not isinstance(models, list):
        raise OllamaUnavailableError(f"{tags_url} has no 'models' list; is this an Ollama server?")
    return [m.get("name") or m.get("model", "") for m in models if isinstance(m, dict)]


def require_model(model: str, url: str = OLLAMA_CHAT_URL, timeout: float = 5.0) -> None:
    """Fail once, before any work, if the server is down or lacks `model` (the error says how to fix it)."""
    pulled = ollama_models(url, timeout, model)
    if model not in pulled and f"{model}:latest" not in pulled:
        raise OllamaUnavailableError(
            f"The Ollama server at {url} does not have the model {model!r} "
            f"(it has: {', '.join(pulled) or 'none'}).\nFix: `ollama pull {model}`"
        )


def chat_content(prompt: str, model: str, url: str, seed: int, timeout: float):
    """The message.content of Ollama's reply to one user message, as the server sent it (text, or not)."""
    chat_url = url if urllib.parse.urlsplit(url).path not in ("", "/") else _ollama_url(url, "/api/chat")
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,  # one JSON object instead of a stream of chunks
        "options": {"temperature": 0, "seed": seed, "num_ctx": 2048},
    }
    for delay in (*RETRY_DELAYS, None):
        try:
            reply = _request_json(chat_url, payload, timeout, model)
            break
        except OllamaUnavailableError as exc:  # HTTP 429 or 5xx: wait a little longer each time, then again
            if delay is None or not getattr(exc, "retryable", False):
                raise
            time.sleep(delay)
    try:
        return reply["message"]["content"]
    except (KeyError, TypeError):
        raise OllamaUnavailableError(
            f"{chat_url}: the reply has no message.content; is this Ollama's /api/chat?"
        ) from None


def query_ollama(
    prompt: str, model: str = OLLAMA_JUDGE_MODEL, url: str = OLLAMA_CHAT_URL, seed: int = 123, timeout: float = 120.0
) -> str:
    """Send one user message to Ollama's /api/chat and return the reply's text.

    Temperature 0 and a fixed seed make the judge repeatable on the same machine and Ollama version.
    `timeout` (seconds) bounds the whole request.
    """
    content = chat_content(prompt, model, url, seed, timeout)
    if not isinstance(content, str):
        raise OllamaUnavailableError(
            f"{url}: message.content is {type(content).__name__}, not text; is this Ollama's /api/chat?"
        )
    return content
