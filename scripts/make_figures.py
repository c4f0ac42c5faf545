"""Draw the course figures (figures/*.png) from the project's own code and data.

    python scripts/make_figures.py                 # all figures into figures/  (make figures)
    python scripts/make_figures.py --out /tmp/fig  # somewhere else
    python scripts/make_figures.py 04 05           # only some (names with or without .png)

Every token ID, template string and batch in a figure comes from `utils` (the real tokenizer on
real entries of instruction-data.json), so a figure cannot disagree with the code: when the code
or the data changes, tests/test_figures.py notices and `make figures` redraws.

Conventions, so the figures read on a projector and on GitHub's light and dark themes:
- opaque white background, dark text, fonts of 11 pt or more, saved at 200 dpi (2x);
- Okabe-Ito colours from support.plots.COLORS, and where colour carries meaning there is also a label,
  a hatch or a border, so nothing depends on telling two colours apart;
- deterministic: matplotlib's default style and bundled DejaVu fonts, no timestamp in the PNG.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from functools import cache, cached_property, partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never open a window; must precede any pyplot import elsewhere

import matplotlib.colors  # noqa: E402
import matplotlib.style  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ft2font import __freetype_version__  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import utils  # noqa: E402
from support.plots import COLORS  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "figures"
DPI = 200  # figures are designed in inches at 100 px per inch and saved at twice that
RENDERER = f"matplotlib {matplotlib.__version__}, FreeType {__freetype_version__}"

# Dataset entries shown in the figures (indices into instruction-data.json).
ENTRY_WITH_INPUT = 50  # spelling of 'Ocassion'
ENTRY_WITHOUT_INPUT = 999  # antonym of 'complicated'
BATCH_ENTRIES = (999, 50, 100)  # the batch of figures 05 and 07: three lengths, so padding shows
TOY_BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]  # notebook 03's toy batch (figure 06)

# Notebook numbers on the boxes of pipeline.png.
PIPELINE_NOTEBOOKS = {
    "dataset": "01",
    "format": "02",
    "tokenize": "03",
    "batches": "03\u201304",
    "model": "05\u201306",
    "finetune": "07",
    "generate": "08",
    "evaluate": "08",
}

# --- style ---

C = COLORS
TEXT = C["text"]
MUTED = "#555555"  # secondary text; still 7:1 on white
LINE = "#444444"  # box outlines and arrows
SANS, MONO = "DejaVu Sans", "DejaVu Sans Mono"
FONT, SMALL, TITLE = 12, 11, 14  # never below 11 pt
CAP_HEIGHT = 0.73  # of DejaVu Sans and Sans Mono, in em

STYLE = {  # on top of matplotlib's defaults, so a local matplotlibrc cannot change the output
    "font.family": "sans-serif",
    "font.sans-serif": [SANS],
    "font.monospace": [MONO],
    "mathtext.fontset": "dejavusans",
    "svg.hashsalt": "make_figures",
    "hatch.linewidth": 1.0,
}


def tint(color: str, amount: float) -> str:
    """`color` mixed with white: amount=1 is the colour itself, 0 is white."""
    rgb = matplotlib.colors.to_rgb(color)
    return matplotlib.colors.to_hex(tuple(1 - amount * (1 - c) for c in rgb))


@cache
def char_width(size: float = FONT, weight: str = "normal") -> float:
    """Width in inches of one character of DejaVu Sans Mono at `size` points, as rendered at DPI."""
    with matplotlib.style.context("default"), matplotlib.rc_context(STYLE):
        fig, ax = canvas(1, 1)
        n = 100
        return text_width(ax, text(ax, 0, 0, "M" * n, size=size, family=MONO, weight=weight)) / n


# --- drawing helpers: one axes covering the figure, coordinates in inches, y pointing down ---


def canvas(width: float, height: float) -> tuple[Figure, matplotlib.axes.Axes]:
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")  # measure texts as they will be saved
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    fig.fit_checks = []  # (text, patch) pairs: the text must stay inside its box
    return fig, ax


def text(
    ax,
    x,
    y,
    s,
    *,
    size=FONT,
    color=TEXT,
    ha="left",
    va="center",
    weight="normal",
    family=SANS,
    style="normal",
    **kwargs,
):
    return ax.text(
        x,
        y,
        s,
        fontsize=size,
        color=color,
        ha=ha,
        va=va,
        fontweight=weight,
        fontfamily=family,
        fontstyle=style,
        **kwargs,
    )


def box(
    ax,
    x,
    y,
    w,
    h,
    label="",
    *,
    fill="white",
    edge=LINE,
    lw=1.3,
    hatch=None,
    hatch_color=None,
    size=FONT,
    weight="normal",
    color=TEXT,
    family=SANS,
    rounded=True,
    linestyle="-",
    align="center",
    pad=0.12,
    zorder=2,
):
    """A (rounded) box with top-left corner (x, y), and `label` centred (or left-aligned) in it."""
    style = "round,pad=0,rounding_size=0.08" if rounded else "square,pad=0"
    patch = FancyBboxPatch(
        (x, y), w, h, boxstyle=style, facecolor=fill, edgecolor=edge, linewidth=lw, linestyle=linestyle, zorder=zorder
    )
    ax.add_patch(patch)
    if hatch:
        ax.add_patch(
            FancyBboxPatch(
                (x, y),
                w,
                h,
                boxstyle=style,
                facecolor="none",
                linewidth=0,
                edgecolor=hatch_color or tint(edge, 0.35),
                hatch=hatch,
                zorder=zorder,
            )
        )
    if label:
        tx = x + w / 2 if align == "center" else x + pad
        if "\n" in label:
            ty, va = y + h / 2, "center"
        else:  # one line: a common baseline with capitals centred, so "." sits low and "'" high, as in print
            ty, va = y + h / 2 + CAP_HEIGHT / 2 * size / 72, "baseline"
        t = text(
            ax,
            tx,
            ty,
            label,
            size=size,
            color=color,
            ha=align,
            va=va,
            weight=weight,
            family=family,
            zorder=zorder + 1,
            linespacing=1.3,
        )
        ax.figure.fit_checks.append((t, patch))
    return patch


def arrow(ax, start, end, *, color=LINE, lw=1.6, style="-|>", connection="arc3", head=14, zorder=1, **kwargs):
    patch = FancyArrowPatch(
        start,
        end,
        arrowstyle=style,
        connectionstyle=connection,
        color=color,
        lw=lw,
        mutation_scale=head,
        shrinkA=0,
        shrinkB=0,
        zorder=zorder,
        **kwargs,
    )
    ax.add_patch(patch)
    return patch


def legend_row(ax, x, y, items, *, size=SMALL, swatch=0.28, gap=0.3):
    """A hand-made legend in one row: items are (label, box keyword arguments). Returns the end x."""
    for label, style in items:
        box(ax, x, y - swatch / 2, swatch * 1.3, swatch, rounded=False, **style)
        t = text(ax, x + swatch * 1.3 + 0.08, y, label, size=size)
        x += swatch * 1.3 + 0.08 + text_width(ax, t) + gap
    return x


def text_width(ax, t) -> float:
    """Width of a text artist in inches (needs a renderer; the Agg one is deterministic)."""
    renderer = ax.figure.canvas.get_renderer()
    return t.get_window_extent(renderer).width / ax.figure.dpi


# --- token cells (figures 04 to 07) ---

CELL_STYLES = {  # kind -> box keyword arguments
    "prompt": dict(fill=tint(C["prompt"], 0.55), edge=LINE),
    "response": dict(fill=tint(C["response"], 0.55), edge=LINE),
    "end": dict(fill=tint(C["end"], 0.55), edge=TEXT, lw=2.4),
    "padding": dict(fill=tint(C["padding"], 0.6), edge=MUTED, hatch="//", hatch_color="#FFFFFF"),
    "masked": dict(fill="white", edge=MUTED, hatch="/", hatch_color="#C8C8C8"),
    "toy": dict(fill=tint(C["prompt"], 0.35), edge=LINE),
    "dropped": dict(fill="white", edge="#999999", linestyle="--"),
}
CELL_LEGEND = {
    "prompt": "prompt",
    "response": "response",
    "end": "end-of-text (learned)",
    "padding": "padding",
    "masked": "ignored target (-100)",
}


def cell(ax, x, y, w, h, label, kind, *, size=SMALL, color=TEXT, weight="normal"):
    return box(
        ax, x, y, w, h, label, rounded=False, size=size, family=MONO, color=color, weight=weight, **CELL_STYLES[kind]
    )


def token_piece(token_id: int, tokenizer) -> str:
    """How a token's text is shown: spaces as the open-box sign, newlines as \\n (as in support.plots.plot_batch)."""
    if token_id == utils.PAD_TOKEN_ID:
        return "<|endoftext|>"
    return tokenizer.decode([token_id]).replace("\n", "\\n").replace(" ", "\u2423")


def save(fig: Figure, path: Path) -> Path:
    """Write a PNG whose bytes depend only on the drawing: no date, no "Software" version string.

    Two text chunks go in instead: every text drawn (so tests/test_figures.py can compare a
    figure's content exactly) and the renderer (pixels may differ slightly between versions).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Software": None, "Texts": json.dumps(figure_texts(fig)), "Renderer": RENDERER}
    fig.savefig(path, dpi=DPI, facecolor="white", transparent=False, metadata=metadata)
    return path


def figure_texts(fig: Figure) -> list[str]:
    """Every string drawn in the figure, in drawing order."""
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def layout_problems(fig: Figure) -> list[str]:
    """Texts that stick out of the figure or out of the box they label."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    page = Bbox.from_bounds(0, 0, fig.bbox.width, fig.bbox.height)
    problems = []
    for t in fig.axes[0].texts:
        if t.get_text().strip() and not _inside(t.get_window_extent(renderer), page):
            problems.append(f"text {t.get_text()!r} is cut off at the figure's edge")
    for t, patch in getattr(fig, "fit_checks", []):
        if not _inside(t.get_window_extent(renderer), patch.get_window_extent(renderer), slack=-0.02 * fig.dpi):
            problems.append(f"text {t.get_text()!r} does not fit in its box")
    return problems


def _inside(inner: Bbox, outer: Bbox, slack: float = 0.5) -> bool:
    return (
        inner.x0 >= outer.x0 - slack
        and inner.y0 >= outer.y0 - slack
        and inner.x1 <= outer.x1 + slack
        and inner.y1 <= outer.y1 + slack
    )


# --- what the figures show, computed with utils ---


@dataclass
class Sources:
    """The data and tokenizer, loaded once for all figures."""

    data_path: Path = utils.DEFAULT_DATA_PATH

    @cached_property
    def data(self) -> list[dict]:
        return utils.load_instruction_data(self.data_path)

    @cached_property
    def tokenizer(self):
        return utils.get_tokenizer()

    def tokens(self, index: int) -> utils.TokenizedExample:
        """Entry `index` tokenized the way training sees it."""
        return utils.InstructionDataset([self.data[index]], self.tokenizer)[0]


def template_segments(entry: dict, style: str) -> list[tuple[str, str]]:
    """format_example(entry, style) cut into (text, part) pieces: part is "template" or an entry field.

    Found by formatting an entry whose fields are unique markers, so the pieces come from
    utils.PROMPT_STYLES and nothing here repeats a template string.
    """
    fields = ("instruction", "input", "output")
    markers = {field: f"\x00{field}\x00" for field in fields}
    probe = {field: markers[field] if entry.get(field) else "" for field in fields}
    layout = utils.format_example(probe, style)
    segments = []
    for piece in re.split("(\x00[a-z]+\x00)", layout):
        if not piece:
            continue
        field = piece.strip("\x00")
        segments.append((entry[field], field) if piece == markers.get(field) else (piece, "template"))
    assert "".join(s for s, _ in segments) == utils.format_example(entry, style)
    return segments


# --- 01: the stages of building an LLM ---


def draw_stages(src: Sources) -> Figure:
    fig, ax = canvas(10.5, 4.7)
    bw, bh = 1.8, 1.0
    cols = [0.3, 2.4, 4.45, 6.55, 8.4]
    y_mid = 2.5

    # stage headers over the columns they span
    for (x0, x1), title in [
        ((cols[0], cols[0] + bw), "1  Build"),
        ((cols[1], cols[2] + bw), "2  Pretrain"),
        ((cols[3], cols[4] + bw), "3  Finetune"),
    ]:
        text(ax, (x0 + x1) / 2, 0.35, title, size=TITLE, weight="bold", ha="center")
        ax.plot([x0, x1], [0.62, 0.62], color=MUTED, lw=1.2)

    # 1: architecture + data
    y_a, y_b = 1.05, 2.95
    box(ax, cols[0], y_a, bw, bh, "Model\narchitecture\n(GPT-2)", fill=tint(C["prompt"], 0.3))
    box(ax, cols[0], y_b, bw, bh, "Training data:\nlots of\nunlabeled text", fill=tint(C["prompt"], 0.3))
    # 2: pretraining -> foundation model
    box(
        ax,
        cols[1],
        y_mid - bh / 2 - 0.1,
        bw,
        bh + 0.2,
        "Pretraining:\npredict the next\ntoken, over\nand over",
        fill=tint(C["padding"], 0.35),
    )
    box(ax, cols[2], y_mid - bh / 2, bw, bh, "Foundation\nmodel\n(pretrained)", fill=tint(C["end"], 0.3), weight="bold")
    arrow(ax, (cols[0] + bw, y_a + bh / 2), (cols[1], y_mid - 0.2))
    arrow(ax, (cols[0] + bw, y_b + bh / 2), (cols[1], y_mid + 0.2))
    arrow(ax, (cols[1] + bw, y_mid), (cols[2], y_mid))

    # 3: two finetuning branches; ours is highlighted by colour, a thick border and a label
    ours = dict(fill=tint(C["response"], 0.45), edge=C["accent"], lw=3, weight="bold")
    box(ax, cols[3], y_a, bw - 0.2, bh, "Classification\nfinetuning:\ntexts with\nclass labels")
    box(ax, cols[4], y_a, bw, bh, "Classifier\n(e.g. spam or\nnot spam)")
    box(ax, cols[3], y_b, bw - 0.2, bh, "Instruction\nfinetuning:\nrequests with\nanswers", **ours)
    box(ax, cols[4], y_b, bw, bh, "Personal\nassistant,\nchat model", **ours)
    box(
        ax,
        cols[3] + 0.5,
        y_b + bh + 0.15,
        cols[4] + bw - cols[3] - 1.0,
        0.42,
        "\u2605 this course",
        fill="white",
        edge=C["accent"],
        lw=2.5,
        weight="bold",
        size=FONT,
    )
    arrow(ax, (cols[2] + bw, y_mid - 0.1), (cols[3], y_a + bh / 2))
    arrow(ax, (cols[2] + bw, y_mid + 0.1), (cols[3], y_b + bh / 2), color=C["accent"], lw=2.6)
    arrow(ax, (cols[3] + bw - 0.2, y_a + bh / 2), (cols[4], y_a + bh / 2))
    arrow(ax, (cols[3] + bw - 0.2, y_b + bh / 2), (cols[4], y_b + bh / 2), color=C["accent"], lw=2.6)
    return fig


# --- 02: a pretrained model continues, an instruction-finetuned model answers ---


def draw_continue_vs_answer(src: Sources) -> Figure:
    entry = src.data[ENTRY_WITHOUT_INPUT]
    W = 8.8
    fig, ax = canvas(W, 4.5)
    # the request, once, at the top
    text(
        ax, W / 2, 0.3, f"One request (entry {ENTRY_WITHOUT_INPUT}), two models", size=TITLE, weight="bold", ha="center"
    )
    box(ax, W / 2 - 2.0, 0.6, 4.0, 0.55, entry["instruction"], fill=tint(C["prompt"], 0.3), size=FONT + 1)

    col_w, gap = 4.1, 0.3
    lefts = [W / 2 - gap / 2 - col_w, W / 2 + gap / 2]
    # illustrative continuation: the text goes on in the same pattern, with more questions
    continuation = (
        "What is an antonym of 'difficult'?\nWhat is a synonym of 'simple'?\nWhat is an antonym of 'ancient'?\n\u2026"
    )
    panels = [
        (
            "(a) Pretrained GPT-2",
            "continues the text",
            continuation,
            "illustrative: the kind of text a pretrained\nmodel writes here, not from a real run",
            dict(fill=tint(C["padding"], 0.3)),
        ),
        (
            "(b) Instruction-finetuned GPT-2",
            "answers the request",
            entry["output"],
            "illustrative: the dataset's own answer,\nwhich finetuning teaches the model to give",
            dict(fill=tint(C["response"], 0.45)),
        ),
    ]
    for x, (model, behaviour, output, note, fill) in zip(lefts, panels):
        arrow(ax, (W / 2 + (x + col_w / 2 - W / 2) * 0.3, 1.15), (x + col_w / 2, 1.55))
        box(ax, x, 1.55, col_w, 0.5, model, fill="white", weight="bold", lw=1.6)
        arrow(ax, (x + col_w / 2, 2.05), (x + col_w / 2, 2.45))
        text(ax, x + col_w / 2 + 0.12, 2.25, behaviour, size=SMALL, color=MUTED, style="italic")
        box(ax, x, 2.45, col_w, 1.25, output, align="left", family=MONO, size=SMALL, **fill)
        text(ax, x + 0.05, 3.8, note, size=SMALL, color=MUTED, style="italic", va="top")
    return fig


# --- 03: Alpaca and Phi-3 prompt formats side by side ---


def _wrap_runs(segments: list[tuple[str, str]], width: int) -> list[list[tuple[str, str]]]:
    """Word-wrap coloured text to `width` characters: a list of lines, each a list of (text, part) runs."""
    chars = [(ch, part) for s, part in segments for ch in s]
    lines, line = [], []
    for ch, part in chars + [("\n", "template")]:
        if ch == "\n":
            lines.append(line)
            line = []
        else:
            line.append((ch, part))
    wrapped = []
    for line in lines:
        while len(line) > width:
            cut = max((i for i in range(1, width + 1) if line[i - 1][0] == " "), default=width)
            wrapped.append(line[: cut - 1] if line[cut - 1][0] == " " else line[:cut])  # no shaded space at the end
            line = line[cut:]
        wrapped.append(line)
    runs = []
    for line in wrapped:
        merged = []
        for ch, part in line:
            if merged and merged[-1][1] == part:
                merged[-1] = (merged[-1][0] + ch, part)
            else:
                merged.append((ch, part))
        runs.append(merged)
    return runs


def draw_prompt_styles(src: Sources) -> Figure:
    entry = src.data[ENTRY_WITH_INPUT]
    size, width_chars, line_h = SMALL + 1, 38, 0.27
    cw = char_width(size)
    panel_w = width_chars * cw + 0.5
    styles = list(utils.PROMPT_STYLES)[:2]
    panels = {style: _wrap_runs(template_segments(entry, style), width_chars) for style in styles}
    n_lines = max(len(p) for p in panels.values())
    W = 2 * panel_w + 0.9
    H = 1.55 + n_lines * line_h + 0.95
    fig, ax = canvas(W, H)
    text(
        ax,
        W / 2,
        0.3,
        f"One entry (entry {ENTRY_WITH_INPUT}), two prompt templates",
        size=TITLE,
        weight="bold",
        ha="center",
    )
    names = {"alpaca": "Alpaca", "phi3": "Phi-3"}
    part_style = {
        "template": dict(fill=tint(C["padding"], 0.55), weight="bold"),
        "instruction": dict(fill=tint(C["response"], 0.35), weight="normal"),
        "input": dict(fill=tint(C["response"], 0.35), weight="normal"),
        "output": dict(fill=tint(C["response"], 0.35), weight="normal"),
    }
    for k, style in enumerate(styles):
        x0 = 0.3 + k * (panel_w + 0.3)
        text(
            ax,
            x0 + panel_w / 2,
            0.8,
            f'{names.get(style, style)}   (style="{style}")',
            size=FONT + 1,
            weight="bold",
            ha="center",
        )
        top = 1.1
        ax.add_patch(
            FancyBboxPatch(
                (x0, top),
                panel_w,
                n_lines * line_h + 0.3,
                facecolor="white",
                edgecolor=LINE,
                lw=1.3,
                boxstyle="round,pad=0,rounding_size=0.08",
            )
        )
        for row, runs in enumerate(panels[style]):
            y = top + 0.15 + row * line_h + line_h / 2
            col = 0
            for s, part in runs:
                x = x0 + 0.25 + col * cw
                ax.add_patch(
                    Rectangle(
                        (x, y - line_h / 2 + 0.01),
                        len(s) * cw,
                        line_h - 0.02,
                        linewidth=0,
                        facecolor=part_style[part]["fill"],
                        zorder=2,
                    )
                )
                text(ax, x, y, s, size=size, family=MONO, weight=part_style[part]["weight"], zorder=3)
                col += len(s)
    legend_row(
        ax,
        0.3,
        H - 0.5,
        [
            ("template text (bold): the same for every entry", dict(fill=part_style["template"]["fill"], edge=MUTED)),
            ("the entry's instruction, input and output", dict(fill=part_style["input"]["fill"], edge=MUTED)),
        ],
    )
    return fig


# --- 04: a formatted entry cut into tokens, IDs underneath ---


def draw_tokenization(src: Sources) -> Figure:
    entry = src.data[ENTRY_WITHOUT_INPUT]
    tok = src.tokenizer
    token_ids = utils.encode_text(utils.format_example(entry), tok)
    prompt_len = len(utils.encode_text(utils.format_prompt(entry), tok))
    assert token_ids[:prompt_len] == utils.encode_text(utils.format_prompt(entry), tok)
    ids = token_ids + [utils.PAD_TOKEN_ID]  # batching appends one end-of-text

    W, size = 10.6, SMALL
    cw, pad, gap, cell_h = char_width(size), 0.14, 0.06, 0.34
    fig, ax = canvas(W, 10)  # height fixed below, once the layout is known
    text(
        ax,
        0.3,
        0.3,
        f"Entry {ENTRY_WITHOUT_INPUT}, formatted (format_example) and tokenized (encode_text): "
        f"{len(token_ids)} tokens + end-of-text",
        size=TITLE - 1,
        weight="bold",
    )
    y = 0.65
    for line in utils.format_example(entry).split("\n"):
        text(ax, 0.3, y + 0.13, line, size=size, family=MONO)
        y += 0.26
    y += 0.3
    x = 0.3
    for i, token_id in enumerate(ids):
        piece = token_piece(token_id, tok)
        w = max(len(piece), len(str(token_id))) * cw + 2 * pad
        if x + w > W - 0.3:
            x, y = 0.3, y + 2 * cell_h + 0.28
        kind = "end" if i >= len(token_ids) else "prompt" if i < prompt_len else "response"
        cell(ax, x, y, w, cell_h, piece, kind, size=size)
        box(
            ax,
            x,
            y + cell_h,
            w,
            cell_h,
            str(token_id),
            rounded=False,
            fill="white",
            edge=LINE,
            family=MONO,
            size=size,
            weight="bold",
        )
        x += w + gap
    y += 2 * cell_h + 0.45
    legend_row(
        ax,
        0.3,
        y,
        [
            ("prompt (format_prompt)", CELL_STYLES["prompt"]),
            ("response (the entry's output)", CELL_STYLES["response"]),
            ("end-of-text, ID 50256 (appended when batching)", CELL_STYLES["end"]),
        ],
    )
    text(
        ax,
        0.3,
        y + 0.45,
        "Top: the token's text (\u2423 = space, \\n = new line).  Bottom: its token ID.",
        size=size,
        color=MUTED,
    )
    return _crop_height(fig, ax, y + 0.8)


def _crop_height(fig: Figure, ax, height: float) -> Figure:
    fig.set_size_inches(fig.get_figwidth(), height)
    ax.set_ylim(height, 0)
    return fig


# --- 05 and 07: a real batch, with an ellipsis in the middle of long rows ---


@dataclass
class RealBatch:
    indices: tuple[int, ...]
    lengths: list[int]  # tokens per example before padding
    prompt_lengths: list[int]
    padded: list[list[int]]  # each row padded to the longest length + 1
    inputs: list[list[int]]
    targets: list[list[int]]


def real_batch(src: Sources, indices=BATCH_ENTRIES) -> RealBatch:
    examples = [src.tokens(i) for i in indices]
    inputs, targets = utils.custom_collate_fn(examples)
    # the padded rows before the shift: with masking turned off, targets are the rows minus their first token
    plain_inputs, plain_targets = utils.custom_collate_fn(examples, ignore_index=utils.PAD_TOKEN_ID)
    assert plain_inputs.tolist() == inputs.tolist()
    padded = [row[:1] + t for row, t in zip(inputs.tolist(), plain_targets.tolist())]
    return RealBatch(
        tuple(indices),
        [len(ex.token_ids) for ex in examples],
        [ex.prompt_length for ex in examples],
        padded,
        inputs.tolist(),
        targets.tolist(),
    )


CELL_W = 0.6  # a five-digit ID in 11 pt monospace is 0.46 in wide


def _window(width: int, head: int, tail: int) -> list[int | None]:
    """Positions to show: the first `head`, None for the ellipsis, then the last `tail`."""
    if head + tail >= width:
        return list(range(width))
    return list(range(head)) + [None] + list(range(width - tail, width))


def _draw_rows(ax, rows, labels, kinds, positions, *, x0, y0, cw=None, ch=0.42, row_gap=0.2, highlight=None):
    """Rows of token IDs in cells; kinds[r][pos] picks the cell style. Returns the y below the grid."""
    cw = cw or CELL_W
    for k, pos in enumerate(positions):
        x = x0 + k * cw
        if pos is None:
            text(ax, x + cw / 2, y0 - 0.22, "\u2026", size=SMALL, color=MUTED, ha="center")
        else:
            text(ax, x + cw / 2, y0 - 0.22, str(pos), size=SMALL, color=MUTED, ha="center")
    y = y0
    for r, row in enumerate(rows):
        text(ax, x0 - 0.15, y + ch / 2, labels[r], size=SMALL, ha="right", linespacing=1.15)
        for k, pos in enumerate(positions):
            x = x0 + k * cw
            if pos is None:
                text(ax, x + cw / 2, y + ch / 2, "\u2026", size=FONT + 2, ha="center", weight="bold")
                continue
            kind = kinds[r][pos]
            cell(
                ax,
                x + 0.02,
                y,
                cw - 0.04,
                ch,
                str(row[pos]),
                kind,
                size=SMALL,
                weight="bold" if kind == "end" else "normal",
            )
        y += ch + row_gap
    return y


def _sequence_kind(position: int, length: int, prompt_length: int) -> str:
    if position >= length:
        return "end" if position == length else "padding"
    return "prompt" if position < prompt_length else "response"


def draw_padding(src: Sources) -> Figure:
    b = real_batch(src)
    width = len(b.padded[0])
    positions = _window(width, 3, 11)
    kinds = [[_sequence_kind(p, n, pl) for p in range(width)] for n, pl in zip(b.lengths, b.prompt_lengths)]
    labels = [f"entry {i}\n({n} tokens)" for i, n in zip(b.indices, b.lengths)]
    W = 1.55 + len(positions) * CELL_W + 0.3
    fig, ax = canvas(W, 3.75)
    text(
        ax,
        0.3,
        0.3,
        f"A batch of three entries, padded with 50256 to the longest length + 1 ({width})",
        size=TITLE - 1,
        weight="bold",
    )
    text(
        ax,
        0.3,
        0.62,
        "Each row gets one end-of-text token, then padding (also 50256) up to the common length.",
        size=SMALL,
        color=MUTED,
    )
    text(ax, 1.4, 1.08, "position", size=SMALL, color=MUTED, ha="right")
    y = _draw_rows(ax, b.padded, labels, kinds, positions, x0=1.55, y0=1.3)
    legend_row(
        ax,
        0.3,
        y + 0.25,
        [(CELL_LEGEND[k], CELL_STYLES[k]) for k in ("prompt", "response", "end")]
        + [("padding (50256)", CELL_STYLES["padding"])],
    )
    return fig


def draw_masking(src: Sources) -> Figure:
    b = real_batch(src)
    width = len(b.targets[0])
    positions = _window(width, 3, 11)
    # target j is sequence token j + 1
    kinds = [
        ["masked" if t == utils.IGNORE_INDEX else _sequence_kind(j + 1, n, pl) for j, t in enumerate(row)]
        for row, n, pl in zip(b.targets, b.lengths, b.prompt_lengths)
    ]
    labels = [f"targets\nentry {i}" for i in b.indices]
    W = 1.55 + len(positions) * CELL_W + 0.3
    fig, ax = canvas(W, 3.75)
    text(
        ax,
        0.3,
        0.3,
        "Targets of the same batch: padding after the first end-of-text becomes -100",
        size=TITLE - 1,
        weight="bold",
    )
    text(
        ax,
        0.3,
        0.62,
        "cross_entropy skips -100 targets; the first 50256 stays, so the model learns to stop.",
        size=SMALL,
        color=MUTED,
    )
    text(ax, 1.4, 1.08, "position", size=SMALL, color=MUTED, ha="right")
    y = _draw_rows(ax, b.targets, labels, kinds, positions, x0=1.55, y0=1.3)
    legend_row(ax, 0.3, y + 0.25, [(CELL_LEGEND[k], CELL_STYLES[k]) for k in ("prompt", "response", "end", "masked")])
    return fig


# --- 06: targets are the inputs shifted by one ---


def draw_shift(src: Sources) -> Figure:
    inputs, targets = utils.custom_collate_fn(TOY_BATCH)
    row_in, row_tg = inputs[0].tolist(), targets[0].tolist()
    padded = row_in + row_tg[-1:]
    n = len(row_in)
    cw, ch, x0 = 0.85, 0.5, 2.0
    W = x0 + (n + 1) * cw + 1.0
    fig, ax = canvas(W, 4.35)
    text(ax, 0.3, 0.3, "Targets = inputs shifted one position to the left", size=TITLE, weight="bold")
    text(ax, 0.3, 0.62, f"Toy row {TOY_BATCH[0]} after custom_collate_fn: padded to {padded}", size=SMALL, color=MUTED)
    y_in, y_tg = 1.35, 2.65
    for k in range(n):
        text(ax, x0 + k * cw + cw / 2, y_in - 0.22, str(k), size=SMALL, color=MUTED, ha="center")
    text(ax, x0 - 0.15, y_in - 0.22, "position", size=SMALL, color=MUTED, ha="right")
    for y, label in ((y_in, "inputs"), (y_tg, "targets")):
        text(
            ax,
            x0 - 0.15,
            y + ch / 2 + CAP_HEIGHT / 2 * FONT / 72,
            label,
            size=FONT,
            weight="bold",
            ha="right",
            va="baseline",
        )
    for k, token in enumerate(padded):
        x = x0 + k * cw + 0.03
        if k < n:
            cell(ax, x, y_in, cw - 0.06, ch, str(token), "toy", size=FONT)
        else:  # the last token of the padded row is no input: nothing comes after it to predict
            cell(ax, x, y_in, cw - 0.06, ch, str(token), "dropped", size=FONT, color="#777777")
            text(ax, x + cw + 0.02, y_in + ch / 2, "not an\ninput", size=SMALL, color=MUTED, linespacing=1.1)
        if k >= 1:  # token k of the row is the target at position k - 1
            arrow(
                ax,
                (x + (cw - 0.06) / 2, y_in + ch + 0.05),
                (x - cw + (cw - 0.06) / 2, y_tg - 0.05),
                color=C["accent"],
                lw=1.6,
            )
    for k, token in enumerate(row_tg):
        kind = "end" if token == utils.PAD_TOKEN_ID else "toy"
        cell(
            ax,
            x0 + k * cw + 0.03,
            y_tg,
            cw - 0.06,
            ch,
            str(token),
            kind,
            size=FONT,
            weight="bold" if kind == "end" else "normal",
        )
        if kind == "end":
            text(ax, x0 + k * cw + cw / 2, y_tg + ch + 0.2, "end-of-text", size=SMALL, color=MUTED, ha="center")
    j = 2
    text(
        ax,
        0.3,
        3.95,
        f"At position {j} the model has read {', '.join(map(str, row_in[: j + 1]))} and should predict {row_tg[j]}.",
        size=FONT,
    )
    return fig


# --- 05: GPT-2's architecture, with names, shapes and parameter counts read from GPTModel ---


def _parameter_counts(cfg: dict) -> dict[str, int]:
    """Parameters of each top-level part of GPTModel(cfg) (first block only), built on the meta device."""
    import torch

    with torch.device("meta"):  # shapes only: no memory, no random numbers
        model = utils.GPTModel(cfg)
    counts = {name: utils.count_parameters(module) for name, module in model.named_children() if name != "trf_blocks"}
    block = model.trf_blocks[0]
    counts.update({f"block.{name}": utils.count_parameters(module) for name, module in block.named_children()})
    counts["block"] = utils.count_parameters(block)
    counts["total"] = utils.count_parameters(model)
    return counts


def draw_gpt2_architecture(src: Sources) -> Figure:
    name = "gpt2-small"
    cfg = utils.GPT_CONFIGS[name]
    n = _parameter_counts(cfg)
    d, v, L, heads = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"], cfg["n_heads"]
    fig, ax = canvas(10.4, 11.2)
    text(ax, 0.3, 0.35, f"GPT-2 small as GPTModel builds it (GPT_CONFIGS[{name!r}])", size=TITLE, weight="bold")
    text(
        ax,
        0.3,
        0.7,
        "Left: the data flow, top to bottom, with each module's name in GPTModel.  Right: its shapes and parameters.",
        size=SMALL,
        color=MUTED,
    )

    x0, bw, bh = 0.9, 4.2, 0.62  # the main column
    cx = x0 + bw / 2
    ann = 6.0  # the annotation column
    data_fill = dict(fill=tint(C["prompt"], 0.3))
    layer_fill = dict(fill=tint(C["response"], 0.35))
    norm_fill = dict(fill=tint(C["padding"], 0.35))

    def down(y_from, y_to):
        arrow(ax, (cx, y_from), (cx, y_to))

    def plus(y):
        box(ax, cx - 0.22, y, 0.44, 0.44, "+", size=FONT + 4, weight="bold", fill="white", rounded=True)
        return y + 0.44

    def note(y, lines):
        text(ax, ann, y, lines, size=SMALL, family=MONO, va="center", linespacing=1.35)

    # input and embeddings
    y = 1.05
    box(ax, x0, y, bw, bh, "token IDs  (batch, tokens)", **data_fill)
    down(y + bh, y + bh + 0.35)
    y += bh + 0.35
    half = (bw - 0.2) / 2
    box(ax, x0, y, half, bh + 0.2, "token embedding\ntok_emb", **layer_fill)
    box(ax, x0 + half + 0.2, y, half, bh + 0.2, "position embedding\npos_emb", **layer_fill, size=SMALL)
    note(
        y + (bh + 0.2) / 2,
        f"tok_emb: {v:,} \u00d7 {d} = {n['tok_emb']:,}\n"
        f"pos_emb: {cfg['context_length']:,} \u00d7 {d} = {n['pos_emb']:,}",
    )
    arrow(ax, (x0 + half / 2, y + bh + 0.2), (cx - 0.2, y + bh + 0.5))
    arrow(ax, (x0 + 1.5 * half + 0.2, y + bh + 0.2), (cx + 0.2, y + bh + 0.5))
    y = plus(y + bh + 0.5)
    text(
        ax, cx + 0.35, y - 0.22, "each token's vector + its position's vector", size=SMALL, color=MUTED, style="italic"
    )
    down(y, y + 0.45)

    # the transformer block, repeated
    y_block = y + 0.45
    inner_x, inner_w = x0 + 0.55, bw - 1.1
    rows = [
        ("LayerNorm  norm1", norm_fill, f"norm1: 2 \u00d7 {d} = {n['block.norm1']:,}"),
        (
            f"causal multi-head\nattention  att\n({heads} heads of {d // heads})",
            layer_fill,
            f"att.qkv: {d} \u2192 3\u00b7{d} (queries, keys, values)\n"
            f"att.out_proj: {d} \u2192 {d}\natt total: {n['block.att']:,}",
        ),
        ("+", None, ""),
        ("LayerNorm  norm2", norm_fill, f"norm2: {n['block.norm2']:,}"),
        (
            f"feed-forward  ff\n{d} \u2192 {4 * d:,} \u2192 {d}, GELU",
            layer_fill,
            f"ff: {d}\u00b7{4 * d:,} + {4 * d:,}\u00b7{d} + biases\n    = {n['block.ff']:,}",
        ),
        ("+", None, ""),
    ]

    def row_height(label):
        return 0.44 if label == "+" else bh + 0.25 * label.count("\n")

    frame_h = 0.45 + sum(row_height(label) + 0.38 for label, *_ in rows) + 0.1
    frame = FancyBboxPatch(
        (x0, y_block),
        bw,
        frame_h,
        boxstyle="round,pad=0,rounding_size=0.12",
        facecolor=tint(C["padding"], 0.12),
        edgecolor=LINE,
        lw=1.6,
        linestyle="--",
        zorder=0,
    )
    ax.add_patch(frame)
    text(ax, ann, y_block + 0.12, f"transformer block, \u00d7 {L}", size=FONT, weight="bold")
    note(y_block + 0.42, f"trf_blocks[0 \u2026 {L - 1}]")
    note(y_block + frame_h - 0.3, f"one block: {n['block']:,}\n\u00d7 {L} blocks: {L * n['block']:,}")
    text(ax, x0 + bw - 0.15, y_block + frame_h - 0.25, f"\u00d7 {L}", size=TITLE + 2, weight="bold", ha="right")
    y = y_block + 0.45
    arrow(ax, (cx, y_block), (cx, y))
    shortcut_from = y_block + 0.22
    for label, fill, annotation in rows:
        h = row_height(label)
        if label == "+":
            box(ax, cx - 0.22, y, 0.44, 0.44, "+", size=FONT + 4, weight="bold", fill="white")
            # the shortcut: the part's input goes around it and is added back
            sx = x0 + 0.25
            ax.plot([cx, sx, sx], [shortcut_from, shortcut_from, y + 0.22], color=C["accent"], lw=1.8, zorder=1)
            arrow(ax, (sx, y + 0.22), (cx - 0.22, y + 0.22), color=C["accent"], lw=1.8)
            shortcut_from = y + h + 0.19
        else:
            box(ax, inner_x, y, inner_w, h, label, size=SMALL, **fill)
            if annotation:
                note(y + h / 2, annotation)
        y += h
        if label != rows[-1][0] or fill is not None:
            arrow(ax, (cx, y), (cx, y + 0.38))
        y += 0.38
    text(
        ax,
        x0 + 0.15,
        y_block + frame_h - 0.25,
        "shortcut (residual)\nconnections",
        size=SMALL,
        color=C["accent"],
        style="italic",
    )
    y = y_block + frame_h
    arrow(ax, (cx, y - 0.48), (cx, y + 0.38))

    # head
    y += 0.38
    box(ax, x0, y, bw, bh, "final LayerNorm  final_norm", **norm_fill)
    note(y + bh / 2, f"final_norm: {n['final_norm']:,}")
    down(y + bh, y + bh + 0.35)
    y += bh + 0.35
    box(ax, x0, y, bw, bh, f"output head  out_head   {d} \u2192 {v:,}", **layer_fill)
    note(y + bh / 2, f"out_head: {d} \u00d7 {v:,} = {n['out_head']:,}")
    down(y + bh, y + bh + 0.35)
    y += bh + 0.35
    box(ax, x0, y, bw, bh, f"logits  (batch, tokens, {v:,})", **data_fill)
    text(
        ax,
        cx + bw / 2 + 0.1,
        y + bh / 2,
        "a score for every\npossible next token",
        size=SMALL,
        color=MUTED,
        style="italic",
    )

    # totals
    tied = n["total"] - n["out_head"]
    y += bh + 0.45
    text(
        ax,
        0.3,
        y,
        f"Total: {n['total']:,} parameters with out_head as its own matrix (as GPTModel builds it).",
        size=FONT,
    )
    text(
        ax,
        0.3,
        y + 0.38,
        f"OpenAI's GPT-2 reuses tok_emb for out_head (weight tying): "
        f"{n['total']:,} \u2212 {n['out_head']:,} = {tied:,}, the \u201c124M\u201d.",
        size=FONT,
    )
    return _crop_height(fig, ax, y + 0.7)


# --- LoRA ---


def draw_lora(src: Sources) -> Figure:
    fig, ax = canvas(10.2, 5.6)
    d, r = 768, 8
    text(ax, 0.3, 0.3, "LoRA: keep W frozen, learn a small low-rank update A B", size=TITLE, weight="bold")
    frozen = dict(fill=tint(C["padding"], 0.5), edge=LINE, hatch="..", hatch_color="#888888", lw=1.6)
    trainable = dict(fill=tint(C["response"], 0.6), edge=C["accent"], lw=2.4)
    legend_row(ax, 7.3, 0.3, [("frozen", frozen), ("trainable", trainable)])
    # input x
    box(ax, 0.3, 2.55, 0.9, 0.6, "x\n(1 \u00d7 d)", fill="white", size=FONT)
    # frozen path: W (d x d)
    s = 1.9
    box(ax, 2.1, 0.85, s, s, **frozen)
    box(
        ax,
        2.1 + 0.3,
        0.85 + 0.45,
        s - 0.6,
        s - 0.9,
        "W  (d \u00d7 d)\npretrained",
        size=FONT,
        fill="white",
        edge="white",
        lw=0,
    )
    # trainable path: A (d x r) tall and thin, B (r x d) short and wide
    box(ax, 2.1, 3.05, 0.42, s, "A", size=FONT + 1, weight="bold", **trainable)
    text(ax, 2.62, 3.3, "d \u00d7 r", size=SMALL)
    box(ax, 3.3, 3.75, s, 0.42, "B", size=FONT + 1, weight="bold", **trainable)
    text(ax, 3.3 + s / 2, 4.35, "r \u00d7 d", size=SMALL, ha="center")
    text(ax, 2.1, 5.2, f"r \u226a d, e.g. d = {d}, r = {r}", size=SMALL)
    box(ax, 5.55, 3.65, 0.85, 0.62, "\u00d7 \u03b1/r", size=FONT, fill="white")
    # sum and output
    box(ax, 6.95, 2.55, 0.6, 0.6, "+", size=FONT + 6, weight="bold", fill="white")
    box(ax, 8.05, 2.5, 1.85, 0.7, "h = xW\n+ (\u03b1/r)\u00b7xAB", size=FONT, fill=tint(C["prompt"], 0.3))
    arrow(ax, (1.2, 2.75), (2.1, 1.8), connection="arc3,rad=-0.15")
    arrow(ax, (1.2, 2.95), (2.1, 4.0), connection="arc3,rad=0.15")
    arrow(ax, (2.52, 3.96), (3.3, 3.96))
    arrow(ax, (3.3 + s, 3.96), (5.55, 3.96))
    arrow(ax, (6.4, 3.96), (7.1, 3.15), connection="arc3,rad=0.2")
    arrow(ax, (4.0, 1.8), (7.1, 2.6), connection="arc3,rad=-0.2")
    arrow(ax, (7.55, 2.85), (8.05, 2.85))
    # parameter counts, computed
    full, lora = d * d, d * r + r * d
    text(ax, 4.3, 1.2, f"{d} \u00d7 {d} = {full:,} weights,\nnot updated", size=SMALL)
    text(
        ax,
        5.5,
        4.75,
        f"{d}\u00b7{r} + {r}\u00b7{d} = {lora:,} weights\n({lora / full:.1%} of W): the only ones trained",
        size=SMALL,
    )
    return fig


# --- pipeline of the series ---


def draw_pipeline(src: Sources, highlight: tuple[str, ...] = (), title: str | None = None) -> Figure:
    """The series as a pipeline; boxes named in `highlight` stand out, the others fade (the here-strips)."""
    nb = PIPELINE_NOTEBOOKS
    bw, bh, step = 1.45, 1.05, 1.72
    x = [0.3 + k * step for k in range(6)]
    fig, ax = canvas(x[5] + bw + 0.3, 4.15)
    y_data, y_model = 1.0, 2.75
    text(ax, 0.3, 0.35, title or "The series at a glance (black tags: notebook numbers)", size=TITLE, weight="bold")
    data_fill, model_fill = dict(fill=tint(C["prompt"], 0.35)), dict(fill=tint(C["response"], 0.45))
    boxes = {  # key -> (column, row y, label, style)
        "dataset": (0, y_data, "instruction\ndataset", data_fill),
        "format": (1, y_data, "prompt\nformatting", data_fill),
        "tokenize": (2, y_data, "tokenize", data_fill),
        "batches": (3, y_data, "batches:\npad, shift,\nmask", data_fill),
        "model": (2, y_model, "GPT-2 with\npretrained\nweights", model_fill),
        "finetune": (3, y_model, "finetune", model_fill),
        "generate": (4, y_model, "generate\nresponses", model_fill),
        "evaluate": (5, y_model, "evaluate:\nmetrics,\nLLM judge", model_fill),
    }
    for key, (col, y, label, style) in boxes.items():
        if highlight and key in highlight:
            style = dict(style, edge=C["accent"], lw=4.5, weight="bold")
        elif highlight:
            style = dict(fill="#F2F2F2", edge="#BBBBBB", color=MUTED)
        box(ax, x[col], y, bw, bh, label, size=FONT, **style)
        box(
            ax,
            x[col] - 0.1,
            y - 0.17,
            0.78,
            0.32,
            nb[key],
            fill=TEXT,
            edge=TEXT,
            color="white",
            weight="bold",
            size=SMALL,
            zorder=4,
        )
    for a, b in [
        ("dataset", "format"),
        ("format", "tokenize"),
        ("tokenize", "batches"),
        ("model", "finetune"),
        ("finetune", "generate"),
        ("generate", "evaluate"),
    ]:
        (ca, ya, *_), (cb, yb, *_) = boxes[a], boxes[b]
        arrow(ax, (x[ca] + bw, ya + bh / 2), (x[cb], yb + bh / 2))
    arrow(ax, (x[3] + bw / 2, y_data + bh), (x[3] + bw / 2, y_model - 0.17))
    text(ax, x[4] + 0.1, y_data + bh / 2, "data:\ntext \u2192 token tensors", size=SMALL, color=MUTED, style="italic")
    text(
        ax,
        x[2] - 0.25,
        y_model + bh / 2,
        "model:\npretrained \u2192 assistant",
        size=SMALL,
        color=MUTED,
        style="italic",
        ha="right",
    )
    return fig


# --- "you are here" strips: the pipeline with one notebook's steps highlighted ---

HERE = {  # notebook number -> (title, highlighted pipeline boxes)
    "01": ("The instruction dataset", ("dataset",)),
    "02": ("Prompt formatting", ("format",)),
    "03": ("Tokenization and batching", ("tokenize", "batches")),
    "04": ("DataLoaders", ("batches",)),
    "05": ("The GPT-2 model", ("model",)),
    "06": ("Pretrained weights and generation", ("model",)),
    "07": ("Finetuning", ("finetune",)),
    "08": ("Generation and evaluation", ("generate", "evaluate")),
    "09": ("Preference tuning (DPO)", ("finetune",)),
    "10": ("Exercises on the highlighted steps", ("format", "batches", "finetune", "generate")),
    "11": ("Solutions to the exercises", ("format", "batches", "finetune", "generate")),
}


def draw_here(number: str, src: Sources) -> Figure:
    title, steps = HERE[number]
    return draw_pipeline(src, highlight=steps, title=f"You are here: {number} \u00b7 {title}")


FIGURES = {
    "01.png": draw_stages,
    "02.png": draw_continue_vs_answer,
    "03.png": draw_prompt_styles,
    "04.png": draw_tokenization,
    "05.png": draw_padding,
    "06.png": draw_shift,
    "07.png": draw_masking,
    "lora.png": draw_lora,
    "gpt2-architecture.png": draw_gpt2_architecture,
    "pipeline.png": draw_pipeline,
    **{f"here-{number}.png": partial(draw_here, number) for number in HERE},
}


def draw(name: str, src: Sources | None = None) -> Figure:
    """Draw one figure (by file name, e.g. "04.png") in the fixed style; returns the Figure."""
    with matplotlib.style.context("default"), matplotlib.rc_context(STYLE):
        return FIGURES[name](src or Sources())


def make_figures(out_dir: str | Path = DEFAULT_OUT, names=None, src: Sources | None = None) -> list[Path]:
    """Draw and save figures (all by default) into `out_dir`; returns the paths written.

    Raises ValueError after saving if a text is cut off or sticks out of its box.
    """
    src = src or Sources()
    out_dir = Path(out_dir)
    paths, problems = [], []
    for name in names or FIGURES:
        with matplotlib.style.context("default"), matplotlib.rc_context(STYLE):
            fig = FIGURES[name](src)
            problems += [f"{name}: {p}" for p in layout_problems(fig)]
            paths.append(save(fig, out_dir / name))
    if problems:
        raise ValueError("layout problems:\n  " + "\n  ".join(problems))
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"figures to draw (default: all): {', '.join(FIGURES)}")
    parser.add_argument("--out", default=DEFAULT_OUT, type=Path, help="output folder (default: figures/)")
    args = parser.parse_args(argv)
    names = [n if n.endswith(".png") else f"{n}.png" for n in args.names]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    try:
        paths = make_figures(args.out, names or None)
    except (utils.TokenizerUnavailableError, utils.DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
