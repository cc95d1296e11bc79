"""benchmarks/bench_train.py: the training-time budget the table's --equal-time plans with."""
from benchmarks.bench_train import epochs_for_time, train_sizes, training_cost


def test_budget_counts_each_epoch_at_its_size():
    """The epoch count for a time budget: budget x rate rounded at one size; with progressive resizing the cheaper
    small epochs buy more epochs, each costed at its own size."""
    assert epochs_for_time(30 / 60.0, {256: 14.0}, 0, 256) == 7  # 30 epochs at 60 img/s: 7.0 at 14 img/s
    assert epochs_for_time(30 / 60.0, {256: 12.8}, 0, 256) == 6  # 6.4 -> 6, the nearer count
    assert epochs_for_time(30 / 60.0, {256: 13.2}, 0, 256) == 7  # 6.6 -> 7
    assert epochs_for_time(0.01, {256: 14.0}, 0, 256) == 1  # at least one epoch
    rates = {128: 40.0, 160: 30.0, 192: 20.0, 224: 16.0, 256: 14.0}
    # 11 epochs from 128 px: sizes 128 x3, 160 x2, 192 x3, 224 x2, 256 -> 3/40 + 2/30 + 3/20 + 2/16 + 1/14 = 0.488 s
    # per image, nearer the budget of 0.5 than 12 epochs (0.521)
    assert abs(training_cost(11, rates, 128, 256) - (3 / 40 + 2 / 30 + 3 / 20 + 2 / 16 + 1 / 14)) < 1e-12
    assert epochs_for_time(30 / 60.0, rates, 128, 256) == 11


def test_train_sizes_are_the_stride_multiples_a_progressive_run_visits():
    assert train_sizes(0, 256) == [256]
    assert train_sizes(128, 256) == [128, 160, 192, 224, 256]
    assert train_sizes(100, 256) == [96, 128, 160, 192, 224, 256]


def test_without_native_bf16_nothing_is_timed_in_bf16(monkeypatch, capsys):
    """On a CPU that only emulates bf16 the benchmark times fp32 alone: an emulated bf16 matmul peak took 9 of its
    10 minutes on the Zen 4 restricted to AVX2 code paths."""
    import torch

    from benchmarks import bench_train

    timed = []
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(bench_train, "matmul_peak", lambda dtype, device: timed.append(dtype) or 100.0)
    monkeypatch.setattr(bench_train, "step_rate", lambda cfg, size, batch, prec, *a: timed.append(prec) or 10.0)
    monkeypatch.setattr(bench_train, "choose_memory_format", lambda *a: ("channels_last", "patched"))
    bench_train.main(["--img-size", "64"])
    assert timed == [torch.float32, "fp32", "fp32"]
    out = capsys.readouterr().out
    assert "matmul peak: fp32 100 GFLOP/s;" in out and "auto: fp32 (CPU has no native bf16" in out
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    timed.clear()
    bench_train.main(["--img-size", "64"])
    assert timed == [torch.float32, torch.bfloat16, "fp32", "fp32", "bf16", "bf16"]
