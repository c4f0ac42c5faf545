"""The exercises' comparison table: one row per experiment (utils.run_experiment), skipped and failed runs included.

Notebook scaffolding: no course code here, so it needs nothing from utils.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class ExperimentResult:
    """One row of a comparison table: what ran, whether it ran, and what it measured."""

    name: str
    status: str = "ok"  # "ok", or "skipped: <reason>" / "failed: <reason>"; never dropped from a table
    model_label: str = ""
    settings: dict = field(default_factory=dict)
    history: Any = None  # utils.TrainHistory
    scores: dict | None = None  # evaluate_responses() of the test answers, plus rouge_l_stderr
    responses: list[dict] = field(default_factory=list)
    trainable_parameters: int = 0
    train_examples: int = 0
    train_seconds: float = float("nan")
    model: nn.Module | None = None  # only with keep_model=True

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def skipped_experiment(name: str, reason: str) -> ExperimentResult:
    """A row for a run that could not start (no network, no data): it shows in the table as skipped."""
    return ExperimentResult(name, status=f"skipped: {reason}")


def failed_experiment(name: str, exc: Exception, settings: dict) -> ExperimentResult:
    """A row for a run that raised: it shows in the table (one line) instead of stopping the comparison."""
    print(f"{name}: failed ({type(exc).__name__}: {exc})")
    first_line = next(iter(str(exc).splitlines()), "")  # a table row stays one line
    return ExperimentResult(name, status=f"failed: {type(exc).__name__}: {first_line}", settings=settings)


def results_table(results: Sequence[ExperimentResult]) -> str:
    """A plain-text table with one row per experiment, skipped and failed runs included."""
    header = (
        f"{'experiment':24} {'examples':>8} {'trainable':>11} {'train s':>8} {'val loss':>9} "
        f"{'exact match':>11} {'ROUGE-L':>14}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        if not r.ok:
            rows.append(f"{r.name:24} {r.status}")
            continue
        val = r.history.val_losses if r.history else []
        losses = f"{val[-1]:.3f}" if val else "-"
        s = r.scores
        rows.append(
            f"{r.name:24} {r.train_examples:8d} {r.trainable_parameters:11,d} {r.train_seconds:8.0f} "
            f"{losses:>9} {s['exact_match']:11.1%} {s['rouge_l']:7.3f} ± {s['rouge_l_stderr']:.3f}"
        )
    return "\n".join(rows)
