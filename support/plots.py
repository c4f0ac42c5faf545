"""The figures of the notebooks: one plot style for projectors, a batch drawn as a grid, the loss curves.

Notebook scaffolding, not course code: the notebooks call these to show what the course code made.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from support.files import atomic_write_bytes

# Okabe-Ito colours: distinguishable with the common forms of colour blindness.
COLORS = {
    "prompt": "#56B4E9",
    "response": "#E69F00",
    "end": "#009E73",
    "padding": "#BBBBBB",
    "masked": "#FFFFFF",
    "accent": "#D55E00",
    "text": "#222222",
}
# The order in which a plot's lines and bars take their colours (Okabe-Ito, strongest first).
COLOR_CYCLE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000"]
# Font sizes in points for every plot: on a figure 8-10 inches wide, 15 pt ticks and 18 pt labels
# still read from the back of a room when projected, and stay comfortable on a laptop.
PLOT_FONT_SIZES = {"tick": 15, "label": 18, "legend": 16, "title": 20}


def plot_style() -> dict:
    """matplotlib settings for plots readable on a projector: big fonts, Okabe-Ito colours, white background."""
    from cycler import cycler

    sizes = PLOT_FONT_SIZES
    return {
        "font.size": sizes["label"],
        "axes.labelsize": sizes["label"],
        "axes.titlesize": sizes["title"],
        "xtick.labelsize": sizes["tick"],
        "ytick.labelsize": sizes["tick"],
        "legend.fontsize": sizes["legend"],
        "legend.frameon": False,
        "axes.prop_cycle": cycler(color=COLOR_CYCLE),
        "lines.linewidth": 3,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "figure.facecolor": "white",
        "axes.facecolor": "white",
        "savefig.facecolor": "white",
        "figure.autolayout": True,  # labels this big need the room tight_layout makes
    }


def use_plot_style() -> None:
    """Apply plot_style() to every plot drawn after this call (a notebook calls it once)."""
    import matplotlib

    matplotlib.rcParams.update(plot_style())


def _token_label(token_id: int, tokenizer, width: int = 7) -> str:
    if token_id < 0:  # a masked target (-100)
        return str(token_id)
    if token_id == tokenizer.eot_token:
        return "<eot>"
    text = tokenizer.decode([token_id]).replace("\n", "\\n").replace(" ", "\u2423")
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def plot_batch(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    tokenizer,
    prompt_lengths: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
    first_column: int = 0,
    n_columns: int = 16,
    title: str = "",
):
    """Draw a window of a batch as a grid: for each example an input row and a target row.

    Colours: prompt tokens, response tokens, the end-of-text that is learned, padding, and
    masked (-100) targets. `lengths` (tokens before padding) tells end-of-text from padding.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    n_rows, width = inputs.shape
    columns = range(first_column, min(first_column + n_columns, width))
    eot = tokenizer.eot_token  # GPT-2's <|endoftext|>, also the padding token
    lengths = lengths or [int((row != eot).nonzero().max()) + 1 if (row != eot).any() else 0 for row in inputs]
    prompt_lengths = prompt_lengths or [0] * n_rows

    def category(row: int, pos: int, token: int, is_target: bool) -> str:
        seq_pos = pos + 1 if is_target else pos  # a target at pos is the token at pos + 1
        if token < 0:  # masked (-100)
            return "masked"
        if seq_pos >= lengths[row]:
            return "end" if seq_pos == lengths[row] else "padding"
        return "prompt" if seq_pos < prompt_lengths[row] else "response"

    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 1.6, 1.05 * n_rows * 2 + 0.9), dpi=100)
    y = 0
    for row in range(n_rows):
        for label, tensor, is_target in (("input", inputs, False), ("target", targets, True)):
            ax.text(
                -0.15,
                y + 0.5,
                f"{label} {row}",
                ha="right",
                va="center",
                fontsize=PLOT_FONT_SIZES["tick"],
                color=COLORS["text"],
            )
            for x, pos in enumerate(columns):
                token = int(tensor[row, pos])
                kind = category(row, pos, token, is_target)
                ax.add_patch(
                    Rectangle(
                        (x, y),
                        0.94,
                        0.9,
                        facecolor=COLORS[kind],
                        edgecolor="#666666",
                        hatch="//" if kind == "masked" else None,
                        linewidth=0.8,
                    )
                )
                ax.text(
                    x + 0.47,
                    y + 0.58,
                    _token_label(token, tokenizer),
                    ha="center",
                    va="center",
                    fontsize=9.5,
                    color=COLORS["accent"] if kind == "masked" else COLORS["text"],
                    fontweight="bold",
                )
                ax.text(
                    x + 0.47,
                    y + 0.22,
                    "" if token < 0 else str(token),
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="#333333",
                )
            y += 1
        y += 0.35
    for x, pos in enumerate(columns):
        ax.text(x + 0.47, -0.25, str(pos), ha="center", va="center", fontsize=8, color="#555555")
    ax.set_xlim(-1.6, len(columns))
    ax.set_ylim(y, -0.6)
    ax.axis("off")
    legend = [
        Patch(facecolor=COLORS[k], edgecolor="#666666", hatch="//" if k == "masked" else None, label=label)
        for k, label in (
            ("prompt", "prompt"),
            ("response", "response"),
            ("end", "end-of-text (learned)"),
            ("padding", "padding"),
            ("masked", "masked target (-100)"),
        )
    ]
    ax.legend(
        handles=legend,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=5,
        frameon=False,
        fontsize=PLOT_FONT_SIZES["tick"],
    )
    if title:
        ax.set_title(title, fontsize=PLOT_FONT_SIZES["title"])
    fig.patch.set_facecolor("white")  # readable on GitHub's dark theme too
    fig.tight_layout()
    return fig


# Okabe-Ito colours (colour-blind safe): the first two of COLOR_CYCLE.
LOSS_COLORS = {"train": "#0072B2", "val": "#E69F00"}


def _extrapolating_interp(xs: Sequence[float], ys: Sequence[float]) -> Callable:
    """Piecewise-linear x -> y through the points, continued with the end slopes (for axis mapping)."""
    import numpy as np

    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    def f(x):
        x = np.asarray(x, dtype=float)
        y = np.interp(x, xs, ys)
        left = (ys[1] - ys[0]) / (xs[1] - xs[0])
        right = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        y = np.where(x < xs[0], ys[0] + (x - xs[0]) * left, y)
        return np.where(x > xs[-1], ys[-1] + (x - xs[-1]) * right, y)

    return f


def plot_losses(history, save_path: str | Path | None = None, title: str | None = None):
    """Loss curves of train_model's history (or its to_dict()) over optimizer steps, tokens seen on top.

    save_path writes a PNG atomically. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    h = SimpleNamespace(**history) if isinstance(history, dict) else history
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    ax.plot(
        h.steps,
        h.train_losses,
        color=LOSS_COLORS["train"],
        linewidth=3,
        marker="o",
        markersize=5,
        label="training loss",
    )
    ax.plot(
        h.steps,
        h.val_losses,
        color=LOSS_COLORS["val"],
        linewidth=3,
        linestyle="--",
        marker="s",
        markersize=5,
        label="validation loss",
    )
    ax.set_xlabel("optimizer step", fontsize=PLOT_FONT_SIZES["label"])
    ax.set_ylabel("cross-entropy loss", fontsize=PLOT_FONT_SIZES["label"])
    ax.tick_params(labelsize=PLOT_FONT_SIZES["tick"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=PLOT_FONT_SIZES["legend"], frameon=False)
    # steps <-> tokens through the measured points, (0, 0) included; both rise strictly.
    points = sorted({(0, 0), *zip(h.steps, h.tokens_seen)})
    if len(points) >= 2 and all(b[0] > a[0] and b[1] > a[1] for a, b in zip(points, points[1:])):
        steps, tokens = zip(*points)
        top = ax.secondary_xaxis(
            "top", functions=(_extrapolating_interp(steps, tokens), _extrapolating_interp(tokens, steps))
        )
        top.set_xlabel("tokens seen (real targets)", fontsize=PLOT_FONT_SIZES["label"])
        top.xaxis.set_major_formatter(EngFormatter(sep=""))
        top.tick_params(labelsize=PLOT_FONT_SIZES["tick"])
    if title:
        ax.set_title(title, fontsize=PLOT_FONT_SIZES["title"], pad=14)
    fig.patch.set_facecolor("white")
    ax.set_facecolor("white")
    fig.tight_layout()
    if save_path is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=150, facecolor="white")
        atomic_write_bytes(save_path, buffer.getvalue())
    return fig
