"""What one run of notebook 04's sweep costs, before and after three changes, and the notebook's
predicted cost under a profile (default ``standard``).

The three changes, each timed interleaved (``bench_common.interleaved``) against what it replaced,
on the embedded model:

- **task batches** (``Protocol.task_batches``): one training step (forward + backward of
  ``losses.answer_loss`` on ``finetune_batch_size`` examples, every parameter trainable, no
  optimizer) on a batch of the three training tasks' mixed stream against one task's batch, per
  category (the steps of a run cycle over the tasks, so the three tasks' batches are timed);
- **dev examples** (``generalization_dev_size``): ``protocol.dev_loss`` of a joint run at the profile's
  ``dev_size`` against ``sweep_protocol``'s;
- **one prompt pass** (``losses.prompt_pass``): scoring the generation tasks (teacher-forced answer
  log-probs and greedy decoding, ``n_generalization_eval`` examples each) as ``evaluate`` did before
  (the teacher-forced pass with a shared prefix, then ``generate`` over the left-padded prompts from
  scratch) against ``evaluate`` now; the largest differences in log-prob and in decoded text are recorded.

The prediction multiplies these times by the shape of every run of the committed 04 results (steps
run and dev evaluations, from each run's best step and the stopping rule) and the sweep's run count
under the profile: thread-seconds before and after.

    python benchmarks/sweep_cost.py [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from bench_common import interleaved, machine_info, summary

from nrnlib import experiments, losses
from nrnlib.encoding import encode_examples, end_of_answer_id, pad_id
from nrnlib.evaluate import evaluate, teacher_forced_batch
from nrnlib.finetune import _encode_items, batch_stream, task_batch_stream
from nrnlib.models import load_model
from nrnlib.profiles import get_profile
from nrnlib.protocol import Protocol, _dev_batches, dev_loss, dev_split
from nrnlib.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "sweep_cost_cpu.json"
COMMITTED = ROOT / "figures" / "results" / "04_generalization_overlap_standard.json"
CATEGORIES = {"classification": ("tweet_sentiment", "news_topic", "word_polarity"),
              "generation": ("trivia_qa", "headline_generation", "reverse_dictionary")}


@torch.no_grad()
def score_before(model, task, n: int) -> tuple[list[float], list[str]]:
    """A generation task scored as ``evaluate`` did before the prompt pass: the teacher-forced pass
    (shared prefix), then ``generate`` over the left-padded prompts from scratch (batches of 16)."""
    tok, examples, lps, texts = model.tokenizer, list(task.test[:n]), [], []
    for i in range(0, len(examples), 16):
        chunk = examples[i: i + 16]
        batch = encode_examples(model, task, chunk, with_answers=True)
        lps += teacher_forced_batch(model, batch)[0].tolist()
        prompts = encode_examples(model, task, chunk, with_answers=False)
        width = int(prompts.prompt_lengths.max())
        ids = torch.full((len(chunk), width), pad_id(tok))
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, length in enumerate(prompts.prompt_lengths.tolist()):
            ids[j, width - length:], mask[j, width - length:] = prompts.input_ids[j, :length], 1
        out = model.original_model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                            max_new_tokens=task.max_new_tokens, pad_token_id=pad_id(tok),
                                            eos_token_id=end_of_answer_id(tok))
        texts += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return lps, texts


def run_shapes(protocol: Protocol) -> list[dict]:
    """Steps and dev evaluations of every run in the committed 04 results (its mode, category, p, seed
    and best step)."""
    rows = json.loads(COMMITTED.read_text())["results"]["rows"]
    shapes = {}
    for r in rows:
        key = (r["mode"], r["trained"], r["p"], r["seed"])
        if key in shapes:
            continue
        steps = protocol.max_steps if r["stopped"] == "max_steps" else min(
            r["best_step"] + protocol.patience * protocol.eval_every, protocol.max_steps)
        shapes[key] = {"mode": r["mode"], "category": r["category"], "p": r["p"], "seed": r["seed"],
                       "best_step": r["best_step"], "steps": steps, "evals": steps // protocol.eval_every + 1}
    return list(shapes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    before = Protocol.from_profile(profile, max_steps=profile.generalization_max_steps or profile.max_steps)
    after = experiments.sweep_protocol(profile)
    model = load_model()
    n_test = profile.n_generalization_eval
    contenders, data = {}, {}
    for cat, names in CATEGORIES.items():
        tasks = [get_task(t) for t in names]
        splits = [dev_split(t, before.dev_size, before.n_train) for t in tasks]
        encoded = [_encode_items(model, [(s.task, ex) for ex in s.train]) for s in splits]
        mixed = batch_stream(model, [e for per in encoded for e in per], before.batch_size, 0)
        by_task = task_batch_stream(model, encoded, after.batch_size, 0)
        data[cat] = {"mixed": [next(mixed) for _ in range(6)], "task": [next(by_task) for _ in range(6)],
                     **{f"dev_{when}": [_dev_batches(model, dev_split(t, p.dev_size, p.n_train), 16) for t in tasks]
                        for when, p in (("before", before), ("after", after))}}

        def step(cat=cat, kind="mixed"):
            turn = data[cat].setdefault(f"turn_{kind}", iter(range(10**6)))
            for _ in range(3):  # three consecutive steps: one of each task with task batches
                batch = data[cat][kind][next(turn) % 6]
                with torch.enable_grad():
                    losses.answer_loss(model, batch, share_prefix=True).backward()
                model.zero_grad(set_to_none=True)

        for kind in ("mixed", "task"):
            contenders[f"3 steps/{cat}/{kind}"] = lambda cat=cat, kind=kind: step(cat, kind)
        for when in ("before", "after"):
            contenders[f"dev loss/{cat}/{when}"] = lambda cat=cat, when=when: dev_loss(model, data[cat][f"dev_{when}"])
    generation = [t for t in profile.generalization_task_names() if get_task(t).category == "generation"]
    classification = [t for t in profile.generalization_task_names() if get_task(t).category == "classification"]
    scored = {}

    def score(when: str) -> None:
        for name in generation:
            task = get_task(name)
            if when == "before":
                scored[(name, when)] = score_before(model, task, n_test)
            else:
                s = evaluate(model, task, n=n_test, progress=False)
                scored[(name, when)] = (s.per_example["answer_logprob"], s.predictions)

    contenders["score generation/before"] = lambda: score("before")
    contenders["score generation/after"] = lambda: score("after")
    contenders["score classification"] = lambda: [evaluate(model, get_task(t), n=n_test, progress=False)
                                                  for t in classification]
    times = interleaved(contenders, args.repeats)
    seconds = {name: summary(s) for name, s in times.items()}
    med = {name: s["median_s"] for name, s in seconds.items()}
    differences = {
        "answer_logprob_max_abs": max(abs(a - b) for t in generation for a, b in
                                      zip(scored[(t, "before")][0], scored[(t, "after")][0], strict=True)),
        "decoded_texts_differing": sum(a != b for t in generation for a, b in
                                       zip(scored[(t, "before")][1], scored[(t, "after")][1], strict=True)),
        "decoded_texts": len(generation) * n_test}
    # the prediction: every run of the committed sweep, then the profile's run count
    score_s = {when: med[f"score generation/{when}"] + med["score classification"] for when in ("before", "after")}
    one_task_score = {when: score_s[when] / (len(generation) + len(classification)) for when in score_s}

    def run_cost(shape: dict, when: str) -> float:
        cat, kind = shape["category"], "mixed" if when == "before" else "task"
        joint = shape["mode"] == "joint"
        step = med[f"3 steps/{cat}/{kind if joint else 'task'}"] / 3
        dev = med[f"dev loss/{cat}/{when}"] / (1 if joint else 3)
        return shape["steps"] * step + shape["evals"] * dev + (score_s[when] if joint else one_task_score[when])

    shapes = run_shapes(before)
    joint = [s for s in shapes if s["mode"] == "joint"]
    alone = [s for s in shapes if s["mode"] == "individual"]
    seeds, individual_seeds = profile.sweep_seeds()
    lr_choice = len(CATEGORIES) * (len(after.grid("neurons")) - 1)  # the grid's other lrs at the reference p
    n_joint = len(profile.proportions) * len(CATEGORIES) * len(seeds) + lr_choice
    n_alone = len(profile.individual_proportions) * 6 * len(individual_seeds)
    predicted = {}
    for when in ("before", "after"):
        per_joint = sum(run_cost(s, when) for s in joint) / len(joint)
        per_alone = sum(run_cost(s, when) for s in alone) / len(alone)
        predicted[when] = {"joint_run_s": round(per_joint, 1), "individual_run_s": round(per_alone, 1),
                           "runs": {"joint": n_joint, "individual": n_alone},
                           "thread_minutes": round((n_joint * per_joint + n_alone * per_alone) / 60, 1)}
    predicted["speedup"] = round(predicted["before"]["thread_minutes"] / predicted["after"]["thread_minutes"], 2)
    predicted["minutes_on_2_cores_after"] = math.ceil(predicted["after"]["thread_minutes"] / 2)
    result = {"machine": {**machine_info(), "threads": args.threads}, "profile": profile.name,
              "protocol_before": before.run_settings(), "protocol_after": after.run_settings(),
              "seconds": seconds, "differences": differences, "prediction": predicted}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({"medians_s": med, "differences": differences, "prediction": predicted}, indent=1))


if __name__ == "__main__":
    main()
