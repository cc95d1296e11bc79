#!/usr/bin/env bash
# The training benchmarks a session with a GPU runs side by side on it (CI has none), both as rows of
# benchmarks/table.py: issue 6's compact students against yolov3-tiny for the same training time (--equal-time, step
# rates timed on the GPU), and issue 9's distillation into YOLO Nano on a longer schedule than the CPU allows (the
# nano and kd-nano rows from a given teacher, over SEEDS seeds).
#
#   bash benchmarks/gpu_bench.sh OUT TEACHER.pt [SECONDS]
#
# OUT gets env.txt, compact.log, kd.log and results.tar.gz (the tables, every run's results.csv, metrics and args).
# TEACHER.pt: a yolov3-tiny trained on the shapes set at 256 px (the table's tiny row). SECONDS bounds the whole
# script (default 480): every job is stopped then and what it finished is packed; a rerun continues the runs.
# Environment: DEV (default 0), TINY_EPOCHS (30), KD_EPOCHS (20), SEEDS (2: seeds 0 and 1), WORKERS (3), STUDENTS
# (NAME=CFG of the compact students), SMALL (extra table flags for both, e.g. "--n-train 32 --n-val 16 --img-size 64"
# to try the script on a CPU with DEV=cpu).
set -u
DEV=${DEV:-0}; TINY_EPOCHS=${TINY_EPOCHS:-30}; KD_EPOCHS=${KD_EPOCHS:-20}; SEEDS=${SEEDS:-2}; WORKERS=${WORKERS:-3}
STUDENTS=${STUDENTS:-nano=cfg/yolo-nano.cfg mnv3=cfg/mobilenetv3-yolo.cfg mobile=cfg/yolov3-mobile.cfg}
SMALL=${SMALL:-}
OUT=$1; TEACHER=$2; END=$(( $(date +%s) + ${3:-480} ))
left() { echo $(( END - $(date +%s) > 5 ? END - $(date +%s) : 5 )); }
R=runs/gpu_bench; mkdir -p "$OUT" $R
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'tv', torchvision.__version__)"
} >"$OUT/env.txt" 2>&1
T="python3 benchmarks/table.py --data data/shapes.data --big-cfg cfg/yolov3-tiny.cfg --device $DEV --workers $WORKERS"

# issue 6: tiny for TINY_EPOCHS, each compact student (params/compact.yaml) for the epochs of tiny's time on the GPU
names=(); students=(); for s in $STUDENTS; do names+=("${s%%=*}"); students+=(--student "$s"); done
timeout "$(left)" $T --seeds 1 --epochs "$TINY_EPOCHS" --equal-time "${students[@]}" --compose-student "${names[0]}" \
  --rows tiny "${names[@]}" --jobs 4 $SMALL --out $R/compact >"$OUT/compact.log" 2>&1 &

# issue 9: Nano alone and distilled (the default pair) from TEACHER, its own recipe, seeds 0 .. SEEDS-1 side by side
timeout "$(left)" $T --seeds "$SEEDS" --epochs "$KD_EPOCHS" --teacher-weights "$TEACHER" --student nano=cfg/yolo-nano.cfg \
  --compose-student nano --student-hyp "" --extra-args "--optimizer adam --lr0 0.001 --grad-clip 0 --autoanchor" \
  --rows nano kd-nano --jobs 4 $SMALL --out $R/kd >"$OUT/kd.log" 2>&1 &
wait
tar czf "$OUT/results.tar.gz" $(find $R -name 'table.md' -o -name 'table.json' -o -name 'seeds.csv' \
  -o -name 'rates.json' -o -name 'metrics.json' -o -name 'results.csv' -o -name 'args.yaml' -o -name '*.log') 2>/dev/null
echo "done at $(date +%T), $(( END - $(date +%s) )) s before the deadline" >>"$OUT/env.txt"
