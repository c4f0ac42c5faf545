"""The committed figures match what scripts/make_figures.py draws now, and every image a notebook shows exists.

When a figure test fails after a change to the code or the data, redraw with `make figures` and
look at the new PNGs before committing them.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from PIL import Image

import make_figures

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURE_DIR = REPO_ROOT / "figures"
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
MAX_MEAN_DIFF = 1.0  # mean absolute difference per pixel channel, on a 0-255 scale

IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
ATTRIBUTE = re.compile(r"""\b([a-z-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@pytest.fixture(scope="module")
def redrawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    make_figures.make_figures(out)
    return out


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


@pytest.mark.parametrize("name", sorted(make_figures.FIGURES))
def test_committed_figure_matches_the_code(name, redrawn):
    committed, fresh = FIGURE_DIR / name, redrawn / name
    assert committed.exists(), f"{committed} is missing: run `make figures` and commit it"
    old_info, new_info = png_text(committed), png_text(fresh)
    # content: every text, token ID and label, exactly
    assert json.loads(old_info.get("Texts", "null")) == json.loads(new_info["Texts"]), (
        f"{name}: the texts drawn differ from the committed figure; run `make figures`"
    )
    old, new = imread(committed), imread(fresh)
    assert old.shape == new.shape, (
        f"{name}: committed {old.shape[1]}x{old.shape[0]} px, now drawn "
        f"{new.shape[1]}x{new.shape[0]} px; run `make figures`"
    )
    # pixels: exact up to rendering noise, when drawn by the same matplotlib and FreeType
    if old_info.get("Renderer") != new_info["Renderer"]:
        pytest.skip(
            f"{name} was drawn with {old_info.get('Renderer')}, this is {new_info['Renderer']}: "
            f"texts and size checked, pixels not compared"
        )
    channels = min(old.shape[2], new.shape[2], 3)
    diff = np.abs(old[..., :channels].astype(np.float64) - new[..., :channels]).mean() * 255
    assert diff < MAX_MEAN_DIFF, f"{name} drifted from the code (mean difference {diff:.2f}/255); run `make figures`"


def test_figures_are_opaque_and_sharp(redrawn):
    for name in make_figures.FIGURES:
        image = imread(redrawn / name)
        if image.shape[2] == 4:
            assert image[..., 3].min() == 1.0, f"{name} has transparent pixels (unreadable in dark themes)"
        assert image.shape[1] >= 1200, f"{name} is only {image.shape[1]} px wide"


def test_drawing_is_deterministic(tmp_path):
    first = make_figures.make_figures(tmp_path / "a", ["06.png"])[0].read_bytes()
    second = make_figures.make_figures(tmp_path / "b", ["06.png"])[0].read_bytes()
    assert first == second
    assert "tIME" not in png_chunks(first)
    assert set(png_text(tmp_path / "a" / "06.png")) == {"Texts", "Renderer"}  # no date, no "Software"


def png_chunks(data: bytes) -> list[str]:
    chunks, at = [], 8  # after the signature: length, type, data, CRC
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append(data[at + 4 : at + 8].decode("ascii"))
        at += 12 + length
    return chunks


def test_template_segments_rebuild_the_formatted_text(dataset):
    for entry in (dataset[make_figures.ENTRY_WITH_INPUT], dataset[make_figures.ENTRY_WITHOUT_INPUT]):
        for style in make_figures.utils.PROMPT_STYLES:
            segments = make_figures.template_segments(entry, style)
            assert "".join(text for text, _ in segments) == make_figures.utils.format_example(entry, style)
            assert {part for _, part in segments} <= {"template", "instruction", "input", "output"}


def notebook_images():
    """(notebook, kind, source, alt) for every image in the notebooks' markdown cells."""
    found = []
    for notebook in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            source = "".join(cell["source"])
            for tag in IMG_TAG.findall(source):
                attributes = {
                    m.group(1).lower(): next(g for g in m.groups()[1:] if g is not None)
                    for m in ATTRIBUTE.finditer(tag)
                }
                found.append((notebook.name, "img", attributes.get("src", ""), attributes.get("alt")))
            for alt, src in MARKDOWN_IMAGE.findall(source):
                found.append((notebook.name, "markdown", src, alt))
    return found


def test_notebooks_show_images():
    assert notebook_images(), "no images found in the notebooks: is the pattern still right?"


@pytest.mark.parametrize("notebook, kind, src, alt", notebook_images())
def test_notebook_image_exists_and_has_alt_text(notebook, kind, src, alt):
    assert src, f"{notebook}: an <img> without src"
    if not re.match(r"^(https?:|data:)", src):
        assert (NOTEBOOK_DIR / src).resolve().is_file(), f"{notebook}: {src} does not exist"
    if kind == "img":
        assert alt and alt.strip(), f"{notebook}: <img src={src!r}> needs a non-empty alt text"
