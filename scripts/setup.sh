#!/usr/bin/env bash
# Creates .venv (if missing) and installs what the series needs. Safe to run again: it skips
# the installs while the requirement files are unchanged.
#   scripts/setup.sh          notebooks and finetune.py
#   scripts/setup.sh --test   plus the test-only packages
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: needs Python 3.10 or newer; found: $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

files="requirements.txt"
[ $want_test = 1 ] && files="$files requirements-test.txt"
stamp="$VENV/.installed-$(cat $files | "$PY" -c 'import hashlib,sys; print(hashlib.sha1(sys.stdin.buffer.read()).hexdigest()[:12])')"
if [ ! -f "$stamp" ]; then
  if ! "$PY" -c 'import torch' 2>/dev/null; then
    if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
      # No NVIDIA GPU: the CPU build is ~200 MB instead of several GB of CUDA libraries.
      cpu_index=https://download.pytorch.org/whl/cpu
      if "$PY" -c "import urllib.request as u; u.urlopen('$cpu_index/', timeout=5)" 2>/dev/null; then
        echo "setup: installing PyTorch (CPU build, from $cpu_index)"
        "$PY" -m pip install --quiet torch --index-url "$cpu_index"
      else
        # PyTorch's own index is out of reach: take the pinned release from the configured
        # index (machines prepared for this course keep its CPU build in their wheel folder).
        echo "setup: installing PyTorch 2.13.0"
        "$PY" -m pip install --quiet "torch==2.13.0"
      fi
    fi
  fi
  echo "setup: installing $files"
  for f in $files; do "$PY" -m pip install --quiet -r "$f"; done
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# Lets `import utils` work from notebooks/ and scripts/ inside this venv.
"$PY" -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'instruction-finetuning-course.pth').write_text('$PWD\n')"

# A local copy of GPT-2's vocabulary (this repo's CI and prepared workshop machines) seeds
# tiktoken's cache, so the tokenizer never needs the network.
if [ -n "${GPT2_TOKENIZER_DIR:-}" ] && [ -f "$GPT2_TOKENIZER_DIR/encoder.json" ]; then
  "$PY" -c "import utils; utils.install_tokenizer_files('$GPT2_TOKENIZER_DIR', utils.DEFAULT_CACHE_DIR / 'tiktoken')"
fi
echo "setup: ready ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
