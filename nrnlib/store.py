"""The one place results live: a keyed on-disk cache of every unit of work, and the results JSON.

**Cache entries.** ``cached(kind, compute, settings=..., model=..., tasks=..., code=...)`` returns
``compute()``, stored under ``cache_dir()/kind/{digest}.json`` (JSON values) or ``.safetensors``
(a dict of tensors). The key is everything the value depends on:

- ``kind`` and every ``settings`` entry (sizes, seeds, lr, the neuron mask's digest, ...);
- the model's fingerprint (``model_state.model_fingerprint``: weights **and** tokenizer + chat
  template);
- the digest of every task and the exact examples used (``Task.digest``: name, category,
  instruction, labels and the examples, demonstrations included);
- the digest of the nrnlib source code that computes it (``code_digest``: the named modules' syntax
  trees without docstrings, so a comment or docstring edit keeps the cache and a code change drops
  it).

Guarantees: a value is only served when its stored key equals the asked one (no truncated-hash
collision); an unreadable entry is a miss and is rewritten; writes are atomic (temporary file in
the target folder, fsync, rename); a lock per key makes two processes that ask for the same entry
compute it once (the second waits, then reads); a model carrying hooks (``deactivate``, user hooks)
is refused (``HookedModelError``): its results are not the model's. ``NRN_NO_CACHE=1`` computes
everything afresh and writes nothing; ``NRN_CACHE`` moves the cache.

**Provenance.** Each entry records the commit, library versions, device and compute seconds that
produced it. Every entry served or computed in this process is noted in a ledger; ``save_results``
writes ``figures/results/{name}.json`` with the ledger's summary (the commits involved, the summed
compute seconds of the entries) beside the writer's own commit and wall time, and the claims.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nrnlib.model_state import attached_hooks, model_fingerprint

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
RESULTS_SCHEMA = 2
_LIBRARIES = ("torch", "transformer-lens", "transformers", "peft", "nrnlib")
_FALSE = ("", "0", "false", "no")


class StoreError(RuntimeError):
    """The store cannot serve or keep a result as asked; the message says why and what to do."""


class HookedModelError(StoreError):
    """A cached computation was asked of a model that carries hooks."""


# --------------------------------------------------------------------------------------------------
# places
# --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of the cache: ``$NRN_CACHE`` or ``~/.cache/nrnlib`` (created on first use)."""
    root = Path(os.environ.get("NRN_CACHE") or Path.home() / ".cache" / "nrnlib")
    root.mkdir(parents=True, exist_ok=True)
    return root


def figures_dir() -> Path:
    """``$NRN_FIGURES`` or the repository's ``figures/`` folder."""
    root = Path(os.environ.get("NRN_FIGURES") or REPO_ROOT / "figures")
    root.mkdir(parents=True, exist_ok=True)
    return root


def results_dir() -> Path:
    return figures_dir() / "results"


def cache_enabled() -> bool:
    """False when ``$NRN_NO_CACHE`` is set to anything but 0/false/no."""
    return os.environ.get("NRN_NO_CACHE", "").strip().lower() in _FALSE


# --------------------------------------------------------------------------------------------------
# atomic files and locks
# --------------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, fsync, then rename it onto ``path``: an
    interrupted run never leaves a half-written file (the temporary file is removed on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_safetensors_atomic(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                            metadata: Mapping[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through :func:`atomic_write` (tensors moved to CPU, contiguous)."""
    from safetensors.torch import save_file

    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=dict(metadata or {})))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) on ``path`` for the block; other processes
    asking for the same lock wait. The lock file is left in place (removing it would race)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# digests and provenance
# --------------------------------------------------------------------------------------------------


def digest(value: Any, length: int = 32) -> str:
    """sha256 (hex) of the canonical JSON of ``value``; refuses values JSON cannot represent exactly."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise StoreError(f"a cache key must be plain JSON (str, int, finite float, bool, None, lists, dicts): "
                         f"{err}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def _module_digest(module: str) -> str:
    relative = Path(*module.split("."))
    path = PACKAGE_ROOT / relative.with_suffix(".py")
    if not path.exists():
        path = PACKAGE_ROOT / relative / "__init__.py"
    if not path.exists():
        raise StoreError(f"code_digest: no nrnlib module {module!r} (looked for {path})")
    return source_digest(path.read_text())


def source_digest(source: str) -> str:
    """Digest of Python source up to docstrings, comments and formatting (its syntax tree)."""
    tree = _strip_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:16]


def code_digest(modules: Sequence[str]) -> str:
    """Digest of the code of nrnlib modules (dotted names below ``nrnlib``, e.g. ``"attribution"``,
    ``"tasks.task"``; a package name covers its ``__init__``): their syntax trees with docstrings
    removed, so documentation edits keep cache entries and code edits invalidate them."""
    if not modules:
        raise StoreError("code_digest needs the modules whose code computes the value")
    return digest({m: _module_digest(m) for m in sorted(set(modules))}, 16)


# What running the notebooks writes: changes there do not make the code that computes results "dirty".
GENERATED_PATHS = ("figures", "notebooks/*.ipynb", "REPRODUCTION.md")


def git_commit() -> str:
    """The repository's HEAD commit, ``+dirty`` when tracked files other than the generated outputs
    (``GENERATED_PATHS``: figures, executed notebooks, the scorecard) have changes; or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        excluded = [f":(exclude){path}" for path in GENERATED_PATHS]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=1)
def _commit_once() -> str:
    return git_commit()


def library_versions() -> dict[str, str]:
    """Python's and the key libraries' versions (read once per process: a metadata lookup costs
    about 0.04 s, and every cache entry records them)."""
    return dict(_versions_once())


@lru_cache(maxsize=1)
def _versions_once() -> tuple[tuple[str, str], ...]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return tuple(versions.items())


def device_description(model: TransformerBridge | None = None) -> str:
    device = torch.device(model.cfg.device) if model is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def entry_provenance(compute_s: float, model: TransformerBridge | None = None) -> dict[str, Any]:
    """Where one cache entry came from: commit, versions, device, compute seconds, time written, and the
    process that computed it (``workers.run_jobs`` shares work between processes)."""
    return {"commit": _commit_once(), "versions": library_versions(), "device": device_description(model),
            "compute_s": round(float(compute_s), 3), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid()}


# --------------------------------------------------------------------------------------------------
# the ledger: every entry this process served or computed
# --------------------------------------------------------------------------------------------------

_LEDGER: list[dict[str, Any]] = []


def reset_ledger() -> None:
    """Forget the entries noted so far (``save_results`` summarises those since the last reset)."""
    _LEDGER.clear()


def ledger_summary() -> dict[str, Any]:
    """The entries behind the results written now: how many, how many were computed in this
    process, the commits that produced them, and their summed compute seconds."""
    commits = sorted({e["commit"] for e in _LEDGER})
    by_kind: dict[str, int] = {}
    for e in _LEDGER:
        by_kind[e["kind"]] = by_kind.get(e["kind"], 0) + 1
    return {"entries": len(_LEDGER), "computed_now": sum(1 for e in _LEDGER if e["computed_now"]),
            "by_kind": by_kind, "commits": commits, "any_dirty": any(c.endswith("+dirty") for c in commits),
            "compute_s": round(sum(e["compute_s"] for e in _LEDGER), 1)}


def _note(kind: str, provenance: Mapping[str, Any], computed_now: bool) -> None:
    _LEDGER.append({"kind": kind, "commit": provenance.get("commit", "unknown"),
                    "compute_s": float(provenance.get("compute_s", 0.0)), "computed_now": computed_now})


# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------


def _check_not_hooked(model: TransformerBridge, kind: str) -> None:
    hooked = attached_hooks(model)
    if hooked:
        shown = ", ".join(hooked[:4]) + (", ..." if len(hooked) > 4 else "")
        raise HookedModelError(
            f"{kind}: the model carries hooks ({shown}), e.g. inside `with deactivate(...)` or model.hooks(...). "
            f"A cached result would be stored (or served) as the intact model's. Call it outside the hook "
            f"context, or pass cache=False to compute it under the hooks without the cache."
        )


def make_key(
    kind: str,
    settings: Mapping[str, Any],
    code: Sequence[str],
    model: TransformerBridge | None = None,
    fingerprint: str | None = None,
    tasks: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The full key of an entry: kind, settings, model fingerprint, task digests, code digest."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise StoreError(f"kind must be an identifier-like string, got {kind!r}")
    if fingerprint is None and model is not None:
        fingerprint = model_fingerprint(model)
    return {"kind": kind, "settings": dict(settings), "model": fingerprint, "tasks": dict(tasks or {}),
            "code": code_digest(code)}


def _entry_path(key: Mapping[str, Any], fmt: str) -> Path:
    return cache_dir() / key["kind"] / f"{digest(key)}.{'json' if fmt == 'json' else 'safetensors'}"


def _read_json(path: Path, key_text: str) -> tuple[Any, dict] | None:
    try:
        entry = json.loads(path.read_text())
        if json.dumps(entry["key"], sort_keys=True) != key_text:
            return None
        return entry["value"], entry.get("provenance", {})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable or another key: a miss


def _read_tensors(path: Path, key_text: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key_text:
                return None
            value = {name: f.get_tensor(name) for name in f.keys()}
        return value, json.loads(meta.get("provenance", "{}"))
    except Exception:  # noqa: BLE001 - any unreadable file (truncated, garbage, wrong format) is a miss
        return None


def _write(path: Path, fmt: str, key: Mapping[str, Any], value: Any, provenance: Mapping[str, Any]) -> None:
    if fmt == "json":
        text = json.dumps({"key": key, "provenance": provenance, "value": value}, allow_nan=True)
        write_text_atomic(path, text)
    else:
        if not isinstance(value, Mapping) or not all(isinstance(v, torch.Tensor) for v in value.values()):
            raise StoreError("a 'tensors' entry must be a dict of str -> torch.Tensor")
        save_safetensors_atomic(path, value, {"key": json.dumps(key, sort_keys=True),
                                              "provenance": json.dumps(provenance)})


def cached(
    kind: str,
    compute: Callable[[], Any],
    *,
    settings: Mapping[str, Any],
    code: Sequence[str],
    model: TransformerBridge | None = None,
    fingerprint: str | None = None,
    tasks: Mapping[str, str] | None = None,
    fmt: str = "json",
    cache: bool = True,
) -> Any:
    """``compute()``, or the stored value under the key of (kind, settings, model, tasks, code).

    ``fmt``: ``"json"`` (any JSON value; NaN allowed) or ``"tensors"`` (a dict of tensors, returned on
    CPU). ``fingerprint`` may be passed when the caller computed ``model_fingerprint(model)`` already
    (it reads every weight). ``model`` is checked for hooks whenever the cache is used. With
    ``cache=False`` or ``$NRN_NO_CACHE`` the value is computed and nothing is read or written.
    """
    if fmt not in ("json", "tensors"):
        raise StoreError(f"fmt must be 'json' or 'tensors', got {fmt!r}")
    if not cache or not cache_enabled():
        start = time.perf_counter()
        value = compute()
        _note(kind, entry_provenance(time.perf_counter() - start, model), computed_now=True)
        return value
    if model is not None:
        _check_not_hooked(model, kind)
    key = make_key(kind, settings, code, model=model, fingerprint=fingerprint, tasks=tasks)
    key_text = json.dumps(key, sort_keys=True)
    path = _entry_path(key, fmt)
    read = _read_json if fmt == "json" else _read_tensors
    hit = read(path, key_text)
    if hit is None:
        with file_lock(path.parent / ".locks" / f"{path.stem}.lock"):
            hit = read(path, key_text)  # another process may have written it while we waited
            if hit is None:
                start = time.perf_counter()
                value = compute()
                provenance = entry_provenance(time.perf_counter() - start, model)
                _write(path, fmt, key, value, provenance)
                _note(kind, provenance, computed_now=True)
                return value
    value, provenance = hit
    _note(kind, provenance, computed_now=False)
    return value


def lookup(
    kind: str, *, settings: Mapping[str, Any], code: Sequence[str], fingerprint: str | None = None,
    tasks: Mapping[str, str] | None = None, fmt: str = "json",
) -> Any | None:
    """The value stored under the key, or None (a miss, an unreadable entry, or the cache disabled):
    ``cached`` without computing, for runs that decide where to resume."""
    if not cache_enabled():
        return None
    key = make_key(kind, settings, code, fingerprint=fingerprint, tasks=tasks)
    hit = (_read_json if fmt == "json" else _read_tensors)(_entry_path(key, fmt), json.dumps(key, sort_keys=True))
    if hit is None:
        return None
    _note(kind, hit[1], computed_now=False)
    return hit[0]


def entry_path(kind: str, *, settings: Mapping[str, Any], code: Sequence[str], fingerprint: str | None = None,
               tasks: Mapping[str, str] | None = None, fmt: str = "json") -> Path:
    """Where ``cached`` stores the entry of this key (e.g. to delete a checkpoint that is no longer needed)."""
    return _entry_path(make_key(kind, settings, code, fingerprint=fingerprint, tasks=tasks), fmt)


# --------------------------------------------------------------------------------------------------
# results JSON
# --------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts as JSON; numpy/pandas scalars and arrays converted; NaN kept."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def results_provenance(model: TransformerBridge | None = None, profile: Any = None, seeds: Sequence[int] = (),
                       wall_s: float | None = None) -> dict[str, Any]:
    """The writer's commit, model, profile, seeds, device, versions and wall time, and the ledger
    summary of the cache entries the results rest on (their commits and summed compute seconds)."""
    return {
        "written_by_commit": git_commit(),
        "model": getattr(getattr(model, "cfg", None), "model_name", None),
        "profile": getattr(profile, "name", profile),
        "seeds": [int(s) for s in seeds],
        "device": device_description(model),
        "versions": library_versions(),
        "wall_s_this_run": None if wall_s is None else round(wall_s, 1),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": ledger_summary(),
    }


def save_results(name: str, data: Any, *, claims: Sequence[Any] = (), model: TransformerBridge | None = None,
                 profile: Any = None, seeds: Sequence[int] = (), wall_s: float | None = None) -> str:
    """Write ``figures/results/{name}.json``: ``{"schema", "provenance", "claims", "results"}``.

    ``claims`` are ``nrnlib.claims.Claim`` objects (or their ``as_dict()``); the scorecard reads
    them. Returns the path relative to the figures folder (a plain string, for tidy notebook output).
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise StoreError(f"results name must be a plain file stem, got {name!r}")
    payload = {
        "schema": RESULTS_SCHEMA,
        "name": name,
        "provenance": results_provenance(model, profile, seeds, wall_s),
        "claims": [c.as_dict() if hasattr(c, "as_dict") else dict(c) for c in claims],
        "results": _jsonable(data),
    }
    path = results_dir() / f"{name}.json"
    write_text_atomic(path, json.dumps(_jsonable(payload), indent=1))
    return f"results/{name}.json"


def load_results(name: str) -> dict:
    path = results_dir() / f"{name}.json"
    if not path.exists():
        raise StoreError(f"no results file {path}: run the notebook that writes it (python -m nrnlib reproduce)")
    return json.loads(path.read_text())
