#!/usr/bin/env bash
# The results table's runs on a lent GPU (issue 29), in one device call: benchmarks/table.py with JOBS runs side by
# side on the GPU until SECONDS, then what finished is recorded and packed without its checkpoints, so that the CPU
# session adds the figures to its ledger and times the shipped artefacts there (latency is a CPU column).
#
#   bash benchmarks/gpu_table.sh OUT [SECONDS] -- TABLE FLAGS...
#   e.g. bash benchmarks/gpu_table.sh $OUT 500 -- --data data/shapes.data --seeds 3 --big-cfg cfg/yolov3-tiny.cfg \
#            --epochs 60 --cs-epochs 20 --lth-rounds 5 --prune-rate 0.45 --rows tiny lth-local lth-global cs1
#
# The table starts from docs/results/ledger_<stem>.json: runs it records are not trained again. OUT gets env.txt,
# table.log, ledger.json (the ledger with this call's runs added), runs.tar.gz (every finished run folder without its
# .pt files) and artefacts.tar.gz (their shipped export/*.sparse.pt). Back on the CPU:
#   tar -xzf runs.tar.gz -C runs/table && tar -xzf artefacts.tar.gz -C runs/table
#   cp ledger.json docs/results/ledger_<stem>.json
#   python benchmarks/table.py TABLE FLAGS... --collect-only --latency --ledger docs/results/ledger_<stem>.json
# Environment: DEV (default 0), JOBS (runs at once, default 4), SMALL (more table flags, e.g. "--epochs 1 --img-size
# 64" to try the script on a CPU with DEV=cpu).
set -u
OUT=$1; LIMIT=${2:-500}; shift 2; [ "${1:-}" = "--" ] && shift
DEV=${DEV:-0}; JOBS=${JOBS:-4}; SMALL=${SMALL:-}
END=$(( $(date +%s) + LIMIT ))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >"$OUT/env.txt" 2>&1

STEM=$(python3 - "$@" <<'PY'
import sys
from pathlib import Path
args = sys.argv[1:]
print(Path(args[args.index("--data") + 1]).stem)
PY
)
LEDGER=docs/results/ledger_$STEM.json
[ -f "$LEDGER" ] && cp "$LEDGER" "$OUT/ledger.json"
DEVICES=$(python3 -c "print(','.join(['$DEV'] * $JOBS))")
R=runs/gpu_table
# the runs, stopped 40 s before the end so that the collection and the packing fit
timeout $(( END - $(date +%s) - 40 )) python3 benchmarks/table.py "$@" $SMALL --device "$DEVICES" --jobs "$JOBS" \
  --out $R --ledger "$OUT/ledger.json" >"$OUT/table.log" 2>&1
echo "table: exit $?" >>"$OUT/table.log"
# a stopped table has not written its ledger: collect what finished (no run is started)
python3 benchmarks/table.py "$@" $SMALL --out $R --ledger "$OUT/ledger.json" --collect-only >>"$OUT/table.log" 2>&1
# the figures (every finished run folder without its .pt files) and, apart, the shipped artefacts (export/*.sparse.pt,
# for the CPU's latency column): if the second is too big to come back, the first still does
(cd $R && find . -name table_done.json -printf '%h\n' | while read -r d; do find "$d" -type f ! -name '*.pt'; done) \
  | tar -czf "$OUT/runs.tar.gz" -C $R -T -
(cd $R && find . -path '*/export/*.sparse.pt') | tar -czf "$OUT/artefacts.tar.gz" -C $R -T -
echo "packed $(tar -tzf "$OUT/runs.tar.gz" | wc -l) files and $(tar -tzf "$OUT/artefacts.tar.gz" | wc -l) artefacts" \
  "of $(find $R -name table_done.json | wc -l) finished runs" >>"$OUT/table.log"
