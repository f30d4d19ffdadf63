"""Attribution speed against a plain-PyTorch floor, on the same batch, in one process.

Times (median of ``--repeats`` after one warm-up):
- ``nrnlib``: ``nrnlib.attribution.attribute`` (cache off), through the TransformerBridge hooks;
- ``floor``: plain torch forward hooks on the Hugging Face ``down_proj`` inputs, frozen parameters,
  ``torch.autograd.grad`` of the answer loss with respect to those inputs (the same work, no bridge);
- ``hf_fwd_bwd``: a plain Hugging Face forward (full logits) + ``loss.backward()`` with parameter grads.
Prints seconds per 1,000 tokens and the ratio nrnlib / floor (target: close to 1).

    python benchmarks/attribution_speed.py [--model smollm2-135m-instruct] [--batch 8] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nrnlib.attribution import attribute
from nrnlib.model_state import unique_parameters
from nrnlib.models import load_model
from nrnlib.tasks import Task


def make_task(n: int, words: int) -> Task:
    """Examples whose prompt has about ``words`` words and a short generated answer."""
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * (words // 9 + 1)).split()[:words]
    records = [{"input": f"{i}. " + " ".join(text[i % 9:] + text[: i % 9]), "target": "a lazy dog"}
               for i in range(2 * n)]
    return Task.from_records("bench", records, "generation", instruction="Summarize: {input}", test_fraction=0.5)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = load_model(args.model)
    task = make_task(args.batch, max(1, args.tokens - 45))  # the chat template adds ~45 tokens
    if len(task.train) < args.batch:
        raise SystemExit(f"benchmark task has {len(task.train)} train examples, fewer than --batch {args.batch}")
    examples = list(task.train[: args.batch])
    from nrnlib.encoding import encode_examples
    from nrnlib.losses import answer_loss

    batch = encode_examples(model, task, examples).to(model.cfg.device)
    n_tokens = int(batch.attention_mask.sum())
    hf = model.original_model

    def run_nrnlib():
        attribute(model, task, n_examples=args.batch, batch_size=args.batch, cache=False, progress=False)

    def run_floor():
        acts, handles = [], []
        for layer in hf.base_model.layers if hasattr(hf.base_model, "layers") else hf.base_model.h:
            mlp = getattr(layer, "_original_component", layer).mlp
            mlp = getattr(mlp, "_original_component", mlp)
            proj = mlp.down_proj if hasattr(mlp, "down_proj") else mlp.c_proj
            handles.append(proj.register_forward_pre_hook(lambda m, inp: acts.append(inp[0])))
        params = unique_parameters(model)
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        emb = hf.get_input_embeddings()
        handles.append(emb.register_forward_hook(lambda m, i, o: o.requires_grad_()))
        try:
            loss = answer_loss(model, batch)
            grads = torch.autograd.grad(loss, acts)
            [(g * a).sum(1) for g, a in zip(grads, acts, strict=True)]
        finally:
            for h in handles:
                h.remove()
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)

    def run_hf():
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
        targets = batch.input_ids[:, 1:][batch.target_mask[:, 1:]]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][batch.target_mask[:, 1:]].float(), targets)
        loss.backward()
        hf.zero_grad(set_to_none=True)

    results = {name: timed(fn, args.repeats) for name, fn in
               [("floor", run_floor), ("nrnlib", run_nrnlib), ("hf_fwd_bwd", run_hf)]}
    per_k = {k: v / n_tokens * 1000 for k, v in results.items()}
    report = {"model": args.model, "device": str(model.cfg.device), "threads": torch.get_num_threads(),
              "tokens": n_tokens, "seconds_per_1k_tokens": {k: round(v, 3) for k, v in per_k.items()},
              "ratio_nrnlib_to_floor": round(results["nrnlib"] / results["floor"], 3),
              "ratio_nrnlib_to_hf_fwd_bwd": round(results["nrnlib"] / results["hf_fwd_bwd"], 3)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
