"""The collate function: exact tensors on hand-checked batches, then invariants on random ones."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils import IGNORE_INDEX, PAD_TOKEN_ID, TokenizedExample, custom_collate_fn

TOY_BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]
E, X = PAD_TOKEN_ID, IGNORE_INDEX


def test_toy_batch_matches_the_specification():
    inputs, targets = custom_collate_fn(TOY_BATCH)
    assert torch.equal(inputs, torch.tensor([[0, 1, 2, 3, 4], [5, 6, E, E, E], [7, 8, 9, E, E]]))
    assert torch.equal(targets, torch.tensor([[1, 2, 3, 4, E], [6, E, X, X, X], [8, 9, E, X, X]]))
    assert inputs.dtype == targets.dtype == torch.int64


def test_custom_pad_and_ignore_values():
    inputs, targets = custom_collate_fn([[1, 2], [3]], pad_token_id=0, ignore_index=-1)
    assert inputs.tolist() == [[1, 2], [3, 0]]
    assert targets.tolist() == [[2, 0], [0, -1]]


def test_input_lists_are_not_modified():
    batch = [[1, 2, 3], [4]]
    custom_collate_fn(batch)
    assert batch == [[1, 2, 3], [4]]


def test_end_of_text_inside_the_content_is_not_masked():
    # Masking goes by position: a real 50256 in the text is a target like any other token.
    _, targets = custom_collate_fn([[1, E, 2], [3]])
    assert targets.tolist() == [[E, 2, E], [E, X, X]]


def test_mask_prompt_hides_the_prompt_targets():
    batch = [TokenizedExample([10, 11, 12, 20, 21], prompt_length=3), TokenizedExample([30, 31, 40], prompt_length=2)]
    inputs, targets = custom_collate_fn(batch, mask_prompt=True)
    assert inputs.tolist() == [[10, 11, 12, 20, 21], [30, 31, 40, E, E]]
    # row 0: targets 11, 12 are prompt tokens; 20 (first response token) is kept
    assert targets.tolist() == [[X, X, 20, 21, E], [X, 40, E, X, X]]


def test_mask_prompt_needs_prompt_lengths():
    with pytest.raises(ValueError, match="TokenizedExample"):
        custom_collate_fn(TOY_BATCH, mask_prompt=True)


def test_without_mask_prompt_examples_behave_like_lists():
    examples = [TokenizedExample(ids, prompt_length=1) for ids in TOY_BATCH]
    for a, b in zip(custom_collate_fn(examples), custom_collate_fn(TOY_BATCH)):
        assert torch.equal(a, b)


def test_truncation_keeps_the_real_next_token_and_warns():
    with pytest.warns(UserWarning, match="1 of 3 sequences"):
        inputs, targets = custom_collate_fn(TOY_BATCH, allowed_max_length=4)
    assert inputs.tolist() == [[0, 1, 2, 3], [5, 6, E, E], [7, 8, 9, E]]
    assert targets.tolist() == [[1, 2, 3, 4], [6, E, X, X], [8, 9, E, X]]


def test_no_warning_when_nothing_is_cut():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs, _ = custom_collate_fn(TOY_BATCH, allowed_max_length=5)
    assert inputs.shape == (3, 5)


def test_device_argument_moves_tensors():
    # "meta" differs from the CPU the batch is built on: a collate that ignored `device` would fail here
    inputs, targets = custom_collate_fn(TOY_BATCH, device="meta")
    assert inputs.device.type == targets.device.type == "meta"
    assert inputs.shape == targets.shape == custom_collate_fn(TOY_BATCH)[0].shape


# Content tokens stay below 50256 so that every end-of-text in a row comes from the padding.
token_lists = st.lists(st.lists(st.integers(0, PAD_TOKEN_ID - 1), min_size=1, max_size=40), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(batch=token_lists)
def test_invariants_on_random_batches(batch):
    inputs, targets = custom_collate_fn(batch)
    longest = max(map(len, batch))
    assert inputs.shape == targets.shape == (len(batch), longest)
    assert not (inputs == IGNORE_INDEX).any()
    for row, ids in enumerate(batch):
        assert inputs[row, : len(ids)].tolist() == ids
        assert (inputs[row, len(ids) :] == PAD_TOKEN_ID).all()
        assert targets[row, : len(ids) - 1].tolist() == ids[1:]  # shifted by one
        assert (targets[row] == PAD_TOKEN_ID).sum() == 1  # exactly one end-of-text left to learn
        assert targets[row, len(ids) - 1] == PAD_TOKEN_ID
        assert (targets[row, len(ids) :] == IGNORE_INDEX).all()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_prompt_masking_on_random_batches(data):
    batch = data.draw(token_lists)
    examples = [TokenizedExample(ids, data.draw(st.integers(0, len(ids)))) for ids in batch]
    _, plain = custom_collate_fn(batch)
    _, masked = custom_collate_fn(examples, mask_prompt=True)
    for row, ex in enumerate(examples):
        n_prompt_targets = max(ex.prompt_length - 1, 0)
        assert (masked[row, :n_prompt_targets] == IGNORE_INDEX).all()
        # everything from the first response token on is untouched
        assert torch.equal(masked[row, n_prompt_targets:], plain[row, n_prompt_targets:])


@settings(max_examples=100, deadline=None)
@given(batch=token_lists, allowed=st.integers(1, 45))
def test_truncation_on_random_batches(batch, allowed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs, targets = custom_collate_fn(batch, allowed_max_length=allowed)
        full_inputs, full_targets = custom_collate_fn(batch)
    assert inputs.shape[1] == min(allowed, full_inputs.shape[1])
    assert torch.equal(inputs, full_inputs[:, :allowed]) and torch.equal(targets, full_targets[:, :allowed])
    for row, ids in enumerate(batch):
        if len(ids) > allowed:
            assert targets[row, -1] == ids[allowed]  # the real next token, not a made-up stop


def test_prompt_length_beyond_the_sequence_masks_the_whole_row():
    # A prompt_length larger than the sequence (e.g. a prompt cut by truncation) masks every target of
    # that row and leaves the batch rectangular.
    batch = [TokenizedExample([1, 2, 3], prompt_length=10), TokenizedExample([4, 5, 6, 7, 8], prompt_length=2)]
    inputs, targets = custom_collate_fn(batch, mask_prompt=True)
    assert inputs.shape == targets.shape == (2, 5)
    assert targets[0].tolist() == [-100] * 5
    assert targets[1].tolist() == [-100, 6, 7, 8, 50256]
