"""The atlas is built once and then read from its disk cache, bit for bit the same."""

import shutil

import numpy as np
import pytest

from wmh.preprocess import atlas as atlas_module
from wmh.preprocess.atlas import atlas_cache_folder, load_atlas

FIELDS = ("t1", "brain", "ventricles", "affine", "grey", "white", "csf")


@pytest.fixture
def fresh_atlas(monkeypatch, tmp_path):
    """load_atlas with an empty in-process cache and its disk cache under tmp_path."""
    monkeypatch.setenv("WMH_CACHE_HOME", str(tmp_path / "cache"))
    load_atlas.cache_clear()
    yield tmp_path / "cache"
    load_atlas.cache_clear()


def test_atlas_is_read_back_from_disk_identical(fresh_atlas):
    built = load_atlas(2.0)
    assert not isinstance(built.t1, np.memmap)
    folders = sorted(path.name for path in fresh_atlas.iterdir())
    assert [name.split("-")[1] for name in folders] == ["1mm", "2mm"]
    assert atlas_cache_folder(2.0).is_dir() and atlas_cache_folder(1.0).is_dir()
    assert atlas_cache_folder(2.0) != atlas_cache_folder(1.0)

    load_atlas.cache_clear()
    read = load_atlas(2.0)
    assert isinstance(read.t1, np.memmap) and not read.t1.flags.writeable
    for name in FIELDS:
        assert np.array_equal(getattr(read, name), getattr(built, name)), name
        assert getattr(read, name).dtype == getattr(built, name).dtype, name
    assert read.t1.shape == (99, 117, 95)


def test_damaged_cache_is_rebuilt_and_an_unusable_one_skipped(fresh_atlas, monkeypatch):
    built = load_atlas(2.0)
    folder = atlas_cache_folder(2.0)
    (folder / "t1.npy").write_bytes(b"not an array")
    load_atlas.cache_clear()
    monkeypatch.setattr(atlas_module, "_build_atlas", lambda: pytest.fail("1 mm rebuilt"))
    rebuilt = load_atlas(2.0)  # the 1 mm atlas is still read from its folder
    assert np.array_equal(rebuilt.t1, built.t1) and not isinstance(rebuilt.t1, np.memmap)

    # a write that fails half-way leaves no partial folder behind
    load_atlas.cache_clear()
    shutil.rmtree(folder)
    real_save = np.save

    def failing_save(path, array):
        if str(path).endswith("grey.npy"):
            raise OSError("No space left on device")
        real_save(path, array)

    monkeypatch.setattr(atlas_module.np, "save", failing_save)
    assert np.array_equal(load_atlas(2.0).t1, built.t1)
    assert not folder.exists()
    assert sorted(path.name for path in fresh_atlas.iterdir()) == [
        atlas_cache_folder(1.0).name]
    monkeypatch.setattr(atlas_module.np, "save", real_save)

    # a cache root that is a file: nothing kept, the atlas still built
    monkeypatch.undo()
    root = fresh_atlas.parent / "a-file"
    root.write_text("")
    monkeypatch.setenv("WMH_CACHE_HOME", str(root))
    load_atlas.cache_clear()
    assert np.array_equal(load_atlas(2.0).brain, built.brain)
    # an empty WMH_CACHE_HOME turns the disk cache off
    monkeypatch.setenv("WMH_CACHE_HOME", "")
    assert atlas_cache_folder(2.0) is None
