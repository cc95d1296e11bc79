"""utils/memory_format.py: --memory-format auto is measured on this machine, cached, and leaves the model alone."""
import pytest
import torch

from utils import memory_format as mf

CPU = torch.device("cpu")


class Net(torch.nn.Module):
    cfg_text = "[net]\n# a stand-in cfg text: the cache key hashes it"

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return [self.bn(self.conv(x))]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_COMPRESSION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "memory_format.json"


def fake_rates(monkeypatch, rates):
    calls = []

    def step_rates(model, device, precision, img_size, batch):
        calls.append((getattr(precision, "name", precision), img_size, batch))
        return dict(rates)
    monkeypatch.setattr(mf, "step_rates", step_rates)
    return calls


def test_a_given_memory_format_is_used_without_probing(cache, monkeypatch):
    calls = fake_rates(monkeypatch, {"channels_last": 1.0, "contiguous": 2.0})
    assert mf.choose_memory_format(Net(), CPU, "fp32", 64, 16, "channels_last") == ("channels_last",
                                                                                    "--memory-format channels_last")
    assert not calls and not cache.exists()


def test_auto_keeps_the_faster_layout_and_caches_the_probe(cache, monkeypatch):
    calls = fake_rates(monkeypatch, {"channels_last": 15.1, "contiguous": 13.0})
    name, why = mf.choose_memory_format(Net(), CPU, "fp32", 64, 16)
    assert name == "channels_last" and why == "15.1 vs 13.0 img/s contiguous, probed now"
    assert calls == [("fp32", 64, mf.PROBE_BATCH)] and cache.is_file()
    name, why = mf.choose_memory_format(Net(), CPU, "fp32", 64, 16)  # the same machine, cfg, precision and size
    assert name == "channels_last" and why.endswith("probed earlier on this machine") and len(calls) == 1
    fake_rates(monkeypatch, {"channels_last": 9.0, "contiguous": 12.5})
    assert mf.choose_memory_format(Net(), CPU, "bf16", 64, 16)[0] == "contiguous"  # another precision: probed anew
    assert mf.choose_memory_format(Net(), CPU, "fp32", 64, 16)[0] == "channels_last"  # the first entry stays


def test_an_unreadable_or_unwritable_cache_costs_only_a_probe(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("YOLO_COMPRESSION_CACHE", str(blocker / "cache"))
    calls = fake_rates(monkeypatch, {"channels_last": 1.0, "contiguous": 2.0})
    assert mf.choose_memory_format(Net(), CPU, "fp32", 64, 16)[0] == "contiguous"
    assert mf.choose_memory_format(Net(), CPU, "fp32", 64, 16)[0] == "contiguous" and len(calls) == 2


def test_the_probe_leaves_the_model_and_the_global_rng_untouched():
    torch.manual_seed(0)
    net = Net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.random.get_rng_state()
    rates = mf.step_rates(net, CPU, "fp32", 32, batch=2, steps=1)
    assert set(rates) == {"channels_last", "contiguous"} and min(rates.values()) > 0
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # BN statistics included
    assert net.conv.weight.grad is None and net.conv.weight.is_contiguous()


def test_the_cache_key_names_the_machine_cfg_precision_size_and_batch():
    key = mf.probe_key(CPU, "[net]", "bf16", 256, 8)
    assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key
    assert key.endswith("| bf16 | 256px | batch 8") and key != mf.probe_key(CPU, "[net]\n", "bf16", 256, 8)
