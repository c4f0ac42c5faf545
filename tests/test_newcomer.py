"""The first hour of a newcomer: set-up, `make lab`, `make run`, `make download` and the suite itself,
tried from a fresh copy of the repository, offline (issue 12; issue 11 item 6; issue 9 items 6-7).

Make targets run from a temporary clone (tracked files as they are in this worktree); nothing here
installs packages or reaches the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import run_notebooks
import support.network
import support.plots
import utils
from support.tokenizer_files import install_tokenizer_files

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
VENV_PYTHON = Path(sys.executable)


# --- a fresh clone, with this worktree's tracked files as they are now ---


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """`git clone` of this repository into a folder with no ../shared beside it, plus uncommitted edits."""
    target = tmp_path_factory.mktemp("fresh") / "course"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(target)], check=True)
    for name in tracked_files():
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert not (target.parent / "shared").exists()
    return target


def make_dry_run(folder: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "GPT2_TOKENIZER_DIR")}
    result = subprocess.run(["make", "-n", *args], cwd=folder, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- 1, 2: make lab serves the repository root (figures load) and starts as root ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_the_repository_root_so_figures_load(clone):
    command = next(line for line in make_dry_run(clone, "lab").splitlines() if "jupyter lab" in line)
    assert "--ServerApp.root_dir=. " in command  # make runs it in the clone; `.` keeps the folder name from the shell
    assert "--LabApp.default_url=/lab/tree/notebooks" in command
    # Start the very command (with this venv's Python), and fetch a figure the way a notebook links it.
    port, token = free_port(), "newcomer-test"
    argv = command.replace('"', "").split()
    argv[0] = str(VENV_PYTHON)
    argv += [
        "--no-browser",
        f"--port={port}",
        f"--ServerApp.token={token}",
        "--ServerApp.open_browser=False",
        f"--ServerApp.runtime_dir={clone / '.jupyter-runtime'}",
    ]
    if "--allow-root" not in argv:
        argv.append("--allow-root")
    server = subprocess.Popen(argv, cwd=clone, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/files/figures/01.png?token={token}"
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    status, body = response.status, response.read(8)
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200 and body.startswith(b"\x89PNG"), f"figures/01.png not served (status {status})"
        listing = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
        with urllib.request.urlopen(listing, timeout=10) as response:
            names = {item["name"] for item in json.load(response)["content"]}
        assert "01-instruction-dataset.ipynb" in names
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_make_lab_allows_root_and_takes_extra_arguments(clone):
    command = make_dry_run(clone, "lab")
    assert ("--allow-root" in command) == (os.getuid() == 0)
    with_args = make_dry_run(clone, "lab", "LAB_ARGS=--port 8899 --no-browser")  # README's own example
    assert "--port 8899 --no-browser" in with_args
    assert ("--allow-root" in with_args) == (os.getuid() == 0)  # passing LAB_ARGS keeps the automatic flag


# --- 3: make run checks the prerequisites once, before any notebook ---


@pytest.fixture
def no_tokenizer(tmp_path, monkeypatch):
    """No tokenizer folder, an empty tiktoken cache, and a network that fails at once."""
    import tiktoken.registry

    monkeypatch.delenv("GPT2_TOKENIZER_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_network(*args, **kwargs):
        raise ConnectionError("no route to host (test)")

    monkeypatch.setattr("tiktoken.load.read_file", no_network)


def test_run_without_tokenizer_stops_before_any_notebook_with_the_whole_fix_once(
    no_tokenizer, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(utils, "cached_gpt2_weights", lambda *a, **k: None)
    monkeypatch.delenv("LLM_SMOKE", raising=False)
    rc = run_notebooks.main(["--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    text = out.out + out.err
    assert rc == 2 and not (tmp_path / "out").exists()
    assert "running" not in text  # no notebook started
    assert text.count("Could not load GPT-2's tokenizer") == 1
    assert text.count("make download") == 2  # the tokenizer's fix, and how to get the weights
    assert "GPT2_TOKENIZER_DIR" in text and "GPT-2 weights: not cached" in text


def test_prerequisites_say_whether_weights_are_cached(monkeypatch, tmp_path):
    monkeypatch.delenv("LLM_SMOKE", raising=False)
    monkeypatch.setattr(utils, "get_tokenizer", lambda: None)
    monkeypatch.setattr(utils, "cached_gpt2_weights", lambda *a, **k: tmp_path / "model.safetensors")
    ready, lines = run_notebooks.check_prerequisites()
    assert ready and lines == ["tokenizer: ok", f"GPT-2 weights: cached ({tmp_path / 'model.safetensors'})"]


# --- issue 11 item 6: the runner survives bad notebooks and never destroys one ---


def notebook(path: Path, *sources: str, tags: dict[int, list[str]] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_runner_reports_every_failure_in_full_and_runs_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_notebooks, "check_prerequisites", lambda: (True, ["prerequisites: ok (test)"]))
    monkeypatch.setattr(run_notebooks, "CELL_TIMEOUT", 3)
    corrupt = tmp_path / "1-corrupt.ipynb"
    corrupt.write_text('{"cells": [', encoding="utf-8")
    paths = [
        corrupt,
        notebook(tmp_path / "2-raises.ipynb", 'raise ValueError("first line of the reason\\nsecond line: the fix")'),
        notebook(tmp_path / "3-dies.ipynb", "import os\nos._exit(1)"),
        notebook(tmp_path / "4-hangs.ipynb", "import time\ntime.sleep(60)"),
        notebook(tmp_path / "5-fine.ipynb", "print(6 * 7)"),
    ]
    out_dir = tmp_path / "out"
    rc = run_notebooks.main(["--out", str(out_dir), *map(str, paths)])
    text = capsys.readouterr().out
    summary = text.split("stopped with an error:")[1]
    assert rc == 1 and "4 of 5 notebooks stopped" in text
    assert "1-corrupt.ipynb" in summary and "could not read the notebook" in summary
    assert "first line of the reason" in summary and "second line: the fix" in summary  # whole message
    assert "3-dies.ipynb" in summary and "kernel died" in summary
    assert "4-hangs.ipynb" in summary and "time limit" in summary
    assert "5-fine.ipynb" not in summary
    fine = nbformat.read(out_dir / "5-fine.ipynb", as_version=4)
    assert fine.cells[0].outputs[0]["text"] == "42\n"  # the last notebook still ran


def test_inplace_keeps_a_failed_notebook_and_strips_needs_gpt2_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_notebooks, "check_prerequisites", lambda: (True, []))
    monkeypatch.setattr(utils, "cached_gpt2_weights", lambda *a, **k: None)
    failing = notebook(tmp_path / "a.ipynb", "1 / 0")
    before = failing.read_bytes()
    tagged = notebook(
        tmp_path / "b.ipynb", "print('depends on the weights')", "print('shown')", tags={0: ["needs-gpt2"]}
    )
    assert run_notebooks.main(["--inplace", str(failing), str(tagged)]) == 1
    assert "ZeroDivisionError: division by zero" in capsys.readouterr().out
    assert failing.read_bytes() == before  # not half an execution
    cells = nbformat.read(tagged, as_version=4).cells
    assert cells[0].outputs == [] and cells[1].outputs[0]["text"] == "shown\n"


def test_writing_a_notebook_is_atomic(tmp_path, monkeypatch):
    path = notebook(tmp_path / "c.ipynb", "print('old')")
    before = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source = "print('new')" * 1000
    real_write_bytes = Path.write_bytes

    def disk_full_halfway(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full_halfway)
    with pytest.raises(OSError, match="No space"):
        run_notebooks.write_notebook(nb, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.ipynb"]


def test_a_failed_save_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_notebooks, "check_prerequisites", lambda: (True, []))
    monkeypatch.setattr(run_notebooks, "execute_notebook", lambda path, timeout, nb: nb)  # no kernel needed
    saved = []

    def disk_full_for_the_first(nb, path):
        if not saved:
            saved.append(None)
            raise OSError(28, "No space left on device")
        saved.append(path)

    monkeypatch.setattr(run_notebooks, "write_notebook", disk_full_for_the_first)
    paths = [notebook(tmp_path / f"{name}.ipynb", "1") for name in ("e", "f")]
    assert run_notebooks.main(["--out", str(tmp_path / "out"), *map(str, paths)]) == 1
    text = capsys.readouterr().out
    assert "could not save" in text.split("stopped with an error:")[1] and "No space left" in text
    assert saved[1] == tmp_path / "out" / "f.ipynb"


def test_kernels_talk_over_ipc_so_no_tcp_warning(tmp_path, capfd):
    nb = run_notebooks.execute_notebook(notebook(tmp_path / "d.ipynb", "print('hi')"))
    assert nb.cells[0].outputs[0]["text"] == "hi\n"
    captured = capfd.readouterr()
    assert "without encryption" not in captured.out + captured.err


# --- 4 and issue 9 item 6: the weights lookup learns "offline" within about 2 s ---


@pytest.fixture
def hub_memo(tmp_path, monkeypatch):
    memo = tmp_path / "hub-unreachable.json"
    monkeypatch.setattr(support.network, "HUB_FAILURE_FILE", memo)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return memo


def fake_hub_cache(root: Path, repo: str = "openai-community/gpt2") -> Path:
    """The layout huggingface_hub's cache uses for one file of one revision."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"stand-in bytes")
    return snapshot / "model.safetensors"


def test_cached_weights_never_touch_the_network(tmp_path, hub_memo, monkeypatch):
    expected = fake_hub_cache(tmp_path / "hub")

    def no_probe(*args):
        raise AssertionError("the network was probed although the weights are cached")

    monkeypatch.setattr(support.network, "_probe", no_probe)
    assert utils.download_gpt2_weights("gpt2-small", cache_dir=tmp_path / "hub") == expected


@pytest.fixture
def silent_server():
    """A port that accepts connections (into the backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "no-answer"])
def test_unreachable_hub_is_known_within_seconds_and_remembered(kind, tmp_path, hub_memo, monkeypatch, silent_server):
    port = free_port() if kind == "refused" else silent_server
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(utils.WeightsUnavailableError) as info:
        utils.download_gpt2_weights("gpt2-small", cache_dir=tmp_path / "empty")
    assert time.monotonic() - start < support.network.HUB_PROBE_TIMEOUT + 1.5
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message and "make download" in message
    assert hub_memo.is_file()

    monkeypatch.setattr(support.network, "_probe", lambda url: pytest.fail("probed again instead of remembering"))
    start = time.monotonic()
    with pytest.raises(utils.WeightsUnavailableError, match="found .* s ago"):
        utils.download_gpt2_weights("gpt2-small", cache_dir=tmp_path / "empty")
    assert time.monotonic() - start < 0.5


def test_an_old_failure_is_forgotten(tmp_path, hub_memo, monkeypatch):
    hub_memo.write_text(json.dumps({"time": time.time() - support.network.HUB_FAILURE_MEMORY - 1, "reason": "old"}))
    probed = []
    monkeypatch.setattr(support.network, "_probe", lambda url: probed.append(url) or None)
    assert support.network.hub_unreachable_reason() is None and probed and not hub_memo.exists()


def test_make_download_offline_does_not_send_the_user_to_make_download(tmp_path, hub_memo, monkeypatch, capsys):
    import download

    hub_memo.write_text(json.dumps({"time": time.time(), "reason": "stale"}))  # download.py checks afresh
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(utils, "cached_gpt2_weights", lambda *a, **k: None)
    monkeypatch.setattr(utils, "get_tokenizer", lambda: type("T", (), {"n_vocab": 50257})())
    assert download.main(["--models", "gpt2-small"]) == 0  # the weights are optional (issue 25)
    err = capsys.readouterr().err
    assert "make download" not in err and "stale" not in err
    assert "cannot be reached" in err and "run this command again" in err


def test_standin_message_is_short(monkeypatch, capsys):
    monkeypatch.delenv("LLM_SMOKE", raising=False)
    monkeypatch.setattr(utils, "_WEIGHTS_FAILED", set())
    monkeypatch.setattr(
        utils,
        "download_gpt2_weights",
        lambda name: (_ for _ in ()).throw(
            utils.WeightsUnavailableError("gpt2-small weights: not in the cache, and the Hub cannot be reached. Fix: x")
        ),
    )
    _, label = utils.load_gpt2_or_standin("gpt2-small")
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and "UNTRAINED" in printed[1] and "UNTRAINED" in label


# --- 6: the suite passes with only the cache `make download` leaves, and skips cleanly without it ---


def run_pytest_in(folder: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GPT2_TOKENIZER_DIR", "TIKTOKEN_CACHE_DIR", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")
    }
    env.update(env_extra or {})
    return subprocess.run(
        [str(VENV_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


SUBSET = ["tests/test_data.py", "tests/test_collate.py", "-k", "tokeniz or collate or offline"]


def test_suite_passes_with_only_the_tiktoken_cache(clone, gpt2_vocab_dir):
    source = gpt2_vocab_dir
    cache = clone / ".cache" / "tiktoken"
    shutil.rmtree(cache, ignore_errors=True)
    install_tokenizer_files(source, cache)  # exactly what `make download` leaves
    result = run_pytest_in(clone, *SUBSET)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "KeyError" not in result.stdout and " passed" in result.stdout and "skipped" not in result.stdout


def test_suite_without_tokenizer_skips_with_one_reason(clone):
    shutil.rmtree(clone / ".cache" / "tiktoken", ignore_errors=True)
    result = run_pytest_in(
        clone, *SUBSET, "-rs", env_extra={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:]
    skip_lines = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1 and re.match(r"SKIPPED \[\d+\]", skip_lines[0])  # one line, for all skips
    assert "make download" in skip_lines[0]
    assert len(out.splitlines()) < 40, out


# --- 7, 8: set-up installs each requirement file once, from a wheelhouse when there is one ---


@pytest.fixture
def setup_sandbox(tmp_path):
    """A copy of the set-up files in a folder whose name holds quotes, with a recording stand-in Python."""
    root = tmp_path / 'it\'s a "course" $(touch pwned)'
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "requirements.txt", "requirements-test.txt", "utils.py"):
        shutil.copy2(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "support", root / "support")  # setup.sh seeds the tokenizer cache with it
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "pip.log"
    fake = bin_dir / "python"
    # pip calls are recorded, not run; everything else is the real Python of this venv.
    fake.write_text(f"""#!/bin/sh
case "$*" in
  "-m pip "*) echo "$*" >> '{log}'; exit 0 ;;
  *finetuning-course.pth*) for last; do :; done; echo "$last" >> '{log}.pth'; exit 0 ;;
esac
exec '{VENV_PYTHON}' "$@"
""")
    fake.chmod(0o755)
    return root, log


def run_setup(root: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GPT2_TOKENIZER_DIR", "WHEELHOUSE")}
    env.update(env_extra or {})
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_switching_between_run_and_test_installs_nothing_again(setup_sandbox):
    root, log = setup_sandbox
    for args in [(), ("--test",), (), ("--test",)]:
        result = run_setup(root, *args)
        assert result.returncode == 0, result.stderr
    installs = log.read_text().splitlines()
    assert sum("-r requirements.txt" in line for line in installs) == 1
    assert sum("-r requirements-test.txt" in line for line in installs) == 1


def test_setup_installs_from_the_wheelhouse_without_an_index(setup_sandbox):
    root, log = setup_sandbox
    (root / "wheelhouse").mkdir()
    (root / "wheelhouse" / "example-1.0-py3-none-any.whl").write_bytes(b"")
    result = run_setup(root)
    assert result.returncode == 0, result.stderr
    install = next(line for line in log.read_text().splitlines() if "-r requirements.txt" in line)
    assert "--no-index" in install and f"--find-links {root / 'wheelhouse'}" in install


def test_setup_passes_paths_as_data_not_code(setup_sandbox, tmp_path, gpt2_vocab_dir):
    root, log = setup_sandbox
    source = gpt2_vocab_dir
    odd = tmp_path / "vocab 'quoted' \"twice\""
    shutil.copytree(source, odd)
    result = run_setup(root, env_extra={"GPT2_TOKENIZER_DIR": str(odd)})
    assert result.returncode == 0, result.stderr
    assert not (root / "pwned").exists() and not Path("pwned").exists()
    assert Path(f"{log}.pth").read_text().split("\n")[-2] == str(root)  # the folder name, verbatim
    assert len(list((root / ".cache" / "tiktoken").iterdir())) == 2  # the tokenizer cache was seeded


def test_readme_stops_advising_to_copy_the_venv():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    # the offline route the README gives is a make target that really builds a wheelhouse ...
    assert "make wheelhouse" in readme
    dry_run = subprocess.run(["make", "-n", "wheelhouse"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert dry_run.returncode == 0 and "setup.sh --wheelhouse" in dry_run.stdout, dry_run.stderr
    # ... and the command that copies the project leaves the virtual environment out (its paths
    # point at the machine it was made on)
    copies = [line for line in readme.splitlines() if re.search(r"^\s*(cp|rsync|scp|tar|zip)\b.* \./? ", line)]
    assert copies and all(re.search(r"--exclude[ =]\.venv\b", line) for line in copies), copies


# --- 10: small things ---


def test_every_declared_make_target_has_a_rule(clone):
    makefile = (clone / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split()
    for target in phony:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"`make {target}` has no rule"


def test_readme_commands_use_the_venv_python():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    bare = [line for line in readme.splitlines() if re.search(r"(^|`)python3? (benchmarks|scripts|finetune)", line)]
    assert not bare, bare
    # every script those commands run exists, so each command can be run as written
    scripts = set(re.findall(r"\.venv/bin/python (?:-m \S+ )?((?:benchmarks|scripts)/\S+\.py|finetune\.py)", readme))
    assert scripts and not [s for s in sorted(scripts) if not (REPO_ROOT / s).is_file()]


# --- issue 9 item 7: "you are here" strips and credits ---

CREDIT = "chapter 7 of Sebastian Raschka's *Build a Large Language Model (From Scratch)*"


@pytest.mark.parametrize("number", ["01", "02", "03", "04"])
def test_notebook_header_has_strip_credit_and_exercises(number):
    path = next(NOTEBOOK_DIR.glob(f"{number}-*.ipynb"))
    cells = nbformat.read(path, as_version=4).cells
    header = cells[0].source
    assert header.startswith(f"# {number} \u00b7 ")
    assert f'<img src="../figures/here-{number}.png" width="900" alt="You are here' in header
    assert CREDIT in header and "https://github.com/rasbt/LLM-workshop-2024" in header
    assert "Exercises" in cells[-1].source and "(10-exercises.ipynb)" in cells[-1].source
    links = {
        "02": ["https://crfm.stanford.edu/2023/03/13/alpaca.html", "https://arxiv.org/abs/2404.14219"],
        "03": ["https://github.com/openai/tiktoken"],
    }
    for link in links.get(number, []):
        assert link in header


def test_here_strips_exist_for_every_notebook_and_differ():
    from matplotlib.image import imread

    import make_figures

    names = [f"here-{n:02d}.png" for n in range(1, 12)]
    assert set(names) <= set(make_figures.FIGURES)
    images = [imread(REPO_ROOT / "figures" / name) for name in names[:7]]
    for a, b in zip(images, images[1:]):
        assert a.shape == b.shape and (a != b).any()  # a different step is highlighted


# --- plot style (issue 13 item 1): one style, big enough for a projector ---


def test_one_plot_style_for_projectors():
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        support.plots.use_plot_style()
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0], label="loss")
        ax.set_xlabel("step")
        legend = ax.legend()
        fig.canvas.draw()
        # what a projected figure shows: tick labels, axis labels and legend text of at least 14 pt
        sizes = [t.get_fontsize() for t in ax.get_xticklabels() + [ax.xaxis.label] + legend.get_texts()]
        plt.close(fig)
        assert min(sizes) >= 14, sizes
        assert matplotlib.rcParams["xtick.labelsize"] == support.plots.PLOT_FONT_SIZES["tick"]
        assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][:2] == list(support.plots.LOSS_COLORS.values())
    for number in ("02", "04"):
        sources = [c.source for c in nbformat.read(next(NOTEBOOK_DIR.glob(f"{number}-*.ipynb")), as_version=4).cells]
        plotting = [s for s in sources if "plt.subplots" in s]
        assert plotting and all("use_plot_style()" in s and "color=" not in s for s in plotting)
