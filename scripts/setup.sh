#!/usr/bin/env bash
# Creates .venv (if missing) and installs what the series needs. Safe to run again: each
# requirement file has its own install stamp, so switching between `make run` and `make test`
# installs nothing while the files are unchanged.
#   scripts/setup.sh              notebooks and finetune.py
#   scripts/setup.sh --test       plus the test-only packages
#   scripts/setup.sh --wheelhouse download every wheel the two above need into $WHEELHOUSE
# When $WHEELHOUSE (default: ./wheelhouse) holds wheels, set-up installs from it alone, no index needed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_VERSION=2.13.0  # the release this course is tested with
CPU_INDEX=https://download.pytorch.org/whl/cpu
WHEELHOUSE=${WHEELHOUSE:-$PWD/wheelhouse}
mode=${1:-}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: needs Python 3.10 or newer; found: $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
  # A .venv copied from another machine points at that machine's Python: start afresh.
  [ -e "$VENV" ] && echo "setup: $VENV does not run on this machine; recreating it"
  rm -rf "$VENV"
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# No NVIDIA GPU on Linux: PyTorch's CPU build is ~200 MB instead of several GB of CUDA libraries,
# but only PyTorch's own index has it (the default index, PyPI, serves the CUDA build on Linux).
wants_cpu_build() { [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; }
cpu_index_reachable() {
  CPU_INDEX="$CPU_INDEX" "$PY" -c 'import os, urllib.request as u; u.urlopen(os.environ["CPU_INDEX"] + "/", timeout=5)' \
    2>/dev/null
}

if [ "$mode" = --wheelhouse ]; then
  # `pip wheel` rather than `pip download`: a package published only as source (rouge-score) is
  # built into a wheel here, so attendees' machines need no build tools and no index.
  mkdir -p "$WHEELHOUSE"
  if wants_cpu_build && cpu_index_reachable; then
    echo "setup: collecting torch==$TORCH_VERSION (CPU build) into $WHEELHOUSE"
    "$PY" -m pip wheel --quiet --wheel-dir "$WHEELHOUSE" "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" \
      --extra-index-url https://pypi.org/simple
  else
    echo "setup: collecting torch==$TORCH_VERSION from the configured index into $WHEELHOUSE"
    "$PY" -m pip wheel --quiet --wheel-dir "$WHEELHOUSE" "torch==$TORCH_VERSION"
  fi
  echo "setup: collecting requirements.txt and requirements-test.txt into $WHEELHOUSE"
  "$PY" -m pip wheel --quiet --wheel-dir "$WHEELHOUSE" "torch==$TORCH_VERSION" \
    -r requirements.txt -r requirements-test.txt
  echo "setup: $(ls "$WHEELHOUSE" | wc -l) wheels in $WHEELHOUSE, for $("$PY" -c 'import sys, sysconfig; print(f"Python {sys.version_info[0]}.{sys.version_info[1]} on {sysconfig.get_platform()}")')"
  exit 0
fi

has_file() {  # has_file FOLDER PATTERN: a file matching PATTERN exists in FOLDER (any folder name works)
  local f
  for f in "$1"/$2; do [ -e "$f" ] && return 0; done
  return 1
}
pip_progress() {  # pip install, one line per package it fetches or installs (a first set-up takes minutes)
  "$PY" -m pip install --progress-bar off "$@" 2>&1 \
    | awk '/^(Collecting|Downloading|Installing collected|Successfully installed|ERROR|error:)/ {print "  pip: " $0; fflush()}'
}
wheelhouse_python_hint() {  # after a failed wheelhouse install: were the wheels made for another Python?
  "$PY" - "$WHEELHOUSE" >&2 <<'EOF' || true
import pathlib, re, sys
have = f"{sys.version_info[0]}.{sys.version_info[1]}"
tags = {m.group(1) for p in pathlib.Path(sys.argv[1]).glob("*.whl") if (m := re.search(r"-cp3(\d+)-", p.name))}
built = sorted({f"3.{t}" for t in tags}, key=lambda v: int(v[2:]))
if built and have not in built:
    print(f"setup: the wheelhouse {sys.argv[1]} holds wheels built for Python {', '.join(built)}, "
          f"but .venv runs Python {have}.\n       Fix: rebuild it with Python {have} (make wheelhouse, with network), "
          f"or use Python {built[-1]}: rm -rf .venv && PYTHON=/path/to/python{built[-1]} make setup")
EOF
}
pip_install() {  # from the wheelhouse alone when there is one, else from the configured index
  if has_file "$WHEELHOUSE" "*.whl"; then
    pip_progress --no-index --find-links "$WHEELHOUSE" "$@" || { wheelhouse_python_hint; return 1; }
  else
    pip_progress "$@"
  fi
}

files="requirements.txt"
[ "$mode" = --test ] && files="$files requirements-test.txt"
has_file "$WHEELHOUSE" "*.whl" && echo "setup: installing from $WHEELHOUSE (no index needed)"
# (importlib.metadata answers in a blink; importing torch takes seconds, so set-up avoids it.)
has_torch() { "$PY" -c 'import importlib.metadata as m; m.version("torch")' 2>/dev/null; }
if ! has_torch; then
  if has_file "$WHEELHOUSE" "torch-*.whl"; then
    echo "setup: installing PyTorch $TORCH_VERSION from $WHEELHOUSE"
    pip_install "torch==$TORCH_VERSION"
  elif wants_cpu_build && cpu_index_reachable; then
    echo "setup: installing PyTorch $TORCH_VERSION (CPU build, from $CPU_INDEX; about 200 MB)"
    pip_progress "torch==$TORCH_VERSION" --index-url "$CPU_INDEX"
  else
    echo "setup: installing PyTorch $TORCH_VERSION from the configured index"
    pip_progress "torch==$TORCH_VERSION"
  fi
  torch_installed_now=1
fi
for f in $files; do
  # One stamp per requirement file and its content: `make run` and `make test` keep each other's.
  stamp="$VENV/.installed-$f-$("$PY" -c 'import hashlib, sys; print(hashlib.sha1(open(sys.argv[1], "rb").read()).hexdigest()[:12])' "$f")"
  if [ ! -f "$stamp" ]; then
    echo "setup: installing $f"
    pip_install -r "$f"
    rm -f "$VENV/.installed-$f-"*
    touch "$stamp"
  fi
done

if [ -n "${torch_installed_now:-}" ] && wants_cpu_build \
   && [ "$("$PY" -c 'import torch; print(torch.version.cuda or "")')" != "" ]; then
  # Honest about what happened: it works, but it is the large CUDA build on a machine without a GPU.
  echo "setup: note: this is PyTorch's CUDA build (several GB), because $CPU_INDEX was out of reach." >&2
  echo "       For the ~200 MB CPU build: $PY -m pip install --force-reinstall torch==$TORCH_VERSION --index-url $CPU_INDEX" >&2
fi

# Lets `import utils` work from notebooks/ and scripts/ inside this venv. The path goes through
# argv, never into the Python source, so any folder name works.
"$PY" -c 'import pathlib, site, sys; pathlib.Path(site.getsitepackages()[0], "instruction-finetuning-course.pth").write_text(sys.argv[1] + "\n")' "$PWD"

# A local copy of GPT-2's vocabulary (this repo's CI and prepared workshop machines) seeds
# tiktoken's cache, so the tokenizer never needs the network.
# Skipped once the cache holds both files (get_tokenizer checks their hashes on every load).
if [ -n "${GPT2_TOKENIZER_DIR:-}" ] && [ -f "$GPT2_TOKENIZER_DIR/encoder.json" ] \
   && [ "$(ls .cache/tiktoken 2>/dev/null | wc -l)" -lt 2 ]; then
  "$PY" -c 'import sys; from support.tokenizer_files import install_tokenizer_files; from support.files import DEFAULT_CACHE_DIR; install_tokenizer_files(sys.argv[1], DEFAULT_CACHE_DIR / "tiktoken")' \
    "$GPT2_TOKENIZER_DIR"
fi
echo "setup: ready ($("$PY" -c 'import importlib.metadata as m; print("torch", m.version("torch"))'))"
