"""pyzsl._atomic: the one way every writer replaces a file."""
import os
import stat

import numpy as np
import pytest
import torch

from pyzsl._atomic import atomic_torch_save, atomic_write
from pyzsl.zsl import CosineZSL


def test_replaces_only_on_success(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="stop"):
        with atomic_write(path, "w") as f:
            f.write("half")
            raise RuntimeError("stop")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no temporary left
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("new\n")
        assert path.read_text() == "old"  # the target is untouched until the block ends
    assert path.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*no.* does not exist"):
        with atomic_write(tmp_path / "no" / "f.bin"):
            pass
    assert not (tmp_path / "no").exists()
    with atomic_write(tmp_path / "a" / "b" / "f.bin", parents=True) as f:
        f.write(b"x")
    assert (tmp_path / "a" / "b" / "f.bin").read_bytes() == b"x"


def test_files_get_umask_permissions(tmp_path):
    X = np.eye(4, dtype=np.float32)
    model = CosineZSL().fit(X, np.arange(4), X)
    old = os.umask(0o027)
    try:
        model.save(tmp_path / "model.npz")  # was mkstemp's 0o600
        atomic_torch_save({"w": torch.ones(2)}, tmp_path / "ck.pt")  # both trainers' checkpoints
        with atomic_write(tmp_path / "t.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    for name in ("model.npz", "ck.pt", "t.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    assert torch.equal(torch.load(tmp_path / "ck.pt")["w"], torch.ones(2))


def test_never_touches_the_process_umask(tmp_path, monkeypatch):
    # Reading the umask with os.umask sets it process-wide for a moment: a file another thread
    # creates then would get mode 0o666. The kernel applies the umask to our new file instead.
    def no_umask(*_):
        raise AssertionError("os.umask called")

    old = os.umask(0o077)
    try:
        monkeypatch.setattr(os, "umask", no_umask)
        with atomic_write(tmp_path / "t.txt", "w") as f:
            f.write("x")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.txt").stat().st_mode) == 0o600
