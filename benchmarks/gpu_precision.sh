#!/usr/bin/env bash
# Issue 25's checks on a lent GPU (CI has none): --amp auto resolves to fp16 + GradScaler on CUDA and says so,
# torchrun --nproc_per_node 1 with the nccl backend runs train.py and prune.py --lth for an epoch, and the training
# step's throughput in each precision and memory format (bench_train.py) for yolov3-tiny and yolov3.
#
#   bash benchmarks/gpu_precision.sh OUT [SECONDS]
#
# OUT gets env.txt, smoke.log (every command's header and last lines, with its exit status), bench_train.log and
# pytest.log. SECONDS bounds the whole script (default 420). DEV=cpu DATA=... IMG=64 tries it on a CPU (gloo).
set -u
DEV=${DEV:-0}; DATA=${DATA:-data/shapes.data}; IMG=${IMG:-256}
OUT=$1; END=$(( $(date +%s) + ${2:-420} ))
left() { echo $(( END - $(date +%s) > 5 ? END - $(date +%s) : 5 )); }
mkdir -p "$OUT"; R=runs/gpu_precision; rm -rf $R
export PYTHONUNBUFFERED=1 YOLOC_CACHE_DIR=$R/cache
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps .whl/*.whl >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else '-')"
  python3 -c "from utils.datasets import parse_data_cfg; parse_data_cfg('$DATA')"
} >"$OUT/env.txt" 2>&1

C="--data $DATA --img-size $IMG --batch-size 16 --workers 4 --device $DEV --exist-ok --epochs 1"
step() { echo "== $*"; local t=$(date +%s); timeout "$(left)" "$@" 2>&1 | grep -v -E "it/s\]|s/it\]" | tail -n 12
         echo "-- status ${PIPESTATUS[0]} in $(( $(date +%s) - t )) s"; }
TR="torchrun --standalone --nproc_per_node 1"
{
  step python3 train.py $C --project $R --name auto
  step $TR train.py $C --project $R --name ddp
  step $TR prune.py --lth --rounds 1 --rewind-epoch 0 $C --project $R --name lth
  step python3 train.py $C --amp bf16 --project $R --name bf16
  for f in $R/*/results.csv $R/lth/round_*/results.csv; do [ -f "$f" ] && echo "$f: $(tail -n 1 "$f")"; done
  for f in $R/*/args.yaml; do echo "$f: $(grep -E '^(amp|precision_chosen|memory_format_chosen):' "$f" | tr '\n' ' ')"; done
} >"$OUT/smoke.log" 2>&1

{ timeout "$(left)" python3 benchmarks/bench_train.py --device $DEV --img-size $IMG --steps 10
  timeout "$(left)" python3 benchmarks/bench_train.py --device $DEV --cfg cfg/yolov3.cfg --img-size 416 --steps 10
} >"$OUT/bench_train.log" 2>&1

timeout "$(left)" python3 -m pytest -q -p no:cacheprovider tests/test_torch_utils.py tests/test_memory_format.py \
  tests/test_loss.py >"$OUT/pytest.log" 2>&1
echo "pytest status $? (124: out of time)" >>"$OUT/pytest.log"
