"""Loading, validation, splitting, prompt formatting, tokenizer and data loaders."""

import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

import utils
from support.tokenizer_files import install_tokenizer_files
from utils import DatasetError, format_example, format_input, format_prompt, load_instruction_data

GOOD = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
]


def write(tmp_path: Path, content: str, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


# --- loading and validation ---


def test_loads_a_valid_file(tmp_path):
    assert load_instruction_data(write(tmp_path, json.dumps(GOOD))) == GOOD


def test_missing_input_becomes_empty_string(tmp_path):
    data = load_instruction_data(write(tmp_path, json.dumps([{"instruction": "Hi", "output": "Hello"}])))
    assert data == [{"instruction": "Hi", "input": "", "output": "Hello"}]


def test_extra_keys_are_kept(tmp_path):
    data = load_instruction_data(write(tmp_path, json.dumps([dict(GOOD[0], source="mine")])))
    assert data[0]["source"] == "mine"


@pytest.mark.parametrize(
    "entries, expected",
    [
        ({"instruction": "x"}, r"data\.json: expected a JSON list of entries, got dict"),
        ([GOOD[0], "just a string"], r"data\.json: entry 1: expected an object"),
        ([GOOD[0], GOOD[1], {"input": "", "output": "o"}], r"data\.json: entry 2: missing field 'instruction'"),
        ([{"instruction": "i", "input": ""}], r"data\.json: entry 0: missing field 'output'"),
        (
            [GOOD[0], {"instruction": "i", "input": "", "output": 42}],
            r"entry 1: field 'output' must be a string, got int",
        ),
        (
            [{"instruction": ["i"], "input": "", "output": "o"}],
            r"entry 0: field 'instruction' must be a string, got list",
        ),
        ([{"instruction": "i", "input": 3, "output": "o"}], r"entry 0: field 'input' must be a string, got int"),
        ([{"instruction": "   ", "input": "", "output": "o"}], r"entry 0: field 'instruction' is empty"),
    ],
)
def test_bad_entries_name_file_entry_and_field(tmp_path, entries, expected):
    with pytest.raises(DatasetError, match=expected):
        load_instruction_data(write(tmp_path, json.dumps(entries)))


def test_malformed_json_reports_line_and_column(tmp_path):
    path = write(tmp_path, '[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "c",, }\n]')
    with pytest.raises(DatasetError, match=r"data\.json: invalid JSON at line 3, column 23"):
        load_instruction_data(path)


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DatasetError, match="nope.json: file not found"):
        load_instruction_data(tmp_path / "nope.json")
    (tmp_path / "latin1.json").write_bytes('[{"instruction": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(DatasetError, match="latin1.json: not UTF-8"):
        load_instruction_data(tmp_path / "latin1.json")


def test_bad_data_never_reaches_the_tokenizer(tmp_path, tokenizer):
    # The classic failure: a KeyError deep inside dataset construction. Validation stops it first.
    path = write(tmp_path, json.dumps([{"instruction": "i", "output": None}]))
    with pytest.raises(DatasetError, match="entry 0: field 'output'"):
        utils.InstructionDataset(load_instruction_data(path), tokenizer)


@pytest.fixture
def http_server(tmp_path):
    (tmp_path / "remote.json").write_text(json.dumps(GOOD), encoding="utf-8")
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_once_then_read_from_cache(tmp_path, http_server):
    cache = tmp_path / "cache"
    assert load_instruction_data(f"{http_server}/remote.json", cache_dir=cache) == GOOD
    (tmp_path / "remote.json").unlink()  # the server can no longer serve it; the cache still can
    assert load_instruction_data(f"{http_server}/remote.json", cache_dir=cache) == GOOD
    assert not list(cache.rglob("*.tmp"))


def test_failed_download_says_how_to_fix(tmp_path, http_server):
    with pytest.raises(DatasetError, match=r"(?s)Could not download .*missing.json.*pass the local path"):
        load_instruction_data(f"{http_server}/missing.json", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    utils.atomic_write_json(target, {"a": 1})

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        utils.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- splitting ---


def test_split_sizes_and_determinism(dataset):
    train, val, test = utils.split_dataset(dataset)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert utils.split_dataset(dataset) == (train, val, test)
    assert utils.split_dataset(dataset, seed=1) != (train, val, test)


def test_split_never_shares_a_question():
    data = [{"instruction": f"q{i % 7}", "input": "", "output": str(i)} for i in range(60)]
    data += [{"instruction": "q0", "input": "with input", "output": "x"}]
    parts = utils.split_dataset(data, train_frac=0.5, val_frac=0.25)
    keys = [{(e["instruction"], e["input"]) for e in part} for part in parts]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert sum(map(len, parts)) == len(data)


# --- formatting ---


def test_alpaca_prompt_is_exactly_the_specified_text(dataset):
    assert format_input(dataset[50]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nIdentify the correct spelling of the following word.\n\n### Input:\nOcassion"
    )
    assert format_example(dataset[999]).endswith(
        "### Instruction:\nWhat is an antonym of 'complicated'?\n\n"
        "### Response:\nAn antonym of 'complicated' is 'simple'."
    )


def test_phi3_prompt_uses_chat_markers():
    entry = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    assert format_example(entry, "phi3") == "<|user|>\nAdd the numbers.\n2 and 3<|end|>\n<|assistant|>\n5"
    assert format_prompt({"instruction": "Hi", "output": "x"}, "phi3") == "<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_unknown_style_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown prompt style 'chatml'"):
        format_input(GOOD[0], "chatml")


@pytest.mark.parametrize("style", sorted(utils.PROMPT_STYLES))
def test_generation_prompt_is_a_token_prefix_of_the_training_sequence(dataset, tokenizer, style):
    train_set = utils.InstructionDataset(dataset, tokenizer, style)
    for entry, example in zip(dataset, train_set):
        prompt_ids = utils.encode_text(format_prompt(entry, style), tokenizer)
        assert example.token_ids[: len(prompt_ids)] == prompt_ids
        assert example.prompt_length == len(prompt_ids)
        # and joining prompt and output at a token boundary changes nothing for this dataset
        assert example.token_ids == utils.encode_text(format_example(entry, style), tokenizer)


@pytest.mark.parametrize("style", sorted(utils.PROMPT_STYLES))
def test_the_output_follows_the_prompt_unchanged(style):
    entry = GOOD[1]
    text = format_example(entry, style)
    assert text.startswith(format_prompt(entry, style)) and text[len(format_prompt(entry, style)) :] == entry["output"]


# --- tokenizer ---


def test_tokenizer_known_ids(tokenizer):
    assert tokenizer.n_vocab == 50257
    assert tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert tokenizer.encode("Hello, world. Is this-- a test?") == [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]


def test_literal_end_of_text_in_data_is_plain_text(tokenizer):
    ids = utils.encode_text("a <|endoftext|> b", tokenizer)
    assert 50256 not in ids and tokenizer.decode(ids) == "a <|endoftext|> b"


def test_tokenizer_folder_with_a_missing_file(tmp_path):
    (tmp_path / "vocab.bpe").write_text("x")
    with pytest.raises(utils.TokenizerUnavailableError, match="encoder.json: missing"):
        utils.get_tokenizer(tmp_path)


def test_tokenizer_folder_with_a_wrong_file(tmp_path, gpt2_vocab_dir):
    source = gpt2_vocab_dir
    (tmp_path / "encoder.json").write_bytes((source / "encoder.json").read_bytes())
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(utils.TokenizerUnavailableError, match="vocab.bpe: not GPT-2's original file"):
        utils.get_tokenizer(tmp_path)


def test_seeded_tiktoken_cache_works_offline(tmp_path, monkeypatch, gpt2_vocab_dir):
    import tiktoken
    import tiktoken.registry

    install_tokenizer_files(gpt2_vocab_dir, tmp_path)
    monkeypatch.delenv("GPT2_TOKENIZER_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded earlier
    assert utils.get_tokenizer().encode("Hello, world.") == [15496, 11, 995, 13]


def test_no_network_and_no_files_gives_one_clear_message(tmp_path, monkeypatch):
    import tiktoken.registry

    monkeypatch.delenv("GPT2_TOKENIZER_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_network(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr("tiktoken.load.read_file", no_network)
    with pytest.raises(utils.TokenizerUnavailableError, match=r"make download.*\n.*GPT2_TOKENIZER_DIR"):
        utils.get_tokenizer()


# --- datasets and loaders ---


def test_instruction_dataset_tokenizes_once(dataset, tokenizer):
    calls = []

    class CountingTokenizer:
        def encode(self, text, **kwargs):
            calls.append(text)
            return tokenizer.encode(text, **kwargs)

    ds = utils.InstructionDataset(dataset[:10], CountingTokenizer())
    n_calls = len(calls)
    _ = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    assert len(calls) == n_calls == 20


def test_dataloaders(dataset, tokenizer):
    train, val, test = utils.split_dataset(dataset)
    train_loader, val_loader, test_loader = utils.create_dataloaders(train, val, test, tokenizer, batch_size=8)
    assert len(train_loader) == len(train) // 8  # last partial batch dropped
    assert len(val_loader) == -(-len(val) // 8)
    first = [x.tolist() for x in next(iter(train_loader))]
    again = [x.tolist() for x in next(iter(utils.create_dataloaders(train, val, test, tokenizer)[0]))]
    assert first == again  # seeded shuffle
    val_batches = list(val_loader)
    assert torch.equal(val_batches[0][0], next(iter(val_loader))[0])  # in order
    for inputs, targets in val_batches:
        assert inputs.shape == targets.shape and inputs.shape[0] <= 8
    assert 0.3 < utils.padding_efficiency(val_loader) <= 1.0


def test_padding_efficiency_counts_real_targets():
    loader = [utils.custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])]
    assert utils.padding_efficiency(loader) == pytest.approx(10 / 15)


def test_get_device_respects_override(monkeypatch):
    # "meta" is never what get_device picks by itself: only the override can produce it
    monkeypatch.setenv("LLM_DEVICE", "meta")
    assert utils.get_device().type == "meta"
    monkeypatch.delenv("LLM_DEVICE")
    assert utils.get_device("meta") == torch.device("meta")
    assert utils.get_device().type != "meta"


def test_atomic_files_get_ordinary_permissions(tmp_path):
    umask = utils.os.umask(0o022)
    try:
        path = utils.atomic_write_json(tmp_path / "shared.json", [1])
    finally:
        utils.os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
