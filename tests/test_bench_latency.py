"""benchmarks/bench_latency.py: the networks it times, and its interleaved passes (no speed asserted)."""
import torch

from benchmarks.bench_latency import by_runtime, networks, short_names
from models import Darknet, make_checkpoint
from utils.checkpoint import save_checkpoint

TINY = "cfg/yolov3-tiny.cfg"


def test_each_filter_rate_is_folded_once_per_width_multiple(tmp_path):
    torch.manual_seed(0)
    model = Darknet(TINY, nc=3, img_size=64).eval()
    save_checkpoint(make_checkpoint(model), tmp_path / "dense.pt")
    nets = networks([str(tmp_path / "dense.pt")], [0.5], (1, 16))
    assert [label for label, _, _ in nets] == ["dense.pt (widths x1)", "dense.pt (widths x16)",
                                               "dense.pt filters -0.5 (widths x1)", "dense.pt filters -0.5 (widths x16)"]
    dense1, dense16, half1, half16 = (net for _, net, _ in nets)
    assert dense1.channels == dense16.channels == model.channels  # nothing to fold in a dense network
    convs = [i for i, d in enumerate(model.module_defs) if d["type"] == "convolutional"]
    heads = [i for i in convs if model.module_defs[i + 1]["type"] == "yolo"]
    for i in convs:
        if i in heads:
            assert half1.channels[i] == half16.channels[i] == model.channels[i]
        else:
            assert half1.channels[i] == model.channels[i] // 2  # ceil(0.5 n) of an even n pruned
            assert half16.channels[i] % 16 == 0 and half1.channels[i] <= half16.channels[i] < half1.channels[i] + 16
    assert nets[3][2]["removed"] < nets[2][2]["removed"] and nets[3][2]["round_to"] == 16


def test_passes_time_every_network_and_size_in_turn(tmp_path):
    """Two checkpoints, two sizes, two passes: a row each, its ORT figure the median of its two pass medians."""
    from benchmarks.bench_latency import main

    torch.manual_seed(0)
    model = Darknet(TINY, nc=3, img_size=64).eval()
    save_checkpoint(make_checkpoint(model), tmp_path / "dense.pt")
    rows = main(["--weights", str(tmp_path / "dense.pt"), "--filter-rates", "0.5", "--img-sizes", "32", "64",
                 "--reps", "1", "--warmup", "0", "--passes", "2", "--json", str(tmp_path / "t.json")])
    half = "dense.pt filters -0.5"
    assert [(r["network"], r["img_size"]) for r in rows] == [("dense.pt", 32), ("dense.pt", 64), (half, 32), (half, 64)]
    for r in rows:
        assert len(r["ort_passes"]) == 2 and r["ort"] == sum(r["ort_passes"]) / 2 > 0 and r["fp32"] > 0
    assert rows[0]["ort_speedup"] == rows[1]["ort_speedup"] == 1.0  # the first network is the reference per size


def test_a_pass_times_every_network_in_one_runtime_before_the_next():
    f, g, h = (lambda: None), (lambda: None), (lambda: None)
    order = list(by_runtime([{"fp32": f, "ort": g}, {"fp32": f, "bf16_cl": h, "ort": g}]))
    assert order == [(0, "fp32"), (1, "fp32"), (1, "bf16_cl"), (0, "ort"), (1, "ort")]


def test_networks_are_named_by_the_shortest_path_tail_that_tells_them_apart():
    paths = ["runs/r3/seed0/round_1/weights/best.pt", "runs/r4/seed0/round_1/weights/best.pt", "tp/best.pt"]
    assert short_names(paths) == ["r3/seed0/round_1/weights/best.pt", "r4/seed0/round_1/weights/best.pt",
                                  "tp/best.pt"]
    assert short_names(["a/dense.pt", "b/ticket.pt"]) == ["dense.pt", "ticket.pt"]
    assert short_names(["x.pt", "x.pt"]) == ["x.pt", "x.pt"]  # the same file twice: no tail tells them apart
