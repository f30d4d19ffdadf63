"""Atomic writes: a failed write leaves the old file and no temporary file behind."""

import pytest
import torch
from safetensors.torch import load_file

from nrnlib.results import atomic_write, save_safetensors_atomic


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "x.json"
    atomic_write(path, lambda tmp: open(tmp, "w").write("old"))

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_save_safetensors_atomic_round_trip(tmp_path):
    t = torch.arange(6.0).reshape(2, 3).T  # non-contiguous
    path = save_safetensors_atomic(tmp_path / "t.safetensors", {"t": t}, {"key": "v"})
    assert torch.equal(load_file(str(path))["t"], t)
