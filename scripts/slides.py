"""Slides from the notebooks: RISE slide metadata on every cell, and reveal.js HTML that works offline.

    python scripts/slides.py --apply                 # write slide metadata into every notebook (idempotent)
    python scripts/slides.py --apply notebooks/03-*.ipynb
    python scripts/slides.py --check                 # exit 1 if a notebook lacks slide metadata on a cell
    python scripts/slides.py --build --out build/slides   # reveal.js HTML per notebook (make slides)

Which cell starts a slide (`metadata.slideshow.slide_type`), decided per cell in this order:
1. a tag: slide-new, slide-sub, slide-same, slide-fragment, slide-skip, slide-notes
   (slide, subslide, "-", fragment, skip, notes);
2. a value set by hand (in JupyterLab's property inspector, say): any slide_type that differs from
   the one this script wrote last time (recorded beside it as `slideshow.auto`) is kept;
3. the rules: `#` and `##` headings start a slide, `###` a subslide; a bullet after a code cell starts
   a subslide (one idea, one slide); a code cell stays with the text that introduces it unless the
   slide would run past about SLIDE_LINES lines, where it starts a subslide; empty cells are skipped.
Outputs longer than OUTPUT_LINES lines are cut to their first lines in the HTML slides (RISE scrolls).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_html  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SLIDE_TYPES = ("slide", "subslide", "-", "fragment", "skip", "notes")
OVERRIDE_TAGS = {
    "slide-new": "slide",
    "slide-sub": "subslide",
    "slide-same": "-",
    "slide-fragment": "fragment",
    "slide-skip": "skip",
    "slide-notes": "notes",
}
SLIDE_LINES = 22  # what fits on a 1280x720 slide at RISE's font size, roughly
LINE_CHARS = 90  # longer lines wrap
OUTPUT_LINES = 14  # longer outputs are cut in the HTML slides
IMAGE_LINES = 12  # an image output or a markdown <img> takes about this much height
# RISE settings for presenting live (jupyterlab-rise reads notebook metadata "rise").
RISE_SETTINGS = {"scroll": True, "transition": "none", "theme": "simple", "width": 1280, "height": 720}


# --- the rules ---


def _text_height(text: str) -> int:
    return sum(max(1, math.ceil(len(line) / LINE_CHARS)) for line in text.splitlines()) if text.strip() else 0


def output_height(cell) -> int:
    """Lines a code cell's outputs take on a slide, after the cut to OUTPUT_LINES."""
    height = 0
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            height += _text_height(output.get("text", ""))
        elif "data" in output:
            data = output["data"]
            height += IMAGE_LINES if "image/png" in data else _text_height(data.get("text/plain", ""))
        else:  # an error
            height += 3
    return min(height, OUTPUT_LINES)


def cell_height(cell) -> int:
    source = cell.source
    if cell.cell_type == "markdown":
        return _text_height(re.sub(r"<img[^>]*>", "", source)) + IMAGE_LINES * source.count("<img")
    return _text_height(source) + output_height(cell)


def heading_level(cell) -> int:
    if cell.cell_type != "markdown":
        return 0
    match = re.match(r"(#{1,6})\s", cell.source.lstrip())
    return len(match.group(1)) if match else 0


def rule_slide_types(cells) -> list[str]:
    """The slide type the rules give each cell (no tags, no hand-set values)."""
    types, used, previous = [], 0, None  # used: lines on the slide being filled
    for cell in cells:
        height, level = cell_height(cell), heading_level(cell)
        if not cell.source.strip():
            kind = "skip"
        elif level in (1, 2) or previous is None:
            kind = "slide"
        elif level >= 3:
            kind = "subslide"
        elif cell.cell_type == "markdown" and previous.cell_type == "code":
            kind = "subslide"  # a new bullet after a result: the next idea
        elif used + height > SLIDE_LINES:
            kind = "subslide"
        else:
            kind = "-"
        if kind != "skip":
            used = height if kind in ("slide", "subslide") else used + height
            previous = cell
        types.append(kind)
    return types


def tag_override(cell) -> str | None:
    found = [OVERRIDE_TAGS[t] for t in cell.metadata.get("tags", []) if t in OVERRIDE_TAGS]
    return found[0] if found else None


def hand_set(cell) -> str | None:
    """A slide type someone chose: present, and not what this script wrote last time."""
    show = cell.metadata.get("slideshow", {})
    kind = show.get("slide_type")
    return kind if kind in SLIDE_TYPES and kind != show.get("auto") else None


def apply_slide_metadata(nb) -> int:
    """Set metadata.slideshow on every cell (see the module docstring); returns how many cells changed."""
    changed = 0
    for cell, rule in zip(nb.cells, rule_slide_types(nb.cells)):
        before = dict(cell.metadata.get("slideshow", {}))
        tagged, by_hand = tag_override(cell), hand_set(cell)
        if by_hand and not tagged:
            continue
        chosen = tagged or rule  # recorded as `auto` too: without the tag, the rules decide again
        after = {**before, "slide_type": chosen, "auto": chosen}
        if after != before:
            cell.metadata["slideshow"] = after
            changed += 1
    if nb.metadata.get("rise") is None:
        nb.metadata["rise"] = dict(RISE_SETTINGS)
        changed += 1
    return changed


def missing_slide_metadata(nb) -> list[int]:
    """Indices of cells without a valid slide type."""
    return [
        i for i, cell in enumerate(nb.cells) if cell.metadata.get("slideshow", {}).get("slide_type") not in SLIDE_TYPES
    ]


# --- HTML slides, offline ---


def trim_long_outputs(nb, max_lines: int = OUTPUT_LINES) -> None:
    """Cut text outputs to their first max_lines lines, saying how many were left out."""

    def cut(text: str) -> str:
        lines = text.splitlines()
        if len(lines) <= max_lines:
            return text
        return "\n".join(lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines in the notebook)"]) + "\n"

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = cut(output["text"])
            elif "text/plain" in output.get("data", {}) and len(output["data"]) == 1:
                output["data"]["text/plain"] = cut(output["data"]["text/plain"])


def build_slides(notebooks: list[Path], out_dir: Path, assets_cache: Path = notebook_html.ASSETS_CACHE) -> list[Path]:
    """One reveal.js HTML file per notebook in out_dir, loading its scripts from out_dir/assets/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    assets = notebook_html.ensure_assets(assets_cache)
    local = out_dir / "assets"
    if local.exists():
        shutil.rmtree(local)
    shutil.copytree(assets, local)
    figures = REPO_ROOT / "figures"
    if figures.is_dir():  # the notebooks show ../figures/*.png: copied into out_dir, links rewritten below
        shutil.copytree(figures, out_dir / "figures", dirs_exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        apply_slide_metadata(nb)  # the file on disk is untouched; missing metadata is filled in here only
        notebook_html.static_outputs(nb)
        trim_long_outputs(nb)
        staged = out_dir / f".{path.name}"
        nbformat.write(nb, staged)
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "jupyter",
                    "nbconvert",
                    "--to",
                    "slides",
                    str(staged),
                    "--output-dir",
                    str(out_dir),
                    "--output",
                    path.stem,
                    "--log-level",
                    "WARN",
                    "--template",
                    "course-slides",
                    *notebook_html.nbconvert_flags("assets"),
                    # the HTML slides look like RISE's live ones
                    *(
                        f"--SlidesExporter.reveal_{key}={RISE_SETTINGS[key]}"
                        for key in ("theme", "transition", "width", "height", "scroll")
                    ),
                ],
                check=True,
            )
        finally:
            staged.unlink(missing_ok=True)
        html = out_dir / f"{path.stem}.slides.html"
        html.write_text(html.read_text(encoding="utf-8").replace('src="../figures/', 'src="figures/'), encoding="utf-8")
        notebook_html.check_offline(html)
        written.append(html)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/[0-9]*.ipynb")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--apply", action="store_true", help="write slide metadata into the notebooks")
    what.add_argument("--check", action="store_true", help="fail if a cell has no slide metadata")
    what.add_argument("--build", action="store_true", help="write reveal.js HTML slides into --out")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "slides")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    if args.build:
        try:
            written = build_slides(paths, args.out)
        except notebook_html.AssetsUnavailableError as err:
            print(f"slides: {err}", file=sys.stderr)
            return 1
        for html in written:
            print(f"wrote {html.relative_to(Path.cwd()) if html.is_relative_to(Path.cwd()) else html}")
        return 0
    missing = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.apply:
            changed = apply_slide_metadata(nb)
            if changed:
                nbformat.write(nb, path)
            print(f"{path.name}: {changed} changes")
        else:
            cells = missing_slide_metadata(nb)
            if cells:
                missing += 1
                which = f"cells {cells}" if len(cells) <= 8 else f"{len(cells)} of {len(nb.cells)} cells"
                print(f"{path.name}: no slide metadata on {which}; run scripts/slides.py --apply")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
