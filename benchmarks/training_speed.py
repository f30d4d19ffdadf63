"""Neuron-level training speed and memory: neuron-sparse (the default) against masked dense.

For each task: a 10% neuron set (global top-10% of ``nrnlib.attribute`` scores by default, or a
random 10% with ``--selection random``), the same batches of ``--batch`` real examples for both
modes, and ``--repeats`` interleaved repeats (the order of the two modes alternates between
repeats). A repeat of one mode enters ``nrnlib.finetune.training`` on the restored model, runs one
untimed warm-up step, then times ``--steps`` steps one by one. Reported per mode: the median and
min over repeats of the mean step time, the median of all single steps, and the ratio
sparse / masked of the medians (goal: <= 0.75 on CPU). Memory: bytes of the trainable tensors, of
their gradients and of the AdamW state after a step (sparse: proportional to k, shown for k = 5%,
10%, 20% random sets). The load average before and after is recorded: a busy machine inflates both
modes' times.

    python benchmarks/training_speed.py [--tasks tweet_sentiment headline_generation] [--repeats 7]

``--convergence TASK`` instead runs ``nrnlib.protocol.train_to_convergence`` under the ``standard``
profile's protocol on TASK (the neuron-sparse arm on its 10% set, and the all-parameter arm unless
``--no-all``) at the given ``--lrs`` and writes the loss curves to
``benchmarks/results/protocol_convergence_cpu.json``: how many steps the profile needs to converge.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from bench_common import machine_info

from nrnlib import attribute, get_task, load_model, select_neurons
from nrnlib.finetune import _encode_items, _training_items, batch_stream, training
from nrnlib.model_state import restored_after
from nrnlib.neurons import NeuronSet

RESULTS = Path(__file__).resolve().parent / "results" / "training_speed_cpu.json"
CONVERGENCE = RESULTS.with_name("protocol_convergence_cpu.json")
MODES = ("masked", "sparse")


def random_set(model, k: float, seed: int) -> NeuronSet:
    """``round(k * n_layers * d_mlp)`` neurons drawn uniformly over the whole model."""
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n_layers * d_mlp, generator=gen)[: round(k * n_layers * d_mlp)]
    mask = torch.zeros(n_layers * d_mlp, dtype=torch.bool)
    mask[chosen] = True
    return NeuronSet(mask.reshape(n_layers, d_mlp), name=f"random {k:.0%}")


def memory(trainer) -> dict[str, int]:
    """Bytes of the trainable tensors, their gradients and the AdamW state (after a step), and the
    memory training adds to the model: gradients + AdamW state, plus the slice copies in sparse mode
    (masked mode trains the model's own tensors, which need no copy)."""
    params = trainer.params
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    out = {"trainable_entries": trainer.n_trainable_entries,
           "param_bytes": sum(p.numel() * p.element_size() for p in params),
           "grad_bytes": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
           "optimizer_state_bytes": sum(t.numel() * t.element_size() for t in state)}
    copies = out["param_bytes"] if trainer.mode == "sparse" else 0
    out["added_bytes"] = out["grad_bytes"] + out["optimizer_state_bytes"] + copies
    return out


def time_mode(model, neurons, mode: str, encoded, args) -> tuple[list[float], dict]:
    """One repeat: ``--steps`` timed steps after one warm-up step, on the restored model."""
    with restored_after(model), training(model, neurons, lr=1e-4, mode=mode) as trainer:
        batches = batch_stream(model, encoded, args.batch, seed=0)
        trainer.step(next(batches))  # warm-up (allocations, AdamW state creation)
        times = []
        for _ in range(args.steps):
            batch = next(batches)
            start = time.perf_counter()
            trainer.step(batch)
            times.append(time.perf_counter() - start)
        mem = memory(trainer)
    return times, mem


def bench_task(model, name: str, args) -> dict:
    task = get_task(name)
    if args.selection == "attribution":
        scores = attribute(model, task, n_examples=args.n_attribution, progress=False)
        neurons = select_neurons(scores, k=args.k, scope="global")
    else:
        neurons = random_set(model, args.k, seed=0)
    encoded = _encode_items(model, _training_items([task], args.n_train))
    tokens = [len(p) + len(a) for p, a in encoded]
    per_repeat = {m: [] for m in MODES}
    steps = {m: [] for m in MODES}
    mem, load = {}, []
    for r in range(args.repeats):
        load.append(os.getloadavg()[0])
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            times, mem[mode] = time_mode(model, neurons, mode, encoded, args)
            per_repeat[mode].append(statistics.fmean(times))
            steps[mode].extend(times)
            print(f"{name} repeat {r + 1}/{args.repeats} {mode}: {statistics.fmean(times):.3f} s/step", flush=True)
    out = {"task": name, "neurons": neurons.count, "fraction": round(neurons.fraction, 4),
           "layers_with_neurons": len(neurons.layers()), "mean_tokens_per_example": statistics.fmean(tokens),
           "loadavg_1min_per_repeat": load, "modes": {}}
    for mode in MODES:
        out["modes"][mode] = {"median_s_per_step": statistics.median(per_repeat[mode]),
                              "min_s_per_step": min(per_repeat[mode]),
                              "median_single_step_s": statistics.median(steps[mode]),
                              "per_repeat_s_per_step": per_repeat[mode], "memory": mem[mode]}
    m, s = out["modes"]["masked"], out["modes"]["sparse"]
    out["ratio_sparse_over_masked_median"] = s["median_s_per_step"] / m["median_s_per_step"]
    out["ratio_sparse_over_masked_min"] = s["min_s_per_step"] / m["min_s_per_step"]
    out["ratio_per_repeat"] = [a / b for a, b in zip(per_repeat["sparse"], per_repeat["masked"], strict=True)]
    state = {mode: out["modes"][mode]["memory"] for mode in MODES}
    out["memory_ratio_sparse_over_masked"] = {
        key: state["sparse"][key] / state["masked"][key]
        for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes", "added_bytes")}
    return out


def sparse_memory_over_k(model, task_name: str, args) -> list[dict]:
    """Sparse trainable + gradient + AdamW bytes after one step, for random sets of k = 5, 10, 20%."""
    encoded = _encode_items(model, _training_items([get_task(task_name)], args.n_train))
    rows = []
    for k in (0.05, 0.10, 0.20):
        with restored_after(model), training(model, random_set(model, k, seed=1), lr=1e-4) as trainer:
            trainer.step(next(batch_stream(model, encoded, args.batch, seed=0)))
            rows.append({"k": k, **memory(trainer)})
    return rows


def convergence(model, args) -> dict:
    """Loss curves of the protocol's runs on one task (no cache: the wall times are the point)."""
    from nrnlib.model_state import restored_after as restored
    from nrnlib.profiles import get_profile
    from nrnlib.protocol import Protocol, train_to_convergence

    task = get_task(args.convergence)
    protocol = Protocol.from_profile(get_profile("standard"))
    scores = attribute(model, task, n_examples=args.n_attribution, progress=False)
    arms = [("neurons", select_neurons(scores, k=args.k, scope="global"), lr) for lr in args.lrs]
    if not args.no_all:
        arms += [("all", None, lr) for lr in args.all_lrs]
    runs = []
    for arm, neurons, lr in arms:
        with restored(model):
            curve = train_to_convergence(model, task, protocol, lr=lr, neurons=neurons, progress=True)
        runs.append({"arm": arm, "arm_type": arm, "lr": lr, "seed": 0, "curve": curve.as_dict()})
        print(f"{arm} lr={lr:g}: {curve.steps} steps ({curve.stopped}), best dev loss {curve.best_dev_loss:.4f} at "
              f"step {curve.best_step} (start {curve.dev_loss[0]:.4f}); {curve.wall_s:.0f} s", flush=True)
    return {"task": task.name, "protocol": protocol.run_settings(), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--tasks", nargs="+", default=["tweet_sentiment", "headline_generation"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat and mode")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--k", type=float, default=0.10)
    parser.add_argument("--selection", choices=("attribution", "random"), default="attribution")
    parser.add_argument("--n-attribution", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--convergence", metavar="TASK", default=None)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--all-lrs", type=float, nargs="+", default=[3e-5])
    parser.add_argument("--no-all", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 keeps a shared machine from oversubscribing its cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = args.out or (CONVERGENCE if args.convergence else RESULTS)

    load_before = os.getloadavg()
    start = time.perf_counter()
    model = load_model(args.model) if args.model else load_model()
    results = {"machine": {**machine_info(), "loadavg_before": load_before},
               "model": model.cfg.model_name, "dtype": str(next(model.parameters()).dtype),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.convergence:
        results["convergence"] = convergence(model, args)
    else:
        results["tasks"] = [bench_task(model, name, args) for name in args.tasks]
        results["sparse_memory_over_k"] = sparse_memory_over_k(model, args.tasks[0], args)
    results["machine"]["loadavg_after"] = os.getloadavg()
    results["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for row in results.get("tasks", []):
        m, s = row["modes"]["masked"], row["modes"]["sparse"]
        print(f"{row['task']}: masked {m['median_s_per_step']:.3f} s/step (min {m['min_s_per_step']:.3f}), sparse "
              f"{s['median_s_per_step']:.3f} (min {s['min_s_per_step']:.3f}); sparse/masked "
              f"{row['ratio_sparse_over_masked_median']:.3f} (min/min {row['ratio_sparse_over_masked_min']:.3f}); "
              f"optimizer state {s['memory']['optimizer_state_bytes'] / 2**20:.1f} vs "
              f"{m['memory']['optimizer_state_bytes'] / 2**20:.1f} MiB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
