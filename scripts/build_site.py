"""The course as a static website: README as the front page, then the executed notebooks in reading order.

    python scripts/build_site.py                       # -> build/site/index.html (make site)
    python scripts/build_site.py --out /tmp/site notebooks/01-*.ipynb notebooks/02-*.ipynb

Built with nbconvert (already installed with JupyterLab) and works offline: the notebooks' committed
outputs are used as they are (nothing is executed), tqdm progress bars become their final text, and
require.js/MathJax come from local copies (see notebook_html.py). Links between notebooks (.ipynb)
point at their pages; other files of the repository that a page links to are copied beside it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_html  # noqa: E402

REPO_ROOT = notebook_html.REPO_ROOT
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SITE_TITLE = "Instruction finetuning GPT-2, from scratch"


def notebook_label(path: Path) -> str:
    """The notebook's title from its first heading ('# 03 · From text to training batches' ->
    '03 From text to training batches'), else from its file name."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells[:1]:
        heading = re.match(r"#\s+(.+)", cell.source.strip()) if cell.cell_type == "markdown" else None
        if heading:
            return heading.group(1).replace(" · ", " ").strip()
    number, _, rest = path.stem.partition("-")
    return f"{number} {rest.replace('-', ' ').capitalize()}"


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading, so links written for GitHub (#benchmarks) work here too."""
    text = re.sub(r"<[^>]+>|&[a-z]+;|¶", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _github_heading_ids(page: str) -> str:
    def retag(match: re.Match) -> str:
        level, attrs, inner = match.group(1), re.sub(r'\s*id="[^"]*"', "", match.group(2)), match.group(3)
        return f'<h{level} id="{github_slug(inner)}"{attrs}>{inner}</h{level}>'

    return re.sub(r"<h([1-6])((?:\s[^>]*)?)>(.*?)</h\1>", retag, page, flags=re.DOTALL)


def _rewrite_links(
    page: str, page_path: Path, source_dir: Path, site: Path, notebook_pages: dict[Path, Path], to_copy: set[Path]
) -> str:
    """Point links at the site's pages: a notebook at its HTML page, README at the front page; note repository
    files to copy beside the page."""

    def fix(match: re.Match) -> str:
        attr, quote, url = match.group(1), match.group(2), match.group(3)
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or url.startswith(("#", "data:", "mailto:")) or not parts.path:
            return match.group(0)
        target = (source_dir / unquote(parts.path)).resolve()
        page_for = notebook_pages.get(target) or (site / "index.html" if target == REPO_ROOT / "README.md" else None)
        if page_for is not None:
            fragment = f"#{parts.fragment}" if parts.fragment else ""
            new = Path(_relative(page_for, page_path.parent)).as_posix() + fragment
            return f"{attr}={quote}{new}{quote}"
        if target.is_relative_to(REPO_ROOT) and target.exists():
            to_copy.add(target)
        return match.group(0)

    return re.sub(r'\b(href|src)=(["\'])(.*?)\2', fix, page)


def _relative(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target, start)


def _nav(site: Path, page_path: Path, notebooks: list[Path], current: int | None) -> dict:
    here = page_path.parent
    pages = [
        {
            "href": _relative(site / "notebooks" / f"{nb.stem}.html", here),
            "label": notebook_label(nb),
            "here": i == current,
        }
        for i, nb in enumerate(notebooks)
    ]
    order = [{"href": _relative(site / "index.html", here), "label": "Course overview"}] + pages
    position = 0 if current is None else current + 1
    return {
        "title": SITE_TITLE,
        "home": _relative(site / "index.html", here),
        "pages": pages,
        "prev": order[position - 1] if position > 0 else None,
        "next": order[position + 1] if position + 1 < len(order) else None,
    }


def _exporter():
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="course-site", extra_template_basedirs=[str(notebook_html.TEMPLATES)])
    exporter.exclude_anchor_links = True
    return exporter


SITE_DOCUMENTS = ("DATASET.md", "CONTRIBUTING.md")  # rendered as pages beside the front page


def build_site(notebooks: list[Path], out: Path, assets_cache: Path = notebook_html.ASSETS_CACHE) -> list[Path]:
    """Write the site into `out` (replaced); returns the HTML pages written."""
    notebooks = sorted(notebooks, key=lambda p: p.name)
    assets = notebook_html.ensure_assets(assets_cache)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "notebooks").mkdir(parents=True)
    shutil.copytree(assets, staging / "assets", ignore=shutil.ignore_patterns("reveal.js"))
    notebook_pages = {nb.resolve(): staging / "notebooks" / f"{nb.stem}.html" for nb in notebooks}
    # README's other documents become pages too (a link to DATASET.md opens a rendered page, not the raw file).
    document_pages = {
        REPO_ROOT / name: staging / f"{Path(name).stem.lower()}.html"
        for name in SITE_DOCUMENTS
        if (REPO_ROOT / name).is_file()
    }
    notebook_pages.update(document_pages)
    exporter, to_copy, written = _exporter(), set(), []

    def export(nb, page_path: Path, source_dir: Path, current: int | None, name: str) -> None:
        prefix = _relative(staging / "assets", page_path.parent)
        exporter.require_js_url = f"{prefix}/requirejs/require.js"
        exporter.mathjax_url = f"{prefix}/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
        resources = {
            "metadata": {"name": name, "path": str(source_dir)},
            "course_nav": _nav(staging, page_path, notebooks, current),
        }
        page, _ = exporter.from_notebook_node(nb, resources=resources)
        page = _rewrite_links(_github_heading_ids(page), page_path, source_dir, staging, notebook_pages, to_copy)
        page_path.write_text(page, encoding="utf-8")
        written.append(page_path)

    # The front page: README.md, rendered by the same template as one markdown cell.
    readme = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell((REPO_ROOT / "README.md").read_text())])
    export(readme, staging / "index.html", REPO_ROOT, None, SITE_TITLE)
    for source, page_path in document_pages.items():
        document = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(source.read_text())])
        export(document, page_path, REPO_ROOT, None, f"{SITE_TITLE}: {source.name}")
    for i, path in enumerate(notebooks):
        nb = nbformat.read(path, as_version=4)
        notebook_html.static_outputs(nb)
        export(nb, notebook_pages[path.resolve()], path.parent, i, notebook_label(path))

    for source in sorted(to_copy):  # figures, and files such as utils.py that pages link to
        target = staging / source.relative_to(REPO_ROOT)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for page in written:
        notebook_html.check_offline(page)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # the finished site replaces the old one in one step
    return [out / p.relative_to(staging) for p in written]


class _References(HTMLParser):
    """Collects what a page links to (a href) and loads (img/script src, link href), and its element ids."""

    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name) and tag in ("a", "img", "script", "link", "source", "iframe"):
                self.refs.append((tag, attrs[name]))


def broken_links(site: Path) -> list[str]:
    """Every local link or image in the site's pages whose target (file, and #anchor in a page) is missing."""
    parsed = {}
    for page in site.rglob("*.html"):
        if "assets" not in page.relative_to(site).parts:
            parsed[page.resolve()] = _References()
            parsed[page.resolve()].feed(page.read_text(encoding="utf-8"))
    broken = []
    for page, refs in parsed.items():
        for tag, url in refs.refs:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("data:", "mailto:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(site.resolve())}: <{tag}> {url}"
            if not target.is_relative_to(site.resolve()) or not target.exists():
                broken.append(f"{where} (no such file)")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and target in parsed
                and unquote(parts.fragment) not in parsed[target].ids
            ):
                broken.append(f"{where} (no such anchor)")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/[0-9]*.ipynb")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "site")
    args = parser.parse_args(argv)
    try:
        pages = build_site(args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb")), args.out)
    except notebook_html.AssetsUnavailableError as err:
        print(f"site: {err}", file=sys.stderr)
        return 1
    broken = broken_links(args.out)
    for line in broken:
        print("broken link:", line, file=sys.stderr)
    print(f"wrote {len(pages)} pages; open {args.out / 'index.html'}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
