"""What notebook 04's sweep costs on this machine part by part, and the least it could cost while
keeping its design (3 seeds x 7 proportions x 2 categories of joint runs scored on 12 tasks, and
18 runs of one task alone).

Timed on the embedded model, one thread, after one warm-up step:

- **a training step**: neuron-sparse (``finetune.training`` on a ``NeuronSet``, AdamW, the
  protocol's step) on a joint run's task batches of ``finetune_batch_size`` examples (the three
  tasks in turn), at p = 10% and p = 100% of the MLP neurons (random relevance; the cost depends on
  the set's size, not on which neurons), per category;
- **a dev evaluation** of a joint run (``protocol.dev_loss``) at ``generalization_dev_size`` and at
  half of it per task;
- **scoring** the 12 test tasks (``evaluate``, greedy decoding on the generation tasks) at
  ``n_generalization_eval`` and at two thirds of it.

The costs are then multiplied by the shape of every run of the committed sweep
(``sweep_cost.run_shapes``: steps to the stopping rule and dev evaluations, from each run's best
step), a step's cost interpolated linearly in p between the two timed sets (the slices' gradients
cost in proportion to their size), one task's dev evaluation and scoring taken as a third and a
twelfth of the joint ones. Rows: the committed design; with the smaller dev and test sizes; those
with a step cap (runs longer than the cap cut to it, the number cut and the number whose best
evaluation came after the cap are given); and the training steps alone, which no dev or test
size can lower. Two processes share the 2 cores, so minutes on 2 cores = thread-minutes / 2 (an
upper bound on speed: two processes at once run somewhat slower than one alone).

    python benchmarks/sweep_floor.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from bench_common import machine_info
from sweep_cost import CATEGORIES, run_shapes

from nrnlib import experiments
from nrnlib.evaluate import evaluate
from nrnlib.experiments.generalization import REFERENCE_P
from nrnlib.finetune import _encode_items, task_batch_stream, training
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.protocol import _dev_batches, dev_loss, dev_split
from nrnlib.selection import select_neurons
from nrnlib.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "sweep_floor_cpu.json"
TIMED_P = (0.10, 1.0)
CAPS = (100, 80, 60)


def seconds(fn, repeats: int = 1) -> float:
    """The median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def step_seconds(model, batches, p: float, repeats: int) -> float:
    """One neuron-sparse training step on the set of the top ``p`` of random relevance scores: the
    mean over one pass of ``batches`` (the three tasks in turn), median over ``repeats`` passes."""
    scores = torch.rand(model.cfg.n_layers, model.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    neurons = select_neurons(scores, k=p, name=f"random@{p:g}", model=model)
    with training(model, neurons, lr=1e-3, weight_decay=0.0) as t:
        t.step(batches[0])  # warm-up: the slices and the optimizer state
        return seconds(lambda: [t.step(b) for b in batches], repeats) / len(batches)


def predict(measured: dict[str, float], shapes: list[dict], protocol, n_tasks: int, dev_size: int, n_test: int,
            cap: int | None = None) -> dict:
    """Thread-minutes of the runs of ``shapes`` at these sizes (module docstring), and of their
    training steps alone; with ``cap``, every run longer than ``cap`` steps cut to it."""
    total = steps_only = 0.0
    cut = best_after = 0
    for s in shapes:
        steps = s["steps"] if cap is None else min(s["steps"], cap)
        cut += cap is not None and s["steps"] > cap
        best_after += cap is not None and s["best_step"] > cap
        evals = steps // protocol.eval_every + 1
        joint = s["mode"] == "joint"
        lo, hi = (measured[f"step/{s['category']}/p={q:g}"] for q in TIMED_P)
        train_s = steps * (lo + (hi - lo) * (s["p"] - TIMED_P[0]) / (TIMED_P[1] - TIMED_P[0]))
        dev_s = evals * measured[f"dev/{s['category']}/{dev_size}"] / (1 if joint else 3)
        score_s = measured[f"score/{n_test}"] / (1 if joint else n_tasks)
        total += train_s + dev_s + score_s
        steps_only += train_s
    return {"dev_size": dev_size, "n_test": n_test, "step_cap": cap or protocol.max_steps, "runs": len(shapes),
            "runs_cut": cut, "runs_best_after_cap": best_after, "thread_minutes": round(total / 60, 1),
            "minutes_on_2_cores": math.ceil(total / 120),
            "training_steps_thread_minutes": round(steps_only / 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = get_profile(args.profile)
    protocol = experiments.sweep_protocol(profile)
    dev_sizes = (protocol.dev_size, max(1, protocol.dev_size // 2))
    n_tests = (profile.n_generalization_eval, max(1, round(profile.n_generalization_eval * 2 / 3)))
    model = load_model()
    measured: dict[str, float] = {}
    for cat, names in CATEGORIES.items():
        tasks = [get_task(t) for t in names]
        splits = [dev_split(t, protocol.dev_size, protocol.n_train) for t in tasks]
        encoded = [_encode_items(model, [(s.task, ex) for ex in s.train]) for s in splits]
        stream = task_batch_stream(model, encoded, protocol.batch_size, 0)
        batches = [next(stream) for _ in range(len(tasks))]
        for p in TIMED_P:
            measured[f"step/{cat}/p={p:g}"] = step_seconds(model, batches, p, args.repeats)
            print(f"step {cat} p={p:g}: {measured[f'step/{cat}/p={p:g}']:.2f} s", flush=True)
        for size in dev_sizes:
            dev = [_dev_batches(model, dev_split(t, size, protocol.n_train), protocol.dev_batch_size) for t in tasks]
            measured[f"dev/{cat}/{size}"] = seconds(lambda dev=dev: dev_loss(model, dev))
            print(f"dev loss {cat} at {size} per task: {measured[f'dev/{cat}/{size}']:.1f} s", flush=True)
    test_tasks = profile.generalization_task_names()
    for n in n_tests:
        measured[f"score/{n}"] = sum(seconds(lambda t=t, n=n: evaluate(model, get_task(t), n=n, progress=False))
                                     for t in test_tasks)
        print(f"scoring {len(test_tasks)} tasks at {n} examples: {measured[f'score/{n}']:.1f} s", flush=True)

    shapes = run_shapes(protocol)
    # the lr choice's other grid values: one more joint run per category at the reference p and first seed
    shapes += [dict(s) for s in shapes if s["mode"] == "joint" and s["p"] == REFERENCE_P
               and s["seed"] == profile.sweep_seeds()[0][0]] * (len(protocol.grid("neurons")) - 1)
    sizes = [(dev_sizes[0], n_tests[0], None), (dev_sizes[1], n_tests[1], None)]
    sizes += [(dev_sizes[1], n_tests[1], cap) for cap in CAPS]
    rows = [predict(measured, shapes, protocol, len(test_tasks), *size) for size in sizes]
    result = {"machine": {**machine_info(), "threads": 1}, "profile": profile.name,
              "protocol": protocol.run_settings(), "seconds": {k: round(v, 3) for k, v in measured.items()},
              "predictions": rows,
              "floor_minutes_on_2_cores": math.ceil(rows[0]["training_steps_thread_minutes"] / 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
