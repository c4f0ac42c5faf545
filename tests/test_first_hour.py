"""The first hour, as a newcomer and as a maintainer (issue 25): each paper cut found on a fresh clone.

Nothing here installs packages or reaches the network; make targets run in temporary folders with stand-ins
for set-up and Python where the real ones would take minutes.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import check_setup
import lint_docs
import machine_checks
import support.network
import utils
from support.tokenizer_files import GPT2_VOCAB_FILES

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = Path(sys.executable)
HOSTILE_NAME = 'it\'s $(touch pwned1) `touch pwned2` "q"'


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GPT2_TOKENIZER_DIR")}
    env.update(extra)
    return env


# --- the Makefile: LAB_ARGS as root, folder names, help, clean ---


@pytest.fixture
def make_sandbox(tmp_path):
    """The Makefile in a folder named to break a shell, with set-up stubbed and a Python that records its argv."""
    root = tmp_path / HOSTILE_NAME
    (root / "scripts").mkdir(parents=True)
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "Makefile", root / "Makefile")
    (root / "scripts" / "setup.sh").write_text("#!/bin/sh\nexit 0\n")
    (root / ".venv" / "bin" / "python").write_text(
        f"#!/bin/sh\nexec '{VENV_PYTHON}' -c 'import json, os, sys; "
        f'print(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}))\' "$@"\n'
    )
    for name in ("scripts/setup.sh", ".venv/bin/python"):
        (root / name).chmod(0o755)
    return root


def test_make_lab_in_a_folder_named_like_shell_code_runs_nothing(make_sandbox):
    result = subprocess.run(["make", "lab"], cwd=make_sandbox, env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not list(make_sandbox.parent.rglob("pwned*")) and not Path("pwned1").exists()
    started = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert started["argv"][:3] == ["-m", "jupyter", "lab"]
    assert "--ServerApp.root_dir=." in started["argv"] and started["cwd"] == str(make_sandbox)
    assert ("--allow-root" in started["argv"]) == (os.getuid() == 0)


def test_lab_args_as_root_keep_allow_root(make_sandbox):
    result = subprocess.run(
        ["make", "lab", "LAB_ARGS=--port 8899 --no-browser"],
        cwd=make_sandbox,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    argv = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))["argv"]
    assert argv[-3:] == ["--port", "8899", "--no-browser"]
    assert ("--allow-root" in argv) == (os.getuid() == 0)


def test_make_help_lists_every_target_a_newcomer_or_maintainer_types():
    result = subprocess.run(["make", "help"], cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True)
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("make ")}
    phony = re.findall(r"^\.PHONY:(.*)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    declared = set(" ".join(phony).split()) - {"help"}
    assert {"setup", "setup-test", "clean", "lint", "format", "check", "test"} <= listed
    assert declared == listed


def test_make_clean_removes_build_and_caches_but_keeps_models_and_downloads(tmp_path):
    shutil.copy2(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    made = ["build/site/index.html", ".pytest_cache/x", "scripts/__pycache__/a.pyc", ".ruff_cache/x"]
    kept = [
        "runs/gpt2-small-test-responses.json",
        "checkpoints/gpt2-small-instruct.safetensors",
        ".cache/tiktoken/abc",
        "wheelhouse/torch.whl",
    ]
    for name in made + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    result = subprocess.run(["make", "clean"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not any((tmp_path / name).exists() for name in made)
    assert all((tmp_path / name).exists() for name in kept)
    assert "kept runs/ (1 files" in result.stdout and "kept checkpoints/ (1 files" in result.stdout


# --- make check: old Pythons, no tokenizer, read-only cache, honest timing ---


def test_min_python_is_one_number_everywhere():
    setup_sh = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert check_setup.MIN_PYTHON == machine_checks.MIN_PYTHON == (3, 10)
    assert "sys.version_info < (3, 10)" in setup_sh


@pytest.mark.parametrize("version", [(2, 7, 18), (3, 6, 15), (3, 7, 16), (3, 9, 18)])
def test_an_old_python_gets_one_line_and_no_import(version, monkeypatch, capsys):
    monkeypatch.setattr(sys, "version_info", version)
    monkeypatch.setitem(sys.modules, "machine_checks", None)  # importing it would fail the test
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "scripts" / "check_setup.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert out.startswith(f"FAIL  python           {'.'.join(map(str, version))} (") and "Traceback" not in out
    assert "-> fix: install Python 3.10+" in out and len(out.splitlines()) == 2


def old_pythons() -> list[Path]:
    """Real interpreters 2.7, 3.6 and 3.7 when this machine has them (pyenv)."""
    found = []
    for pattern in ("2.7*", "3.6*", "3.7*"):
        found += sorted(Path.home().glob(f".pyenv/versions/{pattern}/bin/python"))[:1]
    return found


@pytest.mark.parametrize("python", old_pythons() or [None], ids=lambda p: p.parts[-3] if p else "none")
def test_check_setup_on_a_real_old_python_says_one_clear_line(python):
    if python is None:
        pytest.skip("no Python 2.7/3.6/3.7 on this machine; test_an_old_python_gets_one_line_and_no_import covers it")
    result = subprocess.run([str(python), "scripts/check_setup.py"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr == ""
    assert result.stdout.startswith("FAIL  python ") and "needs 3.10 or newer" in result.stdout


def run_check_setup(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """`make check`'s command with no tokenizer folder, an empty tiktoken cache and a network that refuses."""
    env = clean_env(
        **{
            "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"),
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "",
            "no_proxy": "",
            **env,
        }
    )
    return subprocess.run(
        [str(VENV_PYTHON), "scripts/check_setup.py", "--no-timing"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_without_tokenizer_or_network_is_not_ready(tmp_path):
    result = run_check_setup(tmp_path)
    line = next(line for line in result.stdout.splitlines() if " tokenizer " in line)
    assert result.returncode == 1 and line.startswith("FAIL")
    assert "out of reach" in line and "make download" in line and "GPT2_TOKENIZER_DIR" in line
    assert result.stdout.rstrip().splitlines()[-1].startswith("Not ready: 1 check(s) failed")


def test_check_with_an_unwritable_tiktoken_cache_fails_clearly(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = machine_checks.check_tokenizer(
        {"TIKTOKEN_CACHE_DIR": str(tmp_path / "a-file" / "cache")}, reachable=lambda url: True
    )
    assert result.status == "FAIL" and "cannot be saved there" in result.detail
    assert "TIKTOKEN_CACHE_DIR" in result.fix


def test_check_with_a_read_only_mounted_cache_fails_clearly(tmp_path):
    cache = tmp_path / "ro"
    cache.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(cache)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount here ({mounted.stderr.strip()}); the unwritable-folder test covers this")
    try:
        result = machine_checks.check_tokenizer({"TIKTOKEN_CACHE_DIR": str(cache)}, reachable=lambda url: True)
        assert result.status == "FAIL" and "Read-only file system" in result.detail
    finally:
        subprocess.run(["umount", str(cache)], check=True)


def test_get_tokenizer_with_an_unwritable_cache_raises_one_clear_line(tmp_path, monkeypatch, gpt2_vocab_dir):
    import tiktoken.load
    import tiktoken.registry

    (tmp_path / "a-file").write_text("")
    monkeypatch.delenv("GPT2_TOKENIZER_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    by_url = {url: name for name, (url, _) in GPT2_VOCAB_FILES.items()}
    monkeypatch.setattr(tiktoken.load, "read_file", lambda url: (gpt2_vocab_dir / by_url[url]).read_bytes())
    with pytest.raises(utils.TokenizerUnavailableError) as info:  # the download works; saving it cannot
        utils.get_tokenizer()
    message = str(info.value)
    assert message.startswith(f"Could not save GPT-2's tokenizer in {tmp_path / 'a-file' / 'cache'} (")
    assert "\n" not in message and "TIKTOKEN_CACHE_DIR" in message and info.value.__cause__ is None


def fake_machine(monkeypatch, failing: bool) -> None:
    ok = machine_checks.Result("OK", "x", "fine")
    monkeypatch.setattr(machine_checks, "check_python", lambda: ok)
    monkeypatch.setattr(machine_checks, "check_packages", lambda text: [ok])
    monkeypatch.setattr(machine_checks, "check_torch", lambda: [ok])
    monkeypatch.setattr(
        machine_checks,
        "check_tokenizer",
        lambda: machine_checks.Result("FAIL", "tokenizer", "nowhere") if failing else ok,
    )
    monkeypatch.setattr(machine_checks, "check_weights", lambda: ok)
    monkeypatch.setattr(machine_checks, "check_resources", lambda *a: [ok])


def test_no_timing_note_when_nothing_is_timed(monkeypatch, capsys):
    fake_machine(monkeypatch, failing=True)
    monkeypatch.setattr(machine_checks, "notebook07_batches", lambda: pytest.fail("timed although a check failed"))
    assert machine_checks.main([]) == 1
    out = capsys.readouterr().out
    assert "timing" not in out and "half a minute" not in out and "training speed   not measured" in out


def test_timing_announces_each_stage_and_reports_its_real_duration(monkeypatch, capsys):
    fake_machine(monkeypatch, failing=False)
    monkeypatch.setattr(machine_checks, "notebook07_batches", lambda: (116, 90))
    monkeypatch.setattr(machine_checks, "time_gpt2_small", lambda seq_len: (1.0, 0.3, 3.5))
    assert machine_checks.main([]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^timing 3 training steps of GPT-2 small:.* done in \d+ s$", out, re.MULTILINE)
    assert "half a minute" not in out


# --- make lint: the spelling and link checks find what they should ---


def test_spelling_check_names_the_notebook_cell(tmp_path, monkeypatch):
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": ["# Title\n", "fine words\n"]},
            {
                "cell_type": "code",
                "source": ["x = 1  # the seperator\n"],
                "outputs": [{"output_type": "stream", "text": "Ocassion hTe\n"}],
            },
        ]
    }
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01-x.ipynb").write_text(json.dumps(notebook))
    (tmp_path / "README.md").write_text("Recieve this.\n")
    shutil.copy2(REPO_ROOT / "pyproject.toml", tmp_path)
    shutil.copy2(REPO_ROOT / ".codespell-ignore", tmp_path)
    monkeypatch.setattr(lint_docs, "REPO_ROOT", tmp_path)
    codespell = str(VENV_PYTHON.with_name("codespell"))
    if not Path(codespell).exists():
        pytest.fail("codespell is not installed: requirements-test.txt lists it (make setup-test)")
    findings = lint_docs.spelling_findings(codespell)
    assert sorted(f.split(":")[0] for f in findings) == ["README.md", "notebooks/01-x.ipynb cell 2"]
    assert not any("Ocassion" in f for f in findings)  # outputs are data, not prose


def test_link_check_finds_missing_files_and_headings(tmp_path, monkeypatch):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"")
    (tmp_path / "README.md").write_text(
        "# Course\n## The notebooks\n[ok](#the-notebooks) ![fig](figures/a.png) [web](https://example.org)\n"
        "[gone](notebooks/99-x.ipynb) [bad anchor](#nowhere) `[code](not/a/link)`\n"
    )
    notebook = {"cells": [{"cell_type": "markdown", "source": ['<img src="../figures/b.png">\n']}]}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01-x.ipynb").write_text(json.dumps(notebook))
    monkeypatch.setattr(lint_docs, "REPO_ROOT", tmp_path)
    problems = lint_docs.broken_relative_links()
    assert problems == [
        "README.md:4: notebooks/99-x.ipynb: no such file (notebooks/99-x.ipynb)",
        "README.md:4: #nowhere: no heading #nowhere in README.md",
        "notebooks/01-x.ipynb cell 1:1: ../figures/b.png: no such file (figures/b.png)",
    ]
    assert lint_docs.external_links(tmp_path / "README.md") == [(3, "https://example.org")]


def test_github_anchors_match_how_github_names_headings():
    assert lint_docs.github_anchor("Preparing an offline workshop") == "preparing-an-offline-workshop"
    assert lint_docs.github_anchor("`make check`: is this machine ready?") == "make-check-is-this-machine-ready"


# --- make download offline: which part failed, which is fine; missing weights alone are not an error ---


def offline_download(monkeypatch, tokenizer_ok: bool):
    import download

    def no_weights(name):
        raise utils.WeightsUnavailableError(name, "https://huggingface.co cannot be reached (test)")

    def tokenizer():
        if not tokenizer_ok:
            raise utils.TokenizerUnavailableError("Could not load GPT-2's tokenizer (test)")
        return type("T", (), {"n_vocab": 50257})()

    monkeypatch.setattr(support.network, "HUB_FAILURE_FILE", Path("/nonexistent/memo"))
    monkeypatch.setattr(utils, "get_tokenizer", tokenizer)
    monkeypatch.setattr(utils, "download_gpt2_weights", no_weights)
    return download


def test_download_offline_with_the_tokenizer_exits_0_and_names_each_part(monkeypatch, capsys):
    download = offline_download(monkeypatch, tokenizer_ok=True)
    assert download.main([]) == 0
    out, err = capsys.readouterr()
    assert "ok       tokenizer (50257 tokens)" in out and "MISSING  gpt2-small weights (optional" in err
    assert download.main(["--require-weights"]) == 1


def test_download_without_the_tokenizer_fails_and_says_so(monkeypatch, capsys):
    download = offline_download(monkeypatch, tokenizer_ok=False)
    assert download.main([]) == 1
    err = capsys.readouterr().err
    assert "FAILED  tokenizer (every notebook needs it)" in err and "MISSING  gpt2-small weights" in err


# --- finetune.py: a run that fails before writing anything leaves no empty folder ---


def test_failed_finetune_leaves_no_empty_out_folder(tmp_path, monkeypatch, capsys):
    import finetune

    def unavailable(*args, **kwargs):
        raise utils.WeightsUnavailableError("gpt2-small: https://huggingface.co cannot be reached (test)")

    monkeypatch.setattr(finetune, "load_splits", unavailable)  # the first step after the folder check
    out = tmp_path / "runs" / "small"
    assert finetune.main(["--model", "gpt2-small", "--out", str(out)]) == 1
    assert "cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    kept = tmp_path / "existing"
    kept.mkdir()
    assert finetune.main(["--model", "gpt2-small", "--out", str(kept)]) == 1
    assert kept.is_dir()  # a folder the user made stays


# --- CI: the same commands locally (.ci/run) and on the public host (.github/workflows) ---


def test_ci_runs_lint_and_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    test_command = re.search(r"## Tests\s+```bash\n(.+?)\n```", readme).group(1).strip()
    assert test_command == "make test"
    ci_run = (REPO_ROOT / ".ci" / "run").read_text()
    workflow = (REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text()
    for text in (ci_run, workflow):
        assert "make lint" in text and test_command in text
    assert re.search(r"^on:\s*\n\s+push:\s*\n\s+pull_request:", workflow, re.MULTILINE)
    assert "links --external" in workflow and "--external" not in ci_run  # external links: hosted CI only
    assert "[CONTRIBUTING.md](CONTRIBUTING.md)" in readme


def test_lint_tools_are_in_the_test_requirements_with_ranges():
    wanted = {
        name: specs
        for name, specs in machine_checks.parse_requirements((REPO_ROOT / "requirements-test.txt").read_text())
    }
    for tool in ("ruff", "codespell"):
        assert {op for op, _ in wanted[tool]} == {">=", "<"}


# --- slides and site: npm out of reach gives one line and the fix ---


def test_unreachable_npm_registry_gives_one_line_and_the_fix(tmp_path, monkeypatch, capsys):
    import notebook_html

    if shutil.which("npm") is None:
        pytest.skip("npm is not installed here; test_missing_npm_says_what_to_do covers that case")
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # nothing listens there
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    with pytest.raises(notebook_html.AssetsUnavailableError) as info:
        notebook_html.ensure_assets(tmp_path / "assets")
    message = str(info.value)
    assert "\n" not in message and "ECONNREFUSED" in message and "Fix:" in message
    assert "from the npm registry (once" in capsys.readouterr().out  # the fetch announced itself


@pytest.mark.parametrize("script", ["slides", "build_site"])
def test_slides_and_site_report_missing_assets_without_traceback(script, tmp_path, monkeypatch, capsys):
    import importlib

    import notebook_html

    def unavailable(*args, **kwargs):
        raise notebook_html.AssetsUnavailableError("npm could not fetch reveal.js@5 (ECONNREFUSED). Fix: ...")

    monkeypatch.setattr(notebook_html, "ensure_assets", unavailable)
    module = importlib.import_module(script)
    args = ["--build"] if script == "slides" else []
    assert module.main([*args, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Fix:" in err and "Traceback" not in err


# --- set-up: pip says what it does; a wheelhouse for another Python is named as such ---


def setup_with_fake_pip(tmp_path: Path, pip_script: str, wheels: list[str]) -> subprocess.CompletedProcess:
    root = tmp_path / "course"
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "requirements.txt", "requirements-test.txt", "utils.py"):
        shutil.copy2(REPO_ROOT / name, root / name)
    (root / ".venv" / "bin").mkdir(parents=True)
    fake = root / ".venv" / "bin" / "python"
    fake.write_text(
        f'#!/bin/sh\ncase "$*" in\n  "-m pip "*) {pip_script} ;;\n  *course.pth*) exit 0 ;;\nesac\n'
        f"exec '{VENV_PYTHON}' \"$@\"\n"
    )
    fake.chmod(0o755)
    if wheels:
        (root / "wheelhouse").mkdir()
        for wheel in wheels:
            (root / "wheelhouse" / wheel).write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k not in ("GPT2_TOKENIZER_DIR", "WHEELHOUSE")}
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh")], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_setup_shows_a_line_per_package_pip_installs(tmp_path):
    pip = "printf 'Collecting numpy\\nRequirement already satisfied: tqdm\\nInstalling collected packages: numpy\\n'"
    result = setup_with_fake_pip(tmp_path, pip, wheels=[])
    assert result.returncode == 0, result.stderr
    assert "  pip: Collecting numpy" in result.stdout and "  pip: Installing collected packages" in result.stdout
    assert "Requirement already satisfied" not in result.stdout


def test_wheelhouse_for_another_python_is_named_with_both_versions(tmp_path):
    other = 12 if sys.version_info[:2] != (3, 12) else 11
    pip = "echo 'ERROR: No matching distribution found for torch==2.13.0'; exit 1"
    wheels = [f"torch-2.13.0-cp3{other}-cp3{other}-linux_x86_64.whl", "tqdm-4.67.1-py3-none-any.whl"]
    result = setup_with_fake_pip(tmp_path, pip, wheels)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert result.returncode != 0
    assert f"holds wheels built for Python 3.{other}, but .venv runs Python {here}" in result.stderr
    assert "No matching distribution" in result.stdout  # pip's own line, shown once


# --- committed notebook outputs: nothing of the machine that made them ---

MACHINE_PATH = re.compile(
    r"(?<![\w.])(?:/home/|/root/|/Users/|/tmp/|/work/|/private/var/|[A-Z]:\\\\Users\\\\)"
    r"|site-packages|\.venv/"
)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_outputs_hold_no_machine_paths(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for number, cell in enumerate(notebook["cells"], start=1):
        for output in cell.get("outputs", []):
            text = json.dumps({k: v for k, v in output.items() if k != "metadata"})
            found += [
                f"cell {number}: ...{text[max(0, m.start() - 40) : m.end() + 40]}..."
                for m in MACHINE_PATH.finditer(text)
            ]
    assert not found, "\n".join(found[:5])
