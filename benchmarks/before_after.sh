#!/bin/bash
# A refactor changes no behaviour: the same short train, LTH, KD, CS and GAN-KD runs from a git revision (default HEAD)
# and from the working tree must write the same results.csv / rounds.csv, timings aside.
#   bash benchmarks/before_after.sh [REV] [OUT]      (a few minutes on 2 CPU cores)
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
REV="${1:-HEAD}"
OUT="${2:-/tmp/before_after}"
PY="${PYTHON:-$HERE/.venv/bin/python}"
rm -rf "$OUT"; mkdir -p "$OUT"
git -C "$HERE" worktree add --detach "$OUT/before-tree" "$REV" >/dev/null
trap 'git -C "$HERE" worktree remove --force "$OUT/before-tree"' EXIT
(cd "$HERE" && "$PY" -c "from utils.shapes import make_shapes; make_shapes('$OUT/data', n_train=16, n_val=8, \
    img_size=128, seed=0)" >/dev/null)
C="--cfg cfg/yolov3-tiny.cfg --img-size 64 --batch-size 8 --workers 0 --deterministic --data $OUT/data/shapes.data"
C="$C --eval-from 1 --memory-format contiguous"
for side in before after; do
  dir="$OUT/$side"; mkdir -p "$dir"
  if [ "$side" = after ]; then cd "$HERE"; else cd "$OUT/before-tree"; fi
  "$PY" train.py $C --epochs 2 --project "$dir" --name train > "$dir/train.log" 2>&1
  "$PY" prune.py --lth $C --epochs 2 --rounds 1 --project "$dir" --name lth > "$dir/lth.log" 2>&1
  "$PY" my_kd.py $C --epochs 2 --teacher-weights "$dir/train/weights/best.pt" --project "$dir" --name kd \
      > "$dir/kd.log" 2>&1
  "$PY" prune.py --cs $C --epochs 2 --rounds 1 --ticket-epochs 2 --rewind-epoch 1 --project "$dir" --name cs \
      > "$dir/cs.log" 2>&1
  "$PY" my_kd_gan.py $C --epochs 2 --teacher-weights "$dir/train/weights/best.pt" --project "$dir" --name gan \
      > "$dir/gan.log" 2>&1
done
"$PY" - "$OUT" <<'PY'
import csv, sys
out, same = sys.argv[1], True
for f in ("train/results.csv", "lth/round_1/results.csv", "kd/results.csv", "lth/rounds.csv",
          "cs/round_0/results.csv", "cs/round_1/results.csv", "cs/rounds.csv", "gan/results.csv"):
    a, b = ([r for r in csv.DictReader(open(f"{out}/{side}/{f}"))] for side in ("before", "after"))
    skip = {"seconds", "img_per_s", "wall_s"}
    diff = [(i, k, x[k], y.get(k)) for i, (x, y) in enumerate(zip(a, b)) for k in x if k not in skip and x[k] != y.get(k)]
    same &= not diff and len(a) == len(b)
    print(f"{f}: {len(a)} / {len(b)} rows, {'identical' if not diff else f'differences: {diff[:4]}'}")
sys.exit(0 if same else 1)
PY
