#!/usr/bin/env bash
# The per-part weight study's runs (README.md here): AGENT (default cmaes) at LEVEL (default
# param) over the TIES space with weight parts PARTS (default [self_attn,mlp]; [] = one weight
# per expert), the main job's budget, on each zoo v5 seed's cached build.
#   [AGENT=moead LEVEL=both PARTS='[]'] bash results/per_part_weights/run_all.sh OUT_DIR \
#       [ZOO_SEEDS] [SEARCH_SEEDS]
# Runs are named <agent>_parts_z<Z>_s<S> (level param, parts [self_attn,mlp], the first arms)
# or <agent>_<level>_<parts|expert>_z<Z>_s<S>. Two runs at a time, one torch thread each; a
# run with a summary.json is skipped, a folder without one (killed) is removed and run again.
set -u
out=${1:?OUT_DIR}
zoos=${2:-"0 1 2 3 4 5"}
seeds=${3:-"100 101 102 103 104"}
py=${PYTHON:-.venv/bin/python}
agent=${AGENT:-cmaes}
level=${LEVEL:-param}
parts=${PARTS:-[self_attn,mlp]}
if [ "$level" = param ] && [ "$parts" = "[self_attn,mlp]" ]; then
  name=${agent}_parts
else
  name=${agent}_${level}_$([ "$parts" = "[]" ] && echo expert || echo parts)
fi
one() {
  local z=$1 s=$2 d="$out/${name}_z$1_s$2"
  [ -f "$d/summary.json" ] && return 0
  rm -rf "$d"
  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 "$py" -m experiments.run logger=none agent="$agent" \
    agent.level="$level" agent.progress=false "env.weight_parts=$parts" \
    pool.seed="$z" seed="$s" run_dir="$d" > "$d.log" 2>&1 || echo "failed: $d (see $d.log)"
}
mkdir -p "$out"
jobs_=()
for z in $zoos; do for s in $seeds; do jobs_+=("$z $s"); done; done
for ((i = 0; i < ${#jobs_[@]}; i += 2)); do
  one ${jobs_[i]} &
  [ $((i + 1)) -lt ${#jobs_[@]} ] && one ${jobs_[i + 1]} &
  wait
done
