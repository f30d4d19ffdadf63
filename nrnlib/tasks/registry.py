"""The task registry: the twelve built-in tasks plus the ones users register, built lazily by
:func:`get_task` and memoized per (name, seed). :func:`as_task` is how entry points accept a
:class:`Task` or a task name.
"""

from __future__ import annotations

import dataclasses
import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nrnlib.tasks import sources as ds
from nrnlib.tasks.builtin import BUILTIN_FACTORIES, HELDOUT_TASKS, TRAIN_TASKS
from nrnlib.tasks.hub import HF_TASKS
from nrnlib.tasks.task import CATEGORIES, ROLES, Task, TaskError

__all__ = ["as_task", "get_task", "list_tasks", "register_task", "unregister_task"]


@dataclass(frozen=True)
class _Entry:
    name: str
    category: str
    role: str
    factory: Callable[[int], Task]
    builtin: bool = False


_REGISTRY: dict[str, _Entry] = {}
_CACHE: dict[tuple[str, int], Task] = {}
_LOCK = threading.RLock()

for _name, _factory in BUILTIN_FACTORIES.items():
    _cat = next(c for c in CATEGORIES if _name in TRAIN_TASKS[c] + HELDOUT_TASKS[c])
    _REGISTRY[_name] = _Entry(_name, _cat, "train" if _name in TRAIN_TASKS[_cat] else "heldout", _factory, True)


def list_tasks(category: str | None = None, role: str | None = None) -> list[str]:
    """Names of the registered tasks (built-in first), optionally of one category and/or role."""
    if category is not None and category not in CATEGORIES:
        raise TaskError(f"unknown category {category!r}; use one of {CATEGORIES}")
    if role is not None and role not in ROLES:
        raise TaskError(f"unknown role {role!r}; use one of {ROLES}")
    with _LOCK:
        return [e.name for e in _REGISTRY.values()
                if (category is None or e.category == category) and (role is None or e.role == role)]


def get_task(name: str, seed: int = 0, n_test: int | None = None) -> Task:
    """A registered task, built on first use and memoized per (name, seed).

    ``n_test`` keeps a deterministic prefix of the test split (the whole split when it is shorter).
    """
    with _LOCK:
        entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        names = list_tasks()
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TaskError(
            f"unknown task {name!r}.{hint} Available tasks: {', '.join(names)}. Hugging Face datasets: "
            f"load_hf_task({'|'.join(HF_TASKS)}); your own data: Task.from_records(...) and register_task(...)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskError(f"seed must be an int, got {seed!r}")
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise TaskError(f"n_test must be a positive int or None, got {n_test!r}")
    key = (name, seed)
    with _LOCK:
        task = _CACHE.get(key)
    if task is None:
        try:
            task = entry.factory(seed)
        except ds.SourceUnavailable as exc:
            raise TaskError(f"cannot build task {name!r}: {exc}") from exc
        if not isinstance(task, Task) or task.name != name:
            raise TaskError(f"the factory registered as {name!r} returned {task!r}, not a Task named {name!r}")
        with _LOCK:
            task = _CACHE.setdefault(key, task)
    if n_test is not None and n_test < len(task.test):
        task = dataclasses.replace(task, test=task.test[:n_test])
    return task


def as_task(task_or_name: Task | str) -> Task:
    """``task_or_name`` as a :class:`Task`: a Task as it is, a name through :func:`get_task` (seed 0).

    Raises :class:`TaskError` for an unknown name (with the closest registered name) or any other type.
    """
    if isinstance(task_or_name, Task):
        return task_or_name
    if isinstance(task_or_name, str):
        return get_task(task_or_name)
    shown = repr(task_or_name)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise TaskError(
        f"expected a Task or a task name, got {type(task_or_name).__name__} {shown}; pass a name such as "
        "'tweet_sentiment' (see list_tasks()), get_task(name, seed=...) or Task.from_records(...)"
    )


def register_task(
    task_or_factory: Task | Callable[[int], Task],
    *,
    name: str | None = None,
    category: str | None = None,
    role: str | None = None,
    overwrite: bool = False,
) -> str:
    """Register a :class:`Task`, or a factory ``seed -> Task`` (built lazily by :func:`get_task`).

    For a factory, ``name``/``category``/``role`` avoid building it now; otherwise it is called once with
    seed 0 to read them. Returns the registered name. Built-in names can be replaced only with ``overwrite``.
    """
    if isinstance(task_or_factory, Task):
        task = task_or_factory
        entry = _Entry(task.name, task.category, task.role, lambda seed, _t=task: _t)
    elif callable(task_or_factory):
        factory = task_or_factory
        if name is None or category is None:
            probe = factory(0)
            if not isinstance(probe, Task):
                raise TaskError(f"register_task: the factory returned {type(probe).__name__}, not a Task")
            name, category, role = name or probe.name, category or probe.category, role or probe.role
        entry = _Entry(name, category, role or "custom", factory)
    else:
        kind = type(task_or_factory).__name__
        raise TaskError(f"register_task expects a Task or a callable seed -> Task, got {kind}")
    if entry.category not in CATEGORIES or entry.role not in ROLES:
        raise TaskError(f"register_task: category must be one of {CATEGORIES} and role one of {ROLES}")
    with _LOCK:
        old = _REGISTRY.get(entry.name)
        if old is not None and not overwrite:
            kind = "a built-in" if old.builtin else "an already registered"
            raise TaskError(f"{entry.name!r} is {kind} task; pass overwrite=True or choose another name")
        _REGISTRY[entry.name] = entry
        for key in [k for k in _CACHE if k[0] == entry.name]:
            del _CACHE[key]
    return entry.name


def unregister_task(name: str) -> None:
    """Remove a task added with :func:`register_task` (built-in tasks cannot be removed)."""
    with _LOCK:
        entry = _REGISTRY.get(name)
        if entry is None:
            raise TaskError(f"unknown task {name!r}")
        if entry.builtin:
            raise TaskError(f"{name!r} is a built-in task and cannot be removed")
        del _REGISTRY[name]
        for key in [k for k in _CACHE if k[0] == name]:
            del _CACHE[key]
