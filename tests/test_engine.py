"""The training engine and train.py: exact resume, plug-in hooks, DDP, end to end with test.py."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train
from utils import engine
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

from .conftest import StopAt

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--cfg", "cfg/yolov3-tiny.cfg", "--img-size", "64", "--batch-size", "4", "--workers", "0",
        "--nominal-batch-size", "8", "--warmup-epochs", "0.5"]


def run_train(data, tmp_path, name, *extra):
    return train.main([*TINY, "--data", str(data), "--project", str(tmp_path), "--name", name, *extra])


class CountHooks(engine.Plugin):
    name = "count"

    def __init__(self):
        self.steps, self.epochs, self.term_calls = 0, 0, 0

    def extra_loss(self, trainer, imgs, targets, outputs, features):
        self.term_calls += 1
        assert set(features) == {13} and features[13].shape[0] == imgs.shape[0]
        return {"zero": outputs[0].sum() * 0.0}

    feature_layers = (13,)

    def after_step(self, trainer):
        self.steps += 1

    def after_epoch(self, trainer, epoch, metrics):
        self.epochs += 1
        return {"count/steps": self.steps}

    def state_dict(self):
        return {"steps": self.steps}


class OwnParameter(engine.Plugin):
    """A parameter outside the model, trained through the loss by the plug-in's own plain SGD."""

    name = "own"

    def __init__(self, lr):
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.optimizer = torch.optim.SGD([self.w], lr=lr)

    def optimizers(self):
        return [self.optimizer]

    def extra_loss(self, trainer, imgs, targets, outputs, features):
        return {"own": self.w.square().sum()}


def test_the_engine_steps_a_plugin_optimiser_with_the_weights(shapes_tiny, tmp_path):
    """16 images in batches of 4 accumulated to 8 (no warm-up, which accumulates fewer): 2 steps, each on the
    gradient of 2 batches of w² x batch size (16 w): w -> w (1 - 16 lr)², exactly; its gradient cleared."""
    args = train.parse_args(train.train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                                                  "--epochs", "1", "--notest", "--amp", "off", "--warmup-epochs", "0"])
    args, model, save_dir, _ = engine.prepare(args)
    own = OwnParameter(lr=0.01)
    engine.Trainer(args, model, save_dir, plugins=[own]).fit()
    assert torch.allclose(own.w.detach(), torch.tensor([1.0, -2.0]) * (1 - 16 * 0.01) ** 2, rtol=1e-6)
    assert own.w.grad is None


def _average_on_rank(rank, store, out):
    import types

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
    if rank == 0:
        b.grad = torch.tensor([4.0, 6.0])  # rank 1 has no gradient for b: it counts as zeros
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    engine.Trainer.average_gradients(types.SimpleNamespace(world=2), optimizer)
    torch.save({"a": a.grad, "b": b.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_plugin_optimiser_gradients_are_averaged_over_processes(tmp_path):
    """Two gloo processes: what DDP does for the model's gradients, the engine does for a plug-in optimiser's."""
    torch.multiprocessing.spawn(_average_on_rank, args=(str(tmp_path / "store"), str(tmp_path / "grads")), nprocs=2)
    for rank in (0, 1):
        g = torch.load(tmp_path / f"grads.{rank}")
        assert torch.equal(g["a"], torch.tensor([1.5, 3.0, 4.5])) and torch.equal(g["b"], torch.tensor([2.0, 3.0]))


def test_resume_is_exact(shapes_tiny, tmp_path, capsys):
    common = ["--epochs", "2", "--deterministic", "--seed", "3"]
    whole = run_train(shapes_tiny, tmp_path, "whole", *common)
    # the same run, killed before its second epoch, then resumed from its folder
    args = train.parse_args(train.train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                                                  "--name", "killed", *common])
    args, model, save_dir, _ = engine.prepare(args)
    with pytest.raises(KeyboardInterrupt):
        engine.Trainer(args, model, save_dir, plugins=[StopAt(1)]).fit()
    assert load_checkpoint(save_dir / "weights" / "last.pt")["epoch"] == 0
    capsys.readouterr()
    resumed = train.main(["--resume", str(save_dir), "--epochs", "5", "--workers", "0"])  # --epochs: ignored, said
    assert resumed == save_dir
    assert "ignored: --epochs 5 (the run has 2)" in capsys.readouterr().out
    a = load_checkpoint(whole / "weights" / "last.pt")
    b = load_checkpoint(save_dir / "weights" / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    for key in ("model",):
        for k, v in a[key].items():
            assert torch.equal(v, b[key][k]), f"{key}.{k} differs after resume"
    for k, v in a["train_state"]["model"].items():
        assert torch.equal(v, b["train_state"]["model"][k]), f"raw weights {k} differ after resume"
    rows = (save_dir / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + one row per epoch, the resumed epoch appended once


def test_plugin_hooks_features_and_extra_columns(shapes_tiny, tmp_path):
    args = train.parse_args(train.train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                                                  "--epochs", "1"])
    args, model, save_dir, _ = engine.prepare(args)
    hooks = CountHooks()
    trainer = engine.Trainer(args, model, save_dir, plugins=[hooks])
    trainer.fit()
    n_batches = len(trainer.train_loader)
    assert hooks.term_calls == n_batches and hooks.epochs == 1
    assert 1 <= hooks.steps <= n_batches
    header = (save_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert "train/zero" in header and "count/steps" in header and "metrics/map50" in header
    ckpt = load_checkpoint(save_dir / "weights" / "last.pt")
    assert ckpt["train_state"]["plugins"]["count"] == {"steps": hooks.steps}
    assert (save_dir / "results.png").is_file() and (save_dir / "args.yaml").is_file()


def test_results_png_is_drawn_after_the_last_epoch_and_at_most_once_a_minute(tmp_path, monkeypatch):
    """results.csv after every epoch; the figure (about a second on 2 cores) only after the last epoch or once
    ``PLOT_EVERY_S`` have passed since the last one."""
    drawn = []
    monkeypatch.setattr(engine, "plot_results", drawn.append)
    run = SimpleNamespace(rows=[{"epoch": 1, "lr": 0.01}], save_dir=tmp_path, plotted_at=time.monotonic())
    engine.Trainer.write_results(run, final=False)
    assert drawn == [] and (tmp_path / "results.csv").read_text().splitlines() == ["epoch,lr", "1,0.01"]
    run.rows.append({"epoch": 2, "lr": 0.02})
    run.plotted_at -= engine.PLOT_EVERY_S
    engine.Trainer.write_results(run, final=False)
    assert drawn == [tmp_path / "results.csv"] and time.monotonic() - run.plotted_at < 1
    engine.Trainer.write_results(run, final=True)
    assert len(drawn) == 2 and len((tmp_path / "results.csv").read_text().splitlines()) == 3


def test_checkpoint_for_another_cfg_is_one_line_error(shapes_tiny, tmp_path):
    save_dir = run_train(shapes_tiny, tmp_path, "tiny", "--epochs", "1", "--notest")
    proc = subprocess.run([sys.executable, "train.py", "--cfg", "cfg/yolov3.cfg", "--data", str(shapes_tiny),
                           "--weights", str(save_dir / "weights" / "last.pt"), "--epochs", "1",
                           "--project", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0] and "yolov3.cfg" in err[0], proc.stderr


def test_non_finite_losses_stop_the_run_and_last_pt_keeps_the_last_finite_epoch(shapes_tiny, tmp_path):
    class Explode(engine.Plugin):
        name = "nan"

        def extra_loss(self, trainer, imgs, targets, outputs, features):
            return {"nan": outputs[0].sum() * (float("nan") if trainer.epoch == 1 else 0.0)}

    args = train.parse_args(train.train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                                                  "--epochs", "3", "--eval-from", "1"])
    args, model, save_dir, _ = engine.prepare(args)
    engine.MAX_BAD_STEPS, old = 3, engine.MAX_BAD_STEPS
    try:
        trainer = engine.Trainer(args, model, save_dir, plugins=[Explode()])
        with pytest.raises(UserError, match="consecutive non-finite losses in epoch 2") as e:
            trainer.fit()
    finally:
        engine.MAX_BAD_STEPS = old
    assert "last.pt holds epoch 1, the last finite state" in str(e.value)
    ckpt = load_checkpoint(save_dir / "weights" / "last.pt")
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["train_state"]["model"].values()
                                      if v.is_floating_point())


class Corrupt(engine.Plugin):
    """Puts an infinite BN variance into the trained weights during epoch ``at`` (0-based)."""

    name = "corrupt"

    def __init__(self, at):
        self.at = at

    def after_step(self, trainer):
        if trainer.epoch == self.at:
            bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))


def finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_non_finite_bn_statistic_stops_the_run_before_it_is_saved(shapes_tiny, tmp_path):
    """Issue 30: the state is checked before every save; last.pt and best.pt keep the last finite epoch."""
    args = train.parse_args(train.train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                                                  "--epochs", "3", "--eval-from", "1", "--precise-bn", "0"])
    args, model, save_dir, _ = engine.prepare(args)
    with pytest.raises(UserError, match=r"non-finite values after epoch 2 \(weights module_list\.\d+\.bn\.running_var"
                       ) as e:
        engine.Trainer(args, model, save_dir, plugins=[Corrupt(at=1)]).fit()
    assert "last.pt holds epoch 1, the last finite state, best.pt epoch 1" in str(e.value) and "\n" not in str(e.value)
    last = load_checkpoint(save_dir / "weights" / "last.pt")
    best = load_checkpoint(save_dir / "weights" / "best.pt")
    assert last["epoch"] == best["epoch"] == 0
    assert finite(last["model"]) and finite(last["train_state"]["model"]) and finite(best["model"])


def test_a_non_finite_validation_loss_never_ends_in_success(shapes_tiny, tmp_path, monkeypatch):
    evaluate = engine.evaluate

    def nan_loss(*a, **k):
        metrics = evaluate(*a, **k)
        metrics["loss"]["obj"] = float("nan")
        return metrics

    monkeypatch.setattr(engine, "evaluate", nan_loss)
    with pytest.raises(UserError, match=r"after epoch 1 \(validation loss obj\).*no last.pt was written, no best.pt"):
        run_train(shapes_tiny, tmp_path, "nanval", "--epochs", "1")
    assert not (tmp_path / "nanval" / "weights" / "last.pt").exists()


def test_a_diverged_run_exits_non_zero_without_results_saved(shapes_tiny, tmp_path):
    """The reported case: a learning rate that blows the network up ends with exit 2, not 'results saved'."""
    proc = subprocess.run([sys.executable, "train.py", *TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                           "--name", "diverged", "--epochs", "3", "--lr0", "1e6", "--no-amp", "--precise-bn", "0",
                           "--eval-from", "1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "results saved" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'diverged'}: non-finite values")
    for name in ("last.pt", "best.pt"):
        f = tmp_path / "diverged" / "weights" / name
        assert not f.exists() or finite(load_checkpoint(f)["model"])


@pytest.mark.slow
def test_train_then_test_end_to_end(shapes_tiny, tmp_path):
    # the layout pinned: --memory-format auto picks by a timing, and the two layouts' numerics part after 2 epochs
    # (mAP@0.5 0.001 contiguous, 0 channels_last here), which made the mAP > 0 check below depend on the timing
    proc = subprocess.run([sys.executable, "train.py", *TINY, "--data", str(shapes_tiny), "--epochs", "2",
                           "--memory-format", "contiguous", "--project", str(tmp_path), "--name", "e2e"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "e2e"
    assert f"results saved to {run}" in proc.stdout
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    best = run / "weights" / "best.pt"
    ckpt = load_checkpoint(best)
    assert "train_state" not in ckpt and ckpt["nc"] == len(ckpt["names"])
    proc = subprocess.run([sys.executable, "test.py", "--weights", str(best), "--data", str(shapes_tiny),
                           "--img-size", "64", "--project", str(tmp_path), "--name", "test"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one evaluation rule (issue 27): test.py scores best.pt as the engine scored that epoch (fp32, same batches),
    # whatever precision trained it
    scored = json.loads((tmp_path / "test" / "metrics.json").read_text())
    row = next(r for r in csv.DictReader((run / "results.csv").open()) if int(r["epoch"]) == ckpt["epoch"] + 1)
    assert float(row["metrics/map50"]) > 0
    assert scored["map50"] == pytest.approx(float(row["metrics/map50"]), abs=1e-4)
    assert scored["map"] == pytest.approx(float(row["metrics/map"]), abs=1e-4)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(shapes_tiny, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "train.py", *TINY, "--data", str(shapes_tiny), "--epochs", "1", "--device", "cpu",
           "--project", str(tmp_path), "--name", "ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "ddp2").exists(), "both ranks created a run folder"
    ckpt = load_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")
    from models import Darknet

    model = Darknet.from_text(ckpt["cfg"], name="ddp", nc=ckpt["nc"])
    model.load_state_dict(ckpt["model"])
    assert all(not k.startswith("module.") for k in ckpt["model"])


def test_precise_bn_changes_only_the_saved_bn_statistics(shapes_tiny, tmp_path):
    """--precise-bn N recomputes the evaluated (EMA) model's BN statistics before evaluation; weights are untouched."""
    common = ["--epochs", "1", "--deterministic", "--seed", "1"]
    a = load_checkpoint(run_train(shapes_tiny, tmp_path, "off", *common, "--precise-bn", "0") / "weights" / "last.pt")
    b = load_checkpoint(run_train(shapes_tiny, tmp_path, "on", *common, "--precise-bn", "2") / "weights" / "last.pt")
    stats = [k for k in a["model"] if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k, v in a["model"].items():
        if k in stats:
            continue
        assert torch.equal(v, b["model"][k]) or k.endswith("num_batches_tracked"), f"{k} changed"
    assert any(not torch.allclose(a["model"][k], b["model"][k]) for k in stats)
    assert b["model"][stats[0].replace("running_mean", "num_batches_tracked")].item() == 2


@pytest.mark.parametrize("choice, want", [("contiguous", torch.contiguous_format), ("auto", torch.channels_last)])
def test_memory_format_flag_reaches_the_trainer(shapes_tiny, tmp_path, choice, want, monkeypatch):
    from utils import memory_format
    from utils.my_utils import parse_args, train_parser

    monkeypatch.setenv("YOLO_COMPRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(memory_format, "step_rates", lambda *a: {"channels_last": 2.0, "contiguous": 1.0})
    args = parse_args(train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path), "--name", choice,
                                       "--epochs", "1", "--memory-format", choice])
    args, model, save_dir, resume = engine.prepare(args)
    trainer = engine.Trainer(args, model, save_dir, resume_ckpt=resume)
    trainer.setup()
    assert trainer.fmt == want  # auto: the layout the (patched) probe measured faster
    w = next(m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert w.is_contiguous(memory_format=want)


def test_progressive_img_size_grows_linearly_to_the_final_size():
    sizes = [engine.progressive_img_size(e, 5, 128, 256, 32) for e in range(5)]
    assert sizes == [128, 160, 192, 224, 256]
    assert [engine.progressive_img_size(e, 3, 100, 256, 32) for e in range(3)] == [96, 160, 256]  # stride multiples
    assert {engine.progressive_img_size(e, 4, 0, 256, 32) for e in range(4)} == {256}  # off
    assert engine.progressive_img_size(0, 1, 128, 256, 32) == 256  # one epoch: the final size


def test_img_size_start_below_one_is_a_fraction_of_img_size():
    assert engine.start_img_size(0.5, 256, 32) == 128
    assert engine.start_img_size(0.6, 256, 32) == 128  # 153.6 rounded down to the stride
    assert engine.start_img_size(0.01, 256, 32) == 32  # never below the stride
    assert engine.start_img_size(160, 256, 32) == 160  # pixels
    assert engine.start_img_size(0, 256, 32) == 0  # off
    assert engine.start_img_size(0.5, 32, 32) == 0  # a fraction that leaves nothing to grow: off, not an error


def test_img_size_start_trains_each_epoch_at_its_size(shapes_tiny, tmp_path, monkeypatch):
    """--img-size-start 0.5 (32 px) with --img-size 64 over 2 epochs: the loader's worker builds 32-px batches, then
    64-px ones (no resizing after the loader), the network sees them; the evaluation stays at 64."""
    seen, loaded = [], []
    to_input = engine.Trainer.to_input
    monkeypatch.setattr(engine.Trainer, "to_input", lambda self, imgs: loaded.append(imgs.shape[-1]) or
                        to_input(self, imgs))
    args = train.parse_args(train.train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                                                  "--epochs", "2", "--img-size-start", "0.5", "--precise-bn", "0",
                                                  "--workers", "1"])
    args, model, save_dir, _ = engine.prepare(args)
    # the model's own passes only: copies (the memory-format probe's, the EMA) carry the hook too
    model.register_forward_pre_hook(lambda m, inp: seen.append((m.training, inp[0].shape[-1])) if m is model else None)
    engine.Trainer(args, model, save_dir).fit()
    train_sizes = [s for training, s in seen if training]
    n = len(train_sizes) // 2
    assert train_sizes == [32] * n + [64] * n
    assert loaded == train_sizes
    assert load_checkpoint(save_dir / "weights" / "last.pt")["epoch"] == 1


def test_img_size_start_not_below_img_size_is_one_line_error(shapes_tiny, tmp_path):
    with pytest.raises(UserError, match="--img-size-start 64 must be .* below --img-size 64"):
        run_train(shapes_tiny, tmp_path, "bad", "--epochs", "1", "--img-size-start", "64")


def test_img_size_off_the_stride_is_one_line_error_before_training(shapes_tiny, tmp_path):
    """100 px is no multiple of 32: the heads' grids would not line up (a route's maps differ by a pixel)."""
    with pytest.raises(UserError, match="^--img-size 100 is not a multiple of the model's stride 32$"):
        run_train(shapes_tiny, tmp_path, "bad", "--epochs", "1", "--img-size", "100")
    assert not (tmp_path / "bad" / "weights" / "last.pt").exists()


@pytest.mark.parametrize("native, want", [(False, "fp32"), (True, "bf16")])
def test_the_header_args_yaml_and_results_csv_say_what_was_chosen(shapes_tiny, tmp_path, monkeypatch, capsys,
                                                                   native, want):
    """--amp auto on a CPU with and without native bf16 (torch's check patched): the header, args.yaml and every
    results.csv row name the precision and the memory format chosen, with the reason."""
    import yaml

    from utils import memory_format, torch_utils

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    monkeypatch.setattr(torch_utils, "cpu_isa", lambda native=True: "AMX" if native else "AVX2")
    monkeypatch.setenv("YOLO_COMPRESSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(memory_format, "step_rates", lambda *a: {"channels_last": 15.1, "contiguous": 13.0})
    save_dir = run_train(shapes_tiny, tmp_path, want, "--epochs", "1")
    out = capsys.readouterr().out
    reason = "CPU has native bf16: AMX" if native else "CPU has no native bf16: AVX2"
    assert f"precision {want} ({reason})" in out
    assert "memory format channels_last (15.1 vs 13.0 img/s contiguous, probed now)" in out
    saved = yaml.safe_load((save_dir / "args.yaml").read_text())
    assert (saved["amp"], saved["precision_chosen"], saved["memory_format_chosen"]) == ("auto", want, "channels_last")
    with open(save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dtype"], r["memory_format"]) for r in rows] == [(want, "channels_last")]


def test_a_run_saved_before_amp_resumes(shapes_tiny, tmp_path):
    """A last.pt whose args say no_amp and lack the later keys (written before --amp and args_version existed)
    resumes in fp32 and finishes."""
    from utils.checkpoint import save_checkpoint

    from utils.my_utils import parse_args, train_parser

    args = parse_args(train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path), "--name", "old",
                                       "--epochs", "2", "--amp", "off", "--notest"])
    args, model, save_dir, _ = engine.prepare(args)
    with pytest.raises(KeyboardInterrupt):
        engine.Trainer(args, model, save_dir, plugins=[StopAt(1)]).fit()
    last = save_dir / "weights" / "last.pt"
    ckpt = load_checkpoint(last)
    for k in ("amp", "precision_chosen", "memory_format_chosen", "args_version", "img_size_start", "lr_schedule",
              "memory_format", "eval_from", "autoanchor", "precise_bn"):  # keys a run of then did not save
        del ckpt["args"][k]
    ckpt["args"]["no_amp"] = True
    save_checkpoint(ckpt, last)
    train.main(["--resume", str(save_dir)])
    with open(save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["dtype"] == "fp32"


def test_best_pt_is_written_before_the_last_pt_that_records_its_fitness(shapes_tiny, tmp_path, monkeypatch):
    """Issue 30: a kill between the two writes must not leave a last.pt whose best_fitness names a best.pt that was
    never written; a kill while last.pt is written after a new best then resumes that epoch again."""
    written = []
    for name in ("save_checkpoint", "save_compact"):  # last.pt, best.pt
        save = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda obj, path, save=save: written.append((Path(path).name, obj["epoch"]))
                            or save(obj, path))
    run_train(shapes_tiny, tmp_path, "order", "--epochs", "2", "--precise-bn", "0", "--eval-from", "1")
    bests = [e for name, e in written if name == "best.pt"]
    assert bests and [e for name, e in written if name == "last.pt"] == [0, 1]
    for e in bests:
        assert written.index(("best.pt", e)) < written.index(("last.pt", e))


# ------------------------------------------------------------------------------------- one run per folder, saves
def test_a_second_run_on_a_live_runs_folder_stops_and_changes_nothing(shapes_tiny, tmp_path):
    from utils import runlock

    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "args.yaml").write_text("the live run's\n")
    (folder / runlock.LOCK_NAME).write_text(f"{os.getppid()}\n{__import__('socket').gethostname()}\nnow\n")
    proc = subprocess.run([sys.executable, "train.py", *TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                           "--name", "live", "--exist-ok", "--epochs", "1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"in use by another run (pid {os.getppid()}" in proc.stderr
    assert (folder / "args.yaml").read_text() == "the live run's\n" and not (folder / "results.csv").exists()


def test_a_finished_folder_is_reused_and_stale_temporaries_are_removed(shapes_tiny, tmp_path, capsys):
    from utils import runlock

    save_dir = run_train(shapes_tiny, tmp_path, "again", "--epochs", "1", "--notest")
    assert not (save_dir / runlock.LOCK_NAME).exists()  # released when the run ended
    orphan = save_dir / "weights" / ".last.pt.k1ll3d.tmp"
    orphan.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    run_train(shapes_tiny, tmp_path, "again", "--epochs", "1", "--notest", "--exist-ok")
    assert not orphan.exists() and "removed temporary files" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "results.csv"])
def test_a_kill_during_any_save_leaves_the_previous_file_and_the_run_resumes(shapes_tiny, tmp_path, monkeypatch,
                                                                            name):
    """Issue 30: a kill while the second epoch writes ``name`` (at its rename, the last moment) leaves the first
    epoch's file whole and no temporary file; --resume then finishes the run with one results row per epoch."""
    from utils import checkpoint

    replace, seen = os.replace, []

    def killed(src, dst):
        if Path(dst).name == name:
            seen.append(dst)
            if len(seen) == 2:
                raise KeyboardInterrupt
        return replace(src, dst)

    common = ["--epochs", "2", "--eval-from", "1", "--precise-bn", "0", "--lr0", "0"]  # lr 0: every epoch ties
    monkeypatch.setattr(checkpoint.os, "replace", killed)
    if name == "best.pt":
        monkeypatch.setattr(engine, "fitness_of", lambda metrics: float(len(seen)))  # each epoch a new best
    with pytest.raises(KeyboardInterrupt):
        run_train(shapes_tiny, tmp_path, "kill", *common)
    save_dir = tmp_path / "kill"
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    assert not list(save_dir.rglob(".*.tmp"))
    if name == "results.csv":
        assert len((save_dir / "results.csv").read_text().strip().splitlines()) == 2  # header + epoch 1
    else:
        assert load_checkpoint(save_dir / "weights" / name)["epoch"] == 0
    train.main(["--resume", str(save_dir), "--workers", "0"])
    assert load_checkpoint(save_dir / "weights" / "last.pt")["epoch"] == 1
    assert len((save_dir / "results.csv").read_text().strip().splitlines()) == 3


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_is_intact(tmp_path, monkeypatch):
    import errno
    import io

    from utils import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"epoch": 0, "w": torch.zeros(1000)}, path)
    before = path.read_bytes()

    def full(obj, f):
        if not isinstance(f, io.BytesIO):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return torch.serialization.save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(UserError, match=r"last.pt: No space left on device: the file needs 0.0 MiB, .* MiB are free; "
                                        r"the previous last.pt is intact") as e:
        checkpoint.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    assert "\n" not in str(e.value) and path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_lr_schedule_inverse_exp_reaches_the_optimiser(shapes_tiny, tmp_path):
    """--lr-schedule inverse-exp (the original project's 1 - 10^(-4 (1 - e/E))) drives the learning rate of a run,
    as results.csv's lr column (after each epoch's scheduler step) shows."""
    save_dir = run_train(shapes_tiny, tmp_path, "invexp", "--epochs", "3", "--notest", "--warmup-epochs", "0",
                         "--lr-schedule", "inverse-exp", "--lr0", "0.02")
    with open(save_dir / "results.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == pytest.approx([0.02 * (1 - 10 ** (-4 * (1 - e / 3))) for e in (1, 2, 3)], rel=1e-6)


def test_plugins_see_the_run_through_a_narrow_read_only_context(shapes_tiny, tmp_path):
    seen = {}

    class Peek(engine.Plugin):
        name = "peek"

        def setup(self, trainer):
            seen.update(img_size=trainer.img_size, seed=trainer.seed, device=trainer.device, epochs=trainer.epochs)
            for name in ("args", "scheduler", "plugins"):  # the Trainer's insides
                with pytest.raises(AttributeError, match=f"a plug-in sees model, device.* not '{name}'"):
                    getattr(trainer, name)
            with pytest.raises(AttributeError, match="read-only"):
                trainer.epochs = 3
            seen["ok"] = True

    args = train.parse_args(train.train_parser(), [*TINY, "--data", str(shapes_tiny), "--project", str(tmp_path),
                                                  "--epochs", "1", "--notest", "--seed", "5"])
    args, model, save_dir, _ = engine.prepare(args)
    trainer = engine.Trainer(args, model, save_dir, plugins=[Peek()])
    trainer.setup()
    assert seen == {"img_size": 64, "seed": 5, "device": torch.device("cpu"), "epochs": 1, "ok": True}
    assert trainer.epochs == 1
