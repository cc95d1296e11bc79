"""my_kd_gan.py end to end: a teacher trained on shapes distilled adversarially into YOLO Nano, scored by test.py;
kill-and-resume continues the game exactly; set-up errors are one line."""
import json
from pathlib import Path

import pytest
import torch

import my_kd_gan
import train
from models import Darknet, make_checkpoint
from utils import engine
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from utils.errors import UserError
from utils.my_utils import gan_parser, parse_args

from .conftest import FAST, StopAt, run_script as run

ROOT = Path(__file__).resolve().parents[1]
TINY = "cfg/yolov3-tiny.cfg"
NANO = "cfg/yolo-nano.cfg"


@pytest.mark.slow
def test_train_teacher_distil_nano_adversarially_and_score_it(shapes_tiny, tmp_path):
    teacher_run = train.main(["--cfg", TINY, "--data", str(shapes_tiny), *FAST, "--epochs", "1",
                              "--project", str(tmp_path), "--name", "teacher"])
    teacher = teacher_run / "weights" / "best.pt"
    proc = run("my_kd_gan.py", "--cfg", NANO, "--teacher-weights", teacher, "--data", shapes_tiny, *FAST,
               "--epochs", "1", "--project", tmp_path, "--name", "gan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "gan"
    assert f"results saved to {run_dir}" in proc.stdout
    # yolov3-tiny detects at strides 32 and 16: Nano's 13x13 and 26x26 prediction maps are paired with its
    assert "GAN pair: student 44 (33x4x4) vs teacher 22 (33x4x4) directly" in proc.stdout
    assert "GAN pair: student 48 (33x2x2) vs teacher 15 (33x2x2) directly" in proc.stdout
    rows = (run_dir / "results.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    row = dict(zip(header, values))
    for k in ("train/adv", "train/D_loss", "train/D_real", "train/D_fake", "gan/stage", "gan/collapsed",
              "metrics/map50"):
        assert k in row, k
    assert float(row["train/adv"]) > 0 and float(row["train/D_loss"]) > 0 and row["gan/stage"] == "1"
    assert 0.0 <= float(row["train/D_real"]) <= 1.0 and 0.0 <= float(row["train/D_fake"]) <= 1.0
    # the exported student is a plain Nano: no discriminator, test.py scores it
    best = run_dir / "weights" / "best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt["cfg"] == (ROOT / NANO).read_text() and "train_state" not in ckpt
    model, _ = load_model(best)
    assert set(ckpt["model"]) == set(model.state_dict())
    last = load_checkpoint(run_dir / "weights" / "last.pt")
    assert set(last["model"]) == set(model.state_dict())
    d_state = last["train_state"]["plugins"]["gan"]["discriminators"]
    assert len(d_state) > 0 and not set(d_state) & set(ckpt["model"])
    proc = run("test.py", "--weights", best, "--data", shapes_tiny, "--img-size", 64, "--batch-size", 8,
               "--workers", 0, "--project", tmp_path / "test", "--name", "gan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "test" / "gan" / "metrics.json").read_text())
    assert 0.0 <= metrics["map50"] <= 1.0 and metrics["labels"] > 0


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(shapes_tiny, tmp_path):
    torch.manual_seed(1)
    save_checkpoint(make_checkpoint(Darknet(TINY, nc=6), list("abcdef")), tmp_path / "teacher.pt")
    # two epochs of the adversarial stage, then stage 2 (a third epoch) after the resume
    common = ["--cfg", TINY, "--teacher-weights", str(tmp_path / "teacher.pt"), "--data", str(shapes_tiny), *FAST,
              "--epochs", "3", "--second-stage", "2", "--deterministic", "--notest", "--project", str(tmp_path)]
    whole = my_kd_gan.main([*common, "--name", "whole"])
    args = parse_args(gan_parser(), [*common, "--name", "killed"])
    args, model, save_dir, _ = engine.prepare(args)
    plugins = my_kd_gan.build_plugins(args, model)
    with pytest.raises(KeyboardInterrupt):
        engine.Trainer(args, model, save_dir, plugins=[*plugins, StopAt(1)]).fit()
    mid = load_checkpoint(save_dir / "weights" / "last.pt")
    assert mid["epoch"] == 0 and mid["train_state"]["plugins"]["gan"]["d_steps"] == 2
    assert my_kd_gan.main(["--resume", str(save_dir)]) == save_dir
    a = load_checkpoint(whole / "weights" / "last.pt")
    b = load_checkpoint(save_dir / "weights" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["train_state"]["model"].items():
        assert torch.equal(v, b["train_state"]["model"][k]), f"raw weights {k} differ after resume"
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"EMA weights {k} differ after resume"
    ga, gb = a["train_state"]["plugins"]["gan"], b["train_state"]["plugins"]["gan"]
    assert ga["d_steps"] == gb["d_steps"] == 4  # 2 batches x 2 stage-1 epochs; stage 2 does not step D
    for k, v in ga["discriminators"].items():
        assert torch.equal(v, gb["discriminators"][k]), f"discriminator {k} differs after resume"
    for i, st in ga["d_optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], gb["d_optimizer"]["state"][i]["momentum_buffer"])
    rows_a = (whole / "results.csv").read_text().splitlines()
    rows_b = (save_dir / "results.csv").read_text().splitlines()
    assert len(rows_b) == 4
    col = rows_a[0].split(",").index("train/D_loss")
    assert [r.split(",")[col] for r in rows_a[1:]] == [r.split(",")[col] for r in rows_b[1:]]


@pytest.mark.slow
def test_setup_errors_are_one_line_and_leave_no_run_folder(shapes_tiny, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(make_checkpoint(Darknet(TINY, nc=6), list("abcdef")), tmp_path / "t6.pt")
    base = ["--cfg", TINY, "--data", str(shapes_tiny), *FAST, "--epochs", "1", "--project", str(tmp_path / "runs")]
    proc = run("my_kd_gan.py", *base, "--teacher-weights", tmp_path / "t6.pt", "--d-kernel-size", "1", "1", "1")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "--d-kernel-size has 3 values for 2 feature pairs" in err[0]
    with pytest.raises(UserError, match="--teacher-weights is required"):
        my_kd_gan.main(base)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
