"""utils/torch_utils.py: precise BatchNorm statistics."""
import torch
import torch.nn as nn

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


def test_memory_format_choice_overrides_auto():
    from utils.torch_utils import memory_format

    cpu = torch.device("cpu")
    assert memory_format(cpu, amp=True) == torch.channels_last
    assert memory_format(cpu, amp=False) == torch.contiguous_format
    assert memory_format(cpu, amp=True, choice="contiguous") == torch.contiguous_format
    assert memory_format(cpu, amp=False, choice="channels_last") == torch.channels_last
