"""The chat server without a browser: the streaming hook, request limits, checkpoint discovery, Ctrl+C.

The page itself is driven in a real browser in test_chat_browser.py.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import chat
from support.checkpoints import save_checkpoint
from utils import GPT_CONFIGS, PAD_TOKEN_ID, GPTModel, format_prompt, generate

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny(seed: int) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPT_CONFIGS["tiny"]).eval()


def test_on_token_streams_exactly_what_generate_returns():
    model = tiny(1)
    idx = torch.randint(0, 50257, (2, 7), generator=torch.Generator().manual_seed(0))
    seen: list[tuple[int, int]] = []
    out = generate(model, idx, 12, context_size=256, on_token=lambda row, token: seen.append((row, token)))
    for row in range(2):
        assert [token for r, token in seen if r == row] == out[row, 7:].tolist()


def test_on_token_raising_stops_generation():
    model, seen = tiny(1), []

    def stop_after_three(row, token):
        seen.append(token)
        if len(seen) == 3:
            raise chat.Stopped

    with pytest.raises(chat.Stopped):
        generate(model, torch.tensor([[1, 2, 3]]), 50, context_size=256, on_token=stop_after_three)
    assert len(seen) == 3
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, torch.tensor([[1]]), 5, context_size=256, use_cache=False, on_token=print)


@pytest.fixture
def app(tokenizer):
    models = {
        "finetuned": chat.ChatModel("finetuned", "tuned", tiny(1)),
        "base": chat.ChatModel("base", "base", tiny(123)),
    }
    return chat.ChatApp(models, tokenizer)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"instruction": "   "}, "Type an instruction"),
        ({"instruction": "x" * 1500, "input": "y" * 501}, "2,001 characters together; the limit is 2,000"),
        ({"instruction": "hi", "max_new_tokens": 501}, "Max new tokens must be between 1 and 500"),
        ({"instruction": "hi", "max_new_tokens": "2.5"}, "Max new tokens must be a whole number"),
        ({"instruction": "hi", "max_new_tokens": 240}, "would pass its 256-token window"),
        ({"instruction": "hi", "temperature": "nan"}, "Temperature must be between 0.0 and 2.0"),
        ({"instruction": "hi", "temperature": -1}, "Temperature must be between"),
        ({"instruction": "hi", "top_k": 0.5}, "Top-k must be a whole number"),
        ({"instruction": "hi", "top_k": 60000}, "Top-k must be between 1 and 50257"),
        ({"instruction": "hi", "style": "chatml"}, "Unknown prompt style 'chatml'"),
        ({"instruction": "hi", "model": "gpt-5"}, "No 'gpt-5' model here"),
        ({"instruction": ["hi"]}, "must be text"),
    ],
)
def test_requests_beyond_the_limits_are_refused_with_a_message(app, body, message):
    with pytest.raises(chat.RequestError, match=message.replace("(", r"\(").replace(".", r"\.")):
        app.parse(body)


def test_a_valid_request_uses_the_course_template(app, tokenizer):
    gen = app.parse(
        {
            "instruction": "Name a colour.",
            "input": "sky",
            "style": "phi3",
            "model": "base",
            "max_new_tokens": "20",
            "temperature": "0.7",
            "top_k": "40",
        }
    )
    assert gen.prompt == format_prompt({"instruction": "Name a colour.", "input": "sky"}, "phi3")
    assert gen.prompt_ids == tokenizer.encode(gen.prompt)
    assert (gen.model.key, gen.max_new_tokens, gen.temperature, gen.top_k) == ("base", 20, 0.7, 40)


def test_newest_checkpoint_is_found(tmp_path):
    assert chat.find_finetuned_checkpoint(tmp_path) is None
    notebook = tmp_path / "checkpoints" / "gpt2-small-instruct.safetensors"
    cli = tmp_path / "runs" / "lora" / "model.safetensors"
    for i, path in enumerate([notebook, cli]):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    assert chat.find_finetuned_checkpoint(tmp_path) == cli
    os.utime(notebook, (2000, 2000))
    assert chat.find_finetuned_checkpoint(tmp_path) == notebook


def test_a_finetuned_tiny_checkpoint_loads_with_the_standin_as_base(tmp_path):
    tuned = tiny(7)
    path = save_checkpoint(tmp_path / "tiny-instruct.safetensors", tuned)
    models, note = chat.load_models(path)
    assert note == "" and list(models) == ["finetuned", "base"]
    assert torch.equal(models["finetuned"].model.out_head.weight, tuned.out_head.weight)
    assert "UNTRAINED" in models["finetuned"].label and "UNTRAINED" in models["base"].label
    assert torch.equal(models["base"].model.out_head.weight, chat.standin_model().out_head.weight)


def test_a_file_without_a_config_is_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(SystemExit, match="holds no model config"):
        chat.load_models(path)


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def served(app):
    server = chat.make_server(app, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    app.shutting_down.set()
    server.shutdown()
    server.server_close()


def test_the_event_stream_carries_generates_greedy_tokens(served, app, tokenizer):
    status, text = _post(served + "/api/generate", {"instruction": "Say hello.", "max_new_tokens": 15})
    assert status == 200
    events = [(block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:])) for block in text.strip().split("\n\n")]
    assert [name for name, _ in events][:2] == ["meta", "started"] and events[-1][0] == "done"
    streamed = [data["id"] for name, data in events if name == "token"]
    prompt_ids = tokenizer.encode(format_prompt({"instruction": "Say hello."}))
    expected = generate(app.models["finetuned"].model, torch.tensor([prompt_ids]), 15, 256, eos_id=PAD_TOKEN_ID)
    assert streamed == expected[0, len(prompt_ids) :].tolist()
    assert events[-1][1]["text"] == tokenizer.decode(streamed)


def test_posts_from_another_site_and_oversized_bodies_are_refused(served, app):
    status, text = _post(served + "/api/generate", {"instruction": "hi"}, {"Origin": "http://evil.example"})
    assert status == 400 and "other sites" in text
    status, text = _post(served + "/api/generate", {"instruction": "x" * 70_000})
    assert status == 400 and "too large" in text
    assert app.status()["finished"] == 0


def test_on_127_0_0_1_other_host_names_are_refused(served):
    request = urllib.request.Request(served + "/api/info", headers={"Host": "attacker.example:8000"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 403
    with urllib.request.urlopen(served.replace("127.0.0.1", "localhost") + "/api/info", timeout=10) as reply:
        assert "finetuned" in json.loads(reply.read())["models"]


def test_the_queue_is_bounded(served, app):
    app.limits = chat.Limits(max_waiting=1)
    with app.model_lock:  # the model is busy: the first request waits, the second finds the queue full
        waiting = threading.Thread(
            target=_post, args=(served + "/api/generate", {"instruction": "a", "max_new_tokens": 2})
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while app.status()["waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, text = _post(served + "/api/generate", {"instruction": "b"})
        assert status == 400 and "Busy: 1 answers are waiting" in text
    waiting.join(timeout=30)
    assert app.status() == {"generating": 0, "waiting": 0, "finished": 1, "stopped": 0, "disconnected": 0}


def test_ctrl_c_stops_the_server_cleanly_mid_answer(tmp_path):
    env = {**os.environ, "LLM_SMOKE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "chat.py"), "--no-checkpoint", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "serving on" in line:
                break
        url = line.split("serving on ")[1].split()[0]
        reply = urllib.request.urlopen(
            urllib.request.Request(
                url + "api/generate", json.dumps({"instruction": "Count.", "max_new_tokens": 200}).encode()
            ),
            timeout=30,
        )
        assert reply.readline().startswith(b"event: meta")  # an answer is streaming
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=20)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "chat: stopped" in rest and "Traceback" not in rest


def test_a_queued_answer_can_be_stopped_before_it_starts(served, app):
    replies = []
    with app.model_lock:  # the model is busy
        waiting = threading.Thread(
            target=lambda: replies.append(_post(served + "/api/generate", {"instruction": "a", "max_new_tokens": 2}))
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while not app.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.stop(next(iter(app.running)))
        waiting.join(timeout=10)
    status, text = replies[0]
    assert status == 200 and '"reason": "stopped"' in text and "event: token" not in text
    assert app.status() == {"generating": 0, "waiting": 0, "finished": 0, "stopped": 1, "disconnected": 0}
