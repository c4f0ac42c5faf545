"""Exercises (10) and solutions (11): every solution passes its check, every untouched stub fails it, and every
check rejects plausible wrong answers (exercise 7, conservative DPO, also in tests/test_exercise_dpo.py).

Also the experiment helpers in utils.py: a run returns its history, and a table never drops a row.
"""

import re

import nbformat
import pytest
import torch

import support.experiments
import utils
from run_notebooks import NOTEBOOK_DIR

EXERCISES = NOTEBOOK_DIR / "10-exercises.ipynb"
SOLUTIONS = NOTEBOOK_DIR / "11-solutions.ipynb"
CHECK_CALL = re.compile(r"^check\((\d+), ", re.MULTILINE)
RESULT_LINE = re.compile(r"^Exercise (\d+): (PASS|FAIL|not done yet)", re.MULTILINE)


def check_cells(nb) -> dict[int, nbformat.NotebookNode]:
    """Exercise number -> the code cell that runs its check."""
    cells = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and (match := CHECK_CALL.search(cell.source)):
            cells[int(match.group(1))] = cell
    return cells


def printed(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def test_both_notebooks_have_the_same_seven_checks():
    exercises, solutions = (check_cells(nbformat.read(p, as_version=4)) for p in (EXERCISES, SOLUTIONS))
    assert sorted(exercises) == sorted(solutions) == [1, 2, 3, 4, 5, 6, 7]
    for number in exercises:  # a check the solutions pass is the very check the learner runs
        assert exercises[number].source == solutions[number].source, f"check {number} differs between 10 and 11"


@pytest.mark.notebooks
def test_every_solution_passes_its_check(executed):
    nb = executed(SOLUTIONS)
    checks = check_cells(nb)
    results = {}
    for number, cell in checks.items():
        lines = RESULT_LINE.findall(printed(cell))
        assert len(lines) == 1, f"check {number} printed {printed(cell)!r}"
        results[int(lines[0][0])] = lines[0][1]
    assert results == {number: "PASS" for number in checks}
    all_text = "".join(printed(cell) for cell in nb.cells if cell.cell_type == "code")
    assert len(re.findall(r"^Exercise \d+: PASS$", all_text, re.MULTILINE)) == len(checks) == 7


@pytest.mark.notebooks
def test_every_untouched_stub_fails_its_check(executed):
    checks = check_cells(executed(EXERCISES))
    assert len(checks) == 7
    for number, cell in checks.items():
        text = printed(cell)
        assert f"Exercise {number}: not done yet" in text, text
        assert "PASS" not in text


def test_committed_exercises_show_failing_checks_and_no_solution():
    nb = nbformat.read(EXERCISES, as_version=4)
    for number, cell in check_cells(nb).items():
        assert f"Exercise {number}: not done yet" in printed(cell)
    stubs = [cell.source for cell in nb.cells if "raise NotImplementedError  # your code here" in cell.source]
    assert len(stubs) == 7  # one stub cell per exercise
    # The solutions' own code cells (the runs aside, which 10 leaves to the learner) and what they print
    # appear nowhere in 10.
    solution_only = [
        cell
        for cell in nbformat.read(SOLUTIONS, as_version=4).cells
        if cell.cell_type == "code"
        and "needs-gpt2" not in cell.metadata.get("tags", [])
        and cell.source not in {c.source for c in nb.cells}
    ]
    assert len(solution_only) >= 7, "11 should have a solution cell per exercise"
    exercise_text = "\n".join(cell.source for cell in nb.cells) + "".join(
        printed(cell) for cell in nb.cells if cell.cell_type == "code"
    )
    for cell in solution_only:
        assert cell.source not in exercise_text
        assert not printed(cell) or printed(cell) not in exercise_text


def test_committed_solutions_pass_every_check():
    for number, cell in check_cells(nbformat.read(SOLUTIONS, as_version=4)).items():
        assert printed(cell) == f"Exercise {number}: PASS\n"


def _solutions_namespace(upto: int) -> dict:
    """11's cells run in order up to (not including) the check of exercise `upto`: its solution is defined."""
    namespace = {}
    for cell in nbformat.read(SOLUTIONS, as_version=4).cells:
        if cell.cell_type != "code" or "needs-gpt2" in cell.metadata.get("tags", []):
            continue
        if (match := CHECK_CALL.search(cell.source)) and int(match.group(1)) == upto:
            definitions = cell.source.split("\ncheck(")[0]  # the problems_N function, without running it
            exec(compile(definitions, str(SOLUTIONS), "exec"), namespace)  # noqa: S102 - our own notebook
            return namespace
        if "varies" in cell.metadata.get("tags", []):
            namespace.update(alpaca_data=None, download_problem="not attempted in tests")
            continue
        exec(compile(cell.source, str(SOLUTIONS), "exec"), namespace)  # noqa: S102 - our own notebook
    raise AssertionError(f"no check for exercise {upto}")


# --- every check rejects plausible wrong answers and accepts the reference solution ---
# Each wrong answer below is a mistake a learner could make; its check must print FAIL (or report the
# exception it raises), and with the reference solution of 11 back in place it must print PASS.


@pytest.fixture(scope="module")
def solved():
    """11's namespace: every solution defined and every check function (problems_1 ... problems_6) ready."""
    namespace = _solutions_namespace(6)  # runs 11 up to check 6, defining problems_6 too
    return namespace


def run_check(namespace, number, capsys) -> str:
    capsys.readouterr()
    namespace["check"](number, namespace[f"problems_{number}"])
    return capsys.readouterr().out


def _wrong_phi3_no_newline_before_input(entry):
    text = "<|user|>\n" + entry["instruction"]
    return text + (" " + entry["input"] if entry["input"] else "")


def _wrong_phi3_input_always(entry):
    return "<|user|>\n" + entry["instruction"] + "\n" + entry["input"]


def _wrong_phi3_space_after_tag(entry):
    text = "<|user|> " + entry["instruction"]
    return text + ("\n" + entry["input"] if entry["input"] else "")


def _wrong_tokens_prompt_only(namespace):
    def example_tokens(entry, style):
        return len(utils.encode_text(utils.format_prompt(entry, style), namespace["tokenizer"]))

    return example_tokens


def _wrong_tokens_plus_end_of_text(namespace):
    right = namespace["example_tokens"]
    return lambda entry, style: right(entry, style) + 1


WRONG_1 = {  # name -> {namespace key: a function of the namespace giving the wrong replacement}
    "no newline before the input": {"phi3_prompt": lambda ns: _wrong_phi3_no_newline_before_input},
    "an empty input still adds a newline": {"phi3_prompt": lambda ns: _wrong_phi3_input_always},
    "a space instead of a newline after <|user|>": {"phi3_prompt": lambda ns: _wrong_phi3_space_after_tag},
    "counts the prompt only": {"example_tokens": _wrong_tokens_prompt_only},
    "counts an end-of-text token too": {"example_tokens": _wrong_tokens_plus_end_of_text},
}


def _masked_collate_variant(ns, *, prompt_shift=-1, mask_padding=True, first_eos_kept=True, shift=1):
    def collate(batch, pad_token_id=utils.PAD_TOKEN_ID, ignore_index=utils.IGNORE_INDEX):
        padded = torch.full((len(batch), max(len(ex.token_ids) for ex in batch) + 1), pad_token_id)
        for row, ex in enumerate(batch):
            padded[row, : len(ex.token_ids)] = torch.tensor(ex.token_ids)
        if shift == 1:
            inputs, targets = padded[:, :-1], padded[:, 1:].clone()
        else:  # no shift: the targets are the inputs themselves
            inputs, targets = padded[:, :-1], padded[:, :-1].clone()
        for row, ex in enumerate(batch):
            if mask_padding:
                targets[row, len(ex.token_ids) - (0 if first_eos_kept else 1) :] = ignore_index
            targets[row, : max(ex.prompt_length + prompt_shift, 0)] = ignore_index
        return inputs, targets

    return collate


WRONG_2 = {
    "masks the first response token too": {"masked_collate": lambda ns: _masked_collate_variant(ns, prompt_shift=0)},
    "leaves the prompt's last target unmasked": {
        "masked_collate": lambda ns: _masked_collate_variant(ns, prompt_shift=-2)
    },
    "masks the end-of-text target too": {
        "masked_collate": lambda ns: _masked_collate_variant(ns, first_eos_kept=False)
    },
    "keeps the padding as targets": {"masked_collate": lambda ns: _masked_collate_variant(ns, mask_padding=False)},
    "forgets to shift the targets": {"masked_collate": lambda ns: _masked_collate_variant(ns, shift=0)},
}


def _truncating_variant(*, cut_before_shift=False, limit_offset=0, mask_end_of_text=False):
    def collate(batch, allowed_max_length, pad_token_id=utils.PAD_TOKEN_ID, ignore_index=utils.IGNORE_INDEX):
        limit = allowed_max_length + limit_offset
        if cut_before_shift:  # cut the token lists first, then shift: the cut row gets end-of-text again
            batch = [ids[:limit] for ids in batch]
        padded_length = max(len(ids) for ids in batch) + 1
        padded = torch.tensor([ids + [pad_token_id] * (padded_length - len(ids)) for ids in batch])
        inputs, targets = padded[:, :-1], padded[:, 1:].clone()
        for row, ids in enumerate(batch):
            targets[row, len(ids) - (1 if mask_end_of_text else 0) :] = ignore_index
        return inputs[:, :limit], targets[:, :limit]

    return collate


WRONG_3 = {
    "cuts the token lists before shifting": {
        "truncating_collate": lambda ns: _truncating_variant(cut_before_shift=True)
    },
    "keeps one position too many": {"truncating_collate": lambda ns: _truncating_variant(limit_offset=1)},
    "keeps one position too few": {"truncating_collate": lambda ns: _truncating_variant(limit_offset=-1)},
    "masks the end-of-text target": {"truncating_collate": lambda ns: _truncating_variant(mask_end_of_text=True)},
}


def _sampler(*, threshold="row", divide=True, strict=True, dim=-1):
    def sample_next_token(logits, temperature=0.0, top_k=None):
        if top_k is not None:
            kth = torch.topk(logits, top_k, dim=-1).values
            kth = {"row": kth[:, [-1]], "first row": kth[0, -1], "min over rows": kth[:, -1].min()}[threshold]
            drop = logits < kth if strict else logits <= kth
            logits = logits.masked_fill(drop, float("-inf"))
        if temperature == 0:
            return logits.argmax(dim=-1)
        scaled = logits / temperature if divide else logits * temperature
        probabilities = torch.softmax(scaled, dim=dim)
        return torch.multinomial(probabilities, num_samples=1).squeeze(1)

    return sample_next_token


WRONG_4 = {
    "top-k threshold from the first row only": {"sample_next_token": lambda ns: _sampler(threshold="first row")},
    "top-k threshold as the minimum over all rows": {
        "sample_next_token": lambda ns: _sampler(threshold="min over rows")
    },
    "top-k keeps k-1 tokens (<= instead of <)": {"sample_next_token": lambda ns: _sampler(strict=False)},
    "temperature multiplied instead of divided": {"sample_next_token": lambda ns: _sampler(divide=False)},
    "softmax over the batch instead of the vocabulary": {"sample_next_token": lambda ns: _sampler(dim=0)},
}


def _lora_variant(ns, *, scaling="alpha / rank", transpose_merge=True, b_zero=True, freeze=True):
    nn = torch.nn

    class WrongLoRA(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base = base
            self.scaling = {
                "alpha / rank": alpha / rank,
                "alpha // rank": alpha // rank,
                "rank / alpha": rank / alpha,
                "none": 1.0,
            }[scaling]
            for param in base.parameters():
                param.requires_grad_(not freeze)
            self.lora_A = nn.Parameter(torch.randn(base.in_features, rank) / rank**0.5)
            b = torch.zeros(rank, base.out_features) if b_zero else torch.randn(rank, base.out_features)
            self.lora_B = nn.Parameter(b)

        def forward(self, x):
            return self.base(x) + self.scaling * (x @ self.lora_A @ self.lora_B)

        @torch.no_grad()
        def merge(self):
            merged = nn.Linear(self.base.in_features, self.base.out_features)
            update = self.scaling * (self.lora_A @ self.lora_B)
            merged.weight.copy_(self.base.weight + (update.T if transpose_merge else update))
            merged.bias.copy_(self.base.bias)
            return merged

    return WrongLoRA


def _lora_count_without_feed_forward(cfg, rank):
    d = cfg["emb_dim"]
    return cfg["n_layers"] * rank * ((d + 3 * d) + (d + d))


WRONG_5 = {
    "alpha // rank (integer division)": {"MyLoRALinear": lambda ns: _lora_variant(ns, scaling="alpha // rank")},
    "rank / alpha": {"MyLoRALinear": lambda ns: _lora_variant(ns, scaling="rank / alpha")},
    "no scaling": {"MyLoRALinear": lambda ns: _lora_variant(ns, scaling="none")},
    "merge without the transpose": {"MyLoRALinear": lambda ns: _lora_variant(ns, transpose_merge=False)},
    "B starts random": {"MyLoRALinear": lambda ns: _lora_variant(ns, b_zero=False)},
    "base left trainable": {"MyLoRALinear": lambda ns: _lora_variant(ns, freeze=False)},
    "count without the feed-forward layers": {"lora_parameter_count": lambda ns: _lora_count_without_feed_forward},
}


def _subset_variant(ns, *, strict=False, sort=False, prompt_only=False, slice_first=False):
    def short_subset(data, n, max_tokens):
        text = utils.format_prompt if prompt_only else utils.format_example
        lengths = [len(utils.encode_text(text(entry), ns["tokenizer"])) for entry in data]
        pool = list(zip(data, lengths))[:n] if slice_first else list(zip(data, lengths))
        if sort:
            pool = sorted(pool, key=lambda pair: pair[1])
        return [entry for entry, length in pool if (length < max_tokens if strict else length <= max_tokens)][:n]

    return short_subset


WRONG_6 = {
    "< instead of <=": {"short_subset": lambda ns: _subset_variant(ns, strict=True)},
    "the n shortest instead of the first n": {"short_subset": lambda ns: _subset_variant(ns, sort=True)},
    "measures the prompt only": {"short_subset": lambda ns: _subset_variant(ns, prompt_only=True)},
    "filters the first n entries instead of taking n": {
        "short_subset": lambda ns: _subset_variant(ns, slice_first=True)
    },
}

WRONG = {1: WRONG_1, 2: WRONG_2, 3: WRONG_3, 4: WRONG_4, 5: WRONG_5, 6: WRONG_6}


def test_every_exercise_has_three_or_more_wrong_answers():
    assert sorted(WRONG) == [1, 2, 3, 4, 5, 6] and all(len(wrong) >= 3 for wrong in WRONG.values())


@pytest.mark.parametrize("number", sorted(WRONG))
def test_check_accepts_the_reference_solution(solved, number, capsys):
    assert run_check(solved, number, capsys) == f"Exercise {number}: PASS\n"


@pytest.mark.parametrize("number,name", [(n, name) for n, wrong in WRONG.items() for name in wrong])
def test_check_rejects_a_wrong_answer(solved, number, name, capsys, monkeypatch):
    for key, make in WRONG[number][name].items():
        assert key in solved, f"exercise {number}: 11 defines no {key}"
        monkeypatch.setitem(solved, key, make(solved))
    out = run_check(solved, number, capsys)
    assert out.startswith(f"Exercise {number}: FAIL"), f"{name!r} passed the check of exercise {number}: {out}"


def test_lora_check_names_the_scaling(solved, capsys, monkeypatch):
    monkeypatch.setitem(solved, "MyLoRALinear", _lora_variant(solved, scaling="alpha // rank"))
    assert "forward differs from utils.LoRALinear" in run_check(solved, 5, capsys)


# --- the experiment helpers ---


def test_fitting_subset_takes_the_first_short_entries_in_order(tokenizer, dataset):
    lengths = [len(utils.encode_text(utils.format_example(e), tokenizer)) for e in dataset[:100]]
    subset = utils.fitting_subset(dataset[:100], tokenizer, n=5, max_tokens=50)
    assert subset == [e for e, n in zip(dataset[:100], lengths) if n <= 50][:5]
    assert utils.fitting_subset(dataset[:10], tokenizer, n=5, max_tokens=1) == []


def test_results_table_keeps_skipped_and_failed_rows():
    ok = support.experiments.ExperimentResult(
        "ran",
        history=utils.TrainHistory([5], [2.0], [2.5], [100]),
        scores={"exact_match": 0.1, "rouge_l": 0.4, "rouge_l_stderr": 0.05},
        trainable_parameters=10,
        train_examples=8,
        train_seconds=1.0,
    )
    table = support.experiments.results_table(
        [
            ok,
            support.experiments.skipped_experiment("52k", "no data: no network"),
            support.experiments.ExperimentResult("broken", status="failed: ValueError: bad"),
        ]
    )
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].split()[:2] == ["ran", "8"] and "0.400 ± 0.050" in lines[2] and "2.500" in lines[2]
    assert lines[3].startswith("52k") and lines[3].endswith("skipped: no data: no network")
    assert lines[4].startswith("broken") and lines[4].endswith("failed: ValueError: bad")


def test_a_run_that_cannot_train_becomes_a_failed_row(monkeypatch, tokenizer, dataset):
    monkeypatch.setenv(utils.SMOKE_ENV, "1")
    result = utils.run_experiment(
        "too little data", dataset[:3], dataset[3:5], dataset[5:7], tokenizer, batch_size=8, progress=False
    )
    assert not result.ok
    assert result.status == "failed: ValueError: 3 training examples do not fill one batch of 8"
    assert result.settings["mask_prompt"] is False
    assert "too little data" in support.experiments.results_table([result])


def test_run_experiment_returns_history_scores_and_answers(monkeypatch, tokenizer, dataset):
    monkeypatch.setenv(utils.SMOKE_ENV, "1")
    result = utils.run_experiment(
        "masked, cut, LoRA",
        dataset[:4],
        dataset[4:6],
        dataset[6:8],
        tokenizer,
        style="phi3",
        mask_prompt=True,
        allowed_max_length=32,
        lora_rank=2,
        batch_size=2,
        eval_freq=1,
        eval_iter=1,
        max_new_tokens=3,
        progress=False,
    )
    assert result.ok, result.status
    assert result.history.steps == [1, 2]
    assert all(loss == loss for loss in result.history.val_losses)  # not nan
    # the tiny model: 2 blocks, emb_dim 64; rank 2 on qkv (64->192), out (64->64), ff (64->256, 256->64)
    assert result.trainable_parameters == 2 * 2 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    assert [r["instruction"] for r in result.responses] == [e["instruction"] for e in dataset[6:8]]
    assert set(result.scores) >= {"exact_match", "rouge_l", "rouge_l_stderr"}
    assert result.settings == {
        "model_name": "gpt2-small",
        "style": "phi3",
        "mask_prompt": True,
        "allowed_max_length": 32,
        "lora_rank": 2,
        "lr": 5e-5,
        "seed": 123,
    }


def test_score_answers_standard_error():
    entries = [{"output": "a b", "model_response": "a b"}, {"output": "a b", "model_response": "c d"}]
    scores = utils.score_answers(entries)
    assert scores["rouge_l"] == pytest.approx(0.5)
    assert scores["rouge_l_stderr"] == pytest.approx(0.5)  # sample sd 0.707 / sqrt(2)


def test_generate_responses_samples_reproducibly_whatever_the_batch_size(tokenizer, dataset):
    torch.manual_seed(0)
    model = utils.GPTModel(utils.GPT_CONFIGS["tiny"]).eval()
    entries = dataset[:5]

    def answers(**options):
        return [
            r["model_response"]
            for r in utils.generate_responses(model, entries, tokenizer, max_new_tokens=8, progress=False, **options)
        ]

    greedy = answers()
    assert answers(temperature=0.0, seed=7) == greedy  # temperature 0 ignores the seed
    sampled = answers(temperature=1.5, seed=7, batch_size=5)
    assert answers(temperature=1.5, seed=7, batch_size=2) == sampled  # every prompt has its own generator
    assert sampled != greedy
    assert answers(temperature=1.5, seed=8, batch_size=5) != sampled
    assert answers(temperature=1.5, top_k=1, seed=7) == greedy  # top-1 sampling is greedy
