#!/usr/bin/env bash
# The GPU verification in one command (bench/README.md): S9 spec (seeds 1, 2, 3), S9 prescaled-residual, S10, S8
# and S7 at full length on CIFAR-10 (JPEG copy), then one summary (summary.json, summary.md) under $OUT.
#
#   OUT=/path bash bench/gpu_check.sh DATA.tar.gz [WHEELS_DIR]   # on a GPU machine (wheels: bench/gpu_wheels.sh)
#   OUT=/path bash bench/gpu_check.sh --smoke                    # the same steps on the CPU, synthetic data, ~1 min
#
# The four S9 runs share the GPU as parallel processes (a 25,680-parameter step leaves it mostly idle);
# S10, S8 and S7 then run one after the other. Exit status: 0 when every run finished, 1 otherwise.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the runs and the summary}
mkdir -p "$OUT/runs"
export NO_ALBUMENTATIONS_UPDATE=1 TQDM_DISABLE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = "--smoke" ]; then
  DATA="$OUT/synthetic"
  python3 -c "import sys; sys.path.insert(0, 'tests'); from synthetic import colour_task, write_batches; from pathlib import Path; write_batches(Path(sys.argv[1]), colour_task(256, 128))" "$DATA" || exit 1
  COMMON=(--data-dir "$DATA" --device cpu --subset 128 --epochs 1 --batch-size 32 --lr 0.003)
  export OMP_NUM_THREADS=1  # four runs at once on a small CPU
else
  [ -f "${1:-}" ] || { echo "usage: OUT=DIR bash bench/gpu_check.sh DATA.tar.gz [WHEELS_DIR] | --smoke" >&2; exit 1; }
  WHEELS=${2:-.whl}
  if [ -d "$WHEELS" ]; then  # the packages the bare GPU machine lacks, from wheels made by bench/gpu_wheels.sh
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  DATA=/tmp/cifar10-jpeg
  mkdir -p "$DATA" && tar xzf "$1" -C "$DATA" || exit 1
  COMMON=(--data-dir "$DATA" --device cuda)
fi

run() {  # run NAME ARGS...: one run into $OUT/runs/NAME, its output in NAME.txt
  local name=$1; shift
  python3 -m assignments "$@" "${COMMON[@]}" --out "$OUT/runs/$name" > "$OUT/runs/$name.txt" 2>&1
  echo "$name: exit $?" | tee -a "$OUT/exits.txt"
}

start=$(date +%s)
run S9-spec-seed1 S9 --seed 1 & run S9-spec-seed2 S9 --seed 2 & run S9-spec-seed3 S9 --seed 3 &
run S9-prescaled-residual S9 --variant prescaled-residual &
wait
run S10 S10
run S8 S8
run S7 S7
echo "all runs: $(( $(date +%s) - start )) s" | tee -a "$OUT/exits.txt"
python3 bench/gpu_summary.py "$OUT/runs" "$OUT" || exit 1
! grep -q "exit [^0]" "$OUT/exits.txt"
