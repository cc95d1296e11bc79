#!/usr/bin/env bash
# The training benchmarks a session with a GPU runs side by side on it (CI has none): issue 6's compact cfgs against
# yolov3-tiny for the same time budget (bench_compact.py, rates timed on the GPU), and issue 9's distillation into
# YOLO Nano on a longer schedule than the CPU allows (bench_kd.py, alone vs one feature pair, two seeds).
#
#   bash benchmarks/gpu_bench.sh OUT TEACHER.pt [SECONDS]
#
# OUT gets env.txt, compact.log, kd_*.log and results.tar.gz (every run's results.csv, results.md/json, args).
# TEACHER.pt: a yolov3-tiny trained on the shapes set at 256 px (benchmarks/bench_kd.py's teacher). SECONDS bounds
# the whole script (default 480): every job is stopped then and what it finished is packed.
# Environment: DEV (default 0), TINY_EPOCHS (30), KD_EPOCHS (20), SEEDS ("0 1"), WORKERS (3), CFGS (the hard-swish
# and ReLU compact cfgs), SMALL (extra flags for both benchmarks, e.g. "--n-train 32 --n-val 16 --img-size 64" to
# try the script on a CPU with DEV=cpu).
set -u
DEV=${DEV:-0}; TINY_EPOCHS=${TINY_EPOCHS:-30}; KD_EPOCHS=${KD_EPOCHS:-20}; SEEDS=${SEEDS:-0 1}; WORKERS=${WORKERS:-3}
CFGS=${CFGS:-cfg/yolo-nano.cfg,cfg/mobilenetv3-yolo.cfg,cfg/yolov3-mobile.cfg}; SMALL=${SMALL:-}
OUT=$1; TEACHER=$2; END=$(( $(date +%s) + ${3:-480} ))
left() { echo $(( END - $(date +%s) > 5 ? END - $(date +%s) : 5 )); }
R=runs/gpu_bench; mkdir -p "$OUT" $R
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'tv', torchvision.__version__)"
} >"$OUT/env.txt" 2>&1
[ -z "$SMALL" ] && python3 -c "from utils.datasets import parse_data_cfg; parse_data_cfg('data/shapes.data')" >>"$OUT/env.txt" 2>&1

# issue 6: tiny for TINY_EPOCHS, each compact cfg (params/compact.yaml) for the epochs its GPU step rate buys
timeout "$(left)" python3 benchmarks/bench_compact.py --cfgs "$CFGS" --compact-args "--params params/compact.yaml" \
  --epochs "$TINY_EPOCHS" --device "$DEV" --jobs 4 --workers "$WORKERS" --rate-steps 8 $SMALL \
  --out $R/compact >"$OUT/compact.log" 2>&1 &

# issue 9: Nano alone and distilled (one pair), each its own process so that they run side by side
S="--optimizer adam --lr0 0.001 --grad-clip 0 --autoanchor"
for seed in $SEEDS; do
  for v in alone kd1; do
    timeout "$(left)" python3 benchmarks/bench_kd.py --teacher-weights "$TEACHER" --student-cfg cfg/yolo-nano.cfg \
      --epochs "$KD_EPOCHS" --variants $v --student-args "$S" --seed "$seed" --device "$DEV" --workers "$WORKERS" \
      $SMALL --out $R/kd_s${seed}_$v >"$OUT/kd_s${seed}_$v.log" 2>&1 &
  done
done
wait
tar czf "$OUT/results.tar.gz" $(find $R -name 'results.md' -o -name 'results.json' -o -name 'metrics.json' \
  -o -name 'results.csv' -o -name 'args.yaml' -o -name '*.log') 2>/dev/null
echo "done at $(date +%T), $(( END - $(date +%s) )) s before the deadline" >>"$OUT/env.txt"
