"""GPT-2 weights from the Hugging Face Hub: one overall deadline, and bytes checked against their sha256 (issue 26).

A scripted Hub on 127.0.0.1 (HF_ENDPOINT) answers huggingface_hub's HEAD with an ETag and sends the
file (or drips it, or sends other bytes). Every server lives for one test and stops when the client hangs up.
"""

import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest

import support.network
import utils

BODY = os.urandom(4000)
SHA = hashlib.sha256(BODY).hexdigest()


class FakeHub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("ETag", f'"{self.server.etag}"')
        self.send_header("X-Repo-Commit", "a" * 40)
        self.end_headers()

    def do_GET(self):
        self.server.send(self)

    def log_message(self, *args):
        pass


def send_whole(handler, body=BODY):
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def drip(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(BODY)))
    handler.end_headers()
    for byte in BODY:
        if handler.server.stopping.wait(1.0):
            return
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:
            return


@pytest.fixture
def hub(monkeypatch, tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    srv.daemon_threads = True
    srv.handle_error = lambda *args: None
    srv.etag, srv.send, srv.stopping = SHA, send_whole, threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(support.network, "HUB_FAILURE_FILE", tmp_path / "hub-unreachable.json")
    yield srv
    srv.stopping.set()
    srv.shutdown()
    srv.server_close()


def test_a_download_whose_bytes_match_its_etag_is_returned(hub, tmp_path):
    path = utils.download_gpt2_weights("gpt2-small", cache_dir=tmp_path / "cache", deadline=60)
    assert path.read_bytes() == BODY


def test_bytes_that_do_not_match_the_etag_are_refused_and_deleted(hub, tmp_path):
    hub.etag = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(utils.WeightsUnavailableError, match=r"does not match its hash .*deleted"):
        utils.download_gpt2_weights("gpt2-small", cache_dir=tmp_path / "cache", deadline=60)
    assert not list((tmp_path / "cache").rglob(hub.etag))  # the next try downloads again


def test_a_dripping_hub_is_cut_off_at_the_deadline(hub, tmp_path):
    hub.send = drip
    start = time.monotonic()
    with pytest.raises(utils.WeightsUnavailableError, match=r"took longer than 3 s overall"):
        utils.download_gpt2_weights("gpt2-small", cache_dir=tmp_path / "cache", deadline=3)
    assert time.monotonic() - start < 30


def test_a_cached_file_with_other_bytes_is_refused(tmp_path):
    repo = tmp_path / "cache" / "models--openai-community--gpt2"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / SHA).write_bytes(b"not the bytes of that hash")
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", SHA))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    with pytest.raises(utils.WeightsUnavailableError, match="does not match its hash"):
        utils.download_gpt2_weights("gpt2-small", cache_dir=tmp_path / "cache")
