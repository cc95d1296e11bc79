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
