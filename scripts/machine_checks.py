"""The checks behind `make check` (scripts/check_setup.py): one line per check, OK, WARN or FAIL, and the fix.

    python3 scripts/check_setup.py             # works before `make setup` too (standard library only)
    make check                                 # the same, with .venv's Python once it exists
    python3 scripts/check_setup.py --no-timing # skip the training-speed measurement (about a minute)

Needs Python 3.10; scripts/check_setup.py checks the version first, so older Pythons get one clear line.
Exit status 1 when any check FAILs (the course will not run as is), 0 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_PYTHON = (3, 10)  # as scripts/setup.sh demands; scripts/check_setup.py repeats it (a test keeps them equal)

# Memory and disk each GPT-2 size needs for notebook 07 (full finetuning, batch 8, AdamW).
# RAM, gpt2-small: measured: the peak resident memory of this script's own timing step (data, tokenizer,
# model, 4 training steps) was 3.5 GB (`make check`, 2-core Linux, torch 2.13.0 CPU, bf16 autocast);
# 4 GB leaves a little headroom. gpt2-medium, estimated from that: 16 bytes per parameter (fp32
# weights, gradients, AdamW's two moments) gives 2.0 GB of small's 3.5 GB and 5.7 GB for medium's
# 355M parameters; the other 1.5 GB (activations, runtime) scaled by layers x width (24 x 1024 vs
# 12 x 768, 2.7x) gives 4.0 GB; 9.7 GB in all, rounded to 10 GB.
# Disk: model.safetensors as published on the Hugging Face Hub (548 MB and 1.52 GB) plus
# notebook 07's checkpoint: weights and AdamW moments, 12 bytes per parameter.
NEEDS = {
    "gpt2-small": {"params": 124e6, "ram": 4e9, "disk": 0.55e9 + 12 * 124e6},
    "gpt2-medium": {"params": 355e6, "ram": 10e9, "disk": 1.52e9 + 12 * 355e6},
}
NOTEBOOK_07 = {"epochs": 2, "batch_size": 8, "eval_freq": 20, "eval_iter": 5}  # its settings cell
TIMED_STEPS = 3


@dataclass
class Result:
    status: str  # "OK", "WARN" or "FAIL"
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"  -> fix: {self.fix}" if self.fix and self.status != "OK" else ""
        return f"{self.status:<4}  {self.name:<16} {self.detail}{fix}"


# --- versions: a small subset of PEP 440, enough for requirements.txt (no `packaging` before set-up) ---

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:[<>=!~]=?\s*[^,;#\s]+\s*,?\s*)*)")


def parse_requirements(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(name, [(operator, version), ...])] for each requirement line; comments and options skipped."""
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = _REQUIREMENT.match(line)
        if match:
            specs = re.findall(r"([<>=!~]=?)\s*([^,\s]+)", match.group(2))
            found.append((match.group(1), specs))
    return found


def version_tuple(version: str) -> tuple[int, ...]:
    """The numeric release part: '2.13.0+cpu' -> (2, 13, 0); '8.0rc1' -> (8, 0)."""
    release = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(p) for p in release.group(0).split(".")) if release else ()


def satisfies(version: str, specs: list[tuple[str, str]]) -> bool:
    have = version_tuple(version)
    for op, wanted in specs:
        want = version_tuple(wanted)
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {
            ">=": a >= b,
            ">": a > b,
            "<=": a <= b,
            "<": a < b,
            "==": a == b,
            "!=": a != b,
            "~=": a >= b and a[: len(want) - 1] == b[: len(want) - 1],
        }.get(op, True)
        if not ok:
            return False
    return True


# --- the checks; each takes what it inspects as arguments, so tests can fake any machine ---


def check_python(version_info=sys.version_info, executable: str = sys.executable) -> Result:
    shown = ".".join(map(str, tuple(version_info)[:3]))
    if tuple(version_info)[:2] < MIN_PYTHON:
        return Result(
            "FAIL",
            "python",
            f"{shown} ({executable}); the course needs 3.10 or newer",
            "install Python 3.10+ and run `PYTHON=/path/to/python3.x make setup`",
        )
    return Result("OK", "python", f"{shown} ({executable})")


def _installed_version(name: str) -> str | None:
    import importlib.metadata  # here, not at the top: a Python too old to have it still gets its FAIL line

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages(requirements: str, version_of: Callable[[str], str | None] = _installed_version) -> list[Result]:
    """One result per requirement line: installed and new enough."""
    results = []
    for name, specs in parse_requirements(requirements):
        wanted = ",".join(op + v for op, v in specs)
        have = version_of(name)
        if have is None:
            results.append(Result("FAIL", name, f"not installed (needs {wanted or 'any version'})", "make setup"))
        elif not satisfies(have, specs):
            results.append(
                Result(
                    "FAIL", name, f"{have} installed, needs {wanted}", f"make setup (or: pip install '{name}{wanted}')"
                )
            )
        else:
            results.append(Result("OK", name, have))
    return results


def check_torch(import_module: Callable = importlib.import_module) -> list[Result]:
    """PyTorch's build and the device the notebooks will use, with bf16 support."""
    try:
        torch = import_module("torch")
    except ImportError:
        return [Result("FAIL", "torch build", "PyTorch is not importable", "make setup")]
    cuda = getattr(torch.version, "cuda", None)
    build = f"torch {torch.__version__}, " + (f"CUDA {cuda}" if cuda else "CPU-only build")
    if torch.cuda.is_available():
        device, where = "cuda", torch.cuda.get_device_name(0)
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device, where = "mps", "Apple GPU"
    else:
        device, where = "cpu", f"{os.cpu_count()} cores, {torch.get_num_threads()} threads"
    results = [Result("OK", "torch build", build), Result("OK", "device", f"{device} ({where})")]
    try:
        bf16 = import_module("support.precision").bf16_autocast_recommended(device)
    except Exception:  # a broken checkout or install; the package checks say what is missing
        bf16 = None
    if bf16 is None:
        results.append(Result("WARN", "bf16", "unknown (support/precision.py did not import)", "make setup"))
    else:
        results.append(
            Result(
                "OK",
                "bf16",
                "autocast on: faster training steps"
                if bf16
                else "autocast off: no bf16 hardware, training runs in float32 (slower, same results)",
            )
        )
    return results


def tokenizer_site_reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether the tokenizer's download site answers within `timeout` seconds (one HEAD request)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answered: the network is there, a later GET may still work
    except (urllib.error.URLError, OSError, ValueError):
        return False


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be saved in `folder` (created on demand), or None if they can: a real write is tried,
    in the folder or its nearest existing parent, since permission bits say nothing to root or a read-only mount."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_tokenizer(
    environ=os.environ,
    import_module: Callable = importlib.import_module,
    reachable: Callable[[str], bool] = tokenizer_site_reachable,
) -> Result:
    """The same lookup as utils.get_tokenizer; when the files are nowhere, whether they can be fetched and saved."""
    try:
        utils = import_module("utils")
    except Exception:
        return Result("WARN", "tokenizer", "not checked: utils.py does not import yet", "make setup, then run again")
    folder = environ.get(utils.TOKENIZER_DIR_ENV)
    if folder:
        try:
            import_module("support.tokenizer_files").check_tokenizer_folder(Path(folder).resolve())
        except utils.TokenizerUnavailableError as exc:
            return Result(
                "FAIL",
                "tokenizer",
                str(exc),
                f"point {utils.TOKENIZER_DIR_ENV} at a folder with GPT-2's encoder.json and vocab.bpe",
            )
        return Result("OK", "tokenizer", f"{folder} (from ${utils.TOKENIZER_DIR_ENV})")
    cache = Path(
        environ.get("TIKTOKEN_CACHE_DIR") or environ.get("DATA_GYM_CACHE_DIR") or utils.DEFAULT_CACHE_DIR / "tiktoken"
    )
    # tiktoken names each cached file after the sha1 of its URL and checks its sha256.
    local_fix = f"set {utils.TOKENIZER_DIR_ENV}=/folder/with/encoder.json/and/vocab.bpe"
    for name, (url, sha256) in import_module("support.tokenizer_files").GPT2_VOCAB_FILES.items():
        cached = cache / hashlib.sha1(url.encode()).hexdigest()
        if not cached.is_file():
            why_not = unwritable_reason(cache)
            if why_not:
                return Result(
                    "FAIL",
                    "tokenizer",
                    f"{name} is not in {cache}, and it cannot be saved there ({why_not})",
                    f"set TIKTOKEN_CACHE_DIR to a writable folder, or {local_fix}",
                )
            if not reachable(url):
                return Result(
                    "FAIL",
                    "tokenizer",
                    f"{name} is not in {cache}, and its download site is out of reach ({url.split('/')[2]})",
                    f"run `make download` once on a machine with network, or {local_fix}",
                )
            return Result(
                "WARN",
                "tokenizer",
                f"{name} not in {cache}: the notebooks will download it on first use",
                f"make download (now, while the network works), or {local_fix}",
            )
        if hashlib.sha256(cached.read_bytes()).hexdigest() != sha256:
            return Result(
                "FAIL", "tokenizer", f"{cached} ({name}) is damaged (sha256 differs)", "delete it and run make download"
            )
    return Result("OK", "tokenizer", f"both vocabulary files in {cache}")


def check_weights(import_module: Callable = importlib.import_module) -> Result:
    """Which GPT-2 sizes are in the Hugging Face cache (disk only)."""
    try:
        utils = import_module("utils")
        found = [name for name in utils.HF_REPOS if utils.cached_gpt2_weights(name) is not None]
    except Exception:
        return Result("WARN", "gpt2 weights", "not checked: utils.py does not import yet", "make setup, then run again")
    if "gpt2-small" not in found:
        others = f" (cached: {', '.join(found)})" if found else ""
        return Result(
            "WARN",
            "gpt2 weights",
            "gpt2-small is not in the Hugging Face cache"
            + others
            + ": notebooks 06-11 download it (548 MB) or, offline, fall back to an UNTRAINED stand-in",
            "make download (on a good network, before the workshop)",
        )
    return Result("OK", "gpt2 weights", "cached: " + ", ".join(found))


def _free_ram() -> int | None:
    """Available memory in bytes (Linux /proc/meminfo, else sysconf's free pages), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_resources(free_ram: int | None, free_disk: int, where: Path) -> list[Result]:
    """Free RAM and disk against what finetuning GPT-2 small and medium need (see NEEDS)."""
    results = []
    for kind, have, fix in (
        ("ram", free_ram, "close other programs (browser tabs), or use gpt2-small"),
        ("disk", free_disk, f"free space on the disk holding {where}"),
    ):
        label = "free RAM" if kind == "ram" else "free disk"
        if have is None:
            results.append(Result("WARN", label, "could not be read on this system"))
            continue
        fits = [name for name, need in NEEDS.items() if have >= need[kind]]
        needs = ", ".join(f"{name} {_gb(need[kind])}" for name, need in NEEDS.items())
        status = "OK" if "gpt2-medium" in fits else "WARN" if fits else "FAIL"
        results.append(Result(status, label, f"{_gb(have)} (needs: {needs})", fix))
    return results


# --- training speed: a few real steps of GPT-2 small (random weights), turned into notebook 07's time ---


def _progress(text: str) -> None:
    """A stage of the timing, on the same line (it takes a minute or more on a busy machine)."""
    print(text, end="", flush=True)


def notebook07_batches(import_module: Callable = importlib.import_module) -> tuple[int, int]:
    """(training batches per epoch, typical padded length) of notebook 07's training loader."""
    utils = import_module("utils")
    _progress(" data and tokenizer..")
    train, val, test = utils.split_dataset(utils.load_instruction_data())
    train_loader, _, _ = utils.create_dataloaders(
        train, val, test, utils.get_tokenizer(), batch_size=NOTEBOOK_07["batch_size"]
    )
    lengths = sorted(inputs.shape[1] for inputs, _ in train_loader)
    return len(train_loader), lengths[len(lengths) // 2]


def time_gpt2_small(seq_len: int, steps: int = TIMED_STEPS) -> tuple[float, float, float]:
    """(seconds per training step, seconds per forward-only batch, peak RSS in GB) for random GPT-2 small."""
    import torch

    import support.precision
    import utils

    device = utils.get_device()
    torch.manual_seed(0)
    _progress(" model..")
    model = utils.GPTModel(utils.GPT_CONFIGS["gpt2-small"]).to(device)
    optimizer = utils.create_optimizer(model, lr=5e-5)
    dtype = torch.bfloat16 if support.precision.bf16_autocast_recommended(device) else None
    batch = torch.randint(0, 50257, (NOTEBOOK_07["batch_size"], seq_len + 1), device=device)
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step():
        optimizer.zero_grad()
        utils.calc_loss_batch(inputs, targets, model, device, autocast_dtype=dtype).backward()
        optimizer.step()

    _progress(" warm-up step..")
    step()  # warm-up: allocations, kernel selection
    start = time.perf_counter()
    for i in range(steps):
        _progress(f" step {i + 1}/{steps}..")
        step()
    per_step = (time.perf_counter() - start) / steps
    with torch.no_grad():
        start = time.perf_counter()
        utils.calc_loss_batch(inputs, targets, model, device, autocast_dtype=dtype)
        per_forward = time.perf_counter() - start
    peak_gb = _peak_rss_gb()
    return per_step, per_forward, peak_gb


def _peak_rss_gb() -> float:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # macOS: bytes, Linux: KiB
    except (ImportError, OSError):
        return float("nan")


def estimate_notebook07_minutes(per_step: float, per_forward: float, batches: int) -> float:
    """Notebook 07's training cell: its epochs of steps, plus an evaluation (eval_iter train + eval_iter
    validation batches, forward only) every eval_freq steps."""
    steps = NOTEBOOK_07["epochs"] * batches
    evaluations = steps // NOTEBOOK_07["eval_freq"]
    return (steps * per_step + evaluations * 2 * NOTEBOOK_07["eval_iter"] * per_forward) / 60


def check_training_speed(measure: Callable[[], tuple[int, int, float, float, float]]) -> Result:
    """`measure()` -> (batches, seq_len, s/step, s/forward, peak GB); injected so tests need no timing."""
    try:
        batches, seq_len, per_step, per_forward, peak_gb = measure()
    except Exception as exc:
        return Result(
            "WARN",
            "training speed",
            f"not measured ({type(exc).__name__}: {str(exc)[:120]})",
            "fix the FAIL lines above first",
        )
    minutes = estimate_notebook07_minutes(per_step, per_forward, batches)
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if hasattr(os, "getloadavg") else ""
    detail = (
        f"{per_step:.2f} s per GPT-2-small step (batch {NOTEBOOK_07['batch_size']}, length {seq_len}, "
        f"{TIMED_STEPS} steps timed, peak memory {peak_gb:.1f} GB{load}) -> notebook 07 "
        f"({NOTEBOOK_07['epochs']} epochs x {batches} batches, with evaluations): about {minutes:.0f} min"
    )
    if minutes > 60:
        return Result(
            "WARN",
            "training speed",
            detail,
            "in notebook 07 set TRAIN_SUBSET (e.g. 200) or NUM_EPOCHS = 1, or use a faster machine",
        )
    return Result("OK", "training speed", detail)


def measure_for_real() -> tuple[int, int, float, float, float]:
    start = time.perf_counter()
    _progress(f"timing {TIMED_STEPS} training steps of GPT-2 small:")
    try:
        batches, seq_len = notebook07_batches()
        return (batches, seq_len) + time_gpt2_small(seq_len)
    finally:
        print(f" done in {time.perf_counter() - start:.0f} s", flush=True)


def run_checks(timing: bool = True) -> Iterator[Result]:
    """Every check in order, yielded as it completes (the timing comes last and takes a while; it is only
    run, and only announced, when nothing failed before it)."""
    sys.path.insert(0, str(REPO_ROOT))  # utils.py, when its packages are installed
    results = [check_python()]
    results += check_packages((REPO_ROOT / "requirements.txt").read_text())
    results += check_torch()
    results.append(check_tokenizer())
    results.append(check_weights())
    results += check_resources(_free_ram(), shutil.disk_usage(REPO_ROOT).free, REPO_ROOT)
    yield from results
    if timing:
        if any(r.status == "FAIL" for r in results):
            yield Result("WARN", "training speed", "not measured", "fix the FAIL lines above first")
        else:
            yield check_training_speed(measure_for_real)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-timing", action="store_true", help="skip the training-speed measurement")
    args = parser.parse_args(argv)
    print(f"Checking {platform.system()} {platform.machine()}, Python at {sys.executable}")
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve():
        print(f"note: this is not the course's .venv; `make check` (or {venv_python}) checks that one")
    failed = 0
    for result in run_checks(timing=not args.no_timing):
        print(result.line(), flush=True)
        failed += result.status == "FAIL"
    print(
        f"Not ready: {failed} check(s) failed; fix them, then run this again."
        if failed
        else "Ready: no check failed (WARN lines still deserve a look)."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
