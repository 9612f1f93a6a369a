#!/usr/bin/env bash
# The few-shot stress suite (docs/evosam-stress.md): every spec in experiments/stress/ (4 real streams x 3, 5 and
# 10 training images per site; 3 seeds x 2 orders; all nine presets) plus the quickstart, each into
# results/stress/<experiment>/, resumable (a finished cell is not run again), then one comparison table:
# results/stress/stress.md (and .csv), the same tables docs/evosam-stress.md quotes.
#
#   scripts/stress.sh                 # everything (many hours on a 2-core CPU; see docs/evosam-stress.md)
#   scripts/stress.sh prostate-n3     # only the specs whose file name contains this
#   EVOSAM_BIN=target/release/evosam scripts/stress.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${EVOSAM_BIN:-target/release/evosam}"
[ -x "$bin" ] || cargo build --release --locked
out="${EVOSAM_STRESS_OUT:-results/stress}"
filter="${1:-}"
specs=(experiments/stress/*.toml)
if [ -z "$filter" ] || [[ quickstart == *"$filter"* ]]; then
    specs+=(experiments/quickstart.toml)
fi
for spec in "${specs[@]}"; do
    [ -n "$filter" ] && [[ "$spec" != *"$filter"* ]] && continue
    echo "== $spec"
    # --resume continues a killed run and is refused for a spec whose content changed since
    name="$(sed -n 's/^name = "\(.*\)"/\1/p' "$spec" | head -1)"
    if [ -d "$out/$name" ]; then
        "$bin" run "$spec" --out "$out" --resume --quiet
    else
        "$bin" run "$spec" --out "$out" --quiet
    fi
done
python3 scripts/stress_table.py "$out"
