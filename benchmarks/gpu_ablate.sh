#!/usr/bin/env bash
# The compact-model ablation sweep of docs/models.md ("Ablations on a GPU"): YOLO Nano and YOLOv3-Mobile trained
# with params/compact.yaml and one change each, all side by side on one GPU (each run one thread, one loader worker).
#
#   bash benchmarks/gpu_ablate.sh OUT [SECONDS] [SET]
#
# SET 1 (default): architecture and initialisation (18 runs, ~330 s on an H100 with 16 cores); SET 2: class gain
# and batch size (8 runs). SECONDS (default 460) bounds the whole script; a run still going then is stopped, and its
# finished epochs are in its results.csv. OUT gets env.txt and results.tar.gz (every run's results.csv, args.yaml
# and a log without progress bars). Environment: DEV (default 0), E (the compact runs' epochs, 7: their CPU budget
# in the table's --equal-time), EL (the long runs', 21), EM (MobileNetV3-YOLO's, 10), ET (yolov3-tiny's, 30), SMALL (extra
# train.py flags for every run, e.g. "--img-size 64" to try the script on a CPU with DEV=cpu E=1 ...).
set -u
OUT=$1; END=$(( $(date +%s) + ${2:-460} )); SET=${3:-1}
DEV=${DEV:-0}; SMALL=${SMALL:-}; E=${E:-7}; EL=${EL:-21}; EM=${EM:-10}; ET=${ET:-30}
left() { echo $(( END - $(date +%s) > 5 ? END - $(date +%s) : 5 )); }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
R=runs/gpu_ablate$SET; mkdir -p "$OUT" $R
{ nvidia-smi --query-gpu=name,memory.total --format=csv; date
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } >"$OUT/env.txt" 2>&1
python3 -c "from utils.datasets import parse_data_cfg; parse_data_cfg('data/shapes.data')" >>"$OUT/env.txt" 2>&1

# run NAME "ABLATION FLAGS" TRAIN.PY FLAGS...
run() {
  local name=$1 changes=$2; shift 2
  timeout "$(left)" python3 benchmarks/ablate_compact.py $changes -- --device "$DEV" --workers 1 --project $R \
    --name "$name" --exist-ok $SMALL "$@" >"$R/$name.log" 2>&1 &
}
C="--params params/compact.yaml"; N="$C --cfg cfg/yolo-nano.cfg"; M="$C --cfg cfg/yolov3-mobile.cfg"
if [ "$SET" = 1 ]; then
  run n_base "" $N --epochs $E
  run n_actout --act-out $N --epochs $E
  run n_nozg "--residual-gamma 1" $N --epochs $E
  run n_nose --no-se $N --epochs $E
  run n_wd0 "" $N --epochs $E --weight-decay 0
  run n_leaky "" $C --cfg cfg/yolo-nano_leaky.cfg --epochs $E
  run n_warm05 "" $N --epochs $E --warmup-epochs 0.5
  run n_actout_nozg "--act-out --residual-gamma 1" $N --epochs $E
  run n_long "" $N --epochs $EL
  run n_actout_long --act-out $N --epochs $EL
  run m_base "" $M --epochs $E
  run m_actout --act-out $M --epochs $E
  run m_nozg "--residual-gamma 1" $M --epochs $E
  run m_nose --no-se $M --epochs $E
  run m_leaky "" $C --cfg cfg/yolov3-mobile_leaky.cfg --epochs $E
  run m_wd0 "" $M --epochs $E --weight-decay 0
  run mnv3_base "" $C --cfg cfg/mobilenetv3-yolo.cfg --epochs $EM
  run tiny_default "" --cfg cfg/yolov3-tiny.cfg --epochs $ET
else
  run n_cls4 "" $N --epochs $E --cls 4.0
  run n_cls8 "" $N --epochs $E --cls 8.0
  run n_bs8 "" $N --epochs $E --batch-size 8 --nominal-batch-size 8
  run n_cls8_bs8 "" $N --epochs $E --cls 8.0 --batch-size 8 --nominal-batch-size 8
  run m_cls4 "" $M --epochs $E --cls 4.0
  run m_cls8 "" $M --epochs $E --cls 8.0
  run m_bs8 "" $M --epochs $E --batch-size 8 --nominal-batch-size 8
  run mnv3_cls8 "" $C --cfg cfg/mobilenetv3-yolo.cfg --epochs $EM --cls 8.0
fi
wait
date >>"$OUT/env.txt"
for f in $R/*.log; do tr '\r' '\n' <"$f" | grep -v "it/s\|s/it\|^val:" >"${f%.log}.txt"; done
tar czf "$OUT/results.tar.gz" $R/*/results.csv $R/*/args.yaml $R/*.txt 2>/dev/null
