"""benchmarks/common.py: the timing helpers the benchmarks share."""
import benchmarks.common as common


def test_interleaved_passes_time_every_network_in_turn_and_outvote_a_slow_spell(monkeypatch):
    clock, calls = [0.0], []
    reps, warmup = 3, 1
    ms = {"dense": [4.0, 40.0, 5.0], "ticket": [1.0, 10.0, 2.0]}  # pass 2 is a slow spell of the machine

    def runner(key):
        def run():
            calls.append(key)
            clock[0] += ms[key][(calls.count(key) - 1) // (reps + warmup)] / 1000
        return run

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    out = common.interleaved_latencies({k: runner(k) for k in ms}, reps, passes=3, warmup=warmup)
    per_pass = reps + warmup
    assert calls == (["dense"] * per_pass + ["ticket"] * per_pass) * 3  # each pass times every network in turn
    for key, times in ms.items():
        best, median, passes = out[key]
        assert [round(m, 9) for m in passes] == times  # each pass: the median of its timed runs
        assert round(median, 9) == sorted(times)[1] and round(best, 9) == min(times)  # the slow pass is outvoted


def test_the_autocast_runner_runs_a_channels_last_copy_and_leaves_the_model_alone(tmp_path):
    """The runner of bf16 on a CPU and fp16 on CUDA, here on the CPU in fp32 (the same code path, no device needed);
    with a CUDA device latency_runners adds it as cuda_fp16."""
    import torch

    from models import Darknet

    torch.manual_seed(0)
    model = Darknet("cfg/yolov3-tiny.cfg", nc=2, img_size=64).eval()
    calls = []
    handle = model.register_forward_pre_hook(lambda m, inp: calls.append(m is model))  # the copy carries it too
    run = common.autocast_runner(model, 64, torch.device("cpu"), "fp32", batch=2)
    with torch.inference_mode():
        run()
    assert calls == [False]  # a copy ran, not the model
    handle.remove()
    assert next(model.parameters()).is_contiguous()  # the model keeps its layout
    runners = common.latency_runners(model, 64, tmp_path, device=torch.device("cpu"))
    assert "cuda_fp16" not in runners and {"fp32", "ort"} <= set(runners)


def test_bench_latency_adds_a_cuda_fp16_column_on_a_gpu(tmp_path):
    import pytest
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from benchmarks.bench_latency import main
    from models import Darknet, make_checkpoint
    from utils.checkpoint import save_checkpoint

    save_checkpoint(make_checkpoint(Darknet("cfg/yolov3-tiny.cfg", nc=2, img_size=64)), tmp_path / "d.pt")
    [row] = main(["--weights", str(tmp_path / "d.pt"), "--img-sizes", "64", "--reps", "2", "--device", "0"])
    assert row["cuda_fp16"] > 0 and row["ort"] > 0
