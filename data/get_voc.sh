#!/usr/bin/env bash
# Download Pascal VOC 2007 (trainval + test) and 2012 (trainval), ~3.6 GB, from the Oxford VOC server, and convert
# them to YOLO labels: train = VOC2007 trainval + VOC2012 train (10,728 images), valid (model selection) = VOC2012
# val (5,823), test (scored once: test.py --split test) = VOC2007 test (4,952).
# usage: bash data/get_voc.sh [DEST] [--keep-difficult]   (default data/voc; writes DEST/voc.data)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/voc}"
shift || true
raw="$dest/raw"
mkdir -p "$raw"
cd "$raw"
for url in http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar \
           http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar \
           http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar; do
  f="$(basename "$url")"
  [ -f "$f.done" ] && continue
  curl -L --fail --retry 3 -C - -o "$f" "$url"
  tar -xf "$f" && touch "$f.done" && rm -f "$f"
done
python3 "$here/voc2yolo.py" --voc-root "$raw/VOCdevkit" --out "$dest" "$@"
echo "done: $dest/voc.data"
