"""run_jobs: cached jobs shared over forked processes give the same list as one process, each job
computed once; helpers that fail or are interrupted cost nothing but time."""

import os
import time

import pytest
import torch

from nrnlib import store
from nrnlib.workers import WorkersError, default_workers, run_jobs


def _square_job(i: int, log, delay: float = 0.15, fail_in_helpers: bool = False, parent: int | None = None):
    """A cached job: i*i, noting in ``log`` which process computed it (one line per computation)."""

    def compute():
        if fail_in_helpers and os.getpid() != parent:
            raise RuntimeError("a helper's failure")
        with open(log, "a") as f:
            f.write(f"{i} {os.getpid()}\n")
        time.sleep(delay)
        return {"square": i * i, "threads": torch.get_num_threads()}

    return lambda: store.cached("test_job", compute, settings={"i": i}, code=("workers",))


def _computations(log) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NRN_NO_CACHE", raising=False)
    return tmp_path


def _children() -> set[int]:
    """This process's child pids, zombies included (Linux /proc), so a helper never waited for shows."""
    from pathlib import Path

    return {int(pid) for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()}


def test_two_workers_give_one_process_results_each_job_computed_once(cache):
    log = cache / "log"
    before = _children()  # other tests may have left children of their own (a browser, a kernel)
    out = run_jobs([_square_job(i, log) for i in range(8)], workers=2, progress=False)
    assert [r["square"] for r in out] == [i * i for i in range(8)]
    assert all(r["threads"] == 1 for r in out)  # one torch thread in every process
    done = _computations(log)
    assert sorted(i for i, _ in done) == list(range(8))  # each exactly once
    assert len({pid for _, pid in done}) == 2 and os.getpid() in {pid for _, pid in done}
    assert _children() <= before
    again = run_jobs([_square_job(i, log) for i in range(8)], workers=2, progress=False)
    assert again == out and len(_computations(log)) == 8  # all from the cache: nothing recomputed


def test_a_failing_helper_leaves_its_jobs_to_the_parent(cache):
    log = cache / "log"
    jobs = [_square_job(i, log, fail_in_helpers=True, parent=os.getpid()) for i in range(5)]
    before = _children()
    out = run_jobs(jobs, workers=3, progress=False)
    assert [r["square"] for r in out] == [0, 1, 4, 9, 16]
    assert {pid for _, pid in _computations(log)} == {os.getpid()}
    assert _children() <= before


def test_an_error_in_the_parent_stops_the_helpers(cache):
    log = cache / "log"

    def broken():
        raise KeyboardInterrupt

    before = _children()
    with pytest.raises(KeyboardInterrupt):
        run_jobs([broken] + [_square_job(i, log, delay=2.0) for i in range(1, 4)], workers=2, progress=False)
    assert _children() <= before  # the helper was stopped and waited for, not left running
    # it had time for at most the job it was in. (When the helper is scheduled first after the fork, it claims
    # the broken job itself, leaves, and the parent computes the rest before raising: no helper computation.)
    assert len([pid for _, pid in _computations(log) if pid != os.getpid()]) <= 1


def test_without_the_cache_everything_runs_here(cache, monkeypatch):
    monkeypatch.setenv("NRN_NO_CACHE", "1")
    log = cache / "log"
    out = run_jobs([_square_job(i, log, delay=0.0) for i in range(4)], workers=4, progress=False)
    assert [r["square"] for r in out] == [0, 1, 4, 9]
    assert {pid for _, pid in _computations(log)} == {os.getpid()}


def test_bad_worker_counts_are_refused(monkeypatch):
    for bad in (0, -1):
        with pytest.raises(WorkersError, match="positive integer"):
            run_jobs([lambda: 1], workers=bad, progress=False)
    monkeypatch.setenv("NRN_WORKERS", "two")
    with pytest.raises(WorkersError, match="NRN_WORKERS"):
        default_workers()
    monkeypatch.setenv("NRN_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.delenv("NRN_WORKERS")
    assert default_workers() == min(len(os.sched_getaffinity(0)), 4)
    assert run_jobs([], workers=2, progress=False) == []


@pytest.mark.wrong_type
def test_worker_counts_of_the_wrong_type_are_refused():
    for bad in (1.5, True, "2"):
        with pytest.raises(WorkersError, match="positive integer"):
            run_jobs([lambda: 1], workers=bad, progress=False)


def _staged_job(i: int, log, parent: int, steps: int = 3):
    """A job of several cache entries that resumes after its last stored one (as a sequence of cached
    stages does): it looks its entries up first, then computes the rest, slowly in a helper."""

    def job():
        where = [dict(settings={"i": i, "step": s}, code=("workers",)) for s in range(steps)]
        start = next((s for s in range(steps) if store.lookup("test_stage", **where[s]) is None), steps)
        for s in range(start, steps):
            with open(log, "a") as f:
                f.write(f"{i * 10 + s} {os.getpid()}\n")
            time.sleep(0.1 if os.getpid() == parent else 0.6)
            store.cached("test_stage", lambda s=s: {"step": s}, **where[s])
        return i

    return job


def test_the_parent_never_resumes_a_job_a_helper_is_still_running(cache):
    """The parent, done with its own jobs, must wait for a helper's job to be released rather than
    continue it from the helper's last stored entry: every (job, step) is computed exactly once."""
    log = cache / "log"
    out = run_jobs([_staged_job(i, log, os.getpid()) for i in range(2)], workers=2, progress=False)
    assert out == [0, 1]
    done = _computations(log)
    assert sorted(step for step, _ in done) == [0, 1, 2, 10, 11, 12]  # each (job, step) once
    assert {pid for _, pid in done} - {os.getpid()}  # a helper ran one of the jobs
