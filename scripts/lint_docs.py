"""Checks of the prose learners read: spelling, and links that lead nowhere.

    python scripts/lint_docs.py spelling          # codespell over README, DATASET, CONTRIBUTING and notebook cells
    python scripts/lint_docs.py links             # relative links and figure paths (offline)
    python scripts/lint_docs.py links --external  # plus every http(s) link in README.md (needs the network)

Notebook *sources* are checked, not their outputs: outputs hold token fragments ("fOT", "hTe") and the
dataset's deliberate misspellings, which are data, not prose. One line per finding, as FILE:LINE (or
NOTEBOOK cell N); exit status 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "DATASET.md", "CONTRIBUTING.md"]
NOTEBOOKS = "notebooks/*.ipynb"

# [text](target) and ![alt](target), with an optional "title"; <img src="..."> and <a href="...">.
MARKDOWN_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
CODE_SPAN = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def documents() -> list[Path]:
    return [REPO_ROOT / name for name in DOCUMENTS if (REPO_ROOT / name).exists()]


def notebooks() -> list[Path]:
    return sorted(REPO_ROOT.glob(NOTEBOOKS))


def notebook_cells(path: Path) -> list[tuple[int, str, str]]:
    """(cell number from 1, cell type, source) for every cell of a notebook."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, cell["cell_type"], "".join(cell["source"])) for i, cell in enumerate(cells, start=1)]


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


# --- spelling ---


def spelling_findings(codespell: str = "codespell") -> list[str]:
    """codespell's findings, each located in its document line or notebook cell."""
    with tempfile.TemporaryDirectory(prefix="spelling-") as tmp:
        where: dict[str, tuple[str, list[int]]] = {}  # extracted file -> (notebook, cell of each line)
        files = [str(path) for path in documents()]
        for number, path in enumerate(notebooks()):
            lines, cell_of_line = [], []
            for cell, _, source in notebook_cells(path):
                for line in source.splitlines():
                    lines.append(line)
                    cell_of_line.append(cell)
            extracted = Path(tmp, f"{number}.txt")
            extracted.write_text("\n".join(lines) + "\n", encoding="utf-8")
            where[str(extracted)] = (_relative(path), cell_of_line)
            files.append(str(extracted))
        config = REPO_ROOT / "pyproject.toml"
        result = subprocess.run(
            [codespell, "--toml", str(config), *files], cwd=REPO_ROOT, capture_output=True, text=True
        )
    if result.returncode not in (0, 65):  # 65: misspellings found
        raise RuntimeError(f"codespell failed (exit {result.returncode}): {result.stderr.strip()}")
    findings = []
    for line in result.stdout.splitlines():
        file, _, rest = line.partition(":")
        line_number, _, message = rest.partition(":")
        if file in where and line_number.isdigit():
            notebook, cell_of_line = where[file]
            findings.append(f"{notebook} cell {cell_of_line[int(line_number) - 1]}:{message}")
        else:
            findings.append(f"{_relative(Path(file)) if Path(file).is_absolute() else file}:{rest}")
    return findings


# --- links ---


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(text: str) -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def links_in(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown or HTML link and image, outside code spans."""
    visible = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # keeps line numbers
    matches = sorted(
        (m for pattern in (MARKDOWN_LINK, HTML_LINK) for m in pattern.finditer(visible)), key=lambda m: m.start()
    )  # in reading order
    return [(visible.count("\n", 0, m.start()) + 1, m.group(1)) for m in matches]


def sources_with_links() -> list[tuple[Path, str, str]]:
    """(file, where, markdown text): each document, and each markdown cell of each notebook."""
    found = [(path, _relative(path), path.read_text(encoding="utf-8")) for path in documents()]
    for path in notebooks():
        for cell, kind, source in notebook_cells(path):
            if kind == "markdown":
                found.append((path, f"{_relative(path)} cell {cell}", source))
    return found


def broken_relative_links() -> list[str]:
    """Links to files (or to headings) that do not exist; http(s) and mailto links are skipped here."""
    problems = []
    for path, where, text in sources_with_links():
        for line, target in links_in(text):
            parsed = urllib.parse.urlsplit(target)
            if parsed.scheme or target.startswith("//"):
                continue
            file_part, anchor = urllib.parse.unquote(parsed.path), parsed.fragment
            destination = (path.parent / file_part).resolve() if file_part else path
            if not destination.exists():
                problems.append(f"{where}:{line}: {target}: no such file ({_relative(destination)})")
            elif anchor and destination.suffix == ".md" and anchor not in anchors_of(destination.read_text()):
                problems.append(f"{where}:{line}: {target}: no heading #{anchor} in {_relative(destination)}")
    return problems


def external_links(path: Path) -> list[tuple[int, str]]:
    return [
        (line, target)
        for line, target in links_in(path.read_text(encoding="utf-8"))
        if target.startswith(("http://", "https://"))
    ]


def unreachable_external_links(path: Path, timeout: float = 20) -> list[str]:
    """Every http(s) link of `path` that does not answer with a success (HEAD, then GET if refused)."""
    problems = []
    for line, url in external_links(path):
        error = None
        for method in ("HEAD", "GET"):
            request = urllib.request.Request(url, method=method, headers={"User-Agent": "course-link-check"})
            try:
                with urllib.request.urlopen(request, timeout=timeout):
                    error = None
                    break
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                error = str(getattr(exc, "reason", exc))
        if error:
            problems.append(f"{_relative(path)}:{line}: {url}: {error}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["spelling", "links"])
    parser.add_argument("--external", action="store_true", help="links: also fetch README's http(s) links")
    parser.add_argument(
        "--codespell",
        default=str(Path(sys.executable).with_name("codespell")),
        help="the codespell program (default: the one beside this Python)",
    )
    args = parser.parse_args(argv)
    if args.check == "spelling":
        if not Path(args.codespell).exists():
            print(f"lint: codespell is not installed ({args.codespell}). Fix: make setup-test", file=sys.stderr)
            return 2
        problems = spelling_findings(args.codespell)
        checked = "spelling of README, DATASET, CONTRIBUTING and notebook cells"
    else:
        problems = broken_relative_links()
        checked = "relative links and figure paths"
        if args.external:
            problems += unreachable_external_links(REPO_ROOT / "README.md")
            checked += ", README's external links"
    for problem in problems:
        print(problem)
    print(
        f"lint: {checked}: " + (f"{len(problems)} problem(s)" if problems else "ok"),
        file=sys.stderr if problems else sys.stdout,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
