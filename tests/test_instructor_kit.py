"""The instructor kit: slide metadata and HTML slides, the static course site, the machine check.

Nothing here needs the network: the HTML builds use a stand-in folder of assets laid out like the real
one (reveal.js & co. are fetched by `npm pack` only in `make slides` / `make site`), and the machine
check's environment (packages, Python, tokenizer, weights, timing) is faked.
"""

import ast
import io
import re
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import build_site
import machine_checks as check_setup  # scripts/check_setup.py checks the Python version, then runs these
import notebook_html
import slides
from machine_checks import Result

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))


# --- slides: metadata ---


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_slide_metadata(path):
    nb = nbformat.read(path, as_version=4)
    assert slides.missing_slide_metadata(nb) == [], f"run: python scripts/slides.py --apply {path.name}"


def toy_notebook():
    return new_notebook(
        cells=[
            new_markdown_cell("# 0X · Title\n\n- what this is about"),
            new_code_cell("import torch"),
            new_markdown_cell("## A section\n\n- first idea"),
            new_code_cell("x = 1\nx"),
            new_markdown_cell("- second idea, after a result"),
            new_code_cell("\n".join(f"line_{i} = {i}" for i in range(30))),  # too long to share the slide
            new_markdown_cell("### A sub-topic"),
            new_code_cell(""),
        ]
    )


def slide_types(nb):
    return [cell.metadata.slideshow["slide_type"] for cell in nb.cells]


def test_rules_give_one_idea_per_slide():
    nb = toy_notebook()
    slides.apply_slide_metadata(nb)
    assert slide_types(nb) == ["slide", "-", "slide", "-", "subslide", "subslide", "subslide", "skip"]
    assert nb.metadata.rise["scroll"] is True


def test_apply_is_idempotent():
    nb = toy_notebook()
    assert slides.apply_slide_metadata(nb) > 0
    assert slides.apply_slide_metadata(nb) == 0


def test_tags_and_hand_set_values_win_and_survive():
    nb = toy_notebook()
    slides.apply_slide_metadata(nb)
    nb.cells[3].metadata["tags"] = ["slide-fragment"]
    nb.cells[1].metadata.slideshow = {"slide_type": "skip"}  # chosen by hand in the property inspector
    slides.apply_slide_metadata(nb)
    slides.apply_slide_metadata(nb)
    assert slide_types(nb)[:4] == ["slide", "skip", "slide", "fragment"]
    nb.cells[3].metadata["tags"] = []  # tag removed: the rules decide again
    slides.apply_slide_metadata(nb)
    assert slide_types(nb)[3] == "-"


def test_rules_follow_a_rewritten_notebook():
    nb = toy_notebook()
    slides.apply_slide_metadata(nb)
    nb.cells[4].source = "## Now a section heading"  # a helper rewrote the cell
    slides.apply_slide_metadata(nb)
    assert slide_types(nb)[4] == "slide"


def test_long_outputs_are_trimmed_for_html_slides():
    cell = new_code_cell(
        "print(...)", outputs=[new_output("stream", name="stdout", text="".join(f"{i}\n" for i in range(40)))]
    )
    nb = new_notebook(cells=[cell])
    slides.trim_long_outputs(nb, max_lines=5)
    assert cell.outputs[0].text == "0\n1\n2\n3\n4\n... (35 more lines in the notebook)\n"


# --- offline HTML: assets, remote loads, widgets ---


def fake_assets(folder: Path) -> Path:
    """The layout ensure_assets produces, with stand-in files (nothing fetched)."""
    files = [
        "reveal.js/dist/reveal.js",
        "reveal.js/dist/reveal.css",
        "reveal.js/dist/theme/simple.css",
        "reveal.js/plugin/notes/notes.js",
        "requirejs/require.js",
        "jquery/dist/jquery.min.js",
        "mathjax/MathJax.js",
    ]
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("/* stand-in */\n")
    for version, _, sub, _ in notebook_html.NPM_ASSETS.values():
        (folder / sub / ".version").write_text(version + "\n")
    return folder


def test_remote_loads_are_found_and_links_are_not():
    page = (
        '<a href="https://github.com/rasbt/LLMs-from-scratch">code</a>\n'
        '<script src="https://cdnjs.cloudflare.com/require.min.js"></script>\n'
        '<link rel="stylesheet" href="//unpkg.com/reveal.js/dist/reveal.css">\n'
        "<script type=\"module\">import mermaid from 'https://cdn.example/mermaid.mjs';</script>\n"
        '<script src="assets/requirejs/require.js"></script>'
    )
    found = notebook_html.remote_loads(page)
    assert len(found) == 3 and not any("github.com" in f or "assets/" in f for f in found)


def test_asset_extraction_keeps_listed_paths_only(tmp_path):
    tarball = tmp_path / "pkg.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ("package/dist/reveal.js", "package/test/big.js", "package/dist/../../evil.js"):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    notebook_html._extract(tarball, tmp_path / "out", ("dist/",))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.js")) == ["out/dist/reveal.js"]


def test_missing_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook_html.shutil, "which", lambda name: None)
    with pytest.raises(notebook_html.AssetsUnavailableError, match="npm"):
        notebook_html.ensure_assets(tmp_path / "empty")


def test_widgets_become_their_final_text():
    state = {
        "bar": {"state": {"children": ["IPY_MODEL_left", "IPY_MODEL_progress", "IPY_MODEL_right"]}},
        "left": {"state": {"value": "Epoch 1: 100%"}},
        "progress": {"state": {"value": 116, "max": 116}},
        "right": {"state": {"value": " 116/116 [00:42&lt;00:00]"}},
    }
    widget = new_output(
        "display_data", data={notebook_html.WIDGET_VIEW: {"model_id": "bar"}, "text/plain": "  0%|          | 0/116"}
    )
    stream = new_output("stream", name="stderr", text="  0%|  | 0/3\r 33%|# | 1/3\r100%|##| 3/3\n")
    nb = new_notebook(
        cells=[new_code_cell("train()", outputs=[widget, stream])],
        metadata={"widgets": {notebook_html.WIDGET_STATE: {"state": state}}},
    )
    assert notebook_html.static_outputs(nb) == 1
    final = "Epoch 1: 100%|██████████|  116/116 [00:42<00:00]"
    assert nb.cells[0].outputs[0].data == {"text/plain": final}
    assert nb.cells[0].outputs[1].text == "100%|##| 3/3\n"
    assert "widgets" not in nb.metadata


# --- HTML slides and the site (built into tmp, with stand-in assets) ---


def local_refs(page: str) -> list[str]:
    return [
        url
        for url in re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"]+)"', page)
        if not url.startswith(("http", "data:"))
    ]


def test_slides_one_offline_html_per_notebook(tmp_path):
    assets = fake_assets(tmp_path / "cache")
    chosen = NOTEBOOKS[:2]
    written = slides.build_slides(chosen, tmp_path / "slides", assets_cache=assets)
    assert sorted(p.name for p in written) == sorted(f"{p.stem}.slides.html" for p in chosen)
    for html in written:
        page = html.read_text()
        assert notebook_html.remote_loads(page) == []
        assert 'class="slides"' in page and "<section" in page
        for url in local_refs(page):  # reveal.js, require.js, jQuery, MathJax, figures
            assert (html.parent / url.split("?")[0]).exists(), f"{html.name}: {url}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    build_site.build_site(NOTEBOOKS, tmp / "site", assets_cache=fake_assets(tmp / "cache"))
    return tmp / "site"


def test_site_has_front_page_and_every_notebook(site):
    assert (site / "index.html").is_file()
    assert sorted(p.stem for p in (site / "notebooks").glob("*.html")) == [p.stem for p in NOTEBOOKS]
    front = (site / "index.html").read_text()
    assert 'href="notebooks/01-instruction-dataset.html"' in front  # README's notebook links, rewritten


def test_site_renders_dataset_md_as_a_page(site):
    front = (site / "index.html").read_text()
    assert 'href="dataset.html"' in front and 'href="DATASET.md"' not in front
    page = (site / "dataset.html").read_text()
    assert "<h1" in page  # rendered Markdown, not the raw file


def test_site_links_and_images_resolve(site):
    assert build_site.broken_links(site) == []
    pages = list(site.rglob("*.html"))
    assert all(notebook_html.remote_loads(p.read_text()) == [] for p in pages if "assets" not in p.parts)


def test_site_navigation_in_reading_order(site):
    second = (site / "notebooks" / NOTEBOOKS[1].with_suffix(".html").name).read_text()
    pager = second[re.search(r'<nav[^>]*class="pager"', second).start() :]
    prev_href, next_href = re.findall(r'href="([^"]+)"', pager)[:2]
    assert prev_href == NOTEBOOKS[0].stem + ".html" and next_href == NOTEBOOKS[2].stem + ".html"


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "index.html").write_text(
        '<h2 id="here">x</h2><a href="#here">ok</a><a href="#gone">no</a>'
        '<img src="figures/missing.png"><a href="https://example.org">ok</a>'
    )
    assert build_site.broken_links(tmp_path) == [
        "index.html: <a> #gone (no such anchor)",
        "index.html: <img> figures/missing.png (no such file)",
    ]


# --- the machine check ---


@pytest.mark.parametrize("name", ["check_setup.py", "machine_checks.py"])
def test_check_setup_imports_only_the_standard_library(name):
    tree = ast.parse((REPO_ROOT / "scripts" / name).read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top_level - {"__future__"} <= set(sys.stdlib_module_names)


def test_requirements_are_parsed_and_compared():
    reqs = check_setup.parse_requirements("torch>=2.2\n# comment\nfoo-bar>=1.0,<2  # why\n-r other.txt\n")
    assert reqs == [("torch", [(">=", "2.2")]), ("foo-bar", [(">=", "1.0"), ("<", "2")])]
    assert check_setup.satisfies("2.13.0+cpu", [(">=", "2.2")])
    assert not check_setup.satisfies("2.1.2", [(">=", "2.2")])
    assert not check_setup.satisfies("2.0", [(">=", "1.0"), ("<", "2")])


def test_missing_and_old_packages_fail():
    installed = {"torch": "2.1.0", "tqdm": "4.67.1"}
    results = check_setup.check_packages("torch>=2.2\ntqdm>=4.66\ntiktoken>=0.7\n", installed.get)
    assert [(r.status, r.name) for r in results] == [("FAIL", "torch"), ("OK", "tqdm"), ("FAIL", "tiktoken")]
    assert "needs >=2.2" in results[0].detail and results[2].fix == "make setup"


def test_old_python_fails():
    assert check_setup.check_python((3, 9, 18), "/usr/bin/python3").status == "FAIL"
    assert check_setup.check_python((3, 12, 1), "/usr/bin/python3").status == "OK"


def test_no_torch_fails_and_says_how_to_fix():
    def no_torch(name):
        raise ImportError(name)

    [result] = check_setup.check_torch(import_module=no_torch)
    assert result.status == "FAIL" and result.fix == "make setup"


def test_tokenizer_lookup(tmp_path):
    import utils
    from support.tokenizer_files import install_tokenizer_files

    empty_cache = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")}
    online, offline = (lambda url: True), (lambda url: False)
    assert check_setup.check_tokenizer(empty_cache, reachable=online).status == "WARN"  # not downloaded yet
    assert check_setup.check_tokenizer(empty_cache, reachable=offline).status == "FAIL"  # and cannot be
    broken = {utils.TOKENIZER_DIR_ENV: str(tmp_path)}
    assert check_setup.check_tokenizer(broken).status == "FAIL"  # folder without the files
    local = __import__("os").environ.get(utils.TOKENIZER_DIR_ENV)
    if local:  # the test machines' copy of GPT-2's vocabulary (tests/conftest.py)
        assert check_setup.check_tokenizer({utils.TOKENIZER_DIR_ENV: local}).status == "OK"
        install_tokenizer_files(local, tmp_path / "cache")
        assert check_setup.check_tokenizer(empty_cache, reachable=offline).status == "OK"  # tiktoken's cache, filled


def test_tokenizer_before_set_up_warns():
    def nothing(name):
        raise ImportError(name)

    assert check_setup.check_tokenizer({}, import_module=nothing).status == "WARN"


def fake_utils(cached: set[str]):
    return lambda name: SimpleNamespace(
        HF_REPOS={"gpt2-small": "a", "gpt2-medium": "b"},
        cached_gpt2_weights=lambda size: Path("/x") if size in cached else None,
    )


def test_weights_in_cache():
    assert check_setup.check_weights(fake_utils(set())).status == "WARN"
    assert check_setup.check_weights(fake_utils({"gpt2-medium"})).status == "WARN"
    result = check_setup.check_weights(fake_utils({"gpt2-small", "gpt2-medium"}))
    assert result.status == "OK" and "gpt2-small, gpt2-medium" in result.detail


def test_ram_and_disk_against_model_sizes(tmp_path):
    small, medium = check_setup.NEEDS["gpt2-small"], check_setup.NEEDS["gpt2-medium"]

    def statuses(ram, disk):
        return [r.status for r in check_setup.check_resources(ram, disk, tmp_path)]

    assert statuses(medium["ram"], medium["disk"]) == ["OK", "OK"]
    assert statuses(small["ram"], small["disk"]) == ["WARN", "WARN"]
    assert statuses(small["ram"] - 1, small["disk"] - 1) == ["FAIL", "FAIL"]
    assert statuses(None, medium["disk"]) == ["WARN", "OK"]


def test_training_estimate_uses_the_injected_timing():
    # 2 epochs x 116 batches = 232 steps of 2 s, and 11 evaluations (every 20 steps, as notebook 07's settings)
    # of 10 forward batches of 0.5 s: 519 s
    assert check_setup.estimate_notebook07_minutes(2.0, 0.5, 116) == pytest.approx(519 / 60)
    fast = check_setup.check_training_speed(lambda: (116, 90, 2.0, 0.5, 3.1))
    assert fast.status == "OK" and "about 9 min" in fast.detail
    slow = check_setup.check_training_speed(lambda: (116, 90, 20.0, 5.0, 3.1))
    assert slow.status == "WARN" and "TRAIN_SUBSET" in slow.fix


def test_training_speed_failure_is_a_warning():
    def broken():
        raise RuntimeError("out of memory")

    result = check_setup.check_training_speed(broken)
    assert result.status == "WARN" and "out of memory" in result.detail


def test_exit_status_is_nonzero_on_fail(monkeypatch, capsys):
    checks = [Result("OK", "python", "3.12"), Result("FAIL", "torch", "missing", "make setup")]
    monkeypatch.setattr(check_setup, "run_checks", lambda timing: iter(checks))
    assert check_setup.main(["--no-timing"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  torch" in out and "-> fix: make setup" in out
    monkeypatch.setattr(check_setup, "run_checks", lambda timing: iter([Result("WARN", "gpt2 weights", "none")]))
    assert check_setup.main(["--no-timing"]) == 0


# --- issue 21: every teaching notebook fits one sitting ---

MAX_SLIDES = 30  # about 30-45 minutes presented; the exercises and their solutions are worked through, not presented


@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if "exercises" not in p.name and "solutions" not in p.name], ids=lambda p: p.name
)
def test_teaching_notebook_fits_one_sitting(path):
    nb = nbformat.read(path, as_version=4)
    count = sum(cell.metadata.get("slideshow", {}).get("slide_type") in ("slide", "subslide") for cell in nb.cells)
    assert count <= MAX_SLIDES, f"{path.name}: {count} slides; split it or say in the README why it runs longer"
