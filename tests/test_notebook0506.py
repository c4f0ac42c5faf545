"""Notebook 05's drafts (attention, block, whole model) compute what utils' modules compute; 06's weight cells.

Each draft is loaded from the notebook itself, given the same weights as its utils counterpart
(the parameter names match, so load_state_dict copies them), and fed random inputs.
"""

import pytest
import torch

import utils
from test_notebooks import notebook_function

CONFIGS = [
    {
        "vocab_size": 97,
        "context_length": 16,
        "emb_dim": 8,
        "n_heads": 2,
        "n_layers": 2,
        "drop_rate": 0.0,
        "qkv_bias": True,
    },
    {
        "vocab_size": 50,
        "context_length": 12,
        "emb_dim": 12,
        "n_heads": 3,
        "n_layers": 1,
        "drop_rate": 0.0,
        "qkv_bias": False,
    },
    {
        "vocab_size": 64,
        "context_length": 10,
        "emb_dim": 6,
        "n_heads": 1,
        "n_layers": 3,
        "drop_rate": 0.0,
        "qkv_bias": True,
    },
]


@pytest.fixture(scope="module")
def drafts():
    return {name: notebook_function("05", name) for name in ("DraftAttention", "DraftBlock", "DraftGPT")}


def paired(draft_cls, utils_module, seed):
    """The draft with random weights, and the utils module given exactly those weights."""
    torch.manual_seed(seed)
    draft = draft_cls()
    utils_module.load_state_dict(draft.state_dict())  # strict: every name must match
    return draft.eval(), utils_module.eval()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_draft_attention_agrees_with_utils(drafts, cfg):
    for seed, tokens in enumerate((1, 2, 7, cfg["context_length"])):
        draft, ours = paired(lambda: drafts["DraftAttention"](cfg), utils.MultiHeadAttention(cfg, 0), seed)
        x = torch.randn(3, tokens, cfg["emb_dim"])
        with torch.no_grad():
            torch.testing.assert_close(draft(x), ours(x), atol=1e-5, rtol=1e-5)


def test_draft_attention_is_causal(drafts):
    """Changing a later token leaves earlier outputs alone (the mask works, not just matches)."""
    cfg = CONFIGS[0]
    torch.manual_seed(0)
    att = drafts["DraftAttention"](cfg).eval()
    x = torch.randn(1, 6, cfg["emb_dim"])
    changed = x.clone()
    changed[0, 4:] += 1.0
    with torch.no_grad():
        before, after = att(x), att(changed)
    torch.testing.assert_close(before[0, :4], after[0, :4])
    assert not torch.allclose(before[0, 4:], after[0, 4:])


@pytest.mark.parametrize("cfg", CONFIGS)
def test_draft_block_agrees_with_utils(drafts, cfg):
    for seed, tokens in enumerate((1, 5, cfg["context_length"])):
        draft, ours = paired(lambda: drafts["DraftBlock"](cfg), utils.TransformerBlock(cfg, 0), seed)
        x = torch.randn(2, tokens, cfg["emb_dim"])
        with torch.no_grad():
            torch.testing.assert_close(draft(x), ours(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_draft_gpt_agrees_with_utils(drafts, cfg):
    draft, ours = paired(lambda: drafts["DraftGPT"](cfg), utils.GPTModel(cfg), seed=1)
    assert list(draft.state_dict()) == list(ours.state_dict())
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["context_length"]))
    with torch.no_grad():
        torch.testing.assert_close(draft(idx), ours(idx), atol=1e-5, rtol=1e-5)


def test_checkpoint_names_match_a_transformers_gpt2():
    """gpt2_checkpoint_name and is_conv1d_weight (shown in notebook 06) fit a checkpoint transformers builds."""
    transformers = pytest.importorskip("transformers")
    cfg = utils.GPT_CONFIGS["tiny"]
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=cfg["vocab_size"],
            n_positions=cfg["context_length"],
            n_embd=cfg["emb_dim"],
            n_layer=cfg["n_layers"],
            n_head=cfg["n_heads"],
        )
    )
    theirs = {key.removeprefix("transformer."): tensor for key, tensor in hf.state_dict().items()}
    ours = utils.GPTModel(cfg).state_dict()
    for name, param in ours.items():
        key = utils.gpt2_checkpoint_name(name)
        assert key in theirs, f"{name} -> {key}: not in the transformers checkpoint"
        expected = tuple(param.shape)[::-1] if utils.is_conv1d_weight(key) else tuple(param.shape)
        assert tuple(theirs[key].shape) == expected, key
    assert sum(utils.is_conv1d_weight(utils.gpt2_checkpoint_name(n)) for n in ours) == 4 * cfg["n_layers"]


def test_weight_dependent_cells_are_tagged_and_explained():
    """Every cell that uses the loaded `model` is tagged needs-gpt2, and a "What you will see" note follows it."""
    import re

    import nbformat

    from run_notebooks import NEEDS_GPT2, NOTEBOOK_DIR, cell_tags

    cells = nbformat.read(next(NOTEBOOK_DIR.glob("06*.ipynb")), as_version=4).cells
    uses_model = re.compile(r"(?<![\w.])(model|model_label)\b")
    tagged = 0
    for i, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        if uses_model.search(cell.source):
            assert NEEDS_GPT2 in cell_tags(cell), f"cell {i} uses the loaded model but is not tagged:\n{cell.source}"
        if NEEDS_GPT2 in cell_tags(cell):
            tagged += 1
            note = next(c for c in cells[i + 1 :] if c.cell_type == "markdown")
            assert "What you will see" in note.source, f"no 'What you will see' note after cell {i}"
    assert tagged >= 4
