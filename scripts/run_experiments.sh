#!/usr/bin/env bash
# Baseline, Gray and LNTL at one colour variance, then the test phase of each; the
# epoch lines go to results/experiments_var<VAR>.log and each test result is copied
# to results/<exp_name>.json as soon as it exists, so a stopped run keeps what it did.
#
#   bash scripts/run_experiments.sh 0.020          # EPOCHS=10 by default
#   EPOCHS=100 bash scripts/run_experiments.sh 0.050
#
# A run already finished is skipped by main.py itself: it resumes at max_epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${1:-0.020}
EPOCHS=${EPOCHS:-10}
LOG=results/experiments_var${VAR}.log
mkdir -p results
export TQDM_DISABLE=1  # one line per epoch in the log, no progress bars

run() {  # run <exp_name> <flags...>: train, test, keep the result
    local name=$1; shift
    echo "== $name: $*" | tee -a "$LOG"
    python main.py --phase=train --color_var="$VAR" --exp_name="$name" "$@" | tee -a "$LOG"
    python main.py --phase=test --color_var="$VAR" --exp_name="$name" "$@" | tee -a "$LOG"
    cp "checkpoints/$name/test_results.json" "results/$name.json"
}

run "baseline_var$VAR" --method=baseline --max_epoch="$EPOCHS"
run "gray_var$VAR" --method=gray --max_epoch="$EPOCHS"
# Unlearning starts from the trained baseline, with the published hyper-parameters.
run "lntl_var$VAR" --method=lntl --max_epoch="$EPOCHS" \
    --init_checkpoint="checkpoints/baseline_var$VAR"
