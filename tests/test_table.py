"""benchmarks/table.py: the whole table on the tiny shapes set (every row, numbers parsed back from the run folders;
two rows with 2 seeds for the std over the seeds), a run killed midway and rerun (finished runs are not started
again, and were recorded in the ledger), the README block, and the small pieces (settings from --hyp, reduced-width cfgs, row selection, changed arguments refused)."""
import contextlib
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import table
from utils.export import FOLD_ROUND_TO

from .conftest import ROOT, script_env

FAST = ["--seeds", "1", "--epochs", "1", "--img-size", "64", "--batch-size", "8", "--nominal-batch-size", "8",
        "--workers", "0", "--big-cfg", "cfg/yolov3-tiny.cfg", "--lth-rounds", "1", "--prune-rate", "0.5",
        "--filter-rounds", "1", "--extra-args", "--memory-format contiguous"]  # no layout probe per cfg: 10% of it

# every row with --big-cfg = --tiny-cfg (the "big" row is then the "tiny" row: one run, one row)
ROWS = ["tiny", "nano", "nano-leaky", "mnv3", "mnv3-leaky", "mobile", "lth-local", "lth-global", "lth-filter", "cs1", "cs3",
        "cs-filter", "kd-nano", "kd-nano-leaky", "kd-mnv3", "kd-mnv3-leaky", "gan-nano", "gan-nano-leaky", "gan-mnv3", "gan-mnv3-leaky",
        "lth-nano-leaky", "lth+kd", "kd+lth"]
# the module's table runs two of the four default students (the others are the same rows with another cfg): every
# kind of row, each student kind (Nano, MobileNetV3) once; the default plan's rows are checked without running them
STUDENTS = ["--student", "nano-leaky=cfg/yolo-nano_leaky.cfg", "--student", "mnv3=cfg/mobilenetv3-yolo.cfg"]
RUN_ROWS = [r for r in ROWS if r not in ("nano", "mnv3-leaky", "kd-nano", "kd-mnv3-leaky", "gan-nano", "gan-mnv3-leaky")]
SEEDED = ["tiny", "lth-local"]  # the rows run with 2 seeds, for the mean and std
PRUNED = {"lth-local", "lth-global", "lth-filter", "cs1", "cs3", "cs-filter", "lth-nano-leaky", "lth+kd", "kd+lth"}


def events(base):
    return [json.loads(line) for line in (base / "table.log").read_text().splitlines()]


def starts(base):
    """How many times each run (id, seed) was started, from the table's log."""
    out = {}
    for e in events(base):
        if e["event"] == "start":
            out[(e["run"], e["seed"])] = out.get((e["run"], e["seed"]), 0) + 1
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quiet_plots(mp):
    """The engine redraws results.png (and prune.py rounds.png) after every epoch: most of a 1-epoch run's time on a
    CPU. This module checks the table, not those plots."""
    from utils import engine, pruning

    mp.setattr(engine, "plot_results", lambda *a, **k: None)
    mp.setattr(pruning, "plot_rounds", lambda *a, **k: None)


@pytest.fixture(scope="module")
def full(shapes_tiny, tmp_path_factory):
    """The table command with every kind of row (``STUDENTS``: two of the four default students), 1 epoch at 64 px,
    the scripts called in this process: first two rows with 2 seeds (their tables are kept in ``two_seeds``), then
    every row with seed 0 (its runs reused where done)."""
    out = tmp_path_factory.mktemp("table")
    calls = []

    def runner(script, argv, log, env=None):
        calls.append(script)
        return table.run_inprocess(script, argv, log, env)

    argv = ["--data", str(shapes_tiny), *FAST, *STUDENTS, "--out", str(out), "--runner", "inprocess", "--all-rounds"]
    base, two = out / "shapes", out / "two_seeds"
    with pytest.MonkeyPatch.context() as mp:
        quiet_plots(mp)
        table.main([*argv, "--seeds", "2", "--rows", *SEEDED], runner=runner, out=lambda *a: None)
        two.mkdir()
        for name in ("table.csv", "seeds.csv", "table.md", "table.png"):
            shutil.copy(base / name, two / name)
        results = table.main(argv, runner=runner, out=lambda *a: None)
    return {"out": out, "base": base, "two_seeds": two, "argv": argv, "results": results, "calls": calls}


@pytest.mark.slow
def test_every_row_is_in_the_table_with_numbers_from_its_run_folders(full):
    base = full["base"]
    rows = read_csv(base / "table.csv")
    assert [r["row"] for r in rows] == RUN_ROWS
    assert all(r["seeds"] == "1" for r in rows), "every row has its seed"
    seeds = read_csv(base / "seeds.csv")
    assert len(seeds) == len(RUN_ROWS)
    assert all(s["map50_flat"] == "" for s in seeds)  # 1-epoch runs: fewer than 5 evaluations to judge
    for s in seeds:
        run = Path(s["run"])
        assert run.parent.parent == base and run.name == f"seed{s['seed']}"
        marker = json.loads((run / "table_done.json").read_text())
        metrics = json.loads((run / "test" / "metrics.json").read_text())
        artefact = Path(marker["artefact"])
        assert artefact.name == "best.sparse.pt" and artefact.parent == run / "export"
        assert metrics["weights"] == str(artefact)  # the shipped artefact is what test.py scored
        summary = metrics["summary"]
        assert float(s["map50"]) == metrics["map50"] and float(s["map"]) == metrics["map"]
        assert int(s["nonzero_params"]) == summary["nonzero_params"] and int(s["params"]) == summary["params"]
        assert float(s["sparse_macs"]) == summary["sparse_macs"] and float(s["macs"]) == summary["macs"]
        assert int(s["storage_bytes"]) == artefact.stat().st_size == summary["file_bytes"]
        kind = "sparse" if s["row"] in PRUNED else "fp32"
        assert s["artefact"] == kind
        if kind == "sparse":
            assert summary["nonzero_params"] < summary["params"] and summary["sparse_macs"] < summary["macs"]
        # wall time: the epochs' seconds of results.csv, or the rounds' of rounds.csv
        name = "rounds.csv" if (run / "rounds.csv").is_file() else "results.csv"
        expected = sum(float(x["seconds"] or 0) for x in read_csv(run / name))
        assert float(s["wall_s"]) == pytest.approx(expected, abs=0.06)
    # the composition rows: distillation held the pruned student's mask; KD + LTH pruned the distilled student
    by = {(s["row"], s["seed"]): s for s in seeds}
    # the mask held: no pruned conv weight came back, so the sparse MACs cannot grow (BN biases that start at zero
    # may move, so the total non-zero count is not the invariant)
    assert float(by[("lth+kd", "0")]["sparse_macs"]) <= float(by[("lth-nano-leaky", "0")]["sparse_macs"])
    assert int(by[("lth+kd", "0")]["nonzero_params"]) < int(by[("lth+kd", "0")]["params"])
    assert int(by[("kd+lth", "0")]["storage_bytes"]) < int(by[("kd-nano-leaky", "0")]["storage_bytes"])
    cmd = json.loads((base / "kdlth-yolo-nano_leaky/seed0/table_done.json").read_text())["commands"][0]
    assert cmd[:2] == ["prune.py", "--lth"] and str(base / "kd-yolo-nano_leaky/seed0/weights/best.pt") in cmd
    cmd = json.loads((base / "lthkd-yolo-nano_leaky/seed0/table_done.json").read_text())["commands"][0]
    assert cmd[0] == "my_kd.py" and str(base / "lth-local-yolo-nano_leaky/seed0/round_1/weights/best.pt") in cmd
    assert str(base / "dense-yolov3-tiny/seed0/round_0/weights/best.pt") in cmd  # the teacher of the same seed


@pytest.mark.slow
def test_all_rounds_lists_every_round_of_every_pruning_run(full):
    lines = (full["base"] / "rounds.md").read_text().splitlines()[2:]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    expected = {(f.parent.parent.name, r["round"], r["kind"]) for f in full["base"].glob("*/seed0/rounds.csv")
                for r in read_csv(f)}
    assert {(c[0], c[2], c[3]) for c in cells} == expected and len(cells) == len(expected)
    assert {c[2] for c in cells if c[0] == "cs3-yolov3-tiny"} == {"0", "1", "2", "3"}  # search rounds and the ticket
    assert (full["base"] / "rounds.png").stat().st_size > 10_000  # the sparsity-mAP curves of those runs
    lth = next(c for c in cells if c[0] == "lth-local-yolov3-tiny" and c[2] == "1")
    assert lth[3] == "lth-local" and float(lth[4].rstrip("%")) == pytest.approx(50, abs=0.5)


def test_mean_and_std_are_over_the_seeds(full):
    two = full["two_seeds"]
    seeds = read_csv(two / "seeds.csv")
    rows = {r["row"]: r for r in read_csv(two / "table.csv")}
    assert list(rows) == SEEDED and all(r["seeds"] == "2" for r in rows.values()) and len(seeds) == 4
    nonzero_std = 0
    for name, row in rows.items():
        for k in table.METRICS:
            values = [float(s[k]) for s in seeds if s["row"] == name and s[k] != ""]
            if k in ("latency_ms", "filters", "filters_removed", "map50_flat"):  # --latency only; 5 epochs
                assert values == [] and row[f"{k}_mean"] == row[f"{k}_std"] == ""
                continue
            assert float(row[f"{k}_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-12)
            assert float(row[f"{k}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-12)
            nonzero_std += statistics.stdev(values) > 0
    assert nonzero_std > 0  # e.g. the wall times differ between the seeds: the check is not vacuous
    # and the markdown cell shows them as mean ± std
    wall = [float(s["wall_s"]) for s in seeds if s["row"] == "lth-local"]
    md = (two / "table.md").read_text()
    header, body = table.parse_block(table.START + "\n" + md + "\n" + table.END)[0]
    assert header == list(table.COLUMNS) and len(body) == len(SEEDED)
    cell = body[SEEDED.index("lth-local")][header.index("wall time")]
    assert cell == table.fmt_time(statistics.fmean(wall), statistics.stdev(wall))
    assert (two / "table.png").stat().st_size > 5000


@pytest.mark.slow
def test_rerun_reuses_every_run_and_writes_the_readme_block(full, tmp_path):
    n_started = len(events(full["base"]))
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nintro\n\n## Results\n\n" + table.START + "\nold\n" + table.END + "\n\n## After\n")
    calls = []
    table.main([*full["argv"], "--readme", str(readme)], runner=lambda *a: calls.append(a) or 0, out=lambda *a: None)
    assert calls == []  # nothing ran again
    new = events(full["base"])[n_started:]
    assert new and all(e["event"] == "reuse" for e in new)
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n## Results\n\n") and text.endswith("\n\n## After\n")
    assert "\nold\n" not in text
    [(header, body)] = table.parse_block(text)
    assert header == list(table.COLUMNS)
    assert [r[1] for r in body] == [r["training"] for r in read_csv(full["base"] / "table.csv")]
    assert all(len(r) == len(header) for r in body)
    assert (tmp_path / "docs" / "results" / "table_shapes.png").is_file()
    assert "![shapes: mAP@0.5 against storage](docs/results/table_shapes.png)" in text
    # the links point at the run folders, relative to the README
    link = body[0][-1].split("](")[1].split(")")[0]
    assert (tmp_path / link / "table_done.json").is_file()
    # rewriting the block from the same tables gives the same text
    assert table.replace_block(text, table.readme_block(full["out"], readme, "docs/results")) == text

    # a second table of other rows on the same data gets its own folder and README section; the first stays
    before = (full["base"] / "table.csv").read_text()
    table.main([*full["argv"], "--rows", "tiny", "--table-name", "shapes_tiny", "--readme", str(readme)],
               runner=lambda *a: calls.append(a) or 0, out=lambda *a: None)
    assert calls == [] and (full["base"] / "table.csv").read_text() == before
    assert [r["row"] for r in read_csv(full["out"] / "shapes_tiny" / "table.csv")] == ["tiny"]
    text = readme.read_text()
    assert [len(body) for _, body in table.parse_block(text)] == [len(read_csv(full["base"] / "table.csv")), 1]
    assert "### shapes_tiny" in text and (tmp_path / "docs" / "results" / "table_shapes_tiny.png").is_file()
    shutil.rmtree(full["out"] / "shapes_tiny")  # the other tests see one table


@pytest.mark.slow
def test_changed_arguments_are_refused(full):
    with pytest.raises(table.UserError, match="made by other arguments .*then --rounds 1, now --rounds 2"):
        table.main([*full["argv"], "--lth-rounds", "2", "--rows", "lth-local"], out=lambda *a: None)


@pytest.mark.slow
def test_latency_is_measured_on_the_folded_artefacts_without_running_anything(full):
    base = full["base"]
    calls = []
    argv = [*full["argv"], "--rows", "tiny", "lth-filter", "--collect-only", "--latency", "--latency-reps", "2",
            "--latency-passes", "2"]
    table.main(argv, runner=lambda *a: calls.append(a) or 0, out=lambda *a: None)
    assert calls == []  # --collect-only starts no run
    dense = json.loads((base / "dense-yolov3-tiny/seed0/latency.json").read_text())
    pruned = json.loads((base / "lth-filter-local-yolov3-tiny/seed0/latency.json").read_text())
    for rec in (dense, pruned):  # the median of two interleaved passes' medians of two runs each
        assert (rec["reps"], rec["passes"], len(rec["pass_ms"])) == (2, 2, 2)
        assert rec["ms"] == pytest.approx(sum(rec["pass_ms"]) / 2, abs=1e-3) and rec["best_ms"] <= min(rec["pass_ms"])
    assert dense["filters_removed"] == 0 < pruned["filters_removed"]  # the filter ticket is timed folded
    assert pruned["params_folded"] < dense["params_folded"] and dense["img_size"] == 64 and dense["batch"] == 1
    assert dense["round_to"] == pruned["round_to"] == FOLD_ROUND_TO  # folded widths rounded as export.py does
    assert not (base / "cs1-yolov3-tiny/seed0/latency.json").exists()  # rows not asked for are not timed
    rows = {r["row"]: r for r in read_csv(base / "table.csv")}
    assert list(rows) == ["tiny", "lth-filter"] and float(rows["tiny"]["latency_ms_mean"]) == dense["ms"] > 0
    assert float(rows["tiny"]["filters_mean"]) == dense["filters"] == pruned["filters"] > 0  # conv filters, unfolded
    assert float(rows["lth-filter"]["filters_removed_mean"]) == pruned["filters_removed"]
    [(header, body)] = table.parse_block(table.START + "\n" + (base / "table.md").read_text() + "\n" + table.END)
    share = pruned["filters_removed"] / pruned["filters"]
    assert [r[header.index("filters folded")] for r in body] == ["0.0%", f"{share:.1%}"]
    md = (base / "table.md").read_text()
    assert dense["cpu"] in md and "ONNX Runtime, batch 1" in md and (base / "table_latency.png").stat().st_size > 5000
    assert "median of 2 interleaved passes' medians of 2 runs" in md  # the note says how the records were timed
    threads = torch.get_num_threads()
    table.main([*argv[:-1], "1", "--latency-threads", "1"], runner=lambda *a: calls.append(a) or 0,
               out=lambda *a: None)
    assert torch.get_num_threads() == threads  # set for the latency runs only
    dense_json = base / "dense-yolov3-tiny/seed0/latency.json"
    for name in ("dense-yolov3-tiny", "lth-filter-local-yolov3-tiny"):  # --latency times the rows again, together
        again = json.loads((base / name / "seed0/latency.json").read_text())
        assert again["passes"] == 1 and len(again["pass_ms"]) == 1 and again["ms"] == again["pass_ms"][0]
        assert again["threads"] == 1
    md = (base / "table.md").read_text()
    assert "median of 2 runs after" in md and f"{dense['cpu']}, 1 thread, widths" in md
    before = dense_json.stat().st_mtime_ns
    table.main([*full["argv"], "--rows", "tiny", "--collect-only"], runner=lambda *a: 0, out=lambda *a: None)
    assert dense_json.stat().st_mtime_ns == before  # without --latency the timed figure stands
    tiny = read_csv(base / "table.csv")[0]
    assert float(tiny["latency_ms_mean"]) == json.loads(dense_json.read_text())["ms"]


def test_a_run_is_flat_when_its_last_five_evaluations_stay_within_a_point(tmp_path):
    """The convergence column: mAP@0.5's spread over the last 5 evaluated epochs (unevaluated ones skipped)."""
    maps = ["", "", 0.5, 0.8, 0.905, 0.91, 0.912, 0.915, 0.909]
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "metrics/map50"])
        w.writerows(enumerate(maps, 1))
    assert table.last_epochs_spread(tmp_path / "results.csv") == pytest.approx(0.01)
    assert table.last_epochs_spread(tmp_path / "results.csv", n=6) == pytest.approx(0.115)  # 0.8 comes in
    assert table.last_epochs_spread(tmp_path / "results.csv", n=8) is None  # 7 evaluated epochs only
    assert table.last_epochs_spread(tmp_path / "missing.csv") is None
    assert table.flat_cell(0.01, None) == "1.0 pt" and table.flat_cell(0.004, 0.001) == "0.4 ± 0.1 pt"
    assert table.flat_cell(0.023, None) == "2.3 pt, not flat" and table.flat_cell(None, None) == "-"


def test_latencies_from_two_cpus_say_which_cpu_each_is_from(tmp_path):
    """A table whose latencies come from two machines (ledger records) tags each latency with its CPU, lists the
    CPUs in the note and says they do not compare; with one CPU nothing is tagged."""
    def result(row, ms, cpu):
        agg = {k: (None, None) for k in table.METRICS}
        agg.update(map50=(0.9, None), latency_ms=(ms, None))
        seed = {"seed": 0, "recorded": "earlier", "run": str(tmp_path), "latency_ms": ms, "latency_cpu": cpu}
        return {"row": row, "model": "YOLOv3-Tiny", "training": row, "agg": agg, "seeds": [seed], "n": 1,
                "artefact": "fp32", "family": "baseline"}

    zen4, zen5 = "AMD EPYC (family 25 model 17), 2 threads", "AMD EPYC (family 26 model 2), 2 threads"
    results = [result("tiny", 5.9, zen5), result("cs-filter", 4.9, zen4), result("kd", None, None)]
    cpus = [zen5, zen4]
    lines = table.markdown_table(results, tmp_path, 1, cpus)
    cells = [line.split(" | ")[table.COLUMNS.index("latency ms")] for line in lines[2:]]
    assert cells == ["5.9 [1]", "4.9 [2]", "-"]
    note = table.latency_note({"latency_cpus": cpus, "img_size": 256})
    assert f"[1] {zen5}; [2] {zen4}" in note and "do not compare" in note
    one = table.markdown_table(results[:1], tmp_path, 1, [zen5])
    assert one[2].split(" | ")[table.COLUMNS.index("latency ms")] == "5.9"
    assert "[1]" not in table.latency_note({"latency_cpus": [zen5], "img_size": 256})
    table.plot(results, tmp_path / "latency.png", "t", "latency_ms", cpus)
    assert (tmp_path / "latency.png").stat().st_size > 5000
    results[0]["other_latencies"] = {zen4: 11.3}  # the dense artefact timed on the other CPU too: plotted as well
    table.plot(results, tmp_path / "latency2.png", "t", "latency_ms", cpus)
    assert (tmp_path / "latency2.png").stat().st_size > 5000
    assert table.latency_cell(results[0], cpus) == "5.9 [1]; 11.3 [2]"
    del results[0]["other_latencies"]
    meta = {"stem": "shapes", "command": "table.py", "machine": "m", "date": "d", "epochs": 1, "img_size": 256,
            "batch_size": 16, "seeds": 1, "total_seconds": 1.0, "latency_cpus": cpus}
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "table.json").write_text(json.dumps({"meta": meta, "rows": results}))
    block = table.readme_block(tmp_path, tmp_path / "README.md", "img")
    assert "| 5.9 [1] |" in block and "| 4.9 [2] |" in block  # the README block tags them too


def test_the_ledger_keeps_an_artefacts_latency_on_every_cpu(tmp_path):
    """Timed again on another CPU, the same artefact keeps its earlier latency beside the new one; not timed, it
    keeps the one it had; retrained to other figures, the old latencies go with the old artefact."""
    zen4, zen5 = "AMD EPYC (family 25 model 17), 2 threads", "AMD EPYC (family 26 model 2), 2 threads"
    ledger, job = table.Ledger(tmp_path / "ledger.json"), table.Job("dense-yolov3-tiny", 0, tmp_path, "prune.py", [])
    figures = {k: 1.0 for k in table.METRICS}

    def put(ms, cpu, map50=0.9):
        nums = dict(figures, map50=map50, latency_ms=ms, latency_cpu=cpu, artefact="fp32", finished="2026-12-06T00",
                    machine="m", commit="c", latency_rule=ms and f"median of {int(ms)} runs")
        return ledger.put({"argv": []}, job, nums)

    put(5.9, zen5)
    rec = put(12.6, zen4)
    assert (rec["numbers"]["latency_ms"], rec["numbers"]["latency_cpu"], rec["latencies"]) == (12.6, zen4, {zen5: 5.9})
    rec = put(None, None)  # collected without --latency: what was timed stays, and how
    assert (rec["numbers"]["latency_ms"], rec["latencies"]) == (12.6, {zen5: 5.9}) and len(ledger.records) == 1
    assert rec["numbers"]["latency_rule"] == "median of 12 runs"
    rec = put(None, None, map50=0.8)  # another artefact: no latency of the old one carries over
    assert rec["numbers"]["latency_ms"] is None and "latencies" not in rec
    result = {"agg": {"latency_ms": (12.6, None)}, "seeds": [{"latency_ms": 12.6, "latency_cpu": zen4}],
              "other_latencies": {zen5: 5.9}}
    assert table.latency_cell(result, [zen5, zen4]) == "12.6 [2]; 5.9 [1]"


def test_two_tables_on_one_ledger_keep_each_others_records(tmp_path):
    """Two tables (two row sets) write one ledger: each save keeps what the other recorded meanwhile, and a run both
    recorded keeps the figures of the later save."""
    path = tmp_path / "ledger.json"
    figures = dict({k: 1.0 for k in table.METRICS}, latency_ms=None, latency_cpu=None, artefact="fp32",
                   finished="2026-12-07T00", machine="m", commit="c")
    first, second = table.Ledger(path), table.Ledger(path)
    job = lambda name: table.Job(name, 0, tmp_path, "prune.py", [])  # noqa: E731
    first.put({"argv": ["a"]}, job("dense-yolov3-tiny"), figures)
    second.put({"argv": ["b"]}, job("dense-yolov3-w0.25"), figures)
    second.put({"argv": ["c"]}, job("tp-yolov3-tiny"), dict(figures, map50=0.5))
    first.save()
    first.put({"argv": ["c"]}, job("tp-yolov3-tiny"), dict(figures, map50=0.7))
    second.save()
    first.save()
    runs = json.loads(path.read_text())["runs"]
    assert [r["run"] for r in runs] == ["dense-yolov3-tiny", "dense-yolov3-w0.25", "tp-yolov3-tiny"]
    assert runs[2]["numbers"]["map50"] == 0.7 and table.Ledger(path).records == runs


@pytest.mark.slow
def test_killed_midway_and_rerun_skips_finished_runs(shapes_tiny, tmp_path):
    """A real kill (SIGKILL of the table's process group) while the second run works; the rerun, through the real
    subprocess runner, starts the killed run again and not the finished one."""
    out = tmp_path / "out"
    ledger = tmp_path / "ledger.json"
    argv = ["--data", str(shapes_tiny), *FAST, "--seeds", "1", "--out", str(out), "--rows", "tiny", "nano",
            "--ledger", str(ledger)]
    base = out / "shapes"
    env = script_env()
    proc = subprocess.Popen([sys.executable, "benchmarks/table.py", *argv, "--runner", "inprocess"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            log = [e["event"] for e in events(base)] if (base / "table.log").is_file() else []
            if log[:3] == ["start", "done", "start"]:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the table did not reach its second run (status {proc.poll()})")
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have ended on its own (the failure above says how)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first, second = [(e["run"], e["seed"]) for e in events(base) if e["event"] == "start"]
    assert first == ("dense-yolov3-tiny", 0) and not (base / second[0] / "seed0" / "table_done.json").exists()
    metrics = json.loads((base / first[0] / "seed0" / "test" / "metrics.json").read_text())
    [rec] = json.loads(ledger.read_text())["runs"]  # the finished run is recorded though the table never ended
    assert (rec["run"], rec["seed"], rec["numbers"]["map50"]) == (*first, metrics["map50"])

    result = subprocess.run([sys.executable, "benchmarks/table.py", *argv], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert starts(base) == {first: 1, second: 2}
    assert [e["run"] for e in events(base) if e["event"] == "reuse"] == [first[0]]
    rows = read_csv(base / "table.csv")
    assert [r["row"] for r in rows] == ["tiny", "nano"] and all(r["seeds"] == "1" for r in rows)
    assert "finished earlier, reused" in result.stdout


def test_repository_readme_block_is_a_table_with_the_columns():
    text = (ROOT / "README.md").read_text()
    if table.START not in text:
        pytest.skip("README.md has no results block yet")
    tables = table.parse_block(text)
    assert tables, "the block holds no markdown table"
    for header, body in tables:
        assert header == list(table.COLUMNS)
        assert body and all(len(r) == len(header) for r in body)


# ------------------------------------------------------------------------------------------------- the pieces
def settings(*extra):
    return table.resolve_settings(table.build_parser().parse_args(["--data", "data/shapes.data", *extra]))


def test_settings_come_from_flags_then_hyp_then_defaults():
    a = settings()
    assert (a.img_size, a.epochs, a.batch_size, a.rewind_epoch, a.cs_epochs) == (256, 20, 16, 1, 20)
    assert a.hyp_flags == []
    a = settings("--hyp", "params/voc.yaml", "--epochs", "90")
    assert (a.img_size, a.epochs, a.batch_size, a.nominal_batch_size, a.rewind_epoch) == (416, 90, 16, 64, 3)
    assert "--warmup-epochs" in a.hyp_flags and "--lr0" not in a.hyp_flags  # only what differs from default.yaml
    a = settings("--hyp", "params/coco.yaml", "--epochs", "1")
    assert (a.img_size, a.rewind_epoch, a.cs_epochs) == (416, 0, 2)
    a = settings("--device", "0,1")  # one run per GPU at a time
    assert (a.devices, a.jobs) == (["0", "1"], 2)


def test_bad_hyp_key_and_bad_rows_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inherit_from: " + str(ROOT / "params" / "default.yaml") + "\nrounds: 3\n")
    with pytest.raises(table.UserError, match="unknown key 'rounds'"):
        settings("--hyp", str(bad))
    with pytest.raises(table.UserError, match="--rows nope: no such row"):
        table.main(["--data", str(ROOT / "data" / "shapes.data"), "--rows", "nope", "--list-rows"], out=lambda *a: 0)
    with pytest.raises(table.UserError, match="--latency-threads must be 1 or more, not 0"):
        settings("--latency-threads", "0")


def test_rows_deduplicate_and_select(tmp_path):
    a = settings("--big-cfg", "cfg/yolov3-tiny.cfg", "--seeds", "2", "--rows", "kd-*", "lth+kd")
    rows, jobs = table.build_plan(a, tmp_path)
    assert [r.name for r in rows] == ["kd-nano", "kd-nano-leaky", "kd-mnv3", "kd-mnv3-leaky", "lth+kd"]
    ids = {j.id for j in jobs.values()}
    assert "dense-yolov3-tiny" in ids and "lth-local-yolo-nano_leaky" in ids and len(jobs) == 2 * len(ids)
    a = settings("--big-cfg", "cfg/yolov3-tiny.cfg")
    assert "big" not in [r.name for r in table.build_plan(a, tmp_path)[0]]  # the same run as "tiny"
    rows, _ = table.build_plan(settings(), tmp_path)
    assert [r.name for r in rows][:2] == ["tiny", "big"] and len(rows) == len(ROWS) + 1
    # big-long, only when named: the big model again, for --long-epochs (2 x --epochs unless given)
    for flags, epochs in (((), "4"), (("--long-epochs", "7"), "7")):
        rows, jobs = table.build_plan(settings("--seeds", "1", "--epochs", "2", "--rows", "big-long", *flags), tmp_path)
        [job] = jobs.values()
        assert [r.name for r in rows] == ["big-long"] and rows[0].training == f"default, {epochs} epochs"
        assert (job.script, job.id) == ("train.py", f"dense-e{epochs}-yolov3")
        assert table.flag_value(job.argv, "--epochs") == epochs and "cfg/yolov3.cfg" in job.argv[1]


def test_students_get_the_compact_recipe_and_nobody_else(tmp_path):
    rows, jobs = table.build_plan(settings("--seeds", "1"), tmp_path)
    recipe = ["--optimizer", "adam", "--lr0", "0.006", "--grad-clip", "0"]  # compact.yaml vs default

    def has_recipe(argv):
        return any(argv[i:i + len(recipe)] == recipe for i in range(len(argv)))

    for (jid, _), job in jobs.items():
        student = any(jid.endswith(stem) for stem in ("yolo-nano", "yolo-nano_leaky", "mobilenetv3-yolo",
                                                       "mobilenetv3-yolo_leaky", "yolov3-mobile"))
        assert has_recipe(job.argv) == student, jid
    assert {r.training for r in rows if r.name == "nano"} == {"compact recipe"}
    # YOLOv3-Mobile: a dense reference with the students' recipe and no distillation rows
    assert {r.training for r in rows if r.name == "mobile"} == {"compact recipe"}
    assert not [jid for jid, _ in jobs if jid.endswith("yolov3-mobile") and jid != "train-yolov3-mobile"]
    rows, _ = table.build_plan(settings("--seeds", "1", "--reference", ""), tmp_path)
    assert "mobile" not in [r.name for r in rows]
    with pytest.raises(table.UserError, match="--reference 'x': expected NAME=CFG"):
        table.build_plan(settings("--reference", "x"), tmp_path)
    _, jobs = table.build_plan(settings("--seeds", "1", "--student-hyp", ""), tmp_path)
    assert not any(has_recipe(j.argv) for j in jobs.values())


def test_cs_and_lth_args_reach_their_rows_only_and_name_them(tmp_path):
    a = settings("--seeds", "1", "--big-cfg", "cfg/yolov3-tiny.cfg", "--cs-args", "--cs-lambda 5e-9",
                 "--rows", "tiny", "lth-local", "cs1", "cs-filter")
    rows, jobs = table.build_plan(a, tmp_path)
    flagged = {jid for (jid, _), job in jobs.items() if job.argv[-2:] == ["--cs-lambda", "5e-9"]}
    assert flagged == {"cs1-yolov3-tiny", "cs-filter-yolov3-tiny"} and len(jobs) == 4
    assert {r.name: r.training for r in rows}["cs-filter"] == "CS filters, 1 round (--cs-lambda 5e-9)"
    a = settings("--seeds", "1", "--big-cfg", "cfg/yolov3-tiny.cfg", "--lth-args", "--rewind lr",
                 "--rows", "tiny", "lth-local", "lth-filter", "cs1")
    rows, jobs = table.build_plan(a, tmp_path)
    flagged = {jid for (jid, _), job in jobs.items() if job.argv[-2:] == ["--rewind", "lr"]}
    assert flagged == {"lth-local-yolov3-tiny", "lth-filter-local-yolov3-tiny"} and len(jobs) == 4
    assert {r.name: r.training for r in rows}["lth-filter"].endswith(" (--rewind lr)")
    a = settings("--seeds", "1", "--big-cfg", "cfg/yolov3-tiny.cfg", "--lth-filter-args", "--rewind lr",
                 "--rows", "tiny", "lth-local", "lth-filter")
    rows, jobs = table.build_plan(a, tmp_path)
    flagged = {jid for (jid, _), job in jobs.items() if job.argv[-2:] == ["--rewind", "lr"]}
    assert flagged == {"lth-filter-local-yolov3-tiny"}  # the filter row only
    assert "--rewind" not in {r.name: r.training for r in rows}["lth-local"]
    # lth-lr: weight-level LTH rewinding the learning rate only, a run of its own beside lth-local, opt-in
    assert "lth-lr" not in [r.name for r in table.build_plan(settings("--big-cfg", "cfg/yolov3-tiny.cfg"),
                                                             tmp_path)[0]]
    a = settings("--seeds", "1", "--big-cfg", "cfg/yolov3-tiny.cfg", "--lth-args=--prune-output",
                 "--rows", "lth-local", "lth-lr")
    rows, jobs = table.build_plan(a, tmp_path)
    lr, local = jobs[("lth-lr-local-yolov3-tiny", 0)], jobs[("lth-local-yolov3-tiny", 0)]
    assert lr.argv[-3:] == ["--prune-output", "--rewind", "lr"] and local.argv[-1] == "--prune-output"
    assert lr.argv[:-2] == local.argv and lr.deps == local.deps and lr.final_round == local.final_round
    assert {r.name: r.training for r in rows}["lth-lr"] == ("LTH local, 3 rounds at 0.5 (--prune-output), "
                                                             "learning-rate rewinding")
    a = settings("--seeds", "1", "--big-cfg", "cfg/yolov3-tiny.cfg", "--cs-filter-args", "--cs-lambda 3e-9",
                 "--rows", "tiny", "cs1", "cs-filter")
    rows, jobs = table.build_plan(a, tmp_path)
    flagged = {jid for (jid, _), job in jobs.items() if job.argv[-2:] == ["--cs-lambda", "3e-9"]}
    assert flagged == {"cs-filter-yolov3-tiny"}  # not the weight-level CS rows
    assert {r.name: r.training for r in rows}["cs-filter"] == "CS filters, 1 round (--cs-lambda 3e-9)"
    assert {r.name: r.training for r in rows}["cs1"] == "CS 1 round"


def test_distillation_ablations_are_opt_in_rows_from_a_given_teacher(tmp_path):
    """bench_kd/bench_gan's variants as rows: left out unless named; --teacher-weights replaces the dense run."""
    teacher = tmp_path / "teacher" / "weights" / "best.pt"
    teacher.parent.mkdir(parents=True)
    from models import Darknet
    from utils.checkpoint import save_checkpoint

    cfg = ROOT / "cfg" / "yolov3-tiny.cfg"
    save_checkpoint({"model": Darknet(str(cfg), nc=3).state_dict(), "cfg": cfg.read_text(), "nc": 3}, teacher)
    names = [r.name for r in table.build_plan(settings("--big-cfg", "cfg/yolov3-tiny.cfg"), tmp_path)[0]]
    assert "kd-nano" in names and "gan-nano" in names
    assert not [n for n in names if n.split("-")[0] == "kd2" or n.startswith(("gan-hint", "gan-all", "gan-light"))]
    a = settings("--seeds", "1", "--student", "nano=cfg/yolo-nano.cfg",
                 "--compose-student", "nano", "--teacher-weights", str(teacher), "--epochs", "7",
                 "--rows", "gan-*", "kd2-nano")
    rows, jobs = table.build_plan(a, tmp_path / "out")
    assert [r.name for r in rows] == ["kd2-nano", "gan-nano", "gan-hint-nano", "gan-all-nano", "gan-light-nano",
                                      "gan-lighter-nano"]
    assert all(j.deps == [] for j in jobs.values()) and len(jobs) == 6  # no dense run of a teacher
    argv = {jid: j.argv for (jid, _), j in jobs.items()}
    assert all(v[v.index("--teacher-weights") + 1] == str(teacher) for v in argv.values())
    tail = {jid: v[v.index("--seed") + 2:] for jid, v in argv.items()}
    assert tail["gan-yolo-nano"] == [] and tail["gan-hint-yolo-nano"] == ["--hint-weight", "0.1"]
    assert tail["gan-all-yolo-nano"] == ["--second-stage", "7"]
    assert tail["gan-lighter-yolo-nano"] == ["--adv-weight", "0.01", "--stage1-det-scale", "1.0"]
    # two pairs: nano's stage outputs at strides 16 and 32 against the given teacher's (a yolov3-tiny)
    assert tail["kd2-yolo-nano"] == ["--student-features", "21", "27", "--teacher-features", "8", "13"]
    assert {r.training for r in rows if r.name == "gan-all-nano"} == {
        "KD GAN, adversarial every epoch, from teacher/best.pt"}


def test_equal_time_gives_the_students_tinys_time_from_rates_timed_once(tmp_path, monkeypatch):
    """--equal-time: every run of a student gets the epochs that take tiny's time at the measured rates (each epoch at
    its progressive size); the rates are timed once and read back from rates.json by the next plan."""
    from benchmarks import bench_train

    timed = []

    def fake_rates(runs, batch, device, amp):
        timed.append(list(runs))
        return {(cfg, s): (60.0 if cfg.stem == "yolov3-tiny" else 20.0) * 256 / s for cfg, s in runs}

    monkeypatch.setattr(bench_train, "train_rates", fake_rates)
    args = ("--seeds", "1", "--epochs", "30", "--big-cfg", "cfg/yolov3-tiny.cfg", "--student", "nano=cfg/yolo-nano.cfg",
            "--compose-student", "nano", "--reference", "", "--rows", "tiny", "nano", "kd-nano", "--equal-time")
    rows, jobs = table.build_plan(settings(*args), tmp_path)
    sizes = [128, 160, 192, 224, 256]  # params/default.yaml's img_size_start 0.5 of 256 px, for tiny and students
    assert sorted(s for _, s in timed[0]) == sorted(sizes * 2)
    budget = bench_train.training_cost(30, {s: 60.0 * 256 / s for s in sizes}, 128, 256)
    expected = bench_train.epochs_for_time(budget, {s: 20.0 * 256 / s for s in sizes}, 128, 256)
    assert expected == 10  # a third of tiny's rate at every size: a third of its epochs
    epochs = {jid: table.flag_value(j.argv, "--epochs") for (jid, _), j in jobs.items()}
    assert epochs == {"dense-yolov3-tiny": "30", "dense-yolo-nano": str(expected), "kd-yolo-nano": str(expected)}
    assert {r.name: r.training for r in rows}["nano"] == f"compact recipe, {expected} epochs"
    table.build_plan(settings(*args), tmp_path)
    assert len(timed) == 1  # read from rates.json
    _, jobs = table.build_plan(settings(*args[:-1], "--student-epochs", "4"), tmp_path / "fixed")
    assert table.flag_value(jobs["dense-yolo-nano", 0].argv, "--epochs") == "4" and len(timed) == 1


def test_reduced_width_yolov3_builds_with_its_heads(tmp_path):
    import torch

    from models import Darknet

    cfg = table.scale_cfg(ROOT / "cfg" / "yolov3.cfg", 0.25, tmp_path / "yolov3-w0.25.cfg")
    full, small = Darknet(str(ROOT / "cfg" / "yolov3.cfg"), nc=6), Darknet(str(cfg), nc=6)
    n_full, n_small = (sum(p.numel() for p in m.parameters()) for m in (full, small))
    assert n_small < n_full / 10
    small.eval()
    with torch.no_grad():
        out, _ = small(torch.zeros(1, 3, 64, 64))
    assert out.shape[-1] == 11
    assert table.model_label(cfg) == "YOLOv3 (width x0.25)"


@pytest.mark.slow
def test_the_ledger_stands_in_for_run_folders_that_are_gone(full, tmp_path):
    """Figures recorded by one table invocation come back, marked, in another whose --out holds no run folders;
    a record never stands in for a run with other arguments."""
    ledger = tmp_path / "ledger.json"
    rows = ["--rows", "tiny", "lth-local"]
    table.main([*full["argv"], *rows, "--collect-only", "--ledger", str(ledger)], out=lambda *a: None)
    recs = json.loads(ledger.read_text())["runs"]
    here = {(s["row"], s["seed"]): s for s in read_csv(full["base"] / "seeds.csv")}
    assert sorted((r["run"], r["seed"]) for r in recs) == [("dense-yolov3-tiny", 0), ("lth-local-yolov3-tiny", 0)]
    assert all(r["date"] and r["machine"] and r["commit"] for r in recs)

    elsewhere = tmp_path / "elsewhere"  # another machine: the same table, none of the run folders
    argv = [a if a != str(full["out"]) else str(elsewhere) for a in full["argv"]]
    table.main([*argv, *rows, "--collect-only", "--ledger", str(ledger)], out=lambda *a: None)
    seeds = {(s["row"], s["seed"]): s for s in read_csv(elsewhere / "shapes" / "seeds.csv")}
    assert set(seeds) == set(here)
    for key, s in seeds.items():
        assert s["recorded"] and not here[key]["recorded"]
        for k in table.METRICS:
            assert s[k] == here[key][k], k
    md = (elsewhere / "shapes" / "table.md").read_text()
    assert "s0†" in md and f"the ledger `{ledger}`" in md and recs[0]["machine"] in md
    assert json.loads(ledger.read_text())["runs"] == recs  # standing in changes no record

    calls = []
    table.main([*argv, *rows, "--ledger", str(ledger)], runner=lambda *a: calls.append(a) or 0, out=lambda *a: None)
    assert calls == []  # every run is recorded: none starts again
    table.main([*argv, *rows, "--ledger", str(ledger), "--rerun", "--dry-run"], out=lambda *a: calls.append(a))
    assert any("prune.py --lth" in str(c) for c in calls)  # --rerun trains recorded runs again
    assert not any("recorded in the ledger" in str(c) for c in calls)
    calls = []

    # other arguments (two LTH rounds): the LTH record does not stand in, the dense one (same run) still does
    table.main([*argv, *rows, "--collect-only", "--ledger", str(ledger), "--lth-rounds", "2"], out=lambda *a: None)
    counts = {r["row"]: r["seeds"] for r in read_csv(elsewhere / "shapes" / "table.csv")}
    assert counts == {"tiny": "1", "lth-local": "0"}
    [(header, body)] = table.parse_block(table.START + "\n" + (elsewhere / "shapes" / "table.md").read_text() + "\n"
                                         + table.END)
    assert [r[-1] for r in body] == ["s0†", "not run yet"]  # the unfinished row says so
    # run, it trains the dense run again: the new LTH run starts from its weights, which only a folder holds
    with pytest.raises(table.UserError, match="2 run.s. failed or were skipped"):
        table.main([*argv, *rows, "--ledger", str(ledger), "--lth-rounds", "2"],
                   runner=lambda *a: calls.append(a) or 0, out=lambda *a: None)
    assert [(c[0], c[1][:2]) for c in calls] == [("prune.py", ["--lth", "--cfg"])]  # the dense (its run fails here)


def test_a_broken_ledger_is_a_one_line_error(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(table.UserError, match=f"{path}: not a table ledger"):
        table.Ledger(path)


def test_a_smaller_shapes_set_is_written_under_out_and_used_by_every_run(tmp_path):
    lines = []
    table.main(["--data", "data/shapes.data", "--n-train", "8", "--n-val", "4", "--seeds", "1", "--out", str(tmp_path),
                "--rows", "tiny", "--dry-run"], out=lines.append)
    data = tmp_path / "shapes_8_4" / "shapes.data"
    assert data.is_file() and "train" in data.read_text()
    commands = [line for line in lines if line.startswith("python ")]
    assert commands and all(f"--data {data}" in c for c in commands)


def test_a_run_folder_copied_from_another_machine_finds_its_files_below_itself(tmp_path):
    """benchmarks/gpu_table.sh packs run folders on the GPU machine; their markers name that machine's paths."""
    job = table.Job("lth-local-yolov3-tiny", 0, tmp_path / "shapes" / "lth-local-yolov3-tiny" / "seed0", "prune.py", [])
    there = "/root/repo/runs/gpu_table/shapes/lth-local-yolov3-tiny/seed0/export/best.sparse.pt"
    assert table.moved(job, there) == job.folder / "export" / "best.sparse.pt"
    here = job.folder / "round_5" / "weights" / "best.pt"
    assert table.moved(job, str(here)) == here
    assert table.moved(job, "/elsewhere/x.pt") == Path("/elsewhere/x.pt")  # not below a run folder: as recorded

