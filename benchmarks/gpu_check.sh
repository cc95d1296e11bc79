#!/usr/bin/env bash
# What a session with a GPU checks, in one go (CI has no GPU): the CUDA paths of every entry script (fp16 autocast
# with GradScaler, the GAN's second scaler), GPU inference speed, and distillation seeds on the GPU.
#
#   bash benchmarks/gpu_check.sh OUT TEACHER.pt [SECONDS]
#
# OUT gets env.txt, inference.log, smoke.log, kd.log, kd.tar.gz (results of the KD seeds) and pytest.log.
# TEACHER.pt: a yolov3-tiny trained on the shapes set at 256 px (the table's tiny row). SECONDS bounds the
# whole script (default 520): each step gets what is left, the test suite runs last with the remainder.
# Steps 2 and 3 run side by side (the smoke runs are small; the KD runs are not timed).
# DEV, DATA and VAL (environment) change the device and the smoke runs' data (DEV=cpu DATA=... tries the commands here).
set -u
DEV=${DEV:-0}; DATA=${DATA:-data/shapes.data}; VAL=${VAL:-data/shapes/images/val}
OUT=$1; TEACHER=$2; END=$(( $(date +%s) + ${3:-520} ))
left() { echo $(( END - $(date +%s) > 5 ? END - $(date +%s) : 5 )); }
mkdir -p "$OUT" runs/gpu_check
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'tv', torchvision.__version__)"
} >"$OUT/env.txt" 2>&1
python3 -c "from utils.datasets import parse_data_cfg; parse_data_cfg('data/shapes.data')" >>"$OUT/env.txt" 2>&1

# 1. inference speed, alone on the machine
timeout "$(left)" python3 benchmarks/bench_inference.py --device 0 --batch-sizes 1 32 --img-size 416 \
  --cfgs cfg/yolov3-tiny.cfg cfg/yolov3.cfg cfg/yolo-nano.cfg cfg/mobilenetv3-yolo.cfg cfg/yolov3-mobile.cfg \
  --test-weights "$TEACHER" --json "$OUT/inference.json" >"$OUT/inference.log" 2>&1

# 2. KD seeds (background): Nano alone vs distilled from the teacher (the table's nano and kd-nano rows), seeds 0-2
timeout "$(left)" python3 benchmarks/table.py --data data/shapes.data --big-cfg cfg/yolov3-tiny.cfg --seeds 3 \
  --epochs 8 --teacher-weights "$TEACHER" --student nano=cfg/yolo-nano.cfg --compose-student nano --student-hyp "" \
  --extra-args "--optimizer adam --lr0 0.001 --grad-clip 0 --autoanchor" --rows nano kd-nano --device 0 --workers 4 \
  --jobs 3 --out runs/gpu_check/kd >runs/gpu_check/kd.log 2>&1 &

# 3. smoke: every entry script once on CUDA (shapes, 128 px, an epoch or two)
R=runs/gpu_check/smoke; C="--data $DATA --img-size 128 --batch-size 32 --workers 4 --device $DEV --exist-ok"
step() { echo "== $*"; local t=$(date +%s); timeout "$(left)" python3 "$@" 2>&1 | tail -n 6; echo "-- status ${PIPESTATUS[0]} in $(( $(date +%s) - t )) s"; }
{
  python3 -m pytest -q -p no:cacheprovider tests/test_loss.py -k cuda 2>&1 | tail -n 3
  step train.py --cfg cfg/yolov3-tiny.cfg $C --epochs 2 --project $R --name train
  step prune.py --lth --cfg cfg/yolov3-tiny.cfg $C --epochs 2 --rounds 2 --rewind-epoch 1 --project $R --name lth
  step prune.py --cs --cfg cfg/yolov3-tiny.cfg $C --epochs 2 --ticket-epochs 1 --rounds 2 --rewind-epoch 1 --project $R --name cs
  step my_kd.py --cfg cfg/yolo-nano.cfg --teacher-weights $R/train/weights/best.pt $C --epochs 1 --project $R --name kd
  step my_kd_gan.py --cfg cfg/yolo-nano.cfg --teacher-weights $R/train/weights/best.pt $C --epochs 1 --project $R --name gan
  step my_kd.py --cfg cfg/yolov3-tiny.cfg --weights $R/lth/round_2/weights/best.pt --teacher-weights "$TEACHER" $C --epochs 1 --project $R --name kd_pruned
  step test.py --weights "$TEACHER" --data $DATA --img-size 256 --half --device $DEV --project $R --name test --exist-ok
  step detect.py --weights "$TEACHER" --source "$VAL" --img-size 256 --device $DEV --project $R --name detect --exist-ok
  step export.py --weights $R/lth/round_2/weights/best.pt --include sparse onnx --out $R/export
  find $R -name results.csv | sort | while read -r f; do echo "$f: $(tail -n 1 "$f" | cut -c1-200)"; done
} >"$OUT/smoke.log" 2>&1

wait
cat runs/gpu_check/kd_s*.log >"$OUT/kd.log" 2>&1
tar czf "$OUT/kd.tar.gz" $(find runs/gpu_check -name 'results.md' -o -name 'results.json' -o -name 'metrics.json' \
  -o -name 'results.csv' -o -name 'table.md' -o -name 'seeds.csv' -o -name 'opt.yaml') 2>/dev/null

# 4. the test suite with CUDA visible (tests that do not name a device run on the GPU), with what time is left
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")   # pytest-xdist where installed, else one process
timeout "$(left)" python3 -m pytest -q -p no:cacheprovider $XDIST >"$OUT/pytest.log" 2>&1
echo "pytest status $? (124: out of time)" >>"$OUT/pytest.log"
