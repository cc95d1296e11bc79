#!/usr/bin/env bash
# Download COCO 2017 (train 118k + val 5k images, ~20 GB) from cocodataset.org and convert it to YOLO labels.
# usage: bash data/get_coco2017.sh [DEST]   (default data/coco; writes DEST/coco.data)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/coco}"
raw="$dest/raw"
mkdir -p "$raw"
cd "$raw"
for url in http://images.cocodataset.org/annotations/annotations_trainval2017.zip \
           http://images.cocodataset.org/zips/val2017.zip \
           http://images.cocodataset.org/zips/train2017.zip; do
  f="$(basename "$url")"
  [ -f "$f.done" ] && continue
  curl -L --fail --retry 3 -C - -o "$f" "$url"
  unzip -q -o "$f" && touch "$f.done" && rm -f "$f"
done
for split in train2017 val2017; do
  python3 "$here/coco2yolo.py" --annotations "$raw/annotations/instances_$split.json" \
      --images "$raw/$split" --out "$dest" --split "$split"
done
echo "done: $dest/coco.data"
