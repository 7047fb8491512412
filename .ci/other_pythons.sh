#!/usr/bin/env bash
# The fast tier (python -m pytest -m "not slow") and the Colab-like Run all of every notebook (tests/test_colab.py)
# under each other supported Python this machine has (pyenv's 3.12 and 3.13: Colab's pinned runtime and its
# default), each in a fresh venv with the README's install (gradio, timm and tensorboard in it, as in Colab). An
# interpreter that is missing, or an install the package registry does not answer, is one line and skipped;
# a failing test fails. With COLAB_QUICK_CHECK_DATA set to a CIFAR-10 folder, each Run all is a student's quick
# check on it (SUBSET=2000, EPOCHS=2: tests/test_colab.py).
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for version in 3.12 3.13; do
  # pyenv's interpreter itself (its shim refuses a version that is not selected), else one on PATH
  python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python 2>/dev/null | tail -1)
  [ -n "$python" ] || python=$(command -v "python$version" || true)
  if [ -z "$python" ]; then
    echo "Python $version: not on this machine, skipped"
    continue
  fi
  venv=$(mktemp -d)/venv
  if ! { "$python" -m venv "$venv" && "$venv/bin/pip" install -q -r requirements.txt >"$venv.log" 2>&1; }; then
    echo "Python $version: the install failed, skipped ($(grep -m1 -i error "$venv.log" | cut -c1-200))"
    rm -rf "$(dirname "$venv")"
    continue
  fi
  echo "Python $version ($("$venv/bin/python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')):"
  "$venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider || status=1
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_colab.py -k run_all || status=1
  rm -rf "$(dirname "$venv")"
done
exit $status
