"""prune.py --cs end to end on the tiny shapes set: 2 short search rounds and a short ticket retrain. rounds.csv and
the per-epoch CS columns, search checkpoints in the LTH format (plain weights folded with 1[s > 0]/σ(s0) + masks),
round 1 continuing from round 0 with the reset logits, the ticket rewound to θ_k, test.py scoring the checkpoints, and
a run killed during round 1 then resumed ending with the same masks, weights and logits as an uninterrupted one.

``--mask-init 0`` instead of CS.yaml's −0.1: in rounds of 4 optimiser steps the logits move by ~1e-4, so with
s0 = −0.1 no weight would survive; with s0 = 0 the sign of their first updates decides, and the masks are mixed."""
import csv
from pathlib import Path

import pytest
import torch

import prune
import test
from models import Darknet
from utils import cs, pruning
from utils.checkpoint import load_checkpoint
from utils.cs import ContinuousSparsification, SoftMasks, reset_logits
from utils.pruning import Masks, MaskPlugin, PruneRun, filter_consumers, filter_rows

from .conftest import run_script, script_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--cfg", "cfg/yolov3-tiny.cfg", "--img-size", "64", "--batch-size", "8", "--workers", "0",
        "--nominal-batch-size", "8", "--warmup-epochs", "0.5"]  # 16 images: 2 optimiser steps per epoch
CS = ["--cs", "--rounds", "2", "--epochs", "2", "--ticket-epochs", "2", "--rewind-epoch", "1", "--mask-init", "0",
      "--deterministic", "--seed", "3"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(shapes_tiny, tmp_path_factory):
    """An uninterrupted run (2 search rounds + the ticket), through the command line."""
    project = tmp_path_factory.mktemp("prune_cs")
    out = run_script("prune.py", *TINY, *CS, "--data", shapes_tiny, "--project", project, "--name", "whole",
                     env=script_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "round 2/2 (cs-ticket): sparsity" in out.stdout
    return project / "whole"


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ckpt(run, r, name="last.pt"):
    return load_checkpoint(run / f"round_{r}" / "weights" / name)


def logits_of(c):
    return c["train_state"]["plugins"]["cs"]["masks"]["logits"]


def test_rounds_csv_and_per_epoch_columns(reference):
    rows = rows_of(reference / "rounds.csv")
    assert [(int(r["round"]), r["kind"]) for r in rows] == [(0, "cs-search"), (1, "cs-search"), (2, "cs-ticket")]
    assert set(pruning.ROUND_COLUMNS) <= set(rows[0]) and (reference / "rounds.png").stat().st_size > 1000
    for r, row in enumerate(rows):
        masks = Masks.from_state_dict(ckpt(reference, r)["masks"])
        assert 0.05 < float(row["sparsity"]) < 0.99 and float(row["sparsity"]) == pytest.approx(masks.sparsity(),
                                                                                                 abs=1e-6)
        assert int(row["alive_params"]) == int(row["params"]) - masks.pruned()
        assert int(row["sparse_macs"]) < int(row["dense_macs"]) and 0 <= float(row["map50"]) <= 1
    assert rows[2]["sparsity"] == rows[1]["sparsity"]  # the ticket keeps the last search round's mask
    for r in (0, 1):  # search rounds: β from 1 to β_T, the soft and the hard sparsity, per epoch
        epochs = rows_of(reference / f"round_{r}" / "results.csv")
        assert [float(e["cs/beta"]) for e in epochs] == [1.0, 200.0]
        assert float(epochs[-1]["cs/hard_sparsity"]) == pytest.approx(float(rows[r]["sparsity"]), abs=1e-6)
        assert all(0 <= float(e["cs/soft_sparsity"]) <= 1 for e in epochs) and "train/cs_l1" in epochs[0]
        assert int(rows[r]["best_epoch"]) == 2  # a search round's row describes its last epoch
        assert "hard masks" in (reference / f"round_{r}" / "masks.txt").read_text()
    ticket = rows_of(reference / "round_2" / "results.csv")
    assert "cs/beta" not in ticket[0] and float(ticket[-1]["sparsity"]) == pytest.approx(float(rows[2]["sparsity"]))


def test_search_checkpoints_hold_plain_folded_weights_masks_and_one_rewind_point(reference):
    keys = list(Darknet.from_text(ckpt(reference, 0)["cfg"], nc=6).state_dict())
    rewind0 = ckpt(reference, 0)["rewind"]
    assert rewind0["epoch"] == 1 and rewind0["step"] == 2
    for r in (0, 1):
        last = ckpt(reference, r)
        soft = SoftMasks.from_state_dict(last["train_state"]["plugins"]["cs"]["masks"])
        raw_ema = last["train_state"]["plugins"]["cs"]["ema"]
        assert soft.beta == 200.0 and last["cs"]["beta"] == 200.0 and last["cs"]["mask_init"] == 0.0
        for name in ("last.pt", "best.pt"):
            c = ckpt(reference, r, name)
            assert list(c["model"]) == keys and list(c["rewind"]["model"]) == keys  # no logits, no renamed keys
            masks = Masks.from_state_dict(c["masks"])
            for k in masks.names():
                assert not c["model"][k][~masks[k]].any()
            for k, v in c["rewind"]["model"].items():  # θ_k is taken once, in round 0
                if name == "best.pt" and k in masks.names():  # best.pt: θ_k of the survivors, pruned +0.0
                    assert torch.equal(v[masks[k]], rewind0["model"][k][masks[k]]) and not v[~masks[k]].any()
                else:
                    assert torch.equal(v, rewind0["model"][k])
        for k, m in Masks.from_state_dict(last["masks"]).items():
            assert torch.equal(m, soft.logits[k] > 0)
            # the model entry is the raw EMA times the hard gate 1[s > 0]/σ(s0), bit for bit, pruned entries +0.0
            expected = (raw_ema[k] * soft.hard_gate(k)).masked_fill(~m, 0.0)
            assert torch.equal(last["model"][k].view(torch.int32), expected.view(torch.int32))
            assert not torch.signbit(last["model"][k][~m]).any()
        assert list(last["train_state"]["model"]) == keys  # the raw weights too have plain keys


def test_round_1_continues_from_round_0_with_reset_logits(reference):
    run = PruneRun(reference)
    strategy = ContinuousSparsification(run.load_args(), run)
    model, plugins = strategy.begin_round(1)
    prev = ckpt(reference, 0)
    for k, v in prev["train_state"]["model"].items():  # the raw weights of round 0's last step: not rewound
        assert torch.equal(model.state_dict()[k], v), k
    soft = plugins[0].masks
    assert isinstance(plugins[0], cs.CSPlugin) and soft.beta == 1.0
    for k, s in logits_of(prev).items():
        assert torch.equal(soft.logits[k].detach(), reset_logits(s, 200.0, 0.0))
        assert torch.equal(soft.logits[k].detach(), torch.minimum(200.0 * s, torch.zeros_like(s)))


def test_ticket_is_the_last_mask_on_the_rewound_weights(reference):
    run = PruneRun(reference)
    strategy = ContinuousSparsification(run.load_args(), run)
    model, plugins = strategy.begin_round(2)
    assert isinstance(plugins[0], MaskPlugin)
    soft = SoftMasks.from_state_dict(ckpt(reference, 1)["train_state"]["plugins"]["cs"]["masks"])
    theta_k = ckpt(reference, 0)["rewind"]["model"]
    masks = plugins[0].masks
    state = model.state_dict()
    for k, v in theta_k.items():
        if k in masks:
            assert torch.equal(masks[k], soft.logits[k] > 0)
            assert torch.equal(state[k], v.masked_fill(~masks[k], 0.0))
        else:
            assert torch.equal(state[k], v), k
    for name in ("last.pt", "best.pt"):
        c = ckpt(reference, 2, name)
        assert all(torch.equal(c["masks"][k], masks[k]) for k in masks.names())
        assert all(not c["model"][k][~masks[k]].any() for k in masks.names())
        assert "cs" not in c and c["rewind"]["epoch"] == 1  # the LTH format


@pytest.mark.parametrize("r, name", [(2, "best.pt"), (1, "last.pt")])
def test_test_py_scores_the_checkpoints(reference, shapes_tiny, tmp_path, r, name):
    report = test.main(["--weights", str(reference / f"round_{r}/weights/{name}"), "--data", str(shapes_tiny),
                        "--img-size", "64", "--workers", "0", "--project", str(tmp_path), "--name", "t"])
    assert 0 <= report["map50"] <= 1 and (tmp_path / "t" / "metrics.json").is_file()
    row = rows_of(reference / "rounds.csv")[r]
    summary = report["summary"]
    assert summary["sparsity"] == pytest.approx(float(row["sparsity"]), abs=1e-4)
    assert summary["sparse_macs"] == pytest.approx(int(row["sparse_macs"]), rel=1e-6)


def test_killed_during_round_1_and_resumed_equals_uninterrupted(reference, shapes_tiny, tmp_path, monkeypatch):
    """Killed at the start of round 1's second epoch (its first is saved), then resumed: rounds 1 and 2 end with
    the same masks, logits, weights (inference, raw, raw EMA) and scores as the uninterrupted reference."""
    before_epoch = cs.CSPlugin.before_epoch

    def kill(self, trainer, epoch):
        if trainer.save_dir.name == "round_1" and epoch == 1:
            raise KeyboardInterrupt
        before_epoch(self, trainer, epoch)

    monkeypatch.setattr(cs.CSPlugin, "before_epoch", kill)
    with pytest.raises(KeyboardInterrupt):
        prune.main([*TINY, *CS, "--data", str(shapes_tiny), "--project", str(tmp_path), "--name", "killed"])
    monkeypatch.undo()
    run = tmp_path / "killed"
    assert [int(r["round"]) for r in rows_of(run / "rounds.csv")] == [0]
    assert ckpt(run, 1)["epoch"] == 0
    done = {p: p.stat().st_mtime_ns for p in (run / "round_0").rglob("*.pt")}

    assert prune.main(["--resume", str(run)]) == run
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the finished round is not redone
    for r in (1, 2):
        a, b = ckpt(reference, r), ckpt(run, r)
        assert a["epoch"] == b["epoch"] == 1
        for k in a["masks"]:
            assert torch.equal(a["masks"][k], b["masks"][k]), f"round {r}: mask {k} differs"
        pairs = [("model", a["model"], b["model"]), ("raw", a["train_state"]["model"], b["train_state"]["model"])]
        if r == 1:
            pairs += [("logits", logits_of(a), logits_of(b)),
                      ("raw EMA", a["train_state"]["plugins"]["cs"]["ema"], b["train_state"]["plugins"]["cs"]["ema"])]
        for what, sa, sb in pairs:
            for k, v in sa.items():
                assert torch.equal(v, sb[k]), f"round {r}: {what} {k} differs after resume"
    keys = ("kind", "sparsity", "alive_params", "sparse_macs", "map50", "map", "best_epoch")
    assert [{k: x[k] for k in keys} for x in rows_of(reference / "rounds.csv")] == \
           [{k: y[k] for k in keys} for y in rows_of(run / "rounds.csv")]


def test_filter_gates_give_a_filter_ticket_that_folds_into_a_smaller_network(shapes_tiny, tmp_path):
    """Issue 28: prune.py --cs --granularity filter learns one gate per filter; the ticket masks whole filters with
    their BN, is θ_k on the kept ones, and export.py --fold turns it into a smaller network that scores the same."""
    import export

    run = prune.main([*TINY, "--cs", "--granularity", "filter", "--rounds", "1", "--epochs", "2", "--ticket-epochs",
                      "1", "--rewind-epoch", "1", "--mask-init", "0", "--seed", "3", "--data", str(shapes_tiny),
                      "--project", str(tmp_path), "--name", "f"])
    search, ticket = ckpt(run, 0), ckpt(run, 1)
    soft = cs.soft_masks_from_state(search["train_state"]["plugins"]["cs"]["masks"])
    assert isinstance(soft, cs.SoftFilterMasks)
    masks = Masks.from_state_dict(ticket["masks"])
    closed = 0
    for k, (shape, extra) in soft.units.items():
        keep = soft.logits[k].detach() > 0
        closed += int((~keep).sum())
        assert torch.equal(filter_rows(masks[k]), keep)
        for c in (k, *extra):
            assert torch.equal(masks[c].flatten(1).any(1) if masks[c].dim() > 1 else masks[c], keep)
            assert not ticket["model"][c][~keep].any() and not ticket["train_state"]["model"][c][~keep].any()
        theta_k = search["rewind"]["model"][k]
        assert torch.equal(ticket["rewind"]["model"][k][keep], theta_k[keep])  # rewound to θ_k
    assert 0 < closed < sum(s.numel() for s in soft.logits.values())
    consumers = filter_consumers(Darknet("cfg/yolov3-tiny.cfg", img_size=64, nc=ticket["nc"]))
    for k, (shape, fed) in consumers.items():  # the closed filters' input columns are masked in every consumer
        gone = torch.cat([cols[soft.logits[p].detach()[rows] <= 0] for p, (cols, rows) in fed.items()])
        assert len(gone) and not masks[k][:, gone].any() and not ticket["model"][k][:, gone].any()
    out = export.main(["--weights", str(run / "round_1" / "weights" / "last.pt"), "--include", "sparse", "--fold",
                       "--fold-round-to", "1", "--data", str(shapes_tiny), "--img-size", "64", "--batch-size", "8", "--workers", "0"])
    fold = out["fold"]
    assert fold["removed"] >= closed and fold["params_after"] < fold["params_before"]
    assert fold["max_abs_diff"]["raw"] < 1e-4 and fold["map_before"] == pytest.approx(fold["map_after"], abs=1e-6)


def test_the_convs_a_shortcut_sums_share_their_gates_through_the_ticket(shapes_tiny, tmp_path):
    """prune.py --cs --granularity filter --shortcut-filters together (CS.yaml's recipe says exclude): the two convs
    a [shortcut] sums share one gate per channel, their ticket masks are the same rows, and the fold narrows both
    alike."""
    import export
    from tests.test_export import SMALL

    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    run = prune.main([*TINY, "--cfg", str(cfg), "--cs", "--granularity", "filter", "--shortcut-filters", "together",
                      "--rounds", "1", "--epochs", "2",
                      "--ticket-epochs", "1", "--rewind-epoch", "1", "--mask-init", "0", "--seed", "3", "--data",
                      str(shapes_tiny), "--project", str(tmp_path), "--name", "f"])
    search, ticket = ckpt(run, 0), ckpt(run, 1)
    soft = cs.soft_masks_from_state(search["train_state"]["plugins"]["cs"]["masks"])
    summed = ("module_list.1.conv.weight", "module_list.2.conv.weight")  # [shortcut] from=-2 adds them
    assert soft.tied == {summed[1]: summed[0]}
    keep = soft.logits[summed[0]].detach() > 0
    masks = Masks.from_state_dict(ticket["masks"])
    assert all(torch.equal(filter_rows(masks[k]), keep) for k in summed)
    out = export.main(["--weights", str(run / "round_1" / "weights" / "last.pt"), "--include", "sparse", "--fold",
                       "--fold-round-to", "1", "--data", str(shapes_tiny), "--img-size", "64", "--batch-size", "8",
                       "--workers", "0"])
    folded = load_checkpoint(out["fold"]["checkpoint"])["model"]
    assert [folded[k].shape[0] for k in summed] == [int(keep.sum())] * 2 and out["fold"]["max_abs_diff"]["raw"] < 1e-4
