"""benchmarks/bench_torch_pruning.py: the parts that run without Torch-Pruning (it lives in the benchmark's own
virtualenv, never in the toolkit's)."""
import pytest
import torch

from benchmarks import bench_torch_pruning as bench
from models import Darknet
from utils.errors import UserError
from utils.export import render_cfg


def narrowed_tiny():
    """yolov3-tiny with some convs narrowed in place, as Torch-Pruning leaves it: module shapes changed, cfg text not."""
    model = Darknet("cfg/yolov3-tiny.cfg", img_size=64).eval()
    narrow = Darknet.from_text(render_cfg(model, {0: 8, 2: 24, 13: 128}), name="narrow", img_size=64, nc=model.nc)
    narrow.eval()
    model.module_list = narrow.module_list  # the layers changed, the module_defs still say the old widths
    return model, narrow


def test_a_pruned_module_is_rebuilt_from_cfg_text_with_its_widths_and_the_same_outputs():
    pruned, narrow = narrowed_tiny()
    net, text = bench.as_darknet(pruned)
    widths = [d["filters"] for d in net.module_defs if d["type"] == "convolutional"]
    assert (widths[0], widths[1], net.module_defs[13]["filters"]) == (8, 24, 128)
    assert "filters=8" in text and "filters=128" in text
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x)[0], narrow(x)[0])


def test_head_convs_are_the_convs_that_feed_yolo():
    model = Darknet("cfg/yolov3-tiny.cfg", img_size=64)
    heads = bench.head_convs(model)
    idx = [i for i, m in enumerate(model.module_list) if any(m is h for h in heads)]
    assert idx == [15, 22] and all(model.module_defs[i + 1]["type"] == "yolo" for i in idx)


def test_only_plain_layer_networks_are_accepted():
    bench.check_plain(Darknet("cfg/yolov3-tiny.cfg", img_size=64), "tiny.pt")
    for cfg in ("cfg/yolo-nano.cfg", "cfg/mobilenetv3-yolo.cfg"):
        with pytest.raises(UserError, match="only plain-layer networks"):
            bench.check_plain(Darknet(cfg, img_size=64), "x.pt")


def test_as_a_table_row_it_fine_tunes_the_pruned_network_in_one_train_py_run_folder(shapes_tiny, tmp_path):
    """``--project/--name``: the table's tp row. Torch-Pruning itself runs in its own virtualenv; here its result
    (``pruned.pt``) is already in the folder, as after that step, so the fine-tuning by train.py is what runs."""
    from export import checkpoint_of
    from utils.checkpoint import load_model, save_checkpoint

    folder = tmp_path / "tp" / "seed0"
    folder.mkdir(parents=True)
    narrow = Darknet.from_text(render_cfg(Darknet("cfg/yolov3-tiny.cfg", img_size=64, nc=6), {0: 8, 2: 24, 13: 128}),
                               name="tp.cfg", img_size=64, nc=6)
    save_checkpoint(checkpoint_of(narrow, {}), folder / "pruned.pt")
    bench.main(["--weights", str(tmp_path / "dense.pt"), "--macs-fraction", "0.5", "--data", str(shapes_tiny),
                "--img-size", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--seed", "0",
                "--project", str(folder.parent), "--name", folder.name, "--exist-ok"])
    tuned, _ = load_model(folder / "weights" / "last.pt")
    widths = [d["filters"] for d in tuned.module_defs if d["type"] == "convolutional"]
    assert (widths[0], widths[1], tuned.module_defs[13]["filters"]) == (8, 24, 128)  # the pruned widths, trained
    assert (folder / "results.csv").read_text().count("\n") == 2  # header + the one epoch


def test_the_table_runs_it_only_when_named_with_the_dense_run_as_its_start(shapes_tiny, tmp_path):
    from benchmarks import table

    argv = ["--data", str(shapes_tiny), "--big-cfg", "cfg/yolov3-tiny.cfg", "--out", str(tmp_path), "--seeds", "1"]
    rows = table.main([*argv, "--list-rows"], out=lambda *a: None)
    assert "tp" not in [r.name for r in rows]
    a = table.resolve_settings(table.build_parser().parse_args([*argv, "--rows", "tp", "--tp-macs", "0.25"]))
    rows, jobs = table.build_plan(a, tmp_path / "shapes")
    assert [r.name for r in rows] == ["tp"] and rows[0].family == "peer"
    tp = next(j for j in jobs.values() if j.id == "tp-yolov3-tiny")
    dense = next(j for j in jobs.values() if j.id == "dense-yolov3-tiny")
    assert tp.script == "benchmarks/bench_torch_pruning.py" and tp.deps == [dense.key] and not tp.pruned
    assert tp.argv[:4] == ["--weights", str(dense.folder / "round_0" / "weights" / "best.pt"), "--macs-fraction", "0.25"]
