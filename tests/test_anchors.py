"""utils/anchors.py: anchor fit figures, k-means anchors, cfg rewriting and train.py --autoanchor."""
import numpy as np
import pytest
import torch

import train
from models import Darknet
from utils import anchors as A
from utils.checkpoint import load_checkpoint
from utils.datasets import parse_data_cfg
from utils.errors import UserError

TINY_CFG = "cfg/yolov3-tiny.cfg"


def test_anchor_fit_exact_figures():
    wh = np.array([[10.0, 10.0], [40.0, 40.0], [10.0, 30.0]])
    fit = A.anchor_fit(wh, np.array([[10.0, 10.0], [20.0, 20.0]]), thr=4.0)
    # ratios (max over w,h of max(r, 1/r)): box 1: 1, 2; box 2: 4, 2; box 3: 3, 2 -> all matched (2 < 4)
    assert fit["bpr"] == 1.0
    assert fit["per_target"] == pytest.approx((2 + 1 + 2) / 3)
    assert fit["best_ratio"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    fit = A.anchor_fit(wh, np.array([[10.0, 10.0]]), thr=4.0)
    assert fit["bpr"] == pytest.approx(2 / 3)  # 40/10 = 4 is not < 4: the loss's strict rule


def test_kmeans_recovers_clusters_sorted_by_area():
    rng = np.random.default_rng(1)
    centres = np.array([[100.0, 100.0], [12.0, 8.0], [40.0, 60.0]])
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.05, (200, 2))) for c in centres])
    got = A.kmeans_anchors(wh, 3, seed=0)
    want = centres[np.argsort(centres.prod(1))]
    assert np.allclose(got, want, rtol=0.03)
    assert np.array_equal(A.kmeans_anchors(wh, 3, seed=0), got)  # seeded: the same anchors every run
    with pytest.raises(UserError, match="2 boxes cannot give 3 anchors"):
        A.kmeans_anchors(wh[:2], 3)


def test_apply_anchors_gives_the_finest_head_the_smallest_and_survives_a_rebuild():
    model = Darknet(TINY_CFG, img_size=128, nc=6)
    n_params = sum(p.numel() for p in model.parameters())
    wh = np.array([[8.0 * k, 8.0 * k] for k in range(1, 6) for _ in range(20)])
    new = A.fitted_anchors(model, wh)  # tiny's heads use 5 anchors (masks 1,2,3 and 3,4,5): 5 clusters
    A.apply_anchors(model, new)
    by_stride = {float(model.module_list[i].stride): model.module_list[i].anchors for i in model.yolo_layers}
    assert by_stride[16.0].tolist() == [[8, 8], [16, 16], [24, 24]]
    assert by_stride[32.0].tolist() == [[24, 24], [32, 32], [40, 40]]  # anchor 3 is shared by both heads
    rebuilt = Darknet.from_text(model.cfg_text, name="fitted", img_size=128, nc=6)
    for i in model.yolo_layers:
        assert torch.equal(rebuilt.module_list[i].anchors, model.module_list[i].anchors)
    assert sum(p.numel() for p in rebuilt.parameters()) == n_params
    assert model.cfg_text.count("anchors=10,14,  8,8,  16,16,  24,24,  32,32,  40,40") == 2  # unused 0 kept


def test_set_anchors_keeps_comments_and_other_lines():
    text = "[net]\nwidth=416\n\n[yolo]\nmask=0\nanchors = 1,2, 3,4  # old\nclasses=1\n"
    out = A.set_anchors(text, np.array([[5, 6], [7, 8]]))
    assert out == "[net]\nwidth=416\n\n[yolo]\nmask=0\nanchors=5,6,  7,8  # old\nclasses=1\n"


def test_different_anchor_lists_per_head_is_a_one_line_error(tmp_path):
    text = open(TINY_CFG).read()
    first = text.index("\nanchors") + 1  # the first [yolo]'s anchors line (the header comment names anchors too)
    end = text.index("\n", first)
    cfg = tmp_path / "mixed.cfg"
    cfg.write_text(text[:first] + "anchors = 1,1, 2,2, 3,3, 4,4, 5,5, 6,6" + text[end:])
    model = Darknet(str(cfg), img_size=128, nc=6)
    with pytest.raises(UserError, match="mixed.cfg: the \\[yolo\\] sections list different anchors"):
        A.fitted_anchors(model, np.ones((10, 2)) * 10)


def test_cli_writes_a_cfg_that_builds(shapes_tiny, tmp_path, capsys):
    out = tmp_path / "nano-fit.cfg"
    A.main(["--data", str(shapes_tiny), "--cfg", "cfg/yolo-nano.cfg", "--img-size", "128", "--out", str(out)])
    text = capsys.readouterr().out
    assert "cfg/yolo-nano.cfg: best possible recall" in text and "k-means:" in text
    model = Darknet(str(out), img_size=128, nc=6)
    wh = A.label_wh(parse_data_cfg(shapes_tiny)["train"], 128, 6)
    old = A.anchor_fit(wh, A.model_anchors(Darknet("cfg/yolo-nano.cfg", img_size=128, nc=6)))
    new = A.anchor_fit(wh, A.model_anchors(model))
    assert new["best_ratio"] > old["best_ratio"]


def test_train_autoanchor_saves_fitted_anchors_and_weights_start_keeps_them(shapes_tiny, tmp_path, capsys):
    common = ["--cfg", "cfg/yolo-nano.cfg", "--img-size", "64", "--batch-size", "4", "--workers", "0",
              "--epochs", "1", "--data", str(shapes_tiny), "--project", str(tmp_path), "--notest"]
    run = train.main([*common, "--name", "fit", "--autoanchor"])
    log = capsys.readouterr().out
    assert "autoanchor: k-means anchors:" in log
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    model = Darknet.from_text(ckpt["cfg"], name="fit", img_size=64, nc=6)
    wh = A.label_wh(parse_data_cfg(shapes_tiny)["train"], 64, 6)
    assert np.array_equal(A.model_anchors(model), A.fitted_anchors(model, wh, seed=0))
    cfg_anchors = A.model_anchors(Darknet("cfg/yolo-nano.cfg", img_size=64, nc=6))
    assert not np.array_equal(A.model_anchors(model), cfg_anchors)
    # a network started from --weights keeps the anchors it was trained with
    run2 = train.main([*common[2:], "--weights", str(run / "weights" / "last.pt"), "--name", "again",
                       "--autoanchor"])
    assert "autoanchor:" not in capsys.readouterr().out
    again = load_checkpoint(run2 / "weights" / "last.pt")
    assert again["cfg"] == ckpt["cfg"]


def test_a_folder_without_images_or_boxes_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no images found \(formats: "):
        A.label_wh(tmp_path / "empty", 64)
    (tmp_path / "bg" / "images").mkdir(parents=True)
    import cv2

    cv2.imwrite(str(tmp_path / "bg" / "images" / "a.jpg"), np.zeros((32, 32, 3), np.uint8))  # background only
    with pytest.raises(UserError, match="images: no labelled boxes to fit anchors to"):
        A.label_wh(tmp_path / "bg" / "images", 64)
