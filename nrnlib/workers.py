"""Independent cached jobs shared out over several CPU processes (``run_jobs``).

The notebooks' long work is a list of independent arms, each cached (``store.cached``). On a CPU,
two processes of one torch thread each finish such a list about twice as fast as one process of two
threads (measured; see the README's runtime table), so ``run_jobs`` forks ``workers - 1`` helper
processes that fill the cache while the notebook's own process works through the same list:

1. every process walks the list in order and **claims** each job it reaches with a non-blocking
   lock (``fcntl.flock``); a job claimed by another process, or finished, is skipped, so the jobs
   are dealt out dynamically and none is computed twice;
2. the helpers exit when the list is exhausted; the parent then asks every job again in order,
   which reads what a helper stored, after waiting for the helper to release a job it is still
   running (a job of several entries, such as a sequence of cached stages, would otherwise be
   resumed by the parent from the helper's last finished entry and computed twice from there).

The result is the list of the parent's own calls, in order: the same values as one process running
the list, because every process runs **one torch thread** (the setting of the standard runs; torch's
sums depend on the thread count) and a cached value does not depend on who computed it. A helper
that fails or is killed leaves its job unclaimed: the parent computes it, and its error surfaces
there. Helpers are forked (they share the loaded model copy-on-write and write nothing but cache
entries; their output goes to ``/dev/null``); they are used only on CPU with the cache enabled and
``fork`` available; otherwise the jobs run in this process. ``workers`` defaults to ``$NRN_WORKERS``,
else the usable cores up to ``MAX_DEFAULT_WORKERS`` (each process holds its own trained copy of the
weights that change: about 1-2 GB for the 135M model).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from nrnlib import store

T = TypeVar("T")
MAX_DEFAULT_WORKERS = 4


class WorkersError(ValueError):
    """A bad ``workers`` value (argument or ``$NRN_WORKERS``)."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """``$NRN_WORKERS`` as a positive int; when unset, ``min(usable_cores(), MAX_DEFAULT_WORKERS)``."""
    text = os.environ.get("NRN_WORKERS", "").strip()
    if not text:
        return min(usable_cores(), MAX_DEFAULT_WORKERS)
    try:
        value = int(text)
    except ValueError:
        raise WorkersError(f"NRN_WORKERS must be a positive integer, got {text!r}") from None
    if value < 1:
        raise WorkersError(f"NRN_WORKERS must be a positive integer, got {value}")
    return value


def parallel_possible(device: torch.device | str | None = None) -> bool:
    """Helpers need ``os.fork``, the cache (the only channel back) and a CPU model (CUDA does not survive
    a fork)."""
    return hasattr(os, "fork") and store.cache_enabled() and torch.device(device or "cpu").type == "cpu"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch runs one intra-op thread inside the block (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _try_claim(folder: Path, index: int, wait: bool = False) -> int | None:
    """An open descriptor holding job ``index``'s exclusive lock, or None if another process holds it;
    ``wait``: block until no other process holds it (its helper finished the job, or died)."""
    fd = os.open(folder / f"{index}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _done(folder: Path, index: int) -> bool:
    return (folder / f"{index}.done").exists()


def _claim_and_run(jobs: Sequence[Callable[[], T]], folder: Path, on_done: Callable[[], None] | None = None,
                   ) -> dict[int, T]:
    """Pass 1: run every job no other process has claimed or finished; returns ``{index: result}``."""
    results = {}
    for index, job in enumerate(jobs):
        if _done(folder, index):
            continue
        fd = _try_claim(folder, index)
        if fd is None:
            continue
        try:
            if not _done(folder, index):  # finished between the check and the claim
                results[index] = job()
                (folder / f"{index}.done").touch()
        finally:
            os.close(fd)  # releases the lock
        if on_done is not None:
            on_done()
    return results


def _helper(jobs: Sequence[Callable[[], Any]], folder: Path) -> None:
    """The body of a forked helper: quiet, one thread, pass 1, then leave without Python's exit handlers
    (they belong to the parent: a notebook kernel's sockets, temporary folders)."""
    code = 0
    try:
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives until os._exit
        sys.stdout = sys.stderr = devnull
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops the helpers itself
        torch.set_num_threads(1)
        _claim_and_run(jobs, folder)
    except BaseException:  # noqa: BLE001 - the parent recomputes any unfinished job and reports its error
        code = 1
    finally:
        os._exit(code)


def _stop(pids: Sequence[int], grace_s: float) -> None:
    """Wait ``grace_s`` for the helpers to leave, then end those still running (SIGTERM, then SIGKILL
    after another ``grace_s``, at least a second)."""
    deadline = time.monotonic() + grace_s
    alive = set(pids)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + max(grace_s, 1.0)
        while alive and time.monotonic() < deadline:
            for pid in list(alive):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                alive.discard(pid)
            time.sleep(0.05)
        if not alive:
            return


def run_jobs(jobs: Sequence[Callable[[], T]], *, workers: int | None = None, desc: str | None = None,
             progress: bool = True, device: torch.device | str | None = None) -> list[T]:
    """``[job() for job in jobs]``, with ``workers - 1`` forked helpers filling the cache first (module
    docstring). Every job must store its result through ``store.cached`` (helpers hand nothing else
    back) and must not depend on another job of the list. Runs on one torch thread per process."""
    jobs = list(jobs)
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise WorkersError(f"run_jobs: workers must be a positive integer, got {workers!r}")
    workers = min(workers, len(jobs)) if parallel_possible(device) else 1
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress or not jobs)
    with one_thread():
        if workers == 1:
            out = []
            for job in jobs:
                out.append(job())
                bar.update()
            bar.close()
            return out
        with tempfile.TemporaryDirectory(prefix="nrn-jobs-") as tmp:
            folder = Path(tmp)
            sys.stdout.flush()
            sys.stderr.flush()
            pids, finished = [], False
            try:
                for _ in range(workers - 1):
                    pid = os.fork()
                    if pid == 0:
                        _helper(jobs, folder)
                    pids.append(pid)

                def count() -> None:
                    bar.n = sum(_done(folder, i) for i in range(len(jobs)))
                    bar.refresh()

                own = _claim_and_run(jobs, folder, on_done=count)
                out = []
                for index, job in enumerate(jobs):
                    if index in own:
                        out.append(own[index])
                    else:
                        # a job of several cache entries (a sequence of stages) must not be resumed here
                        # while its helper is still in it: wait for the helper to let go of it first
                        os.close(_try_claim(folder, index, wait=True))
                        out.append(job())
                    bar.n = max(bar.n, index + 1)
                    bar.refresh()
                finished = True
            finally:  # after the list, helpers are leaving; after an error or Ctrl-C, stop them now
                _stop(pids, grace_s=5.0 if finished else 0.0)
                bar.close()
    return out
