"""utils/metrics.py: NMS, box scaling, and COCO / per-class figures on synthetic detections with known answers."""
import json

import numpy as np
import pytest
import torch

from utils.general import xyxy2xywh
from utils.metrics import (Evaluator, box_iou, box_iou_np, coco_evaluate, match_detections, non_max_suppression,
                           pr_at_best_f1, scale_boxes)


def _evaluate(images, nc=2):
    """images: list of (labels [[cls, x1, y1, x2, y2]], det [[x1, y1, x2, y2, conf, cls]]) on 640x480 images."""
    ev = Evaluator(nc, names=[f"c{i}" for i in range(nc)])
    for i, (labels, det) in enumerate(images):
        ev.add(f"img{i}.jpg", (480, 640), np.array(labels, dtype=float).reshape(-1, 5),
               np.array(det, dtype=float).reshape(-1, 6))
    return ev, ev.compute()


GT = [  # two images, both classes, large boxes (100 x 100 = 10,000 px > 96^2)
    [[0, 10, 10, 110, 110], [1, 200, 200, 300, 300]],
    [[0, 300, 50, 400, 150], [1, 50, 300, 150, 400]],
]


def _perfect(gt, conf=0.9):
    return [[b[1], b[2], b[3], b[4], conf - 0.01 * k, b[0]] for k, b in enumerate(gt)]


def test_perfect_detections_ap_one():
    _, m = _evaluate([(g, _perfect(g)) for g in GT])
    for k in ("map", "map50", "map75", "ap_large", "ar100", "precision", "recall"):
        assert m[k] == pytest.approx(1.0), k
    assert m["ap_small"] == -1 and m["ap_medium"] == -1  # pycocotools: nothing to measure in those buckets
    assert m["ar1"] == pytest.approx(1.0)  # pycocotools caps detections per image *and class*: one suffices
    assert [r["labels"] for r in m["per_class"]] == [2, 2]
    assert all(r["ap50"] == pytest.approx(1.0) and r["f1"] == pytest.approx(1.0) for r in m["per_class"])


def test_iou_06_shift_counts_at_ap50_not_ap75():
    # shifting a 100-px box by 24 px along x gives IoU 76 / 124 = 0.613: a match at 0.50, 0.55, 0.60 only
    det = [[[b[1] + 24, b[2], b[3] + 24, b[4], 0.9, b[0]] for b in g] for g in GT]
    assert box_iou_np([[10, 10, 110, 110]], [[34, 10, 134, 110]])[0, 0] == pytest.approx(76 / 124)
    _, m = _evaluate([(g, d) for g, d in zip(GT, det)])
    assert m["map50"] == pytest.approx(1.0)
    assert m["map75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.3)  # 3 of the 10 thresholds
    assert m["per_class"][0]["ap50"] == pytest.approx(1.0)


def test_missed_class_halves_map():
    det = [[d for d in _perfect(g) if d[5] == 0] for g in GT]  # class 1 never detected
    _, m = _evaluate([(g, d) for g, d in zip(GT, det)])
    assert m["map"] == pytest.approx(0.5)
    assert m["map50"] == pytest.approx(0.5)
    rows = {r["name"]: r for r in m["per_class"]}
    assert rows["c0"]["ap50"] == pytest.approx(1.0) and rows["c1"]["ap50"] == pytest.approx(0.0)
    assert rows["c1"]["recall"] == 0.0 and rows["c1"]["detections"] == 0


def test_duplicates_are_false_positives():
    # one class; image 0: TP 0.9 and a duplicate 0.8; image 1: TP 0.7. Ranked: TP, FP, TP.
    gt = [[[0, 10, 10, 110, 110]], [[0, 300, 50, 400, 150]]]
    det = [[[10, 10, 110, 110, 0.9, 0], [12, 10, 112, 110, 0.8, 0]], [[300, 50, 400, 150, 0.7, 0]]]
    _, m = _evaluate(list(zip(gt, det)), nc=1)
    # COCO 101-point interpolation: precision 1 up to recall 0.5 (51 points), 2/3 above it (50 points)
    expected = (51 + 50 * 2 / 3) / 101
    assert m["map50"] == pytest.approx(expected, abs=1e-6)
    assert m["map"] == pytest.approx(expected, abs=1e-6)
    row = m["per_class"][0]
    assert row["detections"] == 3
    # best F1: keep all three (P 2/3, R 1, F1 0.8) vs only the first (P 1, R 0.5, F1 0.667)
    assert row["precision"] == pytest.approx(2 / 3) and row["recall"] == pytest.approx(1.0)
    assert row["f1"] == pytest.approx(0.8)


def test_no_detections_scores_zero():
    _, m = _evaluate([(g, []) for g in GT])
    assert m["map"] == 0.0 and m["map50"] == 0.0 and m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["ap_large"] == 0.0 and m["ap_small"] == -1


def test_size_buckets_use_box_area_in_original_pixels():
    # a 20x20 box (400 px, small) found, a 50x50 box (2500 px, medium) missed
    gt = [[[0, 10, 10, 30, 30], [0, 100, 100, 150, 150]]]
    det = [[[10, 10, 30, 30, 0.9, 0]]]
    _, m = _evaluate(list(zip(gt, det)), nc=1)
    assert m["ap_small"] == pytest.approx(1.0)
    assert m["ap_medium"] == pytest.approx(0.0)
    assert m["ap_large"] == -1


def test_match_detections_greedy_by_confidence():
    gt = np.array([[0, 0, 0, 100, 100], [1, 0, 0, 100, 100]])
    det = np.array([[0, 0, 100, 100, 0.5, 0],   # TP for class 0 ...
                    [0, 0, 100, 100, 0.9, 0],   # ... but this one is more confident: it takes the box
                    [0, 0, 100, 100, 0.8, 1],   # TP class 1
                    [300, 300, 400, 400, 0.95, 1]])  # no overlap: FP
    assert match_detections(det, gt).tolist() == [False, True, True, False]


def test_pr_at_best_f1_counts():
    p, r, f1, thr = pr_at_best_f1([0.9, 0.8, 0.7], [True, False, True], [0, 0, 0], [2])
    assert p[0] == pytest.approx(2 / 3) and r[0] == 1.0 and f1[0] == pytest.approx(0.8)
    assert thr <= 0.7


def test_saved_json_matches_pycocotools_direct(tmp_path):
    """The AP evaluate reports equals pycocotools run on the written json files (4 decimals)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images = []
    for _ in range(12):
        n = rng.integers(1, 6)
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(8, 200, (n, 2))
        labels = np.concatenate((rng.integers(0, 3, (n, 1)), xy, xy + wh), 1)
        jitter = rng.normal(0, 6, (n, 4))
        det = np.concatenate((labels[:, 1:] + jitter, rng.uniform(0.05, 1, (n, 1)), labels[:, :1]), 1)
        fp = np.concatenate((rng.uniform(0, 300, (3, 2)), rng.uniform(300, 600, (3, 2)),
                             rng.uniform(0, 0.5, (3, 1)), rng.integers(0, 3, (3, 1))), 1)
        images.append((labels, np.concatenate((det, fp))))
    ev, m = _evaluate(images, nc=3)
    assert 0.05 < m["map"] < 0.95
    pred, gt = ev.save_json(tmp_path)
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        coco_dt = coco_gt.loadRes(str(pred))
        E = COCOeval(coco_gt, coco_dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert round(m["map"], 4) == round(float(E.stats[0]), 4)
    assert round(m["map50"], 4) == round(float(E.stats[1]), 4)
    # and the function form on the files
    assert coco_evaluate(gt, pred)["map"] == pytest.approx(m["map"], abs=1e-12)
    res = json.loads(pred.read_text())
    assert set(res[0]) == {"image_id", "category_id", "bbox", "score"}
    # the per-class table's mean AP50 is the headline AP50
    assert np.mean([r["ap50"] for r in m["per_class"]]) == pytest.approx(m["map50"])


# ------------------------------------------------------------------------------------------------------------- NMS
def _inf(rows, nc):
    """rows: (x1, y1, x2, y2, obj, cls probs...) -> one-image model output (1, N, 5 + nc) in xywh."""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5 + nc)
    t[:, :4] = xyxy2xywh(t[:, :4])
    return t[None]


def test_nms_class_aware():
    rows = [[0, 0, 100, 100, 0.9, 1.0, 0.0],
            [5, 0, 105, 100, 0.8, 1.0, 0.0],   # same class, IoU 0.9 -> suppressed
            [5, 0, 105, 100, 0.7, 0.0, 1.0]]   # other class, same place -> kept
    out = non_max_suppression(_inf(rows, 2), conf_thres=0.25, iou_thres=0.5)[0]
    assert out.shape == (2, 6)
    assert out[:, 5].tolist() == [0.0, 1.0]
    assert out[0, 4].item() == pytest.approx(0.9)
    assert out[0, :4].tolist() == pytest.approx([0, 0, 100, 100])


def test_nms_conf_is_obj_times_cls_and_threshold():
    rows = [[0, 0, 10, 10, 0.5, 0.4, 0.1],     # conf 0.2 < 0.25 -> dropped
            [50, 50, 60, 60, 0.9, 0.1, 0.5]]   # conf 0.45, class 1
    out = non_max_suppression(_inf(rows, 2), conf_thres=0.25)[0]
    assert out.shape == (1, 6) and out[0, 4].item() == pytest.approx(0.45) and out[0, 5].item() == 1


def test_nms_multi_label_and_classes_filter():
    rows = [[0, 0, 10, 10, 1.0, 0.9, 0.8]]
    assert non_max_suppression(_inf(rows, 2), conf_thres=0.5)[0].shape[0] == 1
    out = non_max_suppression(_inf(rows, 2), conf_thres=0.5, multi_label=True)[0]
    assert sorted(out[:, 5].tolist()) == [0.0, 1.0]
    out = non_max_suppression(_inf(rows, 2), conf_thres=0.5, multi_label=True, classes=[1])[0]
    assert out[:, 5].tolist() == [1.0]


def test_nms_max_det_and_empty_and_batch():
    # 50 disjoint boxes of one class: all survive NMS, max_det caps them, most confident first
    rows = [[20 * i, 0, 20 * i + 10, 10, 0.5 + i / 100, 1.0] for i in range(50)]
    pred = torch.cat((_inf(rows, 1), torch.zeros(1, 50, 6)))  # second image: nothing above threshold
    out = non_max_suppression(pred, conf_thres=0.1, max_det=7)
    assert len(out) == 2 and out[0].shape == (7, 6) and out[1].shape == (0, 6)
    assert out[0][:, 4].tolist() == sorted(out[0][:, 4].tolist(), reverse=True)
    assert out[0][0, 4].item() == pytest.approx(0.99)
    # the (inf, p) tuple the eval forward returns is accepted too, and bf16 input gives float32 boxes
    out = non_max_suppression((pred.bfloat16(), []), conf_thres=0.1)
    assert out[0].dtype == torch.float32 and out[0].shape[0] == 50


def test_box_iou():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert box_iou_np(a.numpy(), b.numpy())[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


# ------------------------------------------------------------------------------------------------------ scale_boxes
def _letterbox_forward(boxes, shape0, new=(416, 416)):
    """What a letterbox does to boxes: scale by r, then add the centred padding."""
    h0, w0 = shape0
    r = min(new[0] / h0, new[1] / w0)
    h, w = round(h0 * r), round(w0 * r)
    padw, padh = (new[1] - w) / 2, (new[0] - h) / 2
    out = boxes.clone()
    out[:, [0, 2]] = boxes[:, [0, 2]] * (w / w0) + padw
    out[:, [1, 3]] = boxes[:, [1, 3]] * (h / h0) + padh
    return out, ((h / h0, w / w0), (padw, padh))


@pytest.mark.parametrize("shape0", [(480, 640), (640, 480), (333, 500), (416, 416)])
def test_scale_boxes_inverts_letterbox(shape0):
    boxes = torch.tensor([[10.0, 20, 200, 300], [0, 0, shape0[1], shape0[0]], [50, 60, 70, 80]])
    lb, ratio_pad = _letterbox_forward(boxes, shape0)
    back = scale_boxes((416, 416), lb.clone(), shape0, ratio_pad)
    assert back.flatten().tolist() == pytest.approx(boxes.flatten().tolist(), abs=1e-3)
    back = scale_boxes((416, 416), lb.clone(), shape0)  # gain and padding worked out
    assert back.flatten().tolist() == pytest.approx(boxes.flatten().tolist(), abs=1.0)


def test_scale_boxes_clips():
    b = scale_boxes((100, 100), torch.tensor([[-10.0, -10, 120, 120]]), (100, 100))
    assert b.tolist() == [[0, 0, 100, 100]]


# the 80 COCO category ids in class order (COCO's 80 -> 91 map)
COCO91 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
          34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
          62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def official_json(names, images, annotations):
    """A COCO annotation file in the official layout: ``images`` as (id, file name), ``annotations`` as (image id,
    class index, [x, y, w, h], iscrowd)."""
    return {"images": [{"id": i, "file_name": f, "height": 480, "width": 640} for i, f in images],
            "categories": [{"id": COCO91[k], "name": n, "supercategory": "x"} for k, n in enumerate(names)],
            "annotations": [{"id": j + 1, "image_id": i, "category_id": COCO91[c], "bbox": b, "area": b[2] * b[3],
                             "iscrowd": crowd} for j, (i, c, b, crowd) in enumerate(annotations)]}


def test_official_annotations_map_ids_and_categories_and_ignore_crowd_regions(tmp_path):
    from utils.errors import UserError
    from utils.metrics import score_with_official_annotations

    names = [f"class {k}" for k in range(80)]
    # our side: loader ids 1, 2 for two files; the official file numbers them 139 and 785
    ours = {"images": [{"id": 1, "file_name": "/data/images/000000000139.jpg"},
                       {"id": 2, "file_name": "/data/images/000000000785.jpg"}]}
    path = tmp_path / "instances.json"
    box_a, box_b, crowd = [10.0, 20.0, 100.0, 80.0], [300.0, 200.0, 60.0, 120.0], [400.0, 10.0, 200.0, 150.0]
    path.write_text(json.dumps(official_json(names, [(139, "000000000139.jpg"), (785, "000000000785.jpg"),
                                                     (999, "000000000999.jpg")],
                                             [(139, 62, box_a, 0), (785, 79, box_b, 0), (785, 0, crowd, 1),
                                              (999, 5, box_a, 0)])))  # image 999 is not scored: not ours
    perfect = [{"image_id": 1, "category_id": 62, "bbox": box_a, "score": 0.9},
               {"image_id": 2, "category_id": 79, "bbox": box_b, "score": 0.8}]
    assert score_with_official_annotations(ours, perfect, path, names)["map50"] == pytest.approx(1.0)
    # a detection inside the crowd region (class 0) is neither a hit nor a false positive
    in_crowd = perfect + [{"image_id": 2, "category_id": 0, "bbox": [410.0, 20.0, 80.0, 60.0], "score": 0.95}]
    assert score_with_official_annotations(ours, in_crowd, path, names)["map50"] == pytest.approx(1.0)
    not_crowd = json.loads(path.read_text())
    not_crowd["annotations"][2]["iscrowd"] = 0  # the region as an ordinary object: missed, and the box a miss
    (tmp_path / "plain.json").write_text(json.dumps(not_crowd))
    assert score_with_official_annotations(ours, in_crowd, tmp_path / "plain.json", names)["map50"] < 0.7
    # a wrong category id (class 61, official 70) costs class 62 its only hit
    wrong = [dict(perfect[0], category_id=61), perfect[1]]
    assert score_with_official_annotations(ours, wrong, path, names)["map50"] < 0.6
    with pytest.raises(UserError, match="no image named 000000000001.jpg"):
        score_with_official_annotations({"images": [{"id": 1, "file_name": "000000000001.jpg"}]}, [], path, names)
    with pytest.raises(UserError, match="categories do not match"):
        score_with_official_annotations(ours, perfect, path, names[::-1])


def test_a_bad_official_annotation_file_stops_test_py_before_it_evaluates(tmp_path, monkeypatch):
    """read_official_annotations names what is wrong, and test.py calls it before the evaluation (a typo in
    --coco-json costs seconds, not a whole validation pass)."""
    import test as script

    from utils.errors import UserError
    from utils.metrics import read_official_annotations

    names = ["a", "b"]
    for text, why in (("not json", "not a COCO annotation file .JSONDecodeError"),
                      ('{"categories": []}', "not a COCO annotation file .KeyError: 'images'"),
                      ('{"images": [], "categories": [{"id": 1, "name": "b"}, {"id": 2, "name": "a"}]}',
                       "its 2 categories do not match the data's 2 class names in order .first difference at "
                       "class 0")):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(UserError, match=f"^{tmp_path / 'c.json'}: {why}"):
            read_official_annotations(tmp_path / "c.json", names)
    from models import Darknet, make_checkpoint
    from utils.checkpoint import save_checkpoint
    from utils.shapes import make_shapes

    data = make_shapes(tmp_path / "shapes", n_train=2, n_val=2, img_size=64, seed=0)
    save_checkpoint(make_checkpoint(Darknet("cfg/yolov3-tiny.cfg", nc=6, img_size=64)), tmp_path / "w.pt")
    monkeypatch.setattr(script, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --coco-json"))
    with pytest.raises(UserError, match="categories do not match the data's 6 class names"):
        script.main(["--weights", str(tmp_path / "w.pt"), "--data", str(data), "--img-size", "64", "--coco-json",
                     str(tmp_path / "c.json"), "--project", str(tmp_path / "t")])
