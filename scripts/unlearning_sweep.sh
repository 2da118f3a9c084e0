#!/usr/bin/env bash
# Short LNTL runs from the trained baseline with stronger settings than the published
# ones, to look for a schedule that unlearns the colour. Needs
# checkpoints/baseline_var<VAR> (scripts/run_experiments.sh makes it). Each run's epoch
# lines go to results/unlearning_sweep_var<VAR>.log and its test result to results/.
#
#   EPOCHS=5 bash scripts/unlearning_sweep.sh 0.020
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${1:-0.020}
EPOCHS=${EPOCHS:-5}
LOG=results/unlearning_sweep_var${VAR}.log
export TQDM_DISABLE=1

sweep() {  # sweep <exp_name> <flags...>
    local name=$1; shift
    echo "== $name: $*" | tee -a "$LOG"
    python main.py --phase=train --method=lntl --color_var="$VAR" --exp_name="$name" \
        --max_epoch="$EPOCHS" --init_checkpoint="checkpoints/baseline_var$VAR" "$@" | tee -a "$LOG"
    python main.py --phase=test --method=lntl --color_var="$VAR" --exp_name="$name" "$@" \
        | tee -a "$LOG"
    cp "checkpoints/$name/test_results.json" "results/$name.json"
}

sweep "lntl_grl1_lr0.01_var$VAR" --grl_scale=1.0 --lr=0.01
sweep "lntl_grl1_lr0.01_lambda0.1_var$VAR" --grl_scale=1.0 --lr=0.01 --loss_lambda=0.1
sweep "lntl_grl1_lr0.01_mu2_var$VAR" --grl_scale=1.0 --lr=0.01 --loss_mu=2.0
