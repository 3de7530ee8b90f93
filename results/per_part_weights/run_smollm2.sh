#!/usr/bin/env bash
# The per-part weight study's SmolLM2 arm (README.md here): the main job (PPO, both levels) on
# SmolLM2 pool v4 seed 0 (this host's cached build), per-part ([self_attn,mlp]) and per-expert
# ([]) weights, budget 50 (the earlier SmolLM2 main-job runs'), each search seed.
#   bash results/per_part_weights/run_smollm2.sh OUT_DIR [SEARCH_SEEDS]
# Runs are named ppo_smollm2_<parts|expert>_s<S>; two at a time, one torch thread each; a run
# with a summary.json is skipped, a folder without one (killed) is removed and run again.
set -u
out=${1:?OUT_DIR}
seeds=${2:-"100 101"}
py=${PYTHON:-.venv/bin/python}
one() {
  local parts=$1 s=$2 d
  d="$out/ppo_smollm2_$([ "$parts" = "[]" ] && echo expert || echo parts)_s$s"
  [ -f "$d/summary.json" ] && return 0
  rm -rf "$d"
  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 "$py" -m experiments.run logger=none pool=smollm2 \
    pool.seed=0 budget=50 agent=ppo agent.progress=false "env.weight_parts=$parts" seed="$s" \
    run_dir="$d" > "$d.log" 2>&1 || echo "failed: $d (see $d.log)"
}
mkdir -p "$out"
for s in $seeds; do
  one "[self_attn,mlp]" "$s" &
  one "[]" "$s" &
  wait
done
