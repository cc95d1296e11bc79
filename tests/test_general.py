"""utils/general.py: the toolkit's cache folder."""
from pathlib import Path

from utils.general import user_cache_dir


def test_cache_folder_from_its_variable_its_old_name_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("YOLO_COMPRESSION_CACHE", raising=False)
    monkeypatch.delenv("YOLOC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "yolo-compression"
    monkeypatch.setenv("YOLOC_CACHE_DIR", str(tmp_path / "old"))  # the memory-format probe's earlier variable
    assert user_cache_dir() == tmp_path / "old"
    monkeypatch.setenv("YOLO_COMPRESSION_CACHE", str(tmp_path / "new"))
    assert user_cache_dir() == Path(tmp_path / "new")


def test_the_cpu_name_carries_family_and_model(tmp_path):
    """A virtual machine's 'AMD EPYC' is Zen 2, 4 or 5: figures name the family and model too."""
    from utils.general import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 1\nmodel name\t: X\n")
    assert cpu_name(info) == "AMD EPYC (family 25 model 17)"
    info.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")
    assert cpu_name(info) == "Some ARM core"
