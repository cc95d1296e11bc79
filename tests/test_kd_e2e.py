"""my_kd.py end to end: train a teacher on shapes, distil it into a student, score the student with test.py."""
import json
from pathlib import Path

import pytest
import torch

import my_kd
import train
from models import Darknet, make_checkpoint, prunable_parameters
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from utils.errors import UserError

from .conftest import FAST, run_script as run

ROOT = Path(__file__).resolve().parents[1]
TINY = "cfg/yolov3-tiny.cfg"
STUDENT = "cfg/yolo-nano.cfg" if (ROOT / "cfg" / "yolo-nano.cfg").is_file() else TINY


@pytest.mark.slow
def test_train_teacher_distil_student_and_score_it(shapes_tiny, tmp_path):
    teacher_run = train.main(["--cfg", TINY, "--data", str(shapes_tiny), *FAST, "--epochs", "1",
                              "--project", str(tmp_path), "--name", "teacher"])
    teacher = teacher_run / "weights" / "best.pt"
    proc = run("my_kd.py", "--cfg", STUDENT, "--teacher-weights", teacher, "--data", shapes_tiny, *FAST,
               "--epochs", "1", "--project", tmp_path, "--name", "kd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "kd"
    assert f"results saved to {run_dir}" in proc.stdout
    assert "distilling features: student" in proc.stdout
    rows = (run_dir / "results.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    for k in ("train/hint", "train/soft", "train/bound", "metrics/map50"):
        assert k in header
    for k in ("train/hint", "train/soft"):
        assert float(values[header.index(k)]) > 0, k
    # the exported student is a plain network of its own cfg: no adaptation layers, test.py scores it
    best = run_dir / "weights" / "best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt["cfg"] == (ROOT / STUDENT).read_text()
    model, _ = load_model(best)
    assert set(ckpt["model"]) == set(model.state_dict())
    proc = run("test.py", "--weights", best, "--data", shapes_tiny, "--img-size", 64, "--batch-size", 8,
               "--workers", 0, "--project", tmp_path / "test", "--name", "kd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "test" / "kd" / "metrics.json").read_text())
    assert 0.0 <= metrics["map50"] <= 1.0 and metrics["labels"] > 0


@pytest.mark.slow
def test_setup_errors_are_one_line_and_leave_no_run_folder(shapes_tiny, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(make_checkpoint(Darknet(TINY, nc=3), ["a", "b", "c"]), tmp_path / "t3.pt")
    save_checkpoint(make_checkpoint(Darknet(TINY, nc=6), list("abcdef")), tmp_path / "t6.pt")
    base = ["--cfg", TINY, "--data", str(shapes_tiny), *FAST, "--epochs", "1", "--project", str(tmp_path / "runs")]
    # through the command line: exit status 2 and one line on stderr
    proc = run("my_kd.py", *base, "--teacher-weights", tmp_path / "t3.pt")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "has 3 classes, student" in err[0], proc.stderr
    cases = [(["--teacher-weights", str(tmp_path / "t6.pt"), "--student-features", "99", "--teacher-features", "8"],
              "--student-features 99: yolov3-tiny.cfg has layers 0..23"),
             (["--teacher-weights", str(tmp_path / "t6.pt"), "--student-features", "8", "--teacher-features", "13"],
              "differ in spatial size at --img-size 64"),
             ([], "--teacher-weights is required")]
    for extra, pattern in cases:
        with pytest.raises(UserError) as e:
            my_kd.main([*base, *extra])
        assert pattern in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_pruned_student_keeps_its_mask(shapes_tiny, tmp_path):
    from utils.pruning import Masks

    torch.manual_seed(0)
    student = Darknet(TINY, img_size=64, nc=6)
    masks = Masks.from_model(student)
    name, param = prunable_parameters(student)[3]
    keep = torch.rand(param.shape) > 0.5
    masks = masks.merged({name: keep})
    masks.apply(student)
    ckpt = make_checkpoint(student, [str(i) for i in range(6)])
    ckpt["masks"] = masks.state_dict()
    save_checkpoint(ckpt, tmp_path / "pruned.pt")
    torch.manual_seed(1)
    save_checkpoint(make_checkpoint(Darknet(TINY, nc=6), [str(i) for i in range(6)]), tmp_path / "teacher.pt")
    run_dir = my_kd.main(["--weights", str(tmp_path / "pruned.pt"), "--teacher-weights", str(tmp_path / "teacher.pt"),
                          "--data", str(shapes_tiny), *FAST, "--epochs", "1", "--notest", "--project", str(tmp_path),
                          "--name", "kd_pruned"])
    out = load_checkpoint(run_dir / "weights" / "best.pt")
    assert set(out["masks"]) == set(masks.state_dict())
    w = out["model"][name]
    assert torch.count_nonzero(w[~keep]) == 0 and torch.count_nonzero(w[keep]) > 0
    assert "sparsity" in (run_dir / "results.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_negligible_distillation_trains_the_student_exactly_as_train_py(shapes_tiny, tmp_path):
    """The control behind every KD benchmark row: with each term weighted 1e-30 (teacher, adaptation layers and all
    three terms built and computed) my_kd.py gives the student train.py's weights bit for bit, so a KD row differs
    from the student-alone row by the distillation terms only (not by initialisation, data order or optimiser).
    Gradient clipping is off: its total norm, summed over the adaptation layers' parameters as well, differs from
    train.py's in the last bits, and SGD carries that on (3.8e-5 after an epoch)."""
    torch.manual_seed(1)
    save_checkpoint(make_checkpoint(Darknet(TINY, nc=6), [str(i) for i in range(6)]), tmp_path / "teacher.pt")
    common = ["--cfg", STUDENT, "--data", str(shapes_tiny), *FAST, "--epochs", "1", "--deterministic", "--notest",
              "--precise-bn", "0", "--grad-clip", "0", "--project", str(tmp_path)]
    alone = train.main([*common, "--name", "alone"])
    kd = my_kd.main([*common, "--name", "kd", "--teacher-weights", str(tmp_path / "teacher.pt"), "--kd-mu", "1",
                     "--hint-weight", "1e-30", "--soft-weight", "1e-30", "--bound-weight", "1e-30"])
    a = load_checkpoint(alone / "weights" / "last.pt")["model"]
    k = load_checkpoint(kd / "weights" / "last.pt")["model"]
    assert set(a) == set(k)
    assert all(torch.equal(a[n], k[n]) for n in a)
    # and the student did train: BN running means start at exactly 0 whatever the seed
    assert any(torch.count_nonzero(a[n]) for n in a if n.endswith("running_mean"))
    rows = (kd / "results.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    assert 0 < float(values[header.index("train/hint")]) < 1e-20  # the terms were computed, at negligible weight
