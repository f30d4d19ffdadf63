"""Results on disk: ``figures/results/{name}.json`` with provenance, and a resumable per-item cache.

Provenance = commit, model, profile, seeds, device, library versions, wall time: everything needed
to tell where a number came from.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nrnlib.models import cache_dir
from nrnlib.plots import figures_dir

_LIBRARIES = ("torch", "transformer-lens", "transformers", "nrnlib")


def git_commit() -> str:
    """The repository's HEAD commit (``+dirty`` when the work tree has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(model=None) -> str:
    device = torch.device(model.cfg.device) if model is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def provenance(model=None, profile=None, seeds=(), wall_s: float | None = None) -> dict[str, Any]:
    return {
        "commit": git_commit(),
        "model": getattr(getattr(model, "cfg", None), "model_name", None),
        "profile": getattr(profile, "name", profile),
        "seeds": list(seeds),
        "device": device_description(model),
        "versions": library_versions(),
        "wall_s": None if wall_s is None else round(wall_s, 2),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``: an interrupted
    run never leaves a half-written file (the temporary file is removed on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through :func:`atomic_write`."""
    from safetensors.torch import save_file

    contiguous = {name: t.contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_results(name: str, data: Any, model=None, profile=None, seeds=(), wall_s: float | None = None) -> Path:
    """Write ``figures/results/{name}.json``: ``{"provenance": ..., "results": data}``."""
    path = figures_dir() / "results" / f"{name}.json"
    payload = {"provenance": provenance(model, profile, seeds, wall_s), "results": data}
    _atomic_write_text(path, json.dumps(payload, indent=1, default=float))
    return path


def load_results(name: str) -> dict:
    return json.loads((figures_dir() / "results" / f"{name}.json").read_text())


def stable_hash(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (a cache key)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_json(kind: str, key: str, compute):
    """Return ``compute()`` cached as JSON under ``$NRN_CACHE/{kind}/{key}.json`` (resumable work:
    each finished item is on disk, so an interrupted run restarts where it stopped)."""
    path = cache_dir() / kind / f"{key}.json"
    if path.exists() and os.environ.get("NRN_NO_CACHE") != "1":
        return json.loads(path.read_text())
    value = compute()
    _atomic_write_text(path, json.dumps(value))
    return value
