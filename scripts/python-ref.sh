#!/usr/bin/env bash
# A Python with NumPy, SciPy and nibabel for the reference tests (src/metrics/surface against SciPy's distance
# transform, saved prediction volumes opened with nibabel): a venv under $EVOSAM_HOME/pyref, made once.
# Prints the interpreter's path; exits non-zero (and the tests stay skipped, said so by .ci/run) where it cannot.
set -euo pipefail
home="${EVOSAM_HOME:-$HOME/.cache/evosam}"
venv="$home/pyref"
if ! "$venv/bin/python" -c "import numpy, scipy, nibabel" 2>/dev/null; then
    mkdir -p "$home"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet numpy scipy nibabel >&2
    "$venv/bin/python" -c "import numpy, scipy, nibabel" >&2
fi
echo "$venv/bin/python"
