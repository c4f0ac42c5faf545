"""Shared test set-up: the tokenizer comes from a local copy of GPT-2's vocabulary when one exists."""
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
