#!/usr/bin/env bash
# Download coco128 (the first 128 COCO train2017 images with YOLO labels, ~7 MB) to where data/coco128.data
# expects it: ../shared/data/coco128 beside the checkout. Source: the public GitHub repository
# lightly-ai/coco128_yolo (the layout is rearranged to images/train2017 and labels/train2017).
# usage: bash data/get_coco128.sh [DEST]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/../../shared/data/coco128}"
commit=6d6f7a059ea63efffdbe48aca2d52c04d4c510e9
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
curl -L --fail --retry 3 -o "$tmp/c.zip" "https://github.com/lightly-ai/coco128_yolo/archive/$commit.zip"
unzip -q "$tmp/c.zip" -d "$tmp"
src="$tmp/coco128_yolo-$commit"
mkdir -p "$dest/images" "$dest/labels"
cp -r "$src/images/train2017" "$dest/images/"
cp -r "$src/object_detection/labels/train2017" "$dest/labels/"
python3 -c "import sys; sys.path.insert(0, '$here'); from coco2yolo import COCO80_NAMES; print('\n'.join(COCO80_NAMES))" \
  > "$dest/coco128.names"
# label files without an image would be ignored anyway; count what arrived
echo "done: $(ls "$dest/images/train2017" | wc -l) images, $(ls "$dest/labels/train2017" | wc -l) label files in $dest"
