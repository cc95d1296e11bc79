"""test.py and detect.py: ``evaluate()`` with an oracle model through the real data pipeline, then both scripts run
for real (subprocesses) on a tiny synthetic set, a video, and coco128 when present."""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {0: (0, 0, 255), 1: (0, 255, 0)}  # BGR: class 0 red, class 1 green
SIZES = [(192, 256), (256, 192), (160, 256), (256, 256)]  # (h, w) of the originals: several aspect ratios


# --------------------------------------------------------------------------------------------------- fixtures
def _make_tiny_set(root, n=8):
    """``n`` black images with one or two coloured rectangles on even pixel coordinates, YOLO labels, a .data."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        img = np.zeros((h, w, 3), np.uint8)
        lines = []
        cols = [0, w // 2] if i % 2 else [0]
        for k, x_off in enumerate(cols):
            c = (i + k) % 2
            bw = int(rng.integers(6, w // len(cols) // 4)) * 2  # even sizes and corners: exact after halving
            bh = int(rng.integers(6, h // 4)) * 2
            x1 = x_off + int(rng.integers(0, (w // len(cols) - bw) // 2)) * 2
            y1 = int(rng.integers(0, (h - bh) // 2)) * 2
            img[y1:y1 + bh, x1:x1 + bw] = COLOURS[c]
            lines.append(f"{c} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img)
        (root / "labels" / f"im{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "tiny.names").write_text("red\ngreen\n")
    data = root / "tiny.data"
    data.write_text("classes=2\ntrain=images\nvalid=images\nnames=tiny.names\n")
    return data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return _make_tiny_set(tmp_path_factory.mktemp("tiny"))


class Oracle(nn.Module):
    """Finds the pure red / green rectangles in its input: a perfect detector for the tiny set."""

    nc = 2

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x = x.float()
        out = torch.zeros(x.shape[0], 2, 7)
        for b in range(x.shape[0]):
            r, g, bl = x[b, 0], x[b, 1], x[b, 2]
            for c, mask in enumerate(((r > 0.8) & (g < 0.2) & (bl < 0.2), (g > 0.8) & (r < 0.2) & (bl < 0.2))):
                ys, xs = mask.nonzero(as_tuple=True)
                if len(ys):
                    x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                    out[b, c] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 1.0,
                                              float(c == 0), float(c == 1)])
        return out, []


# ------------------------------------------------------------------------------------- evaluate() in process
def test_evaluate_oracle_is_perfect_and_matches_pycocotools(tiny_data, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from utils.evaluation import evaluate
    from utils.datasets import create_dataloader, parse_data_cfg

    d = parse_data_cfg(tiny_data)
    loader, _ = create_dataloader(d["valid"], 128, 3, 32, rect=True, augment=False, shuffle=False, workers=0,
                                  nc=2, verbose=False)
    model = Oracle().train()
    calls = []

    def fake_loss(p, targets):
        calls.append(len(targets))
        return torch.tensor(0.5), {"box": 0.5, "obj": 1.0, "cls": 0.0}

    m = evaluate(model, loader, names=d["names"], save_json=tmp_path, compute_loss=fake_loss)
    assert model.training, "evaluate() must put the model back in the mode it found"
    assert m["images"] == 8 and m["labels"] == 12
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)  # exact: even-pixel boxes, halved
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)
    assert [r["name"] for r in m["per_class"]] == ["red", "green"]
    assert m["loss"] == {"box": 0.5, "obj": 1.0, "cls": 0.0} and sum(calls) == 12
    for k in ("map", "map50", "map75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100"):
        assert isinstance(m[k], float)
    # pycocotools directly on the two files evaluate() wrote
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "ground_truth.json"))
        E = COCOeval(gt, gt.loadRes(str(tmp_path / "predictions.json")), "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert round(m["map"], 4) == round(float(E.stats[0]), 4)
    # the converted ground truth holds the labels in original pixels
    g = json.loads((tmp_path / "ground_truth.json").read_text())
    im = [i for i in g["images"] if Path(i["file_name"]).name == "im0.png"][0]
    assert (im["height"], im["width"]) == SIZES[0]
    ann = [a for a in g["annotations"] if a["image_id"] == im["id"]][0]
    lab = np.loadtxt(Path(tiny_data).parent / "labels" / "im0.txt").reshape(-1, 5)[0]
    assert ann["bbox"] == pytest.approx([(lab[1] - lab[3] / 2) * 256, (lab[2] - lab[4] / 2) * 192,
                                         lab[3] * 256, lab[4] * 192], abs=1e-2)
    assert ann["area"] == pytest.approx(lab[3] * 256 * lab[4] * 192, rel=1e-3)


def test_ignore_regions_are_neither_hits_nor_false_positives(tiny_data, tmp_path):
    """VOC's difficult objects (data/voc2yolo.py writes them to ``<stem>.ignore.txt``): a detection of one costs
    nothing, where the same object simply dropped from the labels makes the detection a false positive."""
    import shutil

    from utils.datasets import create_dataloader
    from utils.evaluation import evaluate

    root = tmp_path / "set"
    shutil.copytree(Path(tiny_data).parent, root)
    lines = (root / "labels" / "im1.txt").read_text().splitlines()  # im1 holds two objects
    (root / "labels" / "im1.txt").write_text(lines[0] + "\n")
    scores = {}
    for case in ("dropped", "ignored"):
        if case == "ignored":
            (root / "labels" / "im1.ignore.txt").write_text(lines[1] + "\n")
        loader, _ = create_dataloader(str(root / "images"), 128, 3, 32, rect=True, augment=False, shuffle=False,
                                      workers=0, nc=2, verbose=False)
        scores[case] = evaluate(Oracle(), loader, names=["red", "green"], save_json=tmp_path / case)
    assert scores["dropped"]["labels"] == scores["ignored"]["labels"] == 11
    assert scores["dropped"]["precision"] < 1 and scores["dropped"]["map50"] < 1
    assert scores["ignored"]["precision"] == pytest.approx(1.0) and scores["ignored"]["map50"] == pytest.approx(1.0)
    crowd = [a for a in json.loads((tmp_path / "ignored" / "ground_truth.json").read_text())["annotations"]
             if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == int(lines[1].split()[0])


def test_evaluate_in_bf16_restores_memory_format(tiny_data):
    from utils.evaluation import evaluate, is_channels_last
    from utils.datasets import create_dataloader, parse_data_cfg

    d = parse_data_cfg(tiny_data)
    loader, _ = create_dataloader(d["valid"], 128, 4, 32, rect=True, workers=0, nc=2, verbose=False)
    model = Oracle().eval()
    model.conv = nn.Conv2d(3, 4, 3)  # gives the model a kernel whose memory format can be judged
    m = evaluate(model, loader, precision="bf16")
    assert m["map50"] == pytest.approx(1.0)
    assert not model.training and not is_channels_last(model)


def im_paths(data):
    return [str(p) for p in sorted((Path(data).parent / "images").iterdir())]


# ------------------------------------------------------------------------------------------ the scripts, for real
def _run(args, timeout=120, in_process=True):
    """stdout of ``python SCRIPT ARGS``: the script's ``main`` in this process (a subprocess costs a 4-6 s import of
    torch on a 2-core CPU), or with ``in_process=False`` the real command line."""
    if in_process:
        import detect
        import test

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            {"test.py": test, "detect.py": detect}[args[0]].main([str(a) for a in args[1:]])
        return out.getvalue()
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _checkpoint(path, nc, names, img_size):
    models = pytest.importorskip("models")
    from utils.checkpoint import save_checkpoint

    cfg = ROOT / "cfg" / "yolov3-tiny.cfg"
    torch.manual_seed(0)
    model = models.Darknet(str(cfg), nc=nc)
    save_checkpoint({"cfg": cfg.read_text(), "cfg_name": cfg.name, "nc": nc, "names": list(names),
                     "img_size": img_size, "model": model.state_dict(), "epoch": 0, "best_fitness": 0.0,
                     "args": {}}, path)
    return path


def _shapes_data(request, tiny_data):
    """The data engineer's ``shapes_tiny`` fixture when conftest.py has it, else our own tiny set."""
    try:
        return Path(request.getfixturevalue("shapes_tiny"))
    except pytest.FixtureLookupError:
        return Path(tiny_data)


METRIC_KEYS = ("map", "map50", "map75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "precision",
               "recall", "per_class")


@pytest.mark.slow
def test_test_py_and_detect_py_end_to_end(request, tiny_data, tmp_path):
    from utils.datasets import parse_data_cfg

    data = _shapes_data(request, tiny_data)
    d = parse_data_cfg(data)
    ckpt = _checkpoint(tmp_path / "tiny.pt", d["classes"], d["names"], 96)

    # test.py --save-json: metrics.json, predictions.json and ground_truth.json in the run folder
    out = _run(["test.py", "--weights", ckpt, "--data", data, "--img-size", 96, "--batch-size", 4, "--workers", 0,
                "--save-json", "--project", tmp_path / "test", "--name", "val"])
    run = tmp_path / "test" / "val"
    m = json.loads((run / "metrics.json").read_text())
    assert all(k in m for k in METRIC_KEYS) and set(m["speed"]) == {"preprocess", "inference", "nms"}
    assert "AP50" in out and "Speed:" in out
    pred = json.loads((run / "predictions.json").read_text())
    gt = json.loads((run / "ground_truth.json").read_text())
    assert len(gt["images"]) == m["images"] and len(gt["annotations"]) == m["labels"] > 0
    assert pred and set(pred[0]) == {"image_id", "category_id", "bbox", "score"} and len(pred[0]["bbox"]) == 4
    from utils.metrics import coco_evaluate
    assert round(coco_evaluate(run / "ground_truth.json", run / "predictions.json")["map"], 4) == round(m["map"], 4)

    # the same network as Darknet .weights + --cfg gives the same figures
    models = pytest.importorskip("models")
    from utils.checkpoint import load_model
    net, _ = load_model(ckpt)
    models.save_darknet_weights(net, tmp_path / "tiny.weights")
    _run(["test.py", "--cfg", ROOT / "cfg" / "yolov3-tiny.cfg", "--weights", tmp_path / "tiny.weights", "--data", data,
          "--img-size", 96, "--batch-size", 4, "--workers", 0, "--project", tmp_path / "test", "--name", "darknet"])
    m2 = json.loads((tmp_path / "test" / "darknet" / "metrics.json").read_text())
    assert m2["images"] == m["images"] and m2["map50"] == pytest.approx(m["map50"], abs=1e-4)
    assert m2["precision"] == pytest.approx(m["precision"], abs=1e-3)

    # --split test scores the .data file's test= images (here two of them); a file without the line: one line
    test_imgs = tmp_path / "held_out"
    test_imgs.mkdir()
    for p in sorted(Path(d["valid"]).glob("*"))[:2]:
        (test_imgs / p.name).symlink_to(p)
    data_test = Path(data).parent / f"with_test_{tmp_path.name}.data"  # beside it: its paths are relative
    data_test.write_text(Path(data).read_text().rstrip("\n").replace("valid=", f"test={test_imgs}\nvalid=", 1) + "\n")
    _run(["test.py", "--weights", ckpt, "--data", data_test, "--split", "test", "--img-size", 96, "--workers", 0,
          "--project", tmp_path / "test", "--name", "held_out"])
    mt = json.loads((tmp_path / "test" / "held_out" / "metrics.json").read_text())
    assert mt["split"] == "test" and mt["images"] == 2 < m["images"]
    r = subprocess.run([sys.executable, "test.py", "--weights", str(ckpt), "--data", str(data), "--split", "test"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no 'test=' line" in r.stderr and "Traceback" not in r.stderr

    # --task speed, bf16
    out = _run(["test.py", "--weights", ckpt, "--data", data, "--img-size", 96, "--batch-size", 4, "--workers", 0,
                "--task", "speed", "--half", "--project", tmp_path / "test", "--name", "speed"])
    s = json.loads((tmp_path / "test" / "speed" / "metrics.json").read_text())["speed"]
    assert s["inference"] > 0 and "ms inference" in out

    # detect.py on a folder holding images and a video
    src = tmp_path / "src"
    src.mkdir()
    imgs = im_paths(tiny_data)[:3]
    for p in imgs:
        (src / Path(p).name).write_bytes(Path(p).read_bytes())
    vw = cv2.VideoWriter(str(src / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (256, 192))
    for p in imgs:
        vw.write(cv2.resize(cv2.imread(p), (256, 192)))
    vw.release()
    (src / "broken.mp4").write_bytes(b"not a video")  # skipped and counted like the unreadable image (issue 30)
    (src / "broken.jpg").write_bytes(b"not an image")
    out = _run(["detect.py", "--weights", ckpt, "--source", src, "--img-size", 96, "--conf-thres", 0.001,
                "--save-txt", "--project", tmp_path / "detect", "--name", "exp"], in_process=False)  # the real CLI
    assert "6 images" in out and "2 unreadable files skipped" in out
    det = tmp_path / "detect" / "exp"
    for p in imgs:
        out_img = cv2.imread(str(det / Path(p).name))
        assert out_img is not None and out_img.shape == cv2.imread(p).shape
        rows = [line.split() for line in (det / "labels" / f"{Path(p).stem}.txt").read_text().splitlines()]
        assert rows and all(len(r) == 6 for r in rows)
        vals = np.array(rows, dtype=float)
        assert ((vals[:, 1:5] >= 0) & (vals[:, 1:5] <= 1)).all() and (vals[:, 0] < d["classes"]).all()
    cap = cv2.VideoCapture(str(det / "clip.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    assert sorted(f.name for f in (det / "labels").glob("clip_*.txt")) == ["clip_1.txt", "clip_2.txt", "clip_3.txt"]


@pytest.mark.slow
def test_test_py_and_detect_py_on_coco128(coco128, tmp_path):
    names = (coco128 / "coco128.names").read_text().split("\n")
    names = [n for n in names if n.strip()]
    data = tmp_path / "coco128.data"
    data.write_text(f"classes={len(names)}\ntrain={coco128 / 'images' / 'train2017'}\n"
                    f"valid={coco128 / 'images' / 'train2017'}\nnames={coco128 / 'coco128.names'}\n")
    ckpt = _checkpoint(tmp_path / "coco.pt", len(names), names, 128)
    _run(["test.py", "--weights", ckpt, "--data", data, "--img-size", 128, "--batch-size", 32, "--workers", 0,
          "--conf-thres", 1e-6, "--max-det", 100, "--save-json", "--project", tmp_path / "test", "--name", "coco"],
         timeout=300)
    run = tmp_path / "test" / "coco"
    m = json.loads((run / "metrics.json").read_text())
    assert all(k in m for k in METRIC_KEYS)
    gt = json.loads((run / "ground_truth.json").read_text())
    assert m["images"] == len(gt["images"]) >= 120 and m["labels"] == len(gt["annotations"]) > 500
    im = gt["images"][0]
    assert cv2.imread(im["file_name"]).shape[:2] == (im["height"], im["width"])
    # one ground-truth box checked against its label file, in original pixels
    lab_file = Path(im["file_name"].replace("/images/", "/labels/")).with_suffix(".txt")
    lab = np.loadtxt(lab_file, ndmin=2)
    anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
    assert len(anns) == len(np.unique(lab, axis=0))
    xs = sorted(round(a["bbox"][0]) for a in anns)
    ref = sorted(round((r[1] - r[3] / 2) * im["width"]) for r in np.unique(lab, axis=0))
    assert np.allclose(xs, ref, atol=1)

    # --coco-json: an annotation file in the official layout (image ids from the file names, the 80 -> 91 category
    # map) whose truth is the model's own most confident boxes of the run above: scored against it, the same
    # detections must rank every true box first (mAP@0.5 1), which holds only if ids and categories are mapped
    from .test_metrics import official_json

    preds = json.loads((run / "predictions.json").read_text())
    cut = sorted(d["score"] for d in preds)[len(preds) // 2]
    ids = {im["id"]: int(Path(im["file_name"]).stem) for im in gt["images"]}
    truth = [(ids[d["image_id"]], d["category_id"], d["bbox"], 0) for d in preds if d["score"] > cut]
    assert len(truth) > 100 and len({c for _, c, _, _ in truth}) > 3
    official = official_json(names, [(ids[im["id"]], Path(im["file_name"]).name) for im in gt["images"]], truth)
    (tmp_path / "instances.json").write_text(json.dumps(official))
    _run(["test.py", "--weights", ckpt, "--data", data, "--img-size", 128, "--batch-size", 32, "--workers", 0,
          "--conf-thres", 1e-6, "--max-det", 100, "--coco-json", tmp_path / "instances.json",
          "--project", tmp_path / "test", "--name", "official"], timeout=300)
    m2 = json.loads((tmp_path / "test" / "official" / "metrics.json").read_text())
    assert m2["scored_against"] == str(tmp_path / "instances.json")
    assert m2["map50"] == pytest.approx(1.0, abs=1e-6) and m["map50"] < 0.01

    src = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:2]
    _run(["detect.py", "--weights", ckpt, "--source", src[0].parent / "00000000000[9]*.jpg", "--img-size", 128,
          "--conf-thres", 0.001, "--save-txt", "--project", tmp_path / "detect", "--name", "exp"])
    det = tmp_path / "detect" / "exp"
    assert (det / src[0].name).is_file() and (det / "labels" / f"{src[0].stem}.txt").is_file()
