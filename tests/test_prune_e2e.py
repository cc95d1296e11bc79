"""prune.py --lth end to end on the tiny shapes set: rounds.csv/rounds.png, checkpoints with masks and rewind
weights, exact sparsity per round, rewinding bit for bit, kill during round 2 + resume == uninterrupted, and test.py
scoring the final checkpoint."""
import csv
from pathlib import Path

import pytest
import torch

import prune
import test
from utils import pruning, sparse
from utils.checkpoint import load_checkpoint
from models import Darknet
from utils.pruning import (LotteryTicket, Masks, PruneRun, expected_alive, filter_consumers, filter_rows,
                           magnitude_prune, unit_kernels)

from .conftest import run_script, script_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--cfg", "cfg/yolov3-tiny.cfg", "--img-size", "64", "--batch-size", "8", "--workers", "0",
        "--nominal-batch-size", "8", "--warmup-epochs", "0.5"]  # 16 images: 2 optimiser steps per epoch
LTH = ["--lth", "--epochs", "3", "--rewind-epoch", "1", "--scope", "global", "--prune-rate", "0.2", "--deterministic",
       "--seed", "3"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(shapes_tiny, tmp_path_factory):
    """An uninterrupted 3-round run, through the command line."""
    project = tmp_path_factory.mktemp("prune")
    out = run_script("prune.py", *TINY, *LTH, "--rounds", "3", "--data", shapes_tiny, "--project", project,
                     "--name", "whole", env=script_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "round 3/3 (lth-global): sparsity 48.80%" in out.stdout  # the progress line of the last round
    return project / "whole"


def rows_of(run):
    with open(run / "rounds.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_rounds_csv_png_and_exact_sparsity(reference):
    rows = rows_of(reference)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    assert set(pruning.ROUND_COLUMNS) <= set(rows[0])
    assert (reference / "rounds.png").stat().st_size > 1000
    masks = [None] + [Masks.from_state_dict(load_checkpoint(reference / f"round_{r}/weights/last.pt")["masks"])
                      for r in (1, 2, 3)]
    n = masks[1].numel()
    for r in (1, 2, 3):
        assert masks[r].alive() == expected_alive(n, 0.2, r)
        assert float(rows[r]["sparsity"]) == pytest.approx(1 - 0.8 ** r, abs=1e-5)
        assert int(rows[r]["alive_params"]) == int(rows[r]["params"]) - masks[r].pruned()
        assert int(rows[r]["sparse_macs"]) < int(rows[r - 1]["sparse_macs"]) <= int(rows[r]["dense_macs"])
        assert 0 <= float(rows[r]["map50"]) <= 1 and float(rows[r]["seconds"]) > 0
        if r > 1:
            assert all(not (masks[r][k] & ~masks[r - 1][k]).any() for k in masks[r])  # pruned stays pruned
    assert float(rows[0]["sparsity"]) == 0 and rows[0]["kind"] == "dense"


def test_checkpoints_hold_masks_rewind_and_exact_zeros(reference):
    assert "all prunable" in (reference / "round_3" / "masks.txt").read_text()
    rewind0 = load_checkpoint(reference / "round_0/weights/last.pt")["rewind"]
    assert rewind0["epoch"] == 1 and rewind0["step"] > 0  # captured once, after the first dense epoch
    for r, name in ((1, "last.pt"), (2, "last.pt"), (3, "last.pt"), (3, "best.pt")):
        ckpt = load_checkpoint(reference / f"round_{r}/weights/{name}")
        masks = Masks.from_state_dict(ckpt["masks"])
        for k, v in ckpt["rewind"]["model"].items():  # the same θ_k in every round (no drift)
            if name == "best.pt" and k in masks:  # best.pt keeps θ_k of the survivors only (pruned: +0.0)
                m = masks[k]
                assert torch.equal(v[m], rewind0["model"][k][m]) and not v[~m].any()
            else:
                assert torch.equal(v, rewind0["model"][k])
        states = [ckpt["model"]] + ([ckpt["train_state"]["model"]] if name == "last.pt" else [])
        for state in states:
            for k, m in masks.items():
                assert not state[k][~m].any(), f"round {r} {name}: pruned weights of {k} are not zero"

def test_pruned_best_pt_stores_no_zeros(reference):
    """The file shrinks: round 3's best.pt (48.8% sparse) holds its weights and θ_k as bitmask + survivors."""
    best3, best0 = reference / "round_3/weights/best.pt", reference / "round_0/weights/best.pt"
    assert sparse.is_compact(torch.load(best3, weights_only=True))
    assert not sparse.is_compact(torch.load(best0, weights_only=True))  # dense round: nothing to leave out
    assert best3.stat().st_size < 0.65 * best0.stat().st_size  # dense model + θ_k; before: 1.13x, now ~0.56x


def test_a_compact_best_pt_is_pruned_further(reference, shapes_tiny, tmp_path):
    """prune.py --lth --weights of round 3's compact best.pt: round 0 is that network (not retrained), round 1 prunes
    a fifth of its survivors, inside its mask, and rewinds them to its θ_k."""
    best = reference / "round_3/weights/best.pt"
    run = prune.main([*TINY, *LTH, "--rounds", "1", "--weights", str(best), "--data", str(shapes_tiny),
                      "--project", str(tmp_path), "--name", "further"])
    rows = rows_of(run)
    assert rows[0]["kind"] == "given" and float(rows[0]["sparsity"]) == pytest.approx(0.488, abs=1e-4)
    assert float(rows[1]["sparsity"]) == pytest.approx(1 - 0.512 * 0.8, abs=1e-4)
    given = load_checkpoint(best)
    new = load_checkpoint(run / "round_1/weights/last.pt")
    for k, m in given["masks"].items():
        assert not (new["masks"][k] & ~m).any()  # pruned stays pruned
        assert torch.equal(new["rewind"]["model"][k][new["masks"][k]], given["rewind"]["model"][k][new["masks"][k]])


def test_round_2_prunes_round_1_weights_and_rewinds_bit_for_bit(reference):
    run = PruneRun(reference)
    strategy = LotteryTicket(run.load_args(), run)
    rewind = load_checkpoint(reference / "round_0/weights/last.pt")["rewind"]["model"]
    prev = load_checkpoint(reference / "round_1/weights/last.pt")
    model, plugins = strategy.begin_round(2)  # the state round 2 started from, rebuilt from round 1's files
    masks = plugins[0].masks
    saved = Masks.from_state_dict(load_checkpoint(reference / "round_2/weights/last.pt")["masks"])
    assert all(torch.equal(masks[k], saved[k]) for k in saved)
    # the mask is magnitude pruning of round 1's final weights
    recomputed = magnitude_prune(prev["model"], Masks.from_state_dict(prev["masks"]), 0.2, "global")
    assert all(torch.equal(recomputed[k], masks[k]) for k in masks)
    state = model.state_dict()
    for k, v in rewind.items():
        if k in masks:
            m = masks[k]
            assert torch.equal(state[k][m].view(torch.int32), v[m].view(torch.int32))  # bit for bit
            assert not state[k][~m].any()
        else:
            assert torch.equal(state[k], v), k


def test_test_py_scores_the_final_checkpoint(reference, shapes_tiny, tmp_path):
    best = reference / "round_3/weights/best.pt"
    report = test.main(["--weights", str(best), "--data", str(shapes_tiny), "--img-size", "64", "--workers", "0",
                        "--project", str(tmp_path), "--name", "t"])
    assert 0 <= report["map50"] <= 1 and (tmp_path / "t" / "metrics.json").is_file()
    summary = report["summary"]
    last = rows_of(reference)[-1]
    assert summary["sparsity"] == pytest.approx(float(last["sparsity"]), abs=1e-4)
    assert summary["sparse_macs"] == pytest.approx(int(last["sparse_macs"]), rel=1e-6)
    assert summary["nonzero_params"] <= int(last["alive_params"]) and summary["sparse_macs"] < summary["macs"]


def test_killed_during_round_2_and_resumed_equals_uninterrupted(reference, shapes_tiny, tmp_path, monkeypatch):
    """Killed in round 2 (of 2) after its first epoch was saved, then resumed: round 2 ends with the same masks and
    weights as round 2 of the uninterrupted reference (the round count does not change rounds 0-2)."""

    def kill(self, trainer, epoch):  # a kill at the start of round 2's second epoch (its first, epoch 2, is saved)
        if trainer.save_dir.name == "round_2" and epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pruning.MaskPlugin, "before_epoch", kill)
    with pytest.raises(KeyboardInterrupt):
        prune.main([*TINY, *LTH, "--rounds", "2", "--data", str(shapes_tiny), "--project", str(tmp_path), "--name",
                    "killed"])
    monkeypatch.undo()
    run = tmp_path / "killed"
    assert [int(r["round"]) for r in rows_of(run)] == [0, 1]
    assert load_checkpoint(run / "round_2/weights/last.pt")["epoch"] == 1
    done = {p: p.stat().st_mtime_ns for r in (0, 1) for p in (run / f"round_{r}").rglob("*.pt")}

    assert prune.main(["--resume", str(run)]) == run
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished rounds are not redone
    assert [int(r["round"]) for r in rows_of(run)] == [0, 1, 2]
    for r in (1, 2):
        a = load_checkpoint(reference / f"round_{r}/weights/last.pt")
        b = load_checkpoint(run / f"round_{r}/weights/last.pt")
        assert a["epoch"] == b["epoch"] == 2
        for k in a["masks"]:
            assert torch.equal(a["masks"][k], b["masks"][k]), f"round {r}: mask {k} differs"
        for key, sa, sb in (("model", a["model"], b["model"]),
                            ("raw", a["train_state"]["model"], b["train_state"]["model"])):
            for k, v in sa.items():
                assert torch.equal(v, sb[k]), f"round {r}: {key} {k} differs after resume"
    for x, y in zip(rows_of(reference)[:3], rows_of(run)):
        assert {k: x[k] for k in ("sparsity", "alive_params", "sparse_macs", "map50", "map")} == \
               {k: y[k] for k in ("sparsity", "alive_params", "sparse_macs", "map50", "map")}


def test_pruned_rounds_continue_the_schedule_from_the_rewind_epoch(reference):
    """--retrain-schedule continue (the default): θ_k is taken after epoch 1 of 3, so each pruned round trains
    epochs 2 and 3 only, at the learning rates the dense round had there (Frankle et al. 2019: T - k iterations)."""
    def rows(r):
        with open(reference / f"round_{r}/results.csv", newline="") as f:
            return list(csv.DictReader(f))
    dense = rows(0)
    assert [int(x["epoch"]) for x in dense] == [1, 2, 3]
    for r in (1, 2, 3):
        pruned = rows(r)
        assert [int(x["epoch"]) for x in pruned] == [2, 3]
        assert [float(x["lr"]) for x in pruned] == [float(x["lr"]) for x in dense[1:]]
    assert load_checkpoint(reference / "round_3/weights/last.pt")["args"]["retrain_schedule"] == "continue"


def test_restart_retrains_every_epoch_and_raw_ranking_uses_the_trained_weights(reference, shapes_tiny, tmp_path):
    """--retrain-schedule restart (the original's) trains all 3 epochs in round 1, and --rank-weights raw prunes by
    the magnitudes of round 0's raw weights (not its EMA)."""
    run = prune.main([*TINY, *LTH, "--rounds", "1", "--weights", str(reference / "round_0/weights/last.pt"),
                      "--retrain-schedule", "restart", "--rank-weights", "raw", "--data", str(shapes_tiny),
                      "--project", str(tmp_path), "--name", "restart"])
    with open(run / "round_1/results.csv", newline="") as f:
        assert [int(x["epoch"]) for x in csv.DictReader(f)] == [1, 2, 3]
    dense = load_checkpoint(reference / "round_0/weights/last.pt")
    start = Masks.from_model(pruning.build_model(dense, PruneRun(run).load_args()))
    want = magnitude_prune(dense["train_state"]["model"], start, 0.2, "global")
    got = Masks.from_state_dict(load_checkpoint(run / "round_1/weights/last.pt")["masks"])
    assert all(torch.equal(want[k], got[k]) for k in got)
    ema = magnitude_prune(dense["model"], start, 0.2, "global")
    assert any(not torch.equal(ema[k], got[k]) for k in got)  # the two rankings differ on this run


def test_learning_rate_rewinding_keeps_the_final_weights_and_replays_the_schedule(reference, shapes_tiny, tmp_path):
    """--rewind lr (Renda et al. 2020): round 1 prunes as weight rewinding does, but its survivors start from round
    0's final (EMA) weights, bit for bit, and it trains epochs k+1..T as weight rewinding does."""
    dense_pt = reference / "round_0/weights/last.pt"
    run = prune.main([*TINY, *LTH, "--rounds", "1", "--weights", str(dense_pt), "--rewind", "lr",
                      "--data", str(shapes_tiny), "--project", str(tmp_path), "--name", "lr"])
    with open(run / "round_1/results.csv", newline="") as f:
        assert [int(x["epoch"]) for x in csv.DictReader(f)] == [2, 3]
    strategy = LotteryTicket(PruneRun(run).load_args(), PruneRun(run))
    assert "kept their final values" in strategy.describe_start(1)
    model, plugins = strategy.begin_round(1)
    masks, final = plugins[0].masks, load_checkpoint(dense_pt)["model"]
    weight_rewound = Masks.from_state_dict(load_checkpoint(reference / "round_1/weights/last.pt")["masks"])
    assert all(torch.equal(masks[k], weight_rewound[k]) for k in masks)  # the same pruning
    state = model.state_dict()
    for k, v in final.items():
        m = masks[k] if k in masks else torch.ones_like(v, dtype=torch.bool)
        assert torch.equal(state[k][m], v[m]) and not state[k][~m].any(), k
    assert any(not torch.equal(v, load_checkpoint(dense_pt)["rewind"]["model"][k]) for k, v in final.items())


def test_a_rewind_point_never_reached_is_a_one_line_error(shapes_tiny, tmp_path):
    """Round 0 ends before the rewind step it was to capture: prune.py stops with one line, no round is recorded."""
    out = run_script("prune.py", *TINY, "--lth", "--epochs", "1", "--rewind-iter", "50", "--rounds", "1", "--data",
                     shapes_tiny, "--project", tmp_path, "--name", "short", env=script_env())
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "the rewind point (optimiser step 50) was not reached in the round's 1 epochs" in out.stderr
    assert not (tmp_path / "short" / "rounds.csv").is_file() or rows_of(tmp_path / "short") == []


def test_rewind_epoch_below_one_is_a_fraction_of_the_epochs():
    from utils.errors import UserError

    assert [pruning.rewind_epochs(v, e) for v, e in ((0.03, 30), (0.03, 300), (10, 300), (0, 30), (None, 30))] == \
        [1, 9, 10, 0, 0]
    with pytest.raises(UserError, match="whole number of epochs"):
        pruning.rewind_epochs(2.5, 30)


def test_a_filter_level_ticket_trains_and_folds_into_a_smaller_network(shapes_tiny, tmp_path):
    """Issue 28: prune.py --granularity filter prunes whole filters with their BN, the masks hold through training
    and rewinding, and export.py --fold turns the ticket into a smaller dense network that scores the same."""
    import export

    common = [*TINY, "--lth", "--epochs", "2", "--rewind-epoch", "1", "--prune-rate", "0.5", "--rounds", "1",
              "--granularity", "filter", "--data", str(shapes_tiny), "--project", str(tmp_path), "--name", "f"]
    run = prune.main(common)
    last = load_checkpoint(run / "round_1" / "weights" / "last.pt")
    masks = Masks.from_state_dict(last["masks"])
    kernels = unit_kernels(masks)
    for k in kernels:
        keep = filter_rows(masks[k])
        w = last["train_state"]["model"][k]
        assert not w[~keep].any()
        assert not last["train_state"]["model"][k.replace("conv.weight", "bn.weight")][~keep].any()
    consumers = filter_consumers(Darknet("cfg/yolov3-tiny.cfg", img_size=64, nc=last["nc"]))
    assert set(masks.names()) == {*kernels, *consumers} | {n for n in masks.names() if masks[n].dim() == 1}
    for k, (shape, fed) in consumers.items():  # the consumers' input columns of pruned filters: masked and zero
        gone = torch.cat([cols[~filter_rows(masks[p])[rows]] for p, (cols, rows) in fed.items()])
        assert len(gone) and not masks[k][:, gone].any() and not last["train_state"]["model"][k][:, gone].any()
    pruned = sum(int((~filter_rows(masks[k])).sum()) for k in kernels)
    row = list(csv.DictReader(open(run / "rounds.csv")))[1]
    assert float(row["sparsity"]) == pytest.approx(masks.sparsity(), abs=1e-6)  # kernels only, no BN entries
    assert masks.sparsity() > 0.7  # half the filters and, in their consumers, half the inputs
    assert float(row["expected_sparsity"]) == pytest.approx(float(row["sparsity"]), abs=1e-6)  # local: per layer
    alive_kernels = sum(int(masks[k].sum()) for k in masks.names() if masks[k].dim() == 4)
    out = export.main(["--weights", str(run / "round_1" / "weights" / "last.pt"), "--include", "sparse", "--fold",
                       "--fold-round-to", "1", "--data", str(shapes_tiny), "--img-size", "64", "--batch-size", "8", "--workers", "0"])
    fold = out["fold"]
    assert fold["removed"] == pruned and fold["folded_constants"] == 0
    assert fold["params_after"] < 0.5 * fold["params_before"] and fold["max_abs_diff"]["raw"] < 1e-4
    folded = load_checkpoint(fold["checkpoint"])
    kernel_weights = sum(v.numel() for k, v in folded["model"].items() if k.endswith("conv.weight") and v.dim() == 4)
    assert kernel_weights == alive_kernels  # the ticket's alive weights are exactly the folded network's
    assert fold["map_before"] == pytest.approx(fold["map_after"], abs=1e-6)


def test_filters_that_a_shortcut_sums_are_pruned_together_and_fold(shapes_tiny, tmp_path):
    """--shortcut-filters together (the default): the two convs a [shortcut] sums lose the same channels through
    training and rewinding, and export.py --fold removes them from both; exclude leaves both whole."""
    import export
    from tests.test_export import SMALL

    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    common = [*TINY, "--cfg", str(cfg), "--lth", "--epochs", "2", "--rewind-epoch", "1", "--prune-rate", "0.5",
              "--rounds", "1", "--granularity", "filter", "--data", str(shapes_tiny), "--project", str(tmp_path)]
    summed = ("module_list.1.conv.weight", "module_list.2.conv.weight")  # [shortcut] from=-2 adds them
    for mode in ("together", "exclude"):
        run = prune.main([*common, "--shortcut-filters", mode, "--name", mode])
        last = load_checkpoint(run / "round_1" / "weights" / "last.pt")
        masks = Masks.from_state_dict(last["masks"])
        if mode == "exclude":
            assert not set(summed) & set(unit_kernels(masks))
            continue
        rows = [filter_rows(masks[k]) for k in summed]
        assert torch.equal(rows[0], rows[1]) and int((~rows[0]).sum()) == 4  # half of 8, the same in both
        assert not any(last["train_state"]["model"][k][~rows[0]].any() for k in summed)
        out = export.main(["--weights", str(run / "round_1" / "weights" / "last.pt"), "--include", "sparse",
                           "--fold", "--fold-round-to", "1", "--data", str(shapes_tiny), "--img-size", "64",
                           "--batch-size", "8", "--workers", "0"])
        fold = out["fold"]
        folded = load_checkpoint(fold["checkpoint"])["model"]
        assert [folded[k].shape[0] for k in summed] == [4, 4] and fold["max_abs_diff"]["raw"] < 1e-4
        assert fold["map_before"] == pytest.approx(fold["map_after"], abs=1e-6)
