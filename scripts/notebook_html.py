"""What slides.py and build_site.py share: notebooks made ready for static HTML, and the scripts that
nbconvert's templates load from CDNs by default, kept locally so the HTML works offline.

nbconvert 7's reveal and lab templates load, unless told otherwise:
  reveal.js 4 (dist/reveal.js, dist/reveal.css, dist/theme/*.css, plugin/notes/notes.js),
  require.js, jQuery, MathJax 2 (latest.js from cdnjs), MermaidJS (an ES module import), and for
  notebooks with widget state the Jupyter widgets manager. We fetch the first four once from the npm
  registry with `npm pack` (pinned versions, integrity checked) into .cache/html-assets/; Mermaid is
  dropped by our templates (no notebook draws a Mermaid diagram) and widget outputs are replaced by
  their final text, so nothing else is needed.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_CACHE = REPO_ROOT / ".cache" / "html-assets"
TEMPLATES = Path(__file__).resolve().parent / "templates"

# npm package -> (version, integrity as the registry publishes it, folder name, paths kept from the tarball)
NPM_ASSETS = {
    "reveal.js": (
        "4.0.2",  # the version nbconvert 7's reveal template is written for
        "sha512-LWZSUenufF1gpD7npxJ7KfoQQFKgc1D6XrLTFgKlwWNP1BQ74hT48KONFWMAw+8R/QUeaScCLCLrBVHDfFIEiw==",
        "reveal.js",
        ("dist/", "plugin/notes/", "LICENSE"),
    ),
    "requirejs": (
        "2.3.7",
        "sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
        "requirejs",
        ("require.js", "README.md"),
    ),
    "jquery": (
        "3.7.1",
        "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
        "jquery",
        ("dist/jquery.min.js", "LICENSE.txt"),
    ),
    # MathJax 2 (nbconvert's templates call MathJax.Hub); only what TeX input + CommonHTML output use.
    "mathjax": (
        "2.7.9",
        "sha512-NOGEDTIM9+MrsqnjPEjVGNx4q0GQxqm61yQwSK+/5S59i26wId5IC5gNu9/bu8+CCVl5p9G2IHcAl/wJa+5+BQ==",
        "mathjax",
        (
            "MathJax.js",
            "LICENSE",
            "config/TeX-AMS_CHTML-full.js",
            "config/Safe.js",
            "config/local/",
            "extensions/",
            "localization/en/",
            "jax/input/TeX/",
            "jax/element/",
            "jax/output/CommonHTML/",
            "fonts/HTML-CSS/TeX/woff/",
            "fonts/HTML-CSS/TeX/otf/",
        ),
    ),
}


class AssetsUnavailableError(RuntimeError):
    """The offline copies of reveal.js & co. are missing and could not be fetched."""


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _extract(tarball: Path, target: Path, keep: tuple[str, ...]) -> None:
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[1] if "/" in member.name else member.name  # drop "package/"
            if not member.isfile() or not name.startswith(keep) or ".." in Path(name).parts:
                continue
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _npm_reason(stderr: str) -> str:
    """npm's error code and summary in a few words (its full output is a stack of 15 lines)."""
    code = re.search(r"npm (?:ERR!|error) code (\S+)", stderr)
    summary = next(
        (line.split(" ", 2)[-1] for line in stderr.splitlines() if re.match(r"npm (?:ERR!|error) (?!code)\S", line)), ""
    )
    text = " ".join(part for part in (code.group(1) if code else "", summary[:160]) if part)
    return text or (stderr.strip().splitlines() or ["no message"])[-1][:160]


def ensure_assets(cache: Path = ASSETS_CACHE) -> Path:
    """The folder holding reveal.js, require.js, jQuery and MathJax; fetched once with `npm pack`."""
    missing = [
        pkg
        for pkg, (version, _, folder, _) in NPM_ASSETS.items()
        if not (cache / folder / ".version").is_file() or (cache / folder / ".version").read_text().strip() != version
    ]
    if not missing:
        return cache
    npm = shutil.which("npm")
    if npm is None:
        raise AssetsUnavailableError(
            f"The slides and the site need local copies of {', '.join(missing)} (so they work offline), and "
            f"fetching them needs npm (Node.js), which is not installed.\nFix, either:\n"
            f"  - install Node.js (https://nodejs.org), then run this again (once, with network), or\n"
            f"  - copy the folder {cache} from a machine where `make slides` ran."
        )
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in missing:
            version, integrity, folder, keep = NPM_ASSETS[pkg]
            print(f"fetching {pkg}@{version} from the npm registry (once; later builds work offline) ...", flush=True)
            done = subprocess.run(
                [npm, "pack", f"{pkg}@{version}", "--pack-destination", tmp, "--json"], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise AssetsUnavailableError(
                    f"npm could not fetch {pkg}@{version} ({_npm_reason(done.stderr)}). Fix: run this once with "
                    f"the npm registry in reach, or copy {cache} from a machine where `make slides` ran."
                )
            tarball = Path(tmp) / json.loads(done.stdout)[0]["filename"]
            if _integrity(tarball) != integrity:
                raise AssetsUnavailableError(f"{tarball.name}: integrity differs from the pinned one; not used")
            staging = cache / f".{folder}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            _extract(tarball, staging, keep)
            (staging / ".version").write_text(version + "\n")
            shutil.rmtree(cache / folder, ignore_errors=True)
            staging.rename(cache / folder)  # appears whole, or not at all
    return cache


def nbconvert_flags(prefix: str) -> list[str]:
    """nbconvert options pointing every script and style sheet at the copies under `prefix` (a relative URL)."""
    return [
        f"--SlidesExporter.reveal_url_prefix={prefix}/reveal.js",
        f"--HTMLExporter.require_js_url={prefix}/requirejs/require.js",
        f"--HTMLExporter.jquery_url={prefix}/jquery/dist/jquery.min.js",
        f"--HTMLExporter.mathjax_url={prefix}/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
        f"--TemplateExporter.extra_template_basedirs={TEMPLATES}",
    ]


_REMOTE_LOAD = re.compile(
    r"""<(?:script|img|iframe|source)\b[^>]*\bsrc\s*=\s*["']?(https?:)?//"""  # scripts, images
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(https?:)?//"""  # style sheets, fonts
    r"""|\bimport\s*(?:[\w{}\s,*]+from\s*)?["'](https?:)?//"""  # ES module imports
    r"""|@import\s+(?:url\()?["']?(https?:)?//""",
    re.IGNORECASE,
)  # CSS imports


def remote_loads(page: str) -> list[str]:
    """Each place in an HTML page that loads something from the network (links to click are fine)."""
    return [m.group(0) + re.match(r"[^\"'\s)>]*", page[m.end() :]).group(0) for m in _REMOTE_LOAD.finditer(page)]


def check_offline(path: Path) -> None:
    found = remote_loads(path.read_text(encoding="utf-8"))
    if found:
        raise RuntimeError(f"{path}: still loads from the network: {found[:3]}")


# --- notebooks made ready for static HTML ---

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _widget_text(model_id: str, states: dict) -> str | None:
    """Final text of a widget from the saved widget state: a tqdm bar is an HBox of HTML, progress, HTML."""
    model = states.get(model_id, {}).get("state", {})
    if "children" in model:
        parts = [_widget_text(str(child).removeprefix("IPY_MODEL_"), states) for child in model["children"]]
        return "".join(p for p in parts if p) or None
    if "value" in model and isinstance(model.get("value"), str):
        return html_lib.unescape(re.sub(r"<[^>]+>", "", model["value"]))
    if "max" in model and isinstance(model.get("value"), (int, float)) and model["max"]:
        filled = round(10 * model["value"] / model["max"])
        return "|" + "█" * filled + " " * (10 - filled) + "| "
    return None


def _terminal_text(text: str) -> str:
    """Stream text as a terminal shows it: each carriage return overwrites its line (tqdm on stderr)."""
    return "\n".join(
        line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r") for line in text.split("\n")
    )


def static_outputs(nb) -> int:
    """Replace widget outputs (tqdm bars) by their final text and collapse carriage returns in streams,
    so static HTML shows what the reader would have seen; drops the widget state. Returns widgets replaced."""
    states = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and "\r" in output.get("text", ""):
                output["text"] = _terminal_text(output["text"])
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                text = _widget_text(data[WIDGET_VIEW].get("model_id", ""), states)
                fallback = data.get("text/plain", "")
                output["data"] = {"text/plain": (text or fallback or "[interactive widget]").strip()}
                replaced += 1
    nb.metadata.pop("widgets", None)
    return replaced
