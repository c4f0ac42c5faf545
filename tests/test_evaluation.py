"""Offline metrics (exact match, ROUGE-L), parsing a judge's score, and the Ollama judge against a fake server."""

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from support.jsonio import read_json_file
from support.ollama import ollama_models, query_ollama
from utils import (
    DatasetError,
    OllamaUnavailableError,
    evaluate_responses,
    exact_match,
    format_input,
    judge_prompt,
    judge_responses,
    parse_score,
    rouge_l,
)


def load_responses(path):
    """A responses file read strictly and checked as evaluate_responses checks it."""
    entries = read_json_file(path)
    evaluate_responses(entries, source=str(path))
    return entries


RESPONSES = [
    {"instruction": "Name a primary color.", "input": "", "output": "Blue", "model_response": "  blue. "},
    {
        "instruction": "Describe the picture.",
        "input": "A cat on a mat.",
        "output": "A cat sat",
        "model_response": "The cats sat on a mat",
    },
    {"instruction": "Say hello.", "input": "", "output": "Hello", "model_response": "Goodbye"},
]


def write(tmp_path: Path, content: str, name: str = "responses.json") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


# --- offline metrics ---


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("Blue.", "blue", True),
        ("  The  answer is\n42!  ", "the answer is 42", True),  # case, spacing, trailing "!"
        ("Paris?!", "Paris", True),
        ("blue", "Blue sky", False),
        ("Hello, world", "hello world", False),  # inner punctuation counts
        ("42", "42.0", False),
    ],
)
def test_exact_match_normalises_case_spaces_and_trailing_punctuation(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


def test_rouge_l_identical_disjoint_and_partial():
    assert rouge_l("The capital of France is Paris.", "The capital of France is Paris.") == pytest.approx(1.0)
    assert rouge_l("Goodbye", "Hello") == 0.0
    assert rouge_l("", "Hello") == 0.0
    # By hand. Tokens: [the, cat, sat, on, a, mat] vs [a, cat, sat] ("cats" stems to "cat").
    # Longest common subsequence "cat sat" = 2: precision 2/6, recall 2/3, F = 2PR/(P+R) = 4/9.
    # Without stemming it would be 2/9 (LCS of 1), so this also checks the stemmer is on.
    assert rouge_l("The cats sat on a mat", "A cat sat") == pytest.approx(4 / 9)


def test_evaluate_responses_aggregates():
    result = evaluate_responses(RESPONSES)
    assert result["n"] == 3
    assert result["exact_match_count"] == 1
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["rouge_l"] == pytest.approx((1 + 4 / 9 + 0) / 3)


@pytest.mark.parametrize(
    "entries, expected",
    [
        ([RESPONSES[0], {"instruction": "x", "output": "y"}], r"<responses>: entry 1: missing field 'model_response'"),
        ([{"model_response": "y"}], r"entry 0: missing field 'output'"),
        (
            [RESPONSES[0], RESPONSES[1], dict(RESPONSES[2], model_response=None)],
            r"entry 2: field 'model_response' must be a string, got NoneType",
        ),
        ([RESPONSES[0], "text"], r"entry 1: expected an object"),
        ([], r"no entries to evaluate"),
        ({"output": "y", "model_response": "y"}, r"expected a JSON list of entries, got dict"),
    ],
)
def test_evaluate_responses_names_entry_and_field(entries, expected):
    with pytest.raises(DatasetError, match=expected):
        evaluate_responses(entries)


def test_load_responses(tmp_path):
    assert load_responses(write(tmp_path, json.dumps(RESPONSES))) == RESPONSES


def test_load_responses_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.json: file not found"):
        load_responses(tmp_path / "missing.json")
    bad_json = write(
        tmp_path, '[\n  {"output": "a", "model_response": "b"},\n  {"output": "c" "model_response": "d"}\n]'
    )
    with pytest.raises(DatasetError, match=r"responses\.json: invalid JSON at line 3, column 18"):
        load_responses(bad_json)
    missing = write(tmp_path, json.dumps([RESPONSES[0], {"output": "o", "model_resp": "typo"}]))
    with pytest.raises(DatasetError, match=r"responses\.json: entry 1: missing field 'model_response'"):
        load_responses(missing)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('[{"output": "café", "model_response": "x"}]'.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.json: not UTF-8 text"):
        load_responses(latin1)


# --- reading the judge's score ---


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("85", 85),
        ("85\n", 85),
        ("Score: 85", 85),
        ("85/100", 85),
        ("**85**", 85),
        ("I would rate this 85 out of 100.", 85),
        ("0", 0),
        ("100.", 100),
        ("85%", 85),
        ("Score: 85.5", 86),  # decimals round half up
        ("The response is accurate. Rating: **90**", 90),
        ("### Score\n75", 75),
        ("Score:\n60", 60),  # the only number left
        ("On a scale of 0-100, I'd give 85.", 85),  # the range is not a score
        ("On a scale of 0 to 100, I would rate this response 85.", 85),
        ("85\n\nThe response scores well but misses 2 of 3 points.", 85),  # a bare first line wins
        ("Score: 85. It got 2/3 of the facts right.", 85),
        ("1. Accuracy: good\n2. Fluency: good\nFinal score: 88", 88),
        ("Graded by llama3.2: score 70", 70),  # "3.2" is part of a name
        ("Score: 70/100. Score: 70.", 70),  # explicit scores that agree
        ("150", None),  # above 100
        ("-5", None),  # negative
        ("Score: -5", None),
        ("Score: 120/100", None),
        ("The answer is good.", None),  # no number
        ("", None),
        ("eighty out of 100", None),  # "100" is only the scale
        ("Rating: 8/10", None),  # another scale
        ("I'd give it 4 out of 5.", None),
        ("The reference scores 100/100 and the response scores 85/100.", None),  # explicit scores disagree
        ("Somewhere between 80 and 90.", None),  # several numbers, none marked
        ("85. The response misses 2 details.", None),  # two unmarked numbers
    ],
)
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


def test_judge_prompt_uses_the_training_format():
    entry = RESPONSES[1]
    prompt = judge_prompt(entry)
    assert format_input(entry, "alpaca") in prompt
    assert "### Input:\nA cat on a mat." in prompt
    assert entry["output"] in prompt and entry["model_response"] in prompt
    assert "0" in prompt and "100" in prompt
    assert prompt.endswith("Respond with the integer number only.")
    phi3 = judge_prompt(entry, style="phi3")
    assert format_input(entry, "phi3") in phi3 and "### Instruction" not in phi3


# --- the judge, against a fake Ollama on the loopback interface ---


class FakeOllama(http.server.BaseHTTPRequestHandler):
    """Speaks Ollama's /api/tags and non-streaming /api/chat; checks what the client sends."""

    def send_json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (the timeout test)
            pass

    def do_GET(self):
        if self.path == "/api/tags":
            self.send_json(200, {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]})
        else:
            self.send_json(404, {"error": "404 page not found"})

    def do_POST(self):
        if self.path != "/api/chat":
            return self.send_json(404, {"error": "404 page not found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        options, messages = body.get("options", {}), body.get("messages", [])
        problems = [
            msg
            for ok, msg in [
                (body.get("stream") is False, "stream must be false"),
                (options.get("temperature") == 0, "temperature must be 0"),
                (options.get("seed") == self.server.expected_seed, f"seed must be {self.server.expected_seed}"),
                (len(messages) == 1 and messages[0].get("role") == "user", "expected one user message"),
            ]
            if not ok
        ]
        if problems:
            return self.send_json(400, {"error": "; ".join(problems)})
        if body.get("model") not in ("llama3.2", "llama3.2:latest"):
            return self.send_json(404, {"error": f'model "{body.get("model")}" not found, try pulling it first'})
        prompt = messages[0]["content"]
        if "SLOW" in prompt:
            time.sleep(0.3)
        reply = next((text for key, text in self.server.replies.items() if key in prompt), "no canned reply")
        self.send_json(
            200,
            {
                "model": body["model"],
                "created_at": "2024-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": reply},
                "done": True,
            },
        )

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def ollama():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    server.requests, server.replies, server.expected_seed = [], {}, 123
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/api/chat"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)


@pytest.fixture
def free_port_url():
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/chat"


@pytest.fixture(autouse=True)
def dead_proxy_in_environment(monkeypatch):
    # A proxy set in the environment must not capture loopback traffic: point it at a dead port.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")


JUDGED = [
    {"instruction": f"Task {i}.", "input": "", "output": f"Answer {i}.", "model_response": f"response-{i}"}
    for i in range(5)
]


def test_query_ollama_speaks_the_chat_protocol(ollama):
    ollama.replies = {"hello": "Hi there"}
    assert query_ollama("hello", url=ollama.url, timeout=2) == "Hi there"
    assert ollama.requests == [
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hello"}],
            "stream": False,
            "options": {"temperature": 0, "seed": 123, "num_ctx": 2048},
        }
    ]
    ollama.expected_seed = 7
    assert query_ollama("hello", url=ollama.url, seed=7, timeout=2) == "Hi there"
    # a bare server address works too
    assert query_ollama("hello", url=ollama.url.removesuffix("/api/chat"), seed=7, timeout=2) == "Hi there"
    assert ollama_models(ollama.url, timeout=2) == ["llama3.2:latest"]


def test_judge_responses_mean_over_parsed_scores(ollama):
    ollama.replies = {
        "response-0": "85",
        "response-1": "Score: 70/100",
        "response-2": "The answer looks fine.",
        "response-3": "**90**",
        "response-4": "I would rate this 60 out of 100.",
    }
    result = judge_responses(JUDGED, url=ollama.url, timeout=2, progress=False)
    assert result["scores"] == [85, 70, None, 90, 60]
    assert result["n"] == 5 and result["n_scored"] == 4
    assert result["mean"] == pytest.approx((85 + 70 + 90 + 60) / 4)
    assert result["unparsed"] == {"count": 1, "indices": [2]}
    assert result["replies"][2] == "The answer looks fine."
    prompts = [body["messages"][0]["content"] for body in ollama.requests]
    assert prompts == [judge_prompt(entry) for entry in JUDGED]


def test_judge_responses_all_unparsed(ollama):
    ollama.replies = {"response": "Good job!"}
    result = judge_responses(JUDGED[:2], url=ollama.url, timeout=2, progress=False)
    assert result["mean"] is None and result["n_scored"] == 0
    assert result["unparsed"] == {"count": 2, "indices": [0, 1]}


def test_no_server_gives_one_clear_message(free_port_url):
    for call in (
        lambda: ollama_models(free_port_url, timeout=1),
        lambda: judge_responses(JUDGED, url=free_port_url, timeout=1, progress=False),
        lambda: query_ollama("hello", url=free_port_url, timeout=1),
    ):
        with pytest.raises(OllamaUnavailableError) as info:
            call()
        message = str(info.value)
        for fix in (
            free_port_url.removesuffix("/api/chat"),
            "ollama.com",
            "ollama serve",
            "ollama pull llama3.2",
            "--judge-url",
        ):
            assert fix in message
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no urllib traceback attached


def test_missing_model_says_which_pull(ollama):
    with pytest.raises(OllamaUnavailableError, match=r"does not have the model 'mistral'(.|\n)*ollama pull mistral"):
        judge_responses(JUDGED, model="mistral", url=ollama.url, timeout=2, progress=False)
    assert ollama.requests == []  # checked up front, before any entry is sent
    with pytest.raises(OllamaUnavailableError, match=r"not found(.|\n)*ollama pull mistral"):
        query_ollama("hello", model="mistral", url=ollama.url, timeout=2)


def test_other_failures_are_explained(ollama):
    with pytest.raises(
        OllamaUnavailableError, match=r"did not answer within 0.1 s(.|\n)*allow more with timeout=SECONDS"
    ):
        query_ollama("SLOW", url=ollama.url, timeout=0.1)
    with pytest.raises(OllamaUnavailableError, match=r"answered HTTP 404"):
        query_ollama("hello", url=ollama.url.replace("/api/chat", "/v1/other"), timeout=2)
    with pytest.raises(OllamaUnavailableError, match=r"not a usable URL"):
        query_ollama("hello", url="localhost:11434", timeout=2)


def test_judge_validates_entries_before_any_request(free_port_url):
    with pytest.raises(DatasetError, match=r"entry 1: missing field 'instruction'"):
        judge_responses([JUDGED[0], {"output": "o", "model_response": "r"}], url=free_port_url, progress=False)
