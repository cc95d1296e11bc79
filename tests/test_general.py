"""utils/general.py: the toolkit's cache folder, and files found from any working folder."""
from pathlib import Path

import pytest

from utils import general
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


def test_the_default_cfg_and_data_files_are_found_from_any_folder(monkeypatch, tmp_path):
    """A relative cfg or .data path missing from the working folder is read from the toolkit's folder; one found in
    the working folder wins, and a path found nowhere stays as given (its error names it)."""
    from models import read_cfg
    from utils.datasets import parse_data_cfg
    from utils.errors import UserError

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "yolov3-tiny.cfg").write_text("[net]\n# the working folder's own\n")
    monkeypatch.chdir(tmp_path)
    assert read_cfg("cfg/yolov3-tiny.cfg") == "[net]\n# the working folder's own\n"
    assert read_cfg("cfg/yolo-nano.cfg") == (general.ROOT / "cfg" / "yolo-nano.cfg").read_text()
    assert general.project_path("cfg/none.cfg") == Path("cfg/none.cfg")
    with pytest.raises(UserError, match=r"^cfg/none.cfg: cfg file not found"):
        read_cfg("cfg/none.cfg")
    project = tmp_path / "project"
    (project / "data" / "images").mkdir(parents=True)
    (project / "data" / "x.names").write_text("a\n")
    (project / "data" / "x.data").write_text("classes=1\ntrain=images\nvalid=images\nnames=x.names\n")
    monkeypatch.setattr(general, "ROOT", project)
    d = parse_data_cfg("data/x.data")
    assert d["train"] == str(project / "data" / "images") and d["names"] == ["a"]
