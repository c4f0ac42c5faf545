"""Shared test set-up: the tokenizer comes from a local copy of GPT-2's vocabulary when one exists,
and each notebook is executed at most once per test session, whichever test files ask for it."""
import copy
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"

if "GPT2_TOKENIZER_DIR" not in os.environ and (SHARED_TOKENIZER / "encoder.json").exists():
    os.environ["GPT2_TOKENIZER_DIR"] = str(SHARED_TOKENIZER)


@pytest.fixture(scope="session")
def tokenizer():
    import utils
    return utils.get_tokenizer()


@pytest.fixture(scope="session")
def dataset():
    import utils
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
