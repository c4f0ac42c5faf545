"""Shared test set-up: where GPT-2's tokenizer comes from, and one clear skip when it is nowhere.

The tokenizer is found, in this order, in $GPT2_TOKENIZER_DIR, in ../shared/gpt2-tokenizer (CI), or
in the tiktoken cache that `make download` fills (.cache/tiktoken). Without any of them, tests that
need it are skipped with a single reason and its fix, instead of failing one by one. Each notebook is
executed at most once per test session, whichever test files ask for it (the `executed` fixture).
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

NO_TOKENIZER = (
    "GPT-2's tokenizer is not available offline, so the tests that need it are skipped. "
    "Fix: run `make download` once on a machine with network (fills .cache/tiktoken), "
    "or set GPT2_TOKENIZER_DIR=/path/to/folder holding encoder.json and vocab.bpe."
)


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


TOKENIZER_SIGNS = ("TokenizerUnavailableError", "Could not load GPT-2's tokenizer")


def _needs_missing_tokenizer(exc: BaseException | None) -> bool:
    # Notebooks and finetune.py run in other processes: their error arrives as text, not as the class.
    return (
        exc is not None
        and not tokenizer_available()
        and (isinstance(exc, utils.TokenizerUnavailableError) or any(sign in str(exc) for sign in TOKENIZER_SIGNS))
    )


def _failed_for_missing_tokenizer(report) -> bool:
    """A failure whose captured output is the tokenizer's own error, with no tokenizer on this machine:
    e.g. `finetune.main(...)` returned 1 after printing it, and the test's `assert ... == 0` fired."""
    if not report.failed or tokenizer_available():
        return False
    captured = "\n".join(text for name, text in report.sections if name.startswith("Captured"))
    return any(sign in captured for sign in TOKENIZER_SIGNS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Every skip for the missing tokenizer is reported from one place, so the summary shows it once."""
    report = yield
    if _failed_for_missing_tokenizer(report):
        report.outcome = "skipped"
        report.longrepr = (__file__, 0, f"Skipped: {NO_TOKENIZER}")
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


# Tool caches and downloads may appear in the checkout; anything else a test writes there is a bug.
ALLOWED_IN_CHECKOUT = (".pytest_cache/", ".hypothesis/", ".ruff_cache/", ".cache/", ".venv")


def _untracked_files() -> set[str] | None:
    """Untracked and ignored files of the checkout (git's view), or None outside a git checkout."""
    import subprocess

    result = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "-z"], cwd=REPO_ROOT, capture_output=True
    )
    if result.returncode != 0:
        return None
    entries = [entry[3:] for entry in result.stdout.decode(errors="replace").split("\0") if entry[:2] in ("??", "!!")]
    return {name for name in entries if not name.startswith(ALLOWED_IN_CHECKOUT) and "__pycache__/" not in name}


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """The tests write only to temporary folders: after the session, no new file may be in the checkout."""
    before = _untracked_files()
    yield
    after = _untracked_files()
    if before is not None and after is not None and after - before:
        new = sorted(after - before)
        pytest.fail(f"the tests left {len(new)} new file(s) in the checkout: {', '.join(new[:10])}", pytrace=False)


@pytest.fixture(scope="session")
def course_copy(tmp_path_factory) -> Path:
    """This checkout's tracked files, as they are now, in a temporary folder. Notebooks the tests execute run
    there, so what they write (checkpoints/, runs/) lands in the copy and never in the checkout."""
    import subprocess

    root = tmp_path_factory.mktemp("course")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True)
    names = [n for n in listed.stdout.decode().split("\0") if n] if listed.returncode == 0 else []
    if not names:  # not a git checkout (an unpacked archive): everything but the usual generated folders
        skip = {".git", ".venv", ".cache", "build", "runs", "checkpoints", "wheelhouse", "__pycache__"}
        names = [
            str(p.relative_to(REPO_ROOT))
            for p in REPO_ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO_ROOT).parts)
        ]
    for name in names:
        if (REPO_ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    return root


@pytest.fixture(scope="session")
def executed(course_copy):
    """`executed(path)`: the notebook, run top to bottom in a fresh kernel in the smoke configuration.

    Each notebook runs once per session, from the copy of the checkout (`course_copy`, whose utils.py the
    kernel imports), then every test that asks gets the same executed notebook; a notebook that failed
    raises the same error again. The committed file and the checkout are untouched.
    """
    import nbformat

    from run_notebooks import execute_notebook

    cache: dict[Path, object] = {}
    kernel_env = {
        "LLM_SMOKE": os.environ.get("LLM_SMOKE", "1"),  # tests run the quick configuration
        "PYTHONPATH": os.pathsep.join(filter(None, [str(course_copy), os.environ.get("PYTHONPATH")])),
    }
    if not os.environ.get("GPT2_TOKENIZER_DIR") and _cached_vocab_files():
        kernel_env["TIKTOKEN_CACHE_DIR"] = str(_tiktoken_cache_dir())  # the checkout's downloaded tokenizer

    def run(path):
        key = Path(path).resolve()
        where = course_copy / key.relative_to(REPO_ROOT) if key.is_relative_to(REPO_ROOT) else key
        if key not in cache:
            saved = {name: os.environ.get(name) for name in kernel_env}
            os.environ.update(kernel_env)  # the kernel inherits this process's environment
            try:
                cache[key] = execute_notebook(where, timeout=900, nb=copy.deepcopy(nbformat.read(key, as_version=4)))
            except Exception as exc:  # noqa: BLE001 - kept, so a broken notebook is not run a second time
                cache[key] = exc
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
        if isinstance(cache[key], Exception):
            raise cache[key]
        return cache[key]

    return run
