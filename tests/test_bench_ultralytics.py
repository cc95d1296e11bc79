"""benchmarks/bench_ultralytics.py: its report from finished runs (no training here)."""
import csv
from types import SimpleNamespace

import benchmarks.bench_ultralytics as bench


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_epochs_without_an_evaluation_count_their_time_but_reach_no_threshold(shapes_tiny, tmp_path):
    """train.py's --eval-from leaves the early epochs' mAP empty: they add their seconds, never a threshold."""
    a = SimpleNamespace(epochs=4, img_size=64, batch_size=8, workers=0, seed=0, train_args="")
    write_csv(tmp_path / "train_py" / "results.csv", ["epoch", "seconds", "metrics/map50", "dtype", "memory_format"],
              [[1, 10, "", "fp32", "contiguous"], [2, 10, "", "fp32", "contiguous"],
               [3, 20, 0.55, "fp32", "contiguous"], [4, 20, 0.72, "fp32", "contiguous"]])
    write_csv(tmp_path / "ultralytics" / "results.csv", ["epoch", "  time", "  metrics/mAP50(B)"],
              [[1, 30, 0.1], [2, 60, 0.52], [3, 90, 0.6], [4, 120, 0.71]])  # cumulative seconds, padded names
    ours, theirs = bench.ours(a, shapes_tiny, tmp_path, {}), bench.theirs(a, shapes_tiny, tmp_path, {})
    assert bench.first_reaching(ours["epochs"], 0.50) == (40.0, 3)
    assert bench.first_reaching(ours["epochs"], 0.70) == (60.0, 4)
    assert bench.first_reaching(theirs["epochs"], 0.50) == (60.0, 2)
    assert bench.first_reaching(ours["epochs"], 0.8) is None
    assert ours["img_per_s"] == 16 * 4 / 60 and theirs["img_per_s"] == 16 * 4 / 120  # 16 training images
    text = bench.table({"train.py": ours, "ultralytics": theirs}, a, shapes_tiny)
    assert "| train.py | fp32 contiguous | 1.1 | 0.7 min (epoch 3) | 1.0 min (epoch 4) | 0.720 | 1.0 min |" in text
    assert "| ultralytics | fp32 (ultralytics on a CPU) | 0.5 | 1.0 min (epoch 2) | 2.0 min (epoch 4) | 0.710 |" in text
