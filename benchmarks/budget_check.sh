#!/usr/bin/env bash
# The budget check of docs/transfer.md: pretrain every subset of a finished findings study for
# FACTOR x its steps, then fine-tune each frozen run of that study again on the new backbone.
#   bash benchmarks/budget_check.sh [STUDY=study-findings] [OUT=budget-check] [FACTOR=3]
# About 35 min on 2 CPU cores for the findings study at FACTOR=3. Prints each run's test metric.
set -euo pipefail
S=${1:-study-findings}; E=${2:-budget-check}; F=${3:-3}
DS=${DATASCALE:-.venv/bin/datascale}
mkdir -p "$E"
for run in "$S"/runs/pretrain/*/; do
  size=$(basename "$run")
  steps=$(( $(grep -m1 '^    steps:' "$run/config.yaml" | awk '{print $2}') * F ))
  decay=$(( $(grep -m1 'lr_decay_every:' "$run/config.yaml" | awk '{print $2}') * F ))
  "$DS" -q pretrain --config "$run/config.yaml" --set schedule.steps=$steps \
    --set schedule.eval_every=$((steps / 4)) --set schedule.checkpoint_every=$((steps / 4)) \
    --set optim.lr_decay_every=$decay --out "$E/pre-$size-x$F" --force --no-progress
  for ft in "$S"/runs/finetune/*/frozen/"$size"-seed*/; do
    task=$(basename "$(dirname "$(dirname "$ft")")"); seed=$(basename "$ft")
    echo "$task $size x$F $seed:"
    "$DS" -q finetune --config "$ft/config.yaml" --backbone "$E/pre-$size-x$F/backbone.pt" \
      --out "$E/ft-$task-$size-x$F-${seed#"$size"-}" --force | grep '\[original\]'
  done
done
