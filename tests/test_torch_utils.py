"""utils/torch_utils.py: precise BatchNorm statistics."""
import pytest
import torch
import torch.nn as nn

from utils import torch_utils
from utils.torch_utils import recompute_bn_stats


def deep_bn_stack(depth=12, c=6):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, c, 3, padding=1)]
    for _ in range(depth):
        layers += [nn.BatchNorm2d(c, momentum=0.03), nn.ReLU6(), nn.Conv2d(c, c, 1)]
    return nn.Sequential(*layers)


def test_statistics_are_the_plain_mean_over_the_batches():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4, momentum=0.03)
    model = nn.Sequential(bn).eval()
    batches = [torch.randn(5, 4, 6, 6) * (i + 1) + i for i in range(3)]
    assert recompute_bn_stats(model, batches) == 3
    means = torch.stack([b.mean((0, 2, 3)) for b in batches])
    variances = torch.stack([b.transpose(0, 1).reshape(4, -1).var(1, unbiased=True) for b in batches])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), rtol=1e-5)
    assert bn.momentum == 0.03 and not model.training  # momentum and mode restored


def test_eval_output_matches_train_output_on_the_statistics_batch():
    """With stale running statistics a deep BN stack's eval output is far from its train output; recomputed on the
    same batch they agree (what went wrong with YOLO Nano, docs/models.md)."""
    model = deep_bn_stack()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        for m in model.modules():  # weights that moved since the running statistics were taken
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3.0)
        want = model.train()(x)
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        stale = model(x)
    rel = lambda a: ((a - want).norm() / want.norm()).item()  # noqa: E731
    assert rel(stale) > 0.5
    recompute_bn_stats(model, [x])
    with torch.no_grad():
        got = model(x)
    assert rel(got) < 0.02  # not exact: running variances are unbiased, train mode divides by n


def test_no_batch_norm_is_a_no_op():
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert recompute_bn_stats(model, [torch.randn(1, 3, 4, 4)]) == 0


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what torch reports of this CPU: ``cpu_bf16(native)`` patches oneDNN's bf16 and fp16 capability checks."""
    def set_native(native, fp16=None):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: native if fp16 is None else fp16)
        monkeypatch.setattr(torch_utils, "_warned", set())
    return set_native


def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(cpu_bf16, monkeypatch):
    cpu = torch.device("cpu")
    cpu_bf16(True)
    p = torch_utils.resolve_precision(cpu, "auto")
    assert (p.name, p.amp, p.scaled) == ("bf16", True, False) and "native bf16" in p.reason
    cpu_bf16(False)
    monkeypatch.setattr(torch_utils, "cpu_isa", lambda native=True: "AVX2")
    p = torch_utils.resolve_precision(cpu, "auto")
    assert (p.name, p.amp) == ("fp32", False)
    assert str(p) == "fp32 (CPU has no native bf16: AVX2)"


@pytest.mark.parametrize("flags, native, want", [
    (["avx2", "avx512_bf16"], True, "AVX512-BF16"), (["avx2", "amx_bf16", "avx512_bf16"], True, "AMX"),
    (["avx2"], False, "AVX2"),
    # the CPU lists AVX512-BF16 but oneDNN runs no bf16 (ONEDNN_MAX_CPU_ISA=AVX2): the message names both
    (["avx2", "avx512_bf16"], False, "AVX2; the CPU lists AVX512-BF16, unused by oneDNN here")])
def test_the_precision_reason_names_the_isa_that_decided(cpu_bf16, monkeypatch, flags, native, want):
    cpu_bf16(native)
    monkeypatch.setattr(torch_utils, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    p = torch_utils.resolve_precision(torch.device("cpu"), "auto")
    assert p.reason == f"CPU has {'' if native else 'no '}native bf16: {want}"


def test_auto_is_fp16_with_a_scaler_on_cuda(cpu_bf16):
    cpu_bf16(True)  # the CPU's abilities do not matter on a GPU
    p = torch_utils.resolve_precision(torch.device("cuda", 0), "auto")
    assert (p.name, p.scaled) == ("fp16", True) and "CUDA" in p.reason


@pytest.mark.parametrize("choice, want", [("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_a_forced_choice_is_kept(cpu_bf16, choice, want):
    cpu_bf16(True)
    for device in (torch.device("cpu"), torch.device("cuda", 0)):
        assert torch_utils.resolve_precision(device, choice).name == want


def test_forced_bf16_without_native_support_runs_and_warns_once(cpu_bf16):
    cpu_bf16(False)
    warnings = []
    for _ in range(3):
        p = torch_utils.resolve_precision(torch.device("cpu"), "bf16", warn=warnings.append)
        assert p.name == "bf16" and "emulated" in p.reason
    assert len(warnings) == 1 and "emulates" in warnings[0] and "--amp auto picks fp32" in warnings[0]
    assert torch_utils.resolve_precision(torch.device("cpu"), "fp16", warn=warnings.append).name == "fp16"
    assert len(warnings) == 2  # fp16 has its own warning


def test_autocast_follows_the_precision():
    cpu = torch.device("cpu")
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with torch_utils.autocast(cpu, "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with torch_utils.autocast(cpu, torch_utils.Precision("fp32", "test")):
        assert (x @ w).dtype == torch.float32


def test_no_amp_is_an_alias_of_amp_off_and_auto_is_the_default():
    from utils.my_utils import parse_args, train_parser

    assert parse_args(train_parser(), []).amp == "auto"
    assert parse_args(train_parser(), ["--no-amp"]).amp == "off"
    assert parse_args(train_parser(), ["--no_amp"]).amp == "off"
    assert parse_args(train_parser(), ["--amp", "bf16"]).amp == "bf16"
    with pytest.raises(SystemExit):
        parse_args(train_parser(), ["--amp", "fp8"])


def test_runs_saved_before_amp_resume_with_the_matching_choice():
    import argparse

    from utils.my_utils import upgrade_saved_args

    old_fp32 = upgrade_saved_args(argparse.Namespace(no_amp=True, epochs=3))
    old_default = upgrade_saved_args(argparse.Namespace(no_amp=False, epochs=3))
    new = upgrade_saved_args(argparse.Namespace(amp="bf16"))
    assert (old_fp32.amp, old_default.amp, new.amp) == ("off", "auto", "bf16")
    assert not hasattr(old_fp32, "no_amp") and old_fp32.epochs == 3


def test_inverse_exp_schedule_is_the_original_projects_factor():
    from utils.torch_utils import lr_schedule

    f = lr_schedule("inverse-exp", 300, 0.05)  # lrf is the cosine's; the original's exponent is fixed at -4
    assert f(0) == pytest.approx(0.9999) and f(225) == pytest.approx(0.9) and f(300) == 0.0
    assert f(150) == pytest.approx(1 - 10 ** -2)
    g = lr_schedule("cosine", 300, 0.05)
    assert g(0) == 1.0 and g(300) == pytest.approx(0.05) and g(150) == pytest.approx(0.525)
