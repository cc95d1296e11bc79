"""export.py and utils/sparse.py, utils/export.py: sparse storage size and round trips, ONNX against PyTorch, Darknet
.weights round trip, one-line errors for broken files, test.py on a sparse export, folding empty channels."""
import json
import math
import subprocess
import sys

import pytest
import torch

import export
import models
import test
from models import Darknet, make_checkpoint, prunable_parameters
from utils import sparse
from utils import summary
from utils.checkpoint import export_sparse, load_checkpoint, load_model, save_checkpoint, save_export
from utils.errors import UserError, cli
from utils.export import bit_equal, check_onnx, compare_outputs, fold_empty_channels, render_cfg
from utils.summary import model_summary

from .conftest import ROOT

TINY = ROOT / "cfg" / "yolov3-tiny.cfg"


def magnitude_masks(model, sparsity):
    """Per-layer magnitude masks at exactly ``sparsity`` of each prunable kernel; pruned weights set to +0.0."""
    masks = {}
    with torch.no_grad():
        for name, p in prunable_parameters(model):
            k = round(p.numel() * sparsity)
            masks[name] = p.abs() > p.abs().flatten().kthvalue(k).values  # random init: no ties
            p.masked_fill_(~masks[name], 0.0)
    return masks


def pruned_tiny(nc, sparsity=0.9, seed=0):
    torch.manual_seed(seed)
    model = Darknet(TINY, nc=nc).eval()
    return model, magnitude_masks(model, sparsity)


@pytest.fixture(scope="module")
def shapes_ckpt(tmp_path_factory, shapes_tiny):
    """A 90%-sparse yolov3-tiny for the 6-class shapes set, saved as a pruning checkpoint (with masks)."""
    from utils.datasets import parse_data_cfg

    names = parse_data_cfg(shapes_tiny)["names"]
    model, masks = pruned_tiny(len(names))
    ckpt = make_checkpoint(model, names)
    ckpt.update(masks=masks, img_size=64, epoch=3, best_fitness=0.1)
    path = tmp_path_factory.mktemp("export") / "pruned.pt"
    save_checkpoint(ckpt, path)
    return path


# ----------------------------------------------------------------------------------------------------- sparse
def test_sparse_size_at_90_percent_and_bit_identical_round_trip(tmp_path):
    """yolov3-tiny as shipped (80 classes; its output convs are not pruned): 90% of the prunable weights zero."""
    torch.manual_seed(0)
    dense = Darknet(TINY).eval()
    save_checkpoint(make_checkpoint(dense), tmp_path / "dense.pt")
    model, masks = pruned_tiny(None)
    ckpt = make_checkpoint(model)
    ckpt["masks"] = masks
    alive = sum(int(m.sum()) for m in masks.values())
    assert alive / sum(m.numel() for m in masks.values()) == pytest.approx(0.1, abs=1e-6)
    dense_bytes = (tmp_path / "dense.pt").stat().st_size
    n32 = export_sparse(model, tmp_path / "m.sparse.pt", ckpt)
    n16 = export_sparse(model, tmp_path / "m.sparse-fp16.pt", ckpt, half=True)
    assert n32 / dense_bytes <= 0.14, f"fp32 sparse export is {n32 / dense_bytes:.2%} of the dense file"
    assert n16 / dense_bytes <= 0.08, f"fp16 sparse export is {n16 / dense_bytes:.2%} of the dense file"

    loaded = load_checkpoint(tmp_path / "m.sparse.pt")
    assert list(loaded["model"]) == list(ckpt["model"])
    assert all(bit_equal(loaded["model"][k], v) for k, v in ckpt["model"].items())
    assert set(loaded["masks"]) == set(masks) and all(torch.equal(loaded["masks"][k], m) for k, m in masks.items())
    assert loaded["cfg"] == ckpt["cfg"] and loaded["nc"] == 80 and loaded["names"] == ckpt["names"]
    assert "train_state" not in loaded and "rewind" not in loaded

    half = load_checkpoint(tmp_path / "m.sparse-fp16.pt")["model"]
    for k, v in ckpt["model"].items():
        assert half[k].dtype == v.dtype
        assert torch.equal(half[k], v.half().to(v.dtype) if v.is_floating_point() else v), k


def test_sparse_encoding_edge_cases():
    """-0.0 and NaN survive bit for bit; a mask whose pruned entries are not +0.0 falls back to the value pattern;
    tensors that would not get smaller stay dense; training-only entries are not written."""
    w = torch.zeros(4, 3, 3, 3)
    w[0, 0, 0, 0], w[1, 1, 1, 1], w[2, 2, 2, 2] = -0.0, float("nan"), 1.5
    dense_kernel = torch.randn(8, 4, 1, 1)
    state = {"a.weight": w, "b.weight": dense_kernel, "b.bias": torch.zeros(8), "n": torch.tensor(7),
             "dead.weight": torch.zeros(4, 4, 3, 3), "empty.weight": torch.zeros(0, 3, 1, 1)}
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[2, 2, 2, 2] = True  # -0.0 and NaN sit where the mask says pruned: the mask cannot be the pattern
    enc = sparse.encode(state, masks={"a.weight": mask}, info={"cfg": "[net]\n"})
    assert enc["tensors"]["a.weight"]["encoding"] == "bitmask" and not enc["tensors"]["a.weight"]["mask"]
    assert enc["tensors"]["b.weight"]["encoding"] == "dense"
    assert enc["tensors"]["dead.weight"]["values"].numel() == 0
    back = sparse.decode(torch.load(__import__("io").BytesIO(sparse.to_bytes(enc)), weights_only=True))
    assert all(bit_equal(back["model"][k], v) for k, v in state.items())
    assert "masks" not in back


def int_bits(t):
    t = t.contiguous().reshape(-1)
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def test_compact_checkpoint_round_trip_and_size(tmp_path):
    """A pruned best.pt stores no zeros: model bit for bit, masks in their order, θ_k of the survivors."""
    model, masks = pruned_tiny(nc=6, sparsity=0.9)
    masks = dict(reversed(list(masks.items())))  # an order that is not the state dict's
    torch.manual_seed(1)
    theta = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    ckpt = make_checkpoint(model, [str(i) for i in range(6)])
    ckpt.update(masks=masks, rewind={"model": theta, "epoch": 1, "step": 7})
    save_checkpoint(ckpt, tmp_path / "plain.pt")
    compact = sparse.compact_checkpoint(ckpt)
    assert sparse.is_compact(compact) and "masks" not in compact and not sparse.is_compact(ckpt)
    save_checkpoint(compact, tmp_path / "best.pt")
    plain_bytes, compact_bytes = (tmp_path / "plain.pt").stat().st_size, (tmp_path / "best.pt").stat().st_size
    assert compact_bytes < 0.2 * plain_bytes, (compact_bytes, plain_bytes)  # was model + rewind + masks
    back = load_checkpoint(tmp_path / "best.pt")
    assert list(back["model"]) == list(ckpt["model"])
    assert all(torch.equal(int_bits(back["model"][k]), int_bits(v)) for k, v in ckpt["model"].items())
    assert list(back["masks"]) == list(masks) and all(torch.equal(back["masks"][k], m) for k, m in masks.items())
    assert {k: v for k, v in back["rewind"].items() if k != "model"} == {"epoch": 1, "step": 7}
    for k, v in theta.items():
        b = back["rewind"]["model"][k]
        if k in masks:
            assert torch.equal(b[masks[k]], v[masks[k]]) and torch.equal(int_bits(b[~masks[k]]),
                                                                          torch.zeros_like(int_bits(b[~masks[k]])))
        else:
            assert torch.equal(int_bits(b), int_bits(v))
    loaded, _ = load_model(tmp_path / "best.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_compact_checkpoint_leaves_other_checkpoints_alone(tmp_path):
    model, masks = pruned_tiny(nc=6, sparsity=0.5)
    ckpt = make_checkpoint(model, [str(i) for i in range(6)])
    assert sparse.compact_checkpoint(ckpt) is ckpt  # dense: no masks
    with_state = dict(ckpt, masks=masks, train_state={"model": ckpt["model"]})
    assert sparse.compact_checkpoint(with_state) is with_state  # last.pt: resume needs every byte
    name = next(iter(masks))
    live = dict(ckpt, masks=masks, model=dict(ckpt["model"], **{name: ckpt["model"][name] + 1.0}))
    assert sparse.compact_checkpoint(live) is live  # a pruned weight that is not +0.0: the mask is not its pattern
    compact = sparse.compact_checkpoint(dict(ckpt, masks=masks))
    compact["model"]["tensors"][name]["values"][0] += 1.0
    save_checkpoint(compact, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad.pt: corrupt checkpoint \(checksum mismatch"):
        load_checkpoint(tmp_path / "bad.pt")


def test_summary_reports_file_and_sparse_bytes(shapes_ckpt, tmp_path):
    path = tmp_path / "pruned.sparse.pt"
    ref, ckpt = load_model(shapes_ckpt)
    export_sparse(ref, path, ckpt, source=shapes_ckpt)
    model, _ = load_model(path)
    s = model_summary(model, img_size=64, path=path)
    assert s["file_bytes"] == path.stat().st_size
    assert s["sparse_bytes"] == pytest.approx(path.stat().st_size, rel=1e-3)  # only the metadata differs
    assert s["sparse_half_bytes"] < 0.6 * s["sparse_bytes"]
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-6)
    assert s["sparse_macs"] < 0.2 * s["macs"]
    assert s["zero_channels"] == sum(int((~w.flatten(1).ne(0).any(1)).sum()) for w in
                                     (m.weight for m in ref.modules() if isinstance(m, torch.nn.Conv2d)))


# ----------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_broken_export_is_one_line_error(shapes_ckpt, tmp_path, capsys, damage):
    good = tmp_path / "good.sparse.pt"
    export_sparse(load_model(shapes_ckpt)[0], good)
    data = bytearray(good.read_bytes())
    broken = tmp_path / "broken.sparse.pt"
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF  # inside the stored values: torch does not notice, the checksum does
    else:
        data = b"not a checkpoint at all\n"
    broken.write_bytes(bytes(data))
    if damage == "truncate":  # the command line, as a user meets it
        proc = subprocess.run([sys.executable, "models.py", "--weights", str(broken)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        code, stderr = proc.returncode, proc.stderr
    else:  # the same path in-process (saves a torch start-up per case)
        with pytest.raises(SystemExit) as e:
            cli(lambda: summary.main(["--weights", str(broken)]))
        code, stderr = e.value.code, capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken}:"), stderr


def test_newer_format_version_is_refused(shapes_ckpt, tmp_path):
    enc = sparse.encode_model(load_model(shapes_ckpt)[0])
    enc["format_version"] = sparse.FORMAT_VERSION + 1
    save_export(enc, tmp_path / "future.sparse.pt")
    with pytest.raises(UserError, match=rf"future\.sparse\.pt: sparse export format version {sparse.FORMAT_VERSION + 1} "
                                        r"is newer"):
        load_model(tmp_path / "future.sparse.pt")


def tampered(obj, key, path):
    """``obj`` saved as written, then with one entry changed and its old checksum kept (what a byte edit does)."""
    value = obj[key]
    if isinstance(value, str):
        value = value.replace("3,4,5", "3,4,4") if "3,4,5" in value else value + "x"
    elif isinstance(value, bool):
        value = not value
    elif isinstance(value, (int, float)):
        value = value + 1
    elif isinstance(value, list):
        value = value[:-1] + [str(value[-1]) + "x"]
    elif isinstance(value, dict):
        first = next(iter(value))
        inner = value[first]
        value = {**value, first: (inner + "x" if isinstance(inner, str) else (inner or 0) + 1)
                 if not torch.is_tensor(inner) and not isinstance(inner, dict) else None}
    torch.save({**obj, key: value}, path)
    return path


def test_every_field_of_a_sparse_export_is_covered_by_its_checksum(shapes_ckpt, tmp_path):
    """Issue 30: a one-byte edit of the cfg's mask (3,4,5 -> 3,4,4) once loaded silently and moved boxes 215 px."""
    export_sparse(load_model(shapes_ckpt)[0], tmp_path / "good.sparse.pt")
    obj = torch.load(tmp_path / "good.sparse.pt", weights_only=True)
    assert "mask = 3,4,5" in obj["cfg"] and obj["format_version"] == 2
    for key in [k for k in obj if k != "crc32"]:
        with pytest.raises(UserError, match="bad.sparse.pt: ") as e:
            load_model(tampered(obj, key, tmp_path / "bad.sparse.pt"))
        assert "\n" not in str(e.value), key


def test_dense_checkpoints_carry_a_checksum_that_models_py_verifies(shapes_ckpt, tmp_path, capsys):
    model, ckpt = load_model(shapes_ckpt)
    save_checkpoint(make_checkpoint(model, ckpt["names"]), tmp_path / "dense.pt")
    assert summary.main(["--verify", str(tmp_path / "dense.pt")]) == {str(tmp_path / "dense.pt"): "ok"}
    assert "checksum ok" in capsys.readouterr().out
    obj = torch.load(tmp_path / "dense.pt", weights_only=True)
    for key in ("cfg", "names", "nc", "img_size"):
        with pytest.raises(UserError, match="checksum mismatch"):
            summary.main(["--verify", str(tampered(obj, key, tmp_path / "bad.pt"))])
    data = bytearray((tmp_path / "dense.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of a stored weight
    (tmp_path / "flip.pt").write_bytes(bytes(data))
    with pytest.raises(SystemExit) as e:
        cli(lambda: summary.main(["--verify", str(tmp_path / "flip.pt")]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "flip.pt: checksum mismatch" in lines[0]
    torch.save(sparse.without_crc(obj), tmp_path / "old.pt")  # written before checksums: loads, said
    assert summary.main(["--verify", str(tmp_path / "old.pt")]) == {str(tmp_path / "old.pt"): "no checksum"}


# ----------------------------------------------------------------------------------------------------- ONNX, Darknet
def test_export_cli_onnx_darknet_and_test_py_scores(shapes_ckpt, shapes_tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    out = export.main(["--weights", str(shapes_ckpt), "--include", "sparse", "onnx", "darknet", "--img-size", "64",
                       "--out", str(tmp_path)])
    model, _ = load_model(shapes_ckpt)

    # ONNX: float32 outputs within 1e-4 of PyTorch, batch axis dynamic
    onnx_path = tmp_path / "pruned.onnx"
    assert out["files"]["onnx"]["max_abs_diff"] <= 1e-4
    assert check_onnx(model, onnx_path, img_size=64, batch=3, seed=1) <= 1e-4

    # Darknet: .weights + a cfg with the class count written in; import gives identical outputs
    cfg = tmp_path / "pruned.cfg"
    assert "classes=6" in cfg.read_text()
    back = Darknet(cfg).eval()
    models.load_darknet_weights(back, tmp_path / "pruned.weights")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], back(x)[0])

    # test.py scores the sparse export exactly like the checkpoint it came from
    common = ["--data", str(shapes_tiny), "--img-size", "64", "--batch-size", "8", "--workers", "0",
              "--project", str(tmp_path / "test")]
    a = test.main(["--weights", str(shapes_ckpt), *common, "--name", "ckpt"])
    b = test.main(["--weights", str(tmp_path / "pruned.sparse.pt"), *common, "--name", "sparse"])
    for key in ("map", "map50", "map75", "precision", "recall", "per_class"):
        assert a[key] == b[key], key
    assert b["summary"]["file_bytes"] < 0.2 * a["summary"]["file_bytes"]


# ----------------------------------------------------------------------------------------------------- folding
def kill_filters(model, fraction=0.3, random_bn=False, seed=0):
    """Zero whole filters of every conv but the output convs; ``random_bn``: BN shifts so dead filters emit
    non-zero constants."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, d in enumerate(model.module_defs):
            if d["type"] != "convolutional" or model.module_defs[i + 1]["type"] == "yolo":
                continue
            block = model.module_list[i]
            block.conv.weight[torch.rand(block.conv.out_channels, generator=g) < fraction] = 0
            if random_bn:
                bn = block.bn
                bn.bias.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
                bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 1.5 + 0.5)
    return model


def test_fold_zero_signal_channels_matches_and_reloads(tmp_path):
    """Default BN (zero shift): an empty filter outputs exactly 0, so folding only drops terms that are zero;
    the outputs agree to float32 summation-order rounding."""
    torch.manual_seed(0)
    model = kill_filters(Darknet(TINY, nc=6).eval())
    folded, rep = fold_empty_channels(model, round_to=1)
    assert rep["removed"] > 500 and rep["folded_constants"] == 0
    assert rep["params_after"] < 0.6 * rep["params_before"]
    diff = compare_outputs(model, folded, img_size=96)
    assert diff["raw"] < 1e-5 and diff["prob"] < 1e-6
    empty = sparse.zero_output_channels(folded)
    assert sum(empty.values()) == 0  # tiny: every empty channel could go
    # the folded network is an ordinary cfg + checkpoint
    save_checkpoint(make_checkpoint(folded), tmp_path / "folded.pt")
    again, _ = load_model(tmp_path / "folded.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x)[0], folded(x)[0])
    assert Darknet.from_text(render_cfg(folded)).channels == folded.channels


@pytest.mark.parametrize("round_to", [8, 16])
def test_fold_rounds_widths_to_a_multiple_and_stays_exact(round_to):
    """Every folded conv is a multiple of ``round_to`` wide (or as wide as before), keeps as few empty channels as
    that allows, and computes what the unfolded network computes."""
    torch.manual_seed(0)
    model = kill_filters(Darknet(TINY, nc=6).eval(), fraction=0.6)
    minimal, _ = fold_empty_channels(model, round_to=1)
    folded, rep = fold_empty_channels(model, round_to=round_to)
    convs = [i for i, d in enumerate(model.module_defs) if d["type"] == "convolutional"]
    for i in convs:
        before, least, after = model.channels[i], minimal.channels[i], folded.channels[i]
        assert after == before or after % round_to == 0
        assert least <= after < least + round_to or after == before
    assert sum(model.channels[i] - folded.channels[i] for i in convs) == rep["removed"] > 0
    assert compare_outputs(model, folded, img_size=96)["raw"] < 1e-5
    # the SMALL graph: a shortcut ties two convs' channels, a route concatenates widths
    small = Darknet.from_text(SMALL, name="small.cfg").eval()
    with torch.no_grad():
        small.module_list[5].conv.weight[:13] = 0
    out, _ = fold_empty_channels(small, round_to=round_to)
    assert out.channels[5] == (8 if round_to == 8 else 16)
    assert compare_outputs(small, out, img_size=64)["raw"] < 1e-5


def test_fold_constant_channels_exact_and_border_tolerance():
    """Non-zero constants (BN shift): with ``exact=True`` only channels whose constant folds exactly go (1x1
    readers), and the outputs agree everywhere to 1e-5; by default a constant read by a padded 3x3 conv is folded
    too, exact in the interior but not at the border, where the padded taps never saw it. Measured here (random
    BN statistics, 512 px): the border cells' raw outputs differ by up to ~0.1; cells 5 (stride 32) and 9 (stride
    16) from the edge agree to 1e-5."""
    torch.manual_seed(0)
    model = kill_filters(Darknet(TINY, nc=6).eval(), random_bn=True)
    exact, rep_exact = fold_empty_channels(model, exact=True, round_to=1)
    assert rep_exact["removed"] > 100 and rep_exact["folded_constants"] == rep_exact["removed"]
    assert rep_exact["inexact_constants"] == 0
    assert compare_outputs(model, exact, img_size=96)["raw"] < 1e-5

    approx, rep = fold_empty_channels(model, round_to=1)
    assert rep["removed"] > rep_exact["removed"] and rep["inexact_constants"] > 0
    x = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        (_, pa), (_, pb) = model(x), approx(x)
    margins = {16: 5, 32: 9}
    for a, b in zip(pa, pb):
        d = (a - b).abs().amax((0, 1, 4))
        n, k = d.shape[0], margins[d.shape[0]]
        assert float(d[k:n - k, k:n - k].max()) < 1e-5
        assert float(d.max()) > 1e-3  # the approximation is real, at the border
        assert float(d.max()) < 0.5


SMALL = """[net]
channels=3

# 0
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky
# 1
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky
# 2
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky
# 3
[shortcut]
from=-2
activation=linear
# 4
[maxpool]
size=2
stride=2
# 5
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky
# 6
[upsample]
stride=2
# 7
[route]
layers=-1,3
# 8
[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear
# 9
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
"""


def test_fold_keeps_a_negative_constant_that_a_zero_padded_pool_reads():
    """With ``zero_pad=1`` on tiny's size-2 stride-1 pool a channel of constant c < 0 is max(c, 0) at the border, no
    longer constant: folding keeps it, where with Darknet's padding it stays constant through the pool."""
    from utils.export import channel_graph

    text = open(TINY).read()
    i = text.index("size=2\nstride=1")
    for zero_pad in (0, 1):
        model = Darknet.from_text(text[:i] + f"zero_pad={zero_pad}\n" + text[i:], nc=6).eval()
        conv = model.module_list[10]  # read by the size-2 stride-1 pool (layer 11)
        with torch.no_grad():
            conv.conv.weight[:4] = 0
            conv.bn.bias[:2] = -1.0  # leaky(-1) = -0.1 < 0
            conv.bn.bias[2:4] = 0.0  # exactly 0: goes either way
        g, _, _ = channel_graph(model)
        pooled = g.value[g.ids(11, 4)]
        assert pooled[2:].tolist() == [0.0, 0.0]
        if zero_pad:
            assert torch.isnan(torch.from_numpy(pooled[:2])).all()
        else:
            assert pooled[:2] == pytest.approx([-0.1, -0.1])
        folded, rep = fold_empty_channels(model, exact=True, round_to=1)
        assert folded.channels[10] == model.channels[10] - 2
        assert compare_outputs(model, folded, img_size=64)["raw"] < 1e-5


def test_fold_shortcut_needs_both_sides_and_routes_follow():
    """A channel of a [shortcut] goes only when it is empty on both sides; maxpool, upsample and route carry the
    removal to the convs that read them; ``exact=True`` keeps a non-zero constant that a padded 3x3 conv reads."""
    torch.manual_seed(0)
    model = Darknet.from_text(SMALL, name="small.cfg").eval()
    with torch.no_grad():
        model.module_list[1].conv.weight[[0, 1, 5]] = 0  # 1 and 5 are empty on both sides of the shortcut
        model.module_list[2].conv.weight[[1, 2, 5]] = 0  # 0 and 2 only on one side: they stay
        model.module_list[5].conv.weight[[3, 7]] = 0  # read (upsample, route) by the 1x1 output conv only
    # zero BN shift: empty filters output 0, exact and approximate folding agree
    for exact in (True, False):
        folded, rep = fold_empty_channels(model, exact=exact, round_to=1)
        assert folded.channels[:9] == [8, 6, 6, 6, 6, 14, 14, 20, 18] and rep["folded_constants"] == 0
        assert compare_outputs(model, folded, img_size=64)["raw"] < 1e-5
    # non-zero constants: conv 5 (3x3, padded) reads the shortcut's channels 1 and 5 through the maxpool
    with torch.no_grad():
        for b in (1, 2, 5):
            model.module_list[b].bn.bias.uniform_(-0.5, 0.5)
    exact, rep = fold_empty_channels(model, exact=True, round_to=1)
    assert exact.channels[:9] == [8, 8, 8, 8, 8, 14, 14, 22, 18] and rep["folded_constants"] == 2
    assert compare_outputs(model, exact, img_size=64)["raw"] < 1e-5
    approx, rep = fold_empty_channels(model, round_to=1)
    assert approx.channels[:9] == [8, 6, 6, 6, 6, 14, 14, 20, 18]
    assert rep["folded_constants"] == 4 and rep["inexact_constants"] == 2
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        d = (model(x)[1][0] - approx(x)[1][0]).abs().amax((0, 1, 4))
    assert float(d[2:-2, 2:-2].max()) < 1e-5 < float(d.max())  # the 3x3 conv at stride 2: 2 border pixels


def test_export_cli_fold_reports_map(shapes_tiny, tmp_path):
    from utils.datasets import parse_data_cfg

    names = parse_data_cfg(shapes_tiny)["names"]
    torch.manual_seed(0)
    model = kill_filters(Darknet(TINY, nc=len(names)).eval())
    save_checkpoint(make_checkpoint(model, names), tmp_path / "dead.pt")
    out = export.main(["--weights", str(tmp_path / "dead.pt"), "--include", "sparse", "--fold-empty-channels",
                       "--fold-round-to", "8", "--data", str(shapes_tiny), "--img-size", "64", "--batch-size", "8",
                       "--workers", "0"])
    fold = out["fold"]
    assert fold["removed"] > 500 and fold["max_abs_diff"]["raw"] < 1e-5
    assert fold["map_before"] == pytest.approx(fold["map_after"], abs=1e-6)
    folded, ckpt = load_model(tmp_path / "dead.folded.pt")
    assert ckpt["names"] == names and sum(p.numel() for p in folded.parameters()) == fold["params_after"]
    small, _ = load_model(tmp_path / "dead.folded.sparse.pt")
    assert small.channels == folded.channels
    heads = [i for i, d in enumerate(folded.module_defs[:-1]) if folded.module_defs[i + 1]["type"] == "yolo"]
    assert all(c % 8 == 0 for i, (d, c) in enumerate(zip(folded.module_defs, folded.channels))
               if d["type"] == "convolutional" and i not in heads)
    with pytest.raises(UserError, match="--fold-round-to 0"):
        export.main(["--weights", str(tmp_path / "dead.pt"), "--fold", "--fold-round-to", "0"])
    assert json.loads(json.dumps(out, default=str))["files"]["sparse"]["bytes"] > 0
    assert math.isfinite(out["files"]["sparse"]["ratio"])
