"""Bad input, slow networks and failing servers: clear errors, and nothing already obtained is lost.

Every server here is a thread on 127.0.0.1 that lives for one test; slow servers drip for a bounded
time and stop as soon as the client hangs up, so the whole file runs in a few seconds.
"""
import http.server
import json
import math
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
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

GOOD = [{"instruction": "Name a color.", "input": "", "output": "Blue."},
        {"instruction": "Reverse the word.", "input": "cat", "output": "tac"}]
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
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.url = server.url.replace("http://", "https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return server


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# --- 7. the dataset cache keeps only a body that is an instruction dataset ---

@pytest.mark.parametrize("route, expected", [
    (lambda h: h.reply(200, b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>", "text/html"),
     r"not usable, so it was not cached(.|\n)*invalid JSON .*looks like a web page"),
    (truncated, r"closed the connection after 10 of 1000 bytes"),
    (truncated_without_length, r"not usable, so it was not cached(.|\n)*invalid JSON"),
    (lambda h: h.reply(200, json.dumps({"error": "gone"}).encode()), r"expected a JSON list of entries"),
    (lambda h: h.reply(200, json.dumps([{"instruction": "i"}]).encode()), r"entry 0: missing field 'output'"),
])
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
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"(?s)HTTP Error 404.*cached copy is not usable"
                                                                      r" either.*invalid JSON"):
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
    return lambda h: h.reply(200, json.dumps({"message": {"role": "assistant", "content": content},
                                              "done": True}).encode())


JUDGED = [{"instruction": f"Task {i}.", "input": "", "output": f"Answer {i}.", "model_response": f"response-{i}"}
          for i in range(5)]


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


@pytest.mark.parametrize("failure, expected", [
    (lambda h: h.reply(500, json.dumps({"error": "out of memory"}).encode()), r"HTTP 500 .*out of memory"),
    (reset, r"closed the connection"),
    (lambda h: h.reply(200, b"<html>proxy error</html>"), r"did not answer with a JSON object"),
    (drip, r"did not answer within 1 s"),
])
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


@pytest.mark.parametrize("text, expected", [
    ('[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "x\\ud800y", "output": "o"}]',
     r"data\.json: entry 1: field 'instruction': not valid Unicode text \(a lone surrogate '\\ud800' at character 1\)"),
    ('[{"instruction": "i", "output": "\\udfff"}]', r"entry 0: field 'output': not valid Unicode"),
    ('[{"instruction": "i", "output": "o", "input": "\\ud83d"}]', r"entry 0: field 'input': not valid Unicode"),
    ('[{"instruction": "i", "output": "o", "meta": {"tags": ["ok", "\\ud800"]}}]',
     r"entry 0: field 'meta' > 'tags' > \[1\]: not valid Unicode"),
    ('[{"instruction": "i", "output": "o", "\\ud800": "x"}]', r"entry 0: a key: not valid Unicode"),
])
def test_text_that_utf8_cannot_encode_is_rejected(tmp_path, text, expected):
    with pytest.raises(DatasetError, match=expected):
        load_instruction_data(write_bytes(tmp_path, text.encode()))


def test_a_valid_surrogate_pair_is_fine(tmp_path):
    path = write_bytes(tmp_path, b'[{"instruction": "Smile \\ud83d\\ude00", "output": "ok"}]')
    assert load_instruction_data(path)[0]["instruction"] == "Smile \U0001F600"


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
    with pytest.raises(DatasetError, match=r"data\.json: unusable JSON value: Exceeds the limit"):
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
    cfg = {"vocab_size": 100, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    return GPTModel(cfg).eval()


@pytest.mark.parametrize("kwargs, expected", [
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
])
def test_generate_names_the_bad_argument(model, kwargs, expected):
    args = {"idx": torch.tensor([[1, 2, 3]]), "max_new_tokens": 2, "context_size": 8, **kwargs}
    with pytest.raises(ValueError, match=expected):
        generate(model, **args)


@pytest.mark.parametrize("kwargs, expected", [
    ({"prompts": []}, r"prompts is empty"),
    ({"prompts": [[1, 2], []]}, r"prompts\[1\] is empty"),
    ({"prompts": [[1, 2], [3, 100]]}, r"prompts\[1\] holds the token ID 100"),
    ({"batch_size": -1}, r"batch_size must be None \(all at once\) or an integer >= 1, got -1"),
    ({"batch_size": 0}, r"batch_size must be"),
    ({"pad_token_id": 50256}, r"pad_token_id holds the token ID 50256"),
    ({"top_k": 0}, r"top_k must be"),
    ({"temperature": math.nan}, r"temperature must be"),
    ({"context_size": 0}, r"context_size must be"),
])
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


@pytest.mark.parametrize("batch, kwargs, expected", [
    ([], {}, r"batch is empty"),
    ([[1, 2], []], {}, r"batch\[1\] has no tokens"),
    ([[1, -5]], {}, r"batch\[0\] holds the negative token ID -5"),
    ([[1, 2, 3]], {"allowed_max_length": -1}, r"allowed_max_length must be None or an integer >= 1, got -1"),
    ([[1, 2, 3]], {"allowed_max_length": 0}, r"allowed_max_length must be"),
])
def test_collate_names_the_bad_argument(batch, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        custom_collate_fn(batch, **kwargs)
