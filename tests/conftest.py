"""Shared test set-up: where GPT-2's tokenizer comes from, and one clear skip when it is nowhere.

The tokenizer is found, in this order, in $GPT2_TOKENIZER_DIR, in ../shared/gpt2-tokenizer (CI), or
in the tiktoken cache that `make download` fills (.cache/tiktoken). Without any of them, tests that
need it are skipped with a single reason and its fix, instead of failing one by one. Each notebook is executed at most once per test session, whichever
test files ask for it (the `executed` fixture).
"""
import copy
import hashlib
import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"

if "GPT2_TOKENIZER_DIR" not in os.environ and (SHARED_TOKENIZER / "encoder.json").exists():
    os.environ["GPT2_TOKENIZER_DIR"] = str(SHARED_TOKENIZER)

import utils  # noqa: E402  (after the environment is set)
from support.tokenizer_files import GPT2_VOCAB_FILES  # noqa: E402

NO_TOKENIZER = ("GPT-2's tokenizer is not available offline, so the tests that need it are skipped. "
                "Fix: run `make download` once on a machine with network (fills .cache/tiktoken), "
                "or set GPT2_TOKENIZER_DIR=/path/to/folder holding encoder.json and vocab.bpe.")


def _tiktoken_cache_dir() -> Path:
    return Path(os.environ.get("TIKTOKEN_CACHE_DIR") or utils.DEFAULT_CACHE_DIR / "tiktoken")


def _cached_vocab_files() -> dict[str, Path]:
    """GPT-2's two vocabulary files in tiktoken's cache (named by the SHA-1 of their URL), if both are there."""
    folder = _tiktoken_cache_dir()
    found = {name: folder / hashlib.sha1(url.encode()).hexdigest() for name, (url, _) in GPT2_VOCAB_FILES.items()}
    return found if all(path.is_file() for path in found.values()) else {}


def tokenizer_available() -> bool:
    """True if the tokenizer loads without the network: from a folder, or from tiktoken's cache."""
    if os.environ.get("GPT2_TOKENIZER_DIR"):
        return True  # a wrong folder must fail loudly, not be skipped
    return bool(_cached_vocab_files())


def pytest_sessionstart(session):
    """Without local files, try the network once; if that fails, later tries fail at once instead of waiting."""
    if tokenizer_available():
        return
    try:
        utils.get_tokenizer()
    except utils.TokenizerUnavailableError:
        import tiktoken.load

        def known_offline(*args, **kwargs):
            raise ConnectionError("the tokenizer download already failed once in this test session")

        tiktoken.load.read_file = known_offline


def pytest_report_header(config):
    if os.environ.get("GPT2_TOKENIZER_DIR"):
        return f"tokenizer: {os.environ['GPT2_TOKENIZER_DIR']}"
    if _cached_vocab_files():
        return f"tokenizer: tiktoken cache {_tiktoken_cache_dir()}"
    return f"tokenizer: MISSING. {NO_TOKENIZER}"


def _needs_missing_tokenizer(exc: BaseException | None) -> bool:
    # Notebooks and finetune.py run in other processes: their error arrives as text, not as the class.
    return exc is not None and not tokenizer_available() and (
        isinstance(exc, utils.TokenizerUnavailableError)
        or any(sign in str(exc) for sign in ("TokenizerUnavailableError", "Could not load GPT-2's tokenizer")))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Every skip for the missing tokenizer is reported from one place, so the summary shows it once."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(NO_TOKENIZER):
        report.longrepr = (__file__, 0, f"Skipped: {NO_TOKENIZER}")
    return report


def _skip_for_missing_tokenizer(item):
    """A test (or its set-up) that fails only because there is no tokenizer is skipped with the fix."""
    try:
        return (yield)
    except Exception as exc:
        if _needs_missing_tokenizer(exc):
            pytest.skip(NO_TOKENIZER)
        raise


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_skip_for_missing_tokenizer)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_skip_for_missing_tokenizer)


@pytest.fixture(scope="session")
def tokenizer():
    try:
        return utils.get_tokenizer()
    except utils.TokenizerUnavailableError:
        pytest.skip(NO_TOKENIZER)


@pytest.fixture(scope="session")
def gpt2_vocab_dir(tmp_path_factory) -> Path:
    """A folder holding GPT-2's encoder.json and vocab.bpe, from $GPT2_TOKENIZER_DIR or tiktoken's cache."""
    if os.environ.get("GPT2_TOKENIZER_DIR"):
        return Path(os.environ["GPT2_TOKENIZER_DIR"])
    cached = _cached_vocab_files()
    if not cached:
        pytest.skip(NO_TOKENIZER)
    folder = tmp_path_factory.mktemp("gpt2-vocab")
    for name, path in cached.items():
        shutil.copyfile(path, folder / name)
    return folder


@pytest.fixture(scope="session")
def dataset():
    return utils.load_instruction_data()


@pytest.fixture(scope="session")
def executed():
    """`executed(path)`: the notebook, run top to bottom in a fresh kernel in the smoke configuration.

    Each notebook runs once per session (on a copy; the committed file is untouched), then every test
    that asks gets the same executed copy; a notebook that failed raises the same error again.
    """
    import nbformat
    from run_notebooks import execute_notebook

    cache: dict[Path, object] = {}

    def run(path):
        key = Path(path).resolve()
        if key not in cache:
            saved = os.environ.get("LLM_SMOKE")
            os.environ.setdefault("LLM_SMOKE", "1")  # the kernel inherits it; tests run the quick configuration
            try:
                cache[key] = execute_notebook(key, timeout=900, nb=copy.deepcopy(nbformat.read(key, as_version=4)))
            except Exception as exc:  # noqa: BLE001 - kept, so a broken notebook is not run a second time
                cache[key] = exc
            finally:
                if saved is None:
                    os.environ.pop("LLM_SMOKE", None)
        if isinstance(cache[key], Exception):
            raise cache[key]
        return cache[key]

    return run
