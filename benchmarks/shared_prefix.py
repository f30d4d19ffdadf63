"""What running the prompts' common prefix once saves (``losses.final_hidden(..., share_prefix=True)``).

On the embedded model under a profile (default ``standard``), with and without the shared prefix,
timed interleaved (``bench_common.interleaved``) on the same batches:

- **dev loss** of notebook 04's generation joint run: ``protocol.dev_loss`` over the three training
  tasks' dev splits (``dev_size`` examples each);
- **one training step** (forward + backward of ``losses.answer_loss`` on a batch of
  ``finetune_batch_size`` examples from the three tasks' mixed stream; no optimizer, so both
  variants see the same weights);
- **scoring** the first ``n_generalization_eval`` test examples of every task (or ``--score-tasks``) without decoding
  (``evaluate(..., decode=False)``: classification's label log-probs, generation's teacher-forced
  answer log-probs), what every protocol arm's measurement runs besides greedy decoding.

It also records the largest difference between the two variants' values (dev loss, scores, the
step's loss). Writes ``benchmarks/results/shared_prefix_cpu.json``.

    python benchmarks/shared_prefix.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_common import interleaved, machine_info, summary

from nrnlib import losses
from nrnlib.evaluate import evaluate
from nrnlib.finetune import _encode_items, batch_stream
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.protocol import _dev_batches, dev_loss, dev_split
from nrnlib.tasks import get_task

OUT = Path(__file__).resolve().parent / "results" / "shared_prefix_cpu.json"
GENERATION_JOINT = ("trivia_qa", "headline_generation", "reverse_dictionary")  # notebook 04's generation run


class _Sharing:
    """Set ``losses.final_hidden``'s ``share_prefix`` for every caller (``on`` = the library's choice)."""

    real = staticmethod(losses.final_hidden)

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        on, real = self.on, self.real
        losses.final_hidden = lambda model, batch, share_prefix=False: real(model, batch, share_prefix and on)
        return self

    def __exit__(self, *exc):
        losses.final_hidden = self.real


def _logprob(score) -> float:
    """The teacher-forced metric: the gold label's log-prob (classification) or the answer's (generation)."""
    return float(score.metrics["label_logprob" if score.category == "classification" else "answer_logprob"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--score-tasks", nargs="*", default=None, help="tasks scored (default: all 12)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    model = load_model()
    tasks = [get_task(t) for t in GENERATION_JOINT]
    splits = [dev_split(t, profile.dev_size, profile.n_train) for t in tasks]
    dev = [_dev_batches(model, s, 16) for s in splits]
    stream = batch_stream(model, _encode_items(model, [(s.task, ex) for s in splits for ex in s.train]),
                          profile.finetune_batch_size, 0)
    train_batches = [next(stream) for _ in range(args.repeats + 1)]
    scored = [get_task(t) for t in (args.score_tasks or profile.generalization_task_names())]
    values: dict[str, dict[bool, list[float]]] = {"dev": {}, "step": {}, "score": {}}

    def contenders(on: bool) -> dict:
        turn = iter(range(10**6))

        def dev_eval():
            with _Sharing(on):
                values["dev"][on] = [dev_loss(model, dev)]

        def step():
            batch = train_batches[next(turn) % len(train_batches)]
            with _Sharing(on), torch.enable_grad():
                loss = losses.answer_loss(model, batch, share_prefix=True)
                loss.backward()
            model.zero_grad(set_to_none=True)
            values["step"].setdefault(on, []).append(loss.item())

        def score():
            with _Sharing(on):
                values["score"][on] = [_logprob(evaluate(model, t, n=profile.n_generalization_eval, decode=False,
                                                         progress=False)) for t in scored]

        return {f"dev_loss/{on}": dev_eval, f"train_step/{on}": step, f"score/{on}": score}

    times = interleaved({**contenders(False), **contenders(True)}, args.repeats)
    seconds = {name: summary(s) for name, s in times.items()}
    ratio = {what: seconds[f"{what}/False"]["median_s"] / seconds[f"{what}/True"]["median_s"]
             for what in ("dev_loss", "train_step", "score")}
    largest = {k: max(abs(a - b) for a, b in zip(v[False], v[True], strict=True)) for k, v in values.items()}
    result = {"machine": {**machine_info(), "threads": args.threads}, "profile": profile.name,
              "dev_tasks": list(GENERATION_JOINT), "dev_examples_per_task": [len(s.dev) for s in splits],
              "train_batch": profile.finetune_batch_size, "scored_tasks": [t.name for t in scored],
              "seconds": seconds, "speedup_plain_over_shared": ratio, "largest_value_difference": largest}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({"speedup": ratio, "largest_value_difference": largest}, indent=1))


if __name__ == "__main__":
    main()
