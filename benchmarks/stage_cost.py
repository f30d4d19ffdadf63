"""What one unit of notebooks 04 and 06 costs on this machine, to size their ``standard`` runs.

Measured on the embedded model under a profile (default ``standard``), each timed once after a warm-up:

- seconds per training step of ``--steps`` steps (batch = the profile's ``finetune_batch_size``) for
  every arm type the notebooks train: all parameters, a task's top-10% neurons (sparse), W-NCFT's
  weighted neurons, replay (the batch plus ``memory_batch`` memory examples), LoRA on q and v, and
  every MLP neuron (notebook 04's p = 100%), no dev evaluations;
- one dev-loss evaluation of ``dev_size`` examples;
- scoring the test examples of every task a stage scores (06: the sequence's tasks; 04: all tasks);
- detecting a task's neurons on a changed model (relevance of ``n_attribution`` examples, uncached).

From these and the steps a run needs (``--steps-per-run``, e.g. the mean stopping step of notebook
03's runs on the same tasks), it prints the estimated minutes of notebook 06 (methods x orders x seeds
x stages) and of notebook 04 (joint and individual runs) and writes JSON.

    python benchmarks/stage_cost.py [--profile standard] [--steps 8] [--steps-per-run 80]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_common import machine_info

from nrnlib import encoding, experiments
from nrnlib.experiments.measures import TestMeasure
from nrnlib.experiments.ncft import DEFAULT_SETTINGS
from nrnlib.finetune import training
from nrnlib.lora import LoraSettings, lora_training
from nrnlib.model_state import restored_after
from nrnlib.models import load_model
from nrnlib.neurons import NeuronSet
from nrnlib.profiles import get_profile
from nrnlib.protocol import Protocol, _dev_batches, dev_loss, dev_split
from nrnlib.replay import memory_items, replay_training
from nrnlib.selection import select_neurons
from nrnlib.tasks import get_task
from nrnlib.weighted_update import neuron_weights, weighted_training

OUT = Path(__file__).resolve().parent / "results" / "stage_cost_cpu.json"


def per_step(model, factory, batches, steps: int) -> float:
    """Seconds per step of ``factory`` (a trainer context) over ``batches``, after one warm-up step."""
    with restored_after(model), factory() as trainer:
        trainer.step(batches[0])
        start = time.perf_counter()
        for i in range(steps):
            trainer.step(batches[(i + 1) % len(batches)])
        return (time.perf_counter() - start) / steps


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--steps-per-run", type=float, default=80.0, help="mean steps a run takes to stop")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    profile = get_profile(args.profile)
    model = load_model()
    tasks = list(profile.ncft_tasks)
    first = get_task(tasks[0])
    protocol = Protocol.from_profile(profile, dev_size=profile.ncft_dev_size or profile.dev_size,
                                     max_steps=profile.ncft_max_steps or profile.max_steps)
    split = dev_split(first, protocol.dev_size, protocol.n_train, protocol.max_dev_fraction)
    bs = profile.finetune_batch_size
    batches = [encoding.encode_examples(model, first, list(split.train[i * bs:(i + 1) * bs])) for i in range(4)]

    def relevance(current, task):
        return experiments.relevance_scores(experiments.relevance_chunks(current, profile, [task.name]))[task.name]

    scores = relevance(model, first)
    top = select_neurons(scores, k=0.10, model=model)
    every = NeuronSet(torch.ones_like(top.mask)).for_model(model)
    weights = neuron_weights(scores, top)
    memory = memory_items(model, [get_task(t) for t in tasks[1:]], 16, lambda t: dev_split(
        t, protocol.dev_size, protocol.n_train, protocol.max_dev_fraction).train)
    arms = {
        "all": lambda: training(model, None, lr=1e-5),
        "neurons_10pct": lambda: training(model, top, lr=1e-3),
        "w_ncft_graded": lambda: weighted_training(model, top, weights, lr=1e-3),
        "replay": lambda: replay_training(memory, DEFAULT_SETTINGS["memory_batch"])(model, lr=1e-5, weight_decay=0.0),
        "lora": lambda: lora_training(LoraSettings())(model, lr=1e-3, weight_decay=0.0),
        "neurons_100pct": lambda: training(model, every, lr=1e-3),
    }
    step_s = {name: per_step(model, factory, batches, args.steps) for name, factory in arms.items()}
    dev = [_dev_batches(model, split, protocol.dev_batch_size)]
    dev_s = timed(lambda: dev_loss(model, dev))
    measures06 = [TestMeasure(get_task(t), profile.n_ncft_eval) for t in tasks]  # 06's stage scores all tasks
    measure06_s = timed(lambda: [m(model) for m in measures06])
    all_tasks = profile.generalization_task_names()
    measures04 = [TestMeasure(get_task(t), profile.n_generalization_eval) for t in all_tasks]
    measure04_s = timed(lambda: [m(model) for m in measures04])
    with restored_after(model):
        with torch.no_grad():
            # a model state never seen before, so its relevance is computed, not read from the cache
            model.blocks[0].mlp.out.weight.mul_(1.0 + 1e-4 * (1.0 + time.time() % 1.0))
        detect_s = timed(lambda: relevance(model, first))

    steps06 = min(args.steps_per_run, protocol.max_steps)  # 06's stages stop at its budget
    steps04 = min(args.steps_per_run, profile.generalization_max_steps or profile.max_steps)

    def run_s(arm: str, steps: float, eval_s: float = dev_s) -> float:
        """A run of ``steps`` steps with a dev evaluation every ``eval_every`` steps and at step 0."""
        return steps * step_s[arm] + (steps / protocol.eval_every + 1) * eval_s

    stages = len(tasks) * 2 * len(profile.seeds)  # stages x orders x seeds, per method
    method_arm = {"seqft": "all", "ncft": "neurons_10pct", "w_ncft_graded": "w_ncft_graded", "random": "neurons_10pct",
                  "replay": "replay", "lora": "lora", "ncft_original": "neurons_10pct", "w_ncft": "neurons_10pct"}
    detects = {"ncft": 1, "w_ncft_graded": 1, "w_ncft": 1}  # W-NCFT's relevance and set share one (cached) pass
    per_method = {m: stages * (run_s(method_arm[m], steps06) + measure06_s + detects.get(m, 0) * detect_s) / 60
                  for m in profile.ncft_methods}
    joint_seeds, individual_seeds = profile.sweep_seeds()
    n_joint = 2 * len(profile.proportions) * len(joint_seeds) + 2  # + the lr choice's second grid value
    n_individual = 6 * len(profile.individual_proportions) * len(individual_seeds)
    joint_eval = dev_s * 3  # the dev loss of three tasks
    minutes04 = (n_joint * (run_s("neurons_10pct", steps04, joint_eval) + measure04_s)
                 + n_individual * (run_s("neurons_10pct", steps04) + measure04_s / len(all_tasks))) / 60
    result = {
        "machine": machine_info(),
        "profile": profile.name, "steps_timed": args.steps, "steps_per_run": {"06": steps06, "04": steps04},
        "seconds": {"step": step_s, "dev_eval": dev_s, "measure_06_stage": measure06_s, "measure_04_run": measure04_s,
                    "detect": detect_s},
        "estimate_minutes": {"06_by_method": per_method, "06_total": sum(per_method.values()),
                             "04_total": minutes04, "04_runs": {"joint": n_joint, "individual": n_individual}},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, s in step_s.items():
        print(f"step {name:16s} {s:6.2f} s")
    print(f"dev eval {dev_s:.1f} s; scoring a 06 stage {measure06_s:.1f} s, a 04 run {measure04_s:.1f} s; "
          f"detection {detect_s:.1f} s")
    print(f"06 under {profile.name}: about {sum(per_method.values()):.0f} min "
          f"({', '.join(f'{m} {v:.0f}' for m, v in per_method.items())}); 04: about {minutes04:.0f} min "
          f"({n_joint} joint + {n_individual} individual runs); runs of {steps06:g} (06) and {steps04:g} (04) steps")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
