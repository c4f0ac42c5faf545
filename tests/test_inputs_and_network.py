"""Bad input, slow networks and failing servers: clear errors, and nothing already obtained is lost.

Every server here is a thread on 127.0.0.1 that lives for one test; slow servers drip for a bounded
time and stop as soon as the client hangs up, so the whole file runs in a few seconds.
"""

import http.server
import json
import math
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

import utils
from support.jsonio import MAX_JSON_NESTING, read_json_file
from support.ollama import query_ollama
from utils import (
    DatasetError,
    GPTModel,
    OllamaUnavailableError,
    custom_collate_fn,
    download_file,
    generate,
    generate_batch,
    judge_responses,
    load_instruction_data,
    parse_score,
    validate_instruction_data,
)

GOOD = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
]
GOOD_BODY = json.dumps(GOOD).encode()


# --- a scripted HTTP server: each request path maps to a behaviour ---


class Scripted(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.hits.append(self.path)
        action = self.server.routes.get(self.path)
        if action is None:
            return self.reply(404, b"not here")
        action(self)

    do_POST = do_CONNECT = do_GET  # CONNECT: this server plays an https proxy; the path is "host:port"

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def drip(handler, interval: float = 0.3, total: int = 100, status: int = 200) -> None:
    """An answer with a Content-Length of `total` bytes, sent one byte per `interval` seconds."""
    handler.send_response(status)
    handler.send_header("Content-Length", str(total))
    handler.end_headers()
    for _ in range(total):
        if handler.server.stopping.wait(interval):
            return
        try:
            handler.wfile.write(b" ")
            handler.wfile.flush()
        except OSError:  # the client hung up: exactly what the deadline should do
            return


def drip_error(handler) -> None:
    """An HTTP 500 whose explanation drips in."""
    drip(handler, status=500)


def drip_status_line(handler, interval: float = 0.3) -> None:
    """Even the status line comes one byte at a time (no socket timeout ever fires)."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]":
        if handler.server.stopping.wait(interval):
            return
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:
            return


def truncated(handler) -> None:
    """Promises 1000 bytes, sends 10, hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(GOOD_BODY[:10])
    handler.wfile.flush()
    handler.close_connection = True


def truncated_without_length(handler) -> None:
    """No Content-Length: the body simply ends early, which looks like a complete answer."""
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(GOOD_BODY[: len(GOOD_BODY) // 2])
    handler.close_connection = True


def reset(handler) -> None:
    """Reads the request, then resets the connection (RST, not a polite close)."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()
    handler.close_connection = True


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    srv.daemon_threads = True
    srv.handle_error = lambda request, client_address: None  # the reset route breaks its own socket on purpose
    srv.routes, srv.hits, srv.stopping = {}, [], threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.stopping.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=2)


@pytest.fixture
def tls_server(server, tmp_path, monkeypatch):
    """`server`, speaking HTTPS with a throwaway self-signed certificate that the client is told to trust."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.url = server.url.replace("http://", "https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return server


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    import support.ollama

    monkeypatch.setattr(support.ollama, "RETRY_DELAYS", (0.01, 0.02, 0.04))


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# --- 7. the dataset cache keeps only a body that is an instruction dataset ---


@pytest.mark.parametrize(
    "route, expected",
    [
        (
            lambda h: h.reply(200, b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>", "text/html"),
            r"not usable, so it was not cached(.|\n)*invalid JSON .*looks like a web page",
        ),
        (truncated, r"closed the connection after 10 of 1000 bytes"),
        (truncated_without_length, r"not usable, so it was not cached(.|\n)*invalid JSON"),
        (lambda h: h.reply(200, json.dumps({"error": "gone"}).encode()), r"expected a JSON list of entries"),
        (lambda h: h.reply(200, json.dumps([{"instruction": "i"}]).encode()), r"entry 0: missing field 'output'"),
    ],
)
def test_a_bad_body_is_never_cached(server, tmp_path, route, expected):
    server.routes["/data.json"] = route
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=expected):
        load_instruction_data(f"{server.url}/data.json", cache_dir=cache)
    assert cached_files(cache) == []
    # once the server recovers, the next call downloads the real file
    server.routes["/data.json"] = lambda h: h.reply(200, GOOD_BODY)
    assert load_instruction_data(f"{server.url}/data.json", cache_dir=cache) == GOOD
    assert len(cached_files(cache)) == 1


def test_a_bad_cached_file_is_fetched_again(server, tmp_path):
    server.routes["/data.json"] = lambda h: h.reply(200, GOOD_BODY)
    cache = tmp_path / "cache"
    path = download_file(f"{server.url}/data.json", cache)
    path.write_text("<html>cached by an older version</html>")
    with pytest.warns(UserWarning, match="cached copy is not usable"):
        assert load_instruction_data(f"{server.url}/data.json", cache_dir=cache) == GOOD
    assert path.read_bytes() == GOOD_BODY and len(server.hits) == 2
    # a good cached copy is used without asking the server
    assert load_instruction_data(f"{server.url}/data.json", cache_dir=cache) == GOOD
    assert len(server.hits) == 2


def test_a_bad_cached_file_and_no_server_says_both(server, tmp_path):
    server.routes["/data.json"] = lambda h: h.reply(200, GOOD_BODY)
    cache = tmp_path / "cache"
    path = download_file(f"{server.url}/data.json", cache)
    path.write_bytes(GOOD_BODY[:20])
    server.routes.clear()  # now 404
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            DatasetError,
            match=r"(?s)HTTP Error 404.*cached copy is not usable"
            r" either.*invalid JSON",
        ),
    ):
        load_instruction_data(f"{server.url}/data.json", cache_dir=cache)
    assert path.read_bytes() == GOOD_BODY[:20]  # left for the user to inspect; never served as data


def test_download_file_takes_another_check(server, tmp_path):
    server.routes["/notes.txt"] = lambda h: h.reply(200, b"plain text", "text/plain")
    path = download_file(f"{server.url}/notes.txt", tmp_path, check=lambda body, source: None)
    assert path.read_bytes() == b"plain text"


# --- 10. overall deadlines, and dropped connections that say so ---


@pytest.mark.parametrize("route", [drip, drip_status_line, drip_error])
def test_a_dripping_server_is_cut_off_at_the_deadline(server, tmp_path, route):
    server.routes["/data.json"] = route
    start = time.monotonic()
    # each byte arrives well within the 2 s timeout; only the 0.5 s overall deadline can stop it
    with pytest.raises(DatasetError, match=r"longer than 0.5 s overall"):
        download_file(f"{server.url}/data.json", tmp_path, timeout=2, deadline=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 5  # without the deadline this takes 30 s (the body) or 12 s (the status line)
    assert cached_files(tmp_path) == []


def test_https_downloads_have_the_deadline_too(tls_server, tmp_path):
    tls_server.routes["/data.json"] = lambda h: h.reply(200, GOOD_BODY)
    assert download_file(f"{tls_server.url}/data.json", tmp_path / "ok").read_bytes() == GOOD_BODY
    tls_server.routes["/slow.json"] = drip
    start = time.monotonic()
    with pytest.raises(DatasetError, match=r"longer than 0.5 s overall"):
        download_file(f"{tls_server.url}/slow.json", tmp_path / "slow", timeout=2, deadline=0.5)
    assert time.monotonic() - start < 5


def test_a_dripping_proxy_is_cut_off_too(server, tmp_path, monkeypatch):
    server.routes["127.0.0.1:9"] = drip_status_line  # the proxy's answer to CONNECT drips
    monkeypatch.setenv("https_proxy", server.url)
    start = time.monotonic()
    with pytest.raises(DatasetError, match=r"longer than 0.5 s overall"):
        download_file("https://127.0.0.1:9/data.json", tmp_path, timeout=2, deadline=0.5)
    assert time.monotonic() - start < 5 and server.hits == ["127.0.0.1:9"]


def test_a_reset_connection_is_not_reported_as_a_missing_server(server, tmp_path):
    server.routes["/data.json"] = reset
    with pytest.raises(DatasetError, match=r"closed the connection before answering"):
        download_file(f"{server.url}/data.json", tmp_path, timeout=2)
    server.routes["/api/chat"] = reset
    with pytest.raises(OllamaUnavailableError, match=r"closed the connection") as info:
        query_ollama("hello", url=f"{server.url}/api/chat", timeout=2)
    assert "install Ollama" not in str(info.value) and info.value.__cause__ is None


def test_a_truncated_judge_answer_is_a_clear_error(server):
    server.routes["/api/chat"] = truncated
    with pytest.raises(OllamaUnavailableError, match=r"closed the connection after 10 of 1000 bytes"):
        query_ollama("hello", url=f"{server.url}/api/chat", timeout=2)


@pytest.mark.parametrize("route", [drip, drip_status_line, drip_error])
def test_a_dripping_judge_is_cut_off_at_its_timeout(server, route):
    server.routes["/api/chat"] = route
    start = time.monotonic()
    with pytest.raises(OllamaUnavailableError, match=r"did not answer within 0.5 s"):
        query_ollama("hello", url=f"{server.url}/api/chat", timeout=0.5)
    assert time.monotonic() - start < 5


# --- 8. the judge: odd replies are unparsed, a failure mid-way keeps the scores ---


def chat_reply(content) -> callable:
    return lambda h: h.reply(
        200, json.dumps({"message": {"role": "assistant", "content": content}, "done": True}).encode()
    )


JUDGED = [
    {"instruction": f"Task {i}.", "input": "", "output": f"Answer {i}.", "model_response": f"response-{i}"}
    for i in range(5)
]


class JudgeScript:
    """Answers /api/tags, then /api/chat with the next behaviour from a list."""

    def __init__(self, server, behaviours):
        self.behaviours = list(behaviours)
        tags = json.dumps({"models": [{"name": "llama3.2:latest"}]}).encode()
        server.routes["/api/tags"] = lambda h: h.reply(200, tags)
        server.routes["/api/chat"] = self.chat

    def chat(self, handler):
        handler.rfile.read(int(handler.headers["Content-Length"]))
        self.behaviours.pop(0)(handler)


def test_a_reply_that_is_not_text_counts_as_unparsed(server):
    JudgeScript(server, [chat_reply(content) for content in ("80", 42, None, {"score": 9}, "70")])
    result = judge_responses(JUDGED, url=f"{server.url}/api/chat", timeout=2, progress=False)
    assert result["scores"] == [80, None, None, None, 70]
    assert result["unparsed"] == {"count": 3, "indices": [1, 2, 3]}
    assert result["replies"] == ["80", None, None, None, "70"]
    assert result["n_judged"] == 5 and result["error"] is None and result["mean"] == 75
    json.dumps(result, allow_nan=False)  # writable as strict JSON
    assert parse_score(42) is None and parse_score(None) is None
    JudgeScript(server, [chat_reply(42)])
    with pytest.raises(OllamaUnavailableError, match="message.content is int, not text"):
        query_ollama("hello", url=f"{server.url}/api/chat", timeout=2)


@pytest.mark.parametrize(
    "failure, expected",
    [
        (lambda h: h.reply(400, json.dumps({"error": "out of memory"}).encode()), r"HTTP 400 .*out of memory"),
        (reset, r"closed the connection"),
        (lambda h: h.reply(200, b"<html>proxy error</html>"), r"did not answer with a JSON object"),
        (drip, r"did not answer within 1 s"),
    ],
)
def test_a_failure_mid_way_keeps_every_score_received(server, failure, expected):
    JudgeScript(server, [chat_reply("85"), chat_reply("no idea"), chat_reply("60"), failure, chat_reply("99")])
    with pytest.warns(UserWarning, match=r"stopped at entry 3 of 5; the 3 replies before it are kept"):
        result = judge_responses(JUDGED, url=f"{server.url}/api/chat", timeout=1, progress=False)
    assert result["scores"] == [85, None, 60, None, None]
    assert result["n"] == 5 and result["n_judged"] == 3 and result["n_scored"] == 2
    assert result["mean"] == pytest.approx(72.5)
    assert result["unparsed"] == {"count": 1, "indices": [1]}  # entries 3 and 4 were never judged
    assert result["error"].startswith("entry 3: ") and re.search(expected, result["error"])
    json.dumps(result, allow_nan=False)


# --- 8 and 11: text and JSON that must not get past validation ---


def write_bytes(tmp_path: Path, payload: bytes, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "x\\ud800y", "output": "o"}]',
            r"data\.json: entry 1: field 'instruction': not valid Unicode text "
            r"\(a lone surrogate '\\ud800' at character 1\)",
        ),
        ('[{"instruction": "i", "output": "\\udfff"}]', r"entry 0: field 'output': not valid Unicode"),
        ('[{"instruction": "i", "output": "o", "input": "\\ud83d"}]', r"entry 0: field 'input': not valid Unicode"),
        (
            '[{"instruction": "i", "output": "o", "meta": {"tags": ["ok", "\\ud800"]}}]',
            r"entry 0: field 'meta' > 'tags' > \[1\]: not valid Unicode",
        ),
        ('[{"instruction": "i", "output": "o", "\\ud800": "x"}]', r"entry 0: a key: not valid Unicode"),
    ],
)
def test_text_that_utf8_cannot_encode_is_rejected(tmp_path, text, expected):
    with pytest.raises(DatasetError, match=expected):
        load_instruction_data(write_bytes(tmp_path, text.encode()))


def test_a_valid_surrogate_pair_is_fine(tmp_path):
    path = write_bytes(tmp_path, b'[{"instruction": "Smile \\ud83d\\ude00", "output": "ok"}]')
    assert load_instruction_data(path)[0]["instruction"] == "Smile \U0001f600"


def test_responses_with_unencodable_text_are_rejected_before_evaluation(tmp_path):
    path = write_bytes(tmp_path, b'[{"output": "o", "model_response": "\\ud800"}]', "responses.json")
    with pytest.raises(DatasetError, match=r"responses\.json: entry 0: field 'model_response': not valid Unicode"):
        utils.evaluate_responses(read_json_file(path), source=str(path))


def test_in_memory_data_is_checked_too():
    with pytest.raises(DatasetError, match=r"my\.json: entry 0: field 'output': not valid Unicode"):
        validate_instruction_data([{"instruction": "i", "output": "\ud800"}], source="my.json")


def test_duplicate_keys_name_the_key_and_entry(tmp_path):
    text = '[{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "first", "output": "second"}]'
    with pytest.raises(DatasetError, match=r"data\.json: entry 1: the key 'output' appears more than once"):
        load_instruction_data(write_bytes(tmp_path, text.encode()))
    nested = '[{"instruction": "a", "output": "b", "meta": {"k": 1, "k": 2}}]'
    with pytest.raises(DatasetError, match=r"entry 0: field 'meta': the key 'k' appears more than once"):
        load_instruction_data(write_bytes(tmp_path, nested.encode()))


def test_deep_nesting_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.json: JSON nested too deeply"):
        load_instruction_data(write_bytes(tmp_path, b"[" * 100_000 + b"]" * 100_000))
    meta = "[" * 200 + "]" * 200  # readable, but deeper than any dataset needs (and than writing it back allows)
    text = f'[{{"instruction": "a", "output": "b", "meta": {meta}}}]'
    with pytest.raises(DatasetError, match=rf"entry 0: field 'meta': nested more than {MAX_JSON_NESTING}"):
        load_instruction_data(write_bytes(tmp_path, text.encode()))


def test_huge_integers_and_nan_are_dataset_errors(tmp_path):
    with pytest.raises(
        DatasetError, match=r"data\.json: entry 0 \(line 1, column 43\): unusable JSON value: Exceeds the limit"
    ):
        load_instruction_data(write_bytes(tmp_path, b'[{"instruction": "a", "output": "b", "n": %s}]' % (b"9" * 5000)))
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(DatasetError, match=r"unusable JSON value: (NaN|-?Infinity) is not standard JSON"):
            load_instruction_data(write_bytes(tmp_path, b'[{"instruction": "a", "output": "b", "x": %s}]' % constant))


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    assert load_instruction_data(write_bytes(tmp_path, b"\xef\xbb\xbf" + GOOD_BODY)) == GOOD


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(DatasetError, match=r"is a folder"):
        load_instruction_data(tmp_path)


# --- 11. arguments of generate, generate_batch and custom_collate_fn ---


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = {
        "vocab_size": 100,
        "context_length": 16,
        "emb_dim": 16,
        "n_heads": 2,
        "n_layers": 1,
        "drop_rate": 0.0,
        "qkv_bias": False,
    }
    return GPTModel(cfg).eval()


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"idx": torch.zeros(1, 0, dtype=torch.long)}, r"idx must hold at least one prompt of at least one token"),
        ({"idx": torch.zeros(0, 3, dtype=torch.long)}, r"idx must hold at least one prompt"),
        ({"idx": torch.tensor([[1, 100]])}, r"idx holds the token ID 100, outside this model's vocabulary 0..99"),
        ({"idx": torch.tensor([[-1, 2]])}, r"idx holds the token ID -1"),
        ({"idx": torch.tensor([[1.0, 2.0]])}, r"idx must hold integer token IDs"),
        ({"top_k": 0}, r"top_k must be None or an integer >= 1, got 0"),
        ({"top_k": -3}, r"top_k must be"),
        ({"temperature": math.nan}, r"temperature must be a finite number >= 0 \(0 = greedy\), got nan"),
        ({"temperature": -0.5}, r"temperature must be a finite number >= 0"),
        ({"temperature": math.inf}, r"temperature must be"),
        ({"context_size": 0}, r"context_size must be an integer >= 1, got 0"),
        ({"context_size": -4}, r"context_size must be"),
        ({"max_new_tokens": -1}, r"max_new_tokens must be an integer >= 0"),
    ],
)
def test_generate_names_the_bad_argument(model, kwargs, expected):
    args = {"idx": torch.tensor([[1, 2, 3]]), "max_new_tokens": 2, "context_size": 8, **kwargs}
    with pytest.raises(ValueError, match=expected):
        generate(model, **args)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"prompts": []}, r"prompts is empty"),
        ({"prompts": [[1, 2], []]}, r"prompts\[1\] is empty"),
        ({"prompts": [[1, 2], [3, 100]]}, r"prompts\[1\] holds the token ID 100"),
        ({"batch_size": -1}, r"batch_size must be None \(all at once\) or an integer >= 1, got -1"),
        ({"batch_size": 0}, r"batch_size must be"),
        ({"pad_token_id": 50256}, r"pad_token_id holds the token ID 50256"),
        ({"top_k": 0}, r"top_k must be"),
        ({"temperature": math.nan}, r"temperature must be"),
        ({"context_size": 0}, r"context_size must be"),
    ],
)
def test_generate_batch_names_the_bad_argument(model, kwargs, expected):
    args = {"prompts": [[1, 2], [3]], "max_new_tokens": 2, "context_size": 8, "pad_token_id": 0, **kwargs}
    with pytest.raises(ValueError, match=expected):
        generate_batch(model, **args)


def test_valid_arguments_still_generate(model):
    out = generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=2, context_size=8, temperature=0.7, top_k=5, seed=1)
    assert out.shape == (1, 5)
    new = generate_batch(model, [[1, 2], [3]], max_new_tokens=2, context_size=8, pad_token_id=0, batch_size=1)
    assert [len(tokens) for tokens in new] == [2, 2]
    assert generate(model, torch.tensor([[1]]), max_new_tokens=0, context_size=8).tolist() == [[1]]


@pytest.mark.parametrize(
    "batch, kwargs, expected",
    [
        ([], {}, r"batch is empty"),
        ([[1, 2], []], {}, r"batch\[1\] has no tokens"),
        ([[1, -5]], {}, r"batch\[0\] holds the negative token ID -5"),
        ([[1, 2, 3]], {"allowed_max_length": -1}, r"allowed_max_length must be None or an integer >= 1, got -1"),
        ([[1, 2, 3]], {"allowed_max_length": 0}, r"allowed_max_length must be"),
        # issue 26: garbage in, a clear error out (not -1 targets, a float tensor or a TypeError)
        ([[1, 2], [3]], {"pad_token_id": -1}, r"pad_token_id must be an integer token ID >= 0, got -1"),
        ([[1, 2], [3]], {"pad_token_id": 2.0}, r"pad_token_id must be an integer token ID >= 0, got 2.0"),
        ([[1.5, 2.0], [3.0]], {}, r"batch\[0\] holds 1.5 \(float\): token IDs must be integers"),
        ([[1, 2], ["a", 3]], {}, r"batch\[1\] holds 'a' \(str\): token IDs must be integers"),
    ],
)
def test_collate_names_the_bad_argument(batch, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        custom_collate_fn(batch, **kwargs)


# --- issue 26: library calls that gave garbage or a traceback ---


class HugeExample(Sequence):
    """Ten million token IDs that must never be walked or padded whole: only a cut prefix may be read."""

    def __len__(self) -> int:
        return 10_000_000

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.stop is None or index.stop > 10_000:
            raise AssertionError(f"read {index} of a 10-million-token example")
        return [7] * len(range(*index.indices(len(self))))


def test_collate_cuts_a_huge_example_before_padding():
    huge = utils.TokenizedExample(HugeExample(), prompt_length=3)
    with pytest.warns(UserWarning, match="1 of 2 sequences are longer than allowed_max_length=8"):
        inputs, targets = custom_collate_fn([huge, utils.TokenizedExample([1, 2, 3], 1)], allowed_max_length=8)
    reference = custom_collate_fn(
        [utils.TokenizedExample([7] * 12, 3), utils.TokenizedExample([1, 2, 3], 1)], allowed_max_length=8
    )
    assert torch.equal(inputs, reference[0]) and torch.equal(targets, reference[1])
    assert targets[0, -1] == 7  # a cut sequence keeps its real next token as the last target


def test_a_token_id_outside_the_vocabulary_is_a_value_error(model):
    inputs, targets = custom_collate_fn([[1, 2], [3]], pad_token_id=60_000)
    with pytest.raises(ValueError, match=r"outside the model's vocabulary \(largest input 60000"):
        utils.calc_loss_batch(inputs, targets, model, "cpu")


def test_calc_loss_batch_refuses_a_batch_without_real_targets(model):
    inputs = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"no real target: all 3 targets are -100"):
        utils.calc_loss_batch(inputs, torch.full_like(inputs, utils.IGNORE_INDEX), model, "cpu")


def test_a_tiny_temperature_samples_like_greedy(model):
    prompt = torch.tensor([[1, 2, 3]])
    greedy = generate(model, prompt, max_new_tokens=4, context_size=8)
    assert torch.equal(generate(model, prompt, max_new_tokens=4, context_size=8, temperature=1e-40, seed=1), greedy)


def test_an_unreadable_tokenizer_folder_is_one_clear_error(tmp_path, monkeypatch):
    for name in ("encoder.json", "vocab.bpe"):
        (tmp_path / name).write_text("x")
    real_read_bytes = Path.read_bytes

    def read_bytes(path):
        if path.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(
        utils.TokenizerUnavailableError, match=r"(vocab.bpe|encoder.json): cannot be read \(Permission denied\)"
    ):
        utils.get_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "entries, expected",
    [
        ([{"instruction": "x"}], r"entry 0: missing field 'output'"),
        (
            [{"instruction": "x", "output": "y"}, {"instruction": 1, "output": "y"}],
            r"entry 1: field 'instruction' must be a string, got int",
        ),
        (["just text"], r"entry 0: expected an object"),
    ],
)
def test_instruction_dataset_checks_entries_built_in_code(entries, expected):
    with pytest.raises(DatasetError, match=expected):
        utils.InstructionDataset(entries, utils.get_tokenizer())


def test_dataset_report_on_a_missing_file_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/dataset_report.py", str(tmp_path / "missing.json")],
        cwd=utils.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(utils.REPO_ROOT)},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"dataset_report: {tmp_path / 'missing.json'}: file not found"


@pytest.mark.parametrize("seed", [2**70, -1, 1.5])
def test_seed_everything_names_the_allowed_range(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 2\*\*63 - 1"):
        utils.seed_everything(seed)


def test_parse_score_survives_a_number_of_thousands_of_digits():
    assert parse_score("Score: 85/" + "9" * 5000) is None
    assert parse_score("9" * 5000) is None
    assert parse_score("Score: 85/" + "0" * 5000 + "100") == 85


def test_one_reply_that_breaks_the_parser_loses_only_that_reply(server, monkeypatch):
    JudgeScript(
        server,
        [
            chat_reply("85"),
            chat_reply("Score: 85/" + "9" * 5000),
            chat_reply("boom"),
            chat_reply("70"),
            chat_reply("60"),
        ],
    )
    real_parse = utils.parse_score
    monkeypatch.setattr(utils, "parse_score", lambda reply: 1 // 0 if reply == "boom" else real_parse(reply))
    result = judge_responses(JUDGED, url=f"{server.url}/api/chat", timeout=2, progress=False)
    assert result["scores"] == [85, None, None, 70, 60] and result["n_judged"] == 5 and result["error"] is None


def test_the_judge_retries_a_busy_or_failing_server_with_backoff(server, monkeypatch):
    """Issue 26: HTTP 500 and 429 are tried again (with growing waits) before an entry counts as failed."""
    import support.ollama

    waits = []
    monkeypatch.setattr(support.ollama.time, "sleep", waits.append)
    busy = lambda h: h.reply(429, b'{"error": "busy"}')  # noqa: E731
    JudgeScript(
        server,
        [
            chat_reply("80"),
            lambda h: h.reply(500, b'{"error": "oops"}'),
            busy,
            chat_reply("70"),
            busy,
            busy,
            busy,
            busy,
        ],
    )
    with pytest.warns(UserWarning, match="stopped at entry 2"):
        result = judge_responses(JUDGED[:3], url=f"{server.url}/api/chat", timeout=2, progress=False)
    assert result["scores"] == [80, 70, None] and result["n_judged"] == 2
    assert waits == [0.01, 0.02, 0.01, 0.02, 0.04] and "HTTP 429" in result["error"]


def test_a_huge_error_page_is_cut_before_it_reaches_the_results(server):
    """Issue 26: a 5 MB HTTP 500 body is not copied into the result (and so not into metrics.json)."""
    JudgeScript(server, [lambda h: h.reply(400, json.dumps({"error": "x" * 5_000_000}).encode())])
    with pytest.warns(UserWarning):
        result = judge_responses(JUDGED[:1], url=f"{server.url}/api/chat", timeout=5, progress=False)
    assert "HTTP 400" in result["error"] and len(result["error"]) < 1000


@pytest.mark.parametrize(
    "value, shown",
    [
        ("1e999", "1e999 is beyond a float's range"),
        ("-1e999", "-1e999 is beyond"),
        ("NaN", "NaN is not standard JSON"),
        ("-Infinity", "-Infinity is not"),
        ("1" * 5000, "Exceeds the limit"),
    ],
)
def test_nan_infinity_and_oversized_numbers_are_refused_with_entry_and_line(tmp_path, value, shown):
    """Issue 26, case 14 and the NaN weak spot: 1e999 is refused like NaN, and the message says where."""
    path = write_bytes(
        tmp_path,
        (
            '[{"instruction": "a", "output": "b", "note": "NaN 1e999 in text is fine"},\n'
            f' {{"instruction": "a", "output": "b", "x": [1, {value}]}}]'
        ).encode(),
    )
    with pytest.raises(
        DatasetError, match=rf"entry 1 \(line 2, column 47\): unusable JSON value: .*{re.escape(shown)}"
    ):
        load_instruction_data(path)
