"""Attribution speed against an independent floor, Captum, and a plain Hugging Face training step.

All contenders score the same examples (one batch), in one process, in interleaved rounds
(``bench_common.interleaved``); the script prints and writes medians, minima and ratios:

- ``nrnlib``: ``nrnlib.attribute`` (cache off), through the TransformerBridge's hook points;
- ``floor``: a **separately loaded** Hugging Face model (its own copy of the weights, the attention
  implementation transformers picks by default), plain ``register_forward_pre_hook`` on every
  ``down_proj``, frozen parameters, the per-example answer loss written here (vocabulary projection
  only at the positions that predict an answer token), ``torch.autograd.grad`` with respect to the
  ``down_proj`` inputs, and ``|Σ_pos g·a|`` summed over the examples in float64: the same work with
  no bridge and no nrnlib code;
- ``captum``: Captum's ``LayerGradientXActivation`` on the inputs of the same ``down_proj`` modules
  of the independent model (when captum is installed: ``pip install -e .[bench]``);
- ``hf_fwd_bwd``: a plain forward with full logits and ``loss.backward()`` into the parameters.

The floor's and Captum's scores are checked against nrnlib's before timing (same work, same answer).

    python benchmarks/attribution_speed.py [--batch 8] [--tokens 64] [--repeats 11] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_common import interleaved, machine_info, summary
from transformers import AutoModelForCausalLM

from nrnlib.attribution import attribute
from nrnlib.encoding import EncodedBatch, encode_examples
from nrnlib.models import _smollm2_dir, load_model
from nrnlib.tasks import Task

RESULTS = Path(__file__).resolve().parent / "results"


def make_task(n: int, words: int) -> Task:
    """Examples whose prompt has about ``words`` words and a short generated answer."""
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * (words // 9 + 1)).split()[:words]
    records = [{"input": f"{i}. " + " ".join(text[i % 9:] + text[: i % 9]), "target": "a lazy dog"}
               for i in range(2 * n)]
    return Task.from_records("bench", records, "generation", instruction="Summarize: {input}", test_fraction=0.5)


def independent_model(name: str) -> torch.nn.Module:
    """The same weights loaded again by plain transformers, with nothing of TransformerLens on it."""
    folder = _smollm2_dir() if name == "smollm2-135m-instruct" else name
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    hf.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_())
    return hf


def down_projs(hf) -> list[torch.nn.Module]:
    return [layer.mlp.down_proj for layer in hf.model.layers]


def answer_nll_per_example(hf, batch: EncodedBatch) -> torch.Tensor:
    """``L_b = -mean_t log p(y_bt | ...)`` with the vocabulary projection at answer-predicting positions only."""
    hidden = hf.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).last_hidden_state
    b, t = batch.target_mask.nonzero(as_tuple=True)
    logp = hf.lm_head(hidden[b, t - 1]).float().log_softmax(-1)
    nll = -logp.gather(-1, batch.input_ids[b, t][:, None]).squeeze(-1)
    total = torch.zeros(len(batch), dtype=nll.dtype).index_add(0, b, nll)
    return total / batch.target_mask.sum(1).to(nll.dtype)


def floor_scores(hf, batch: EncodedBatch) -> torch.Tensor:
    """``R[l, j] = Σ_b |Σ_pos g·a|`` with plain forward pre-hooks on every ``down_proj``."""
    acts: list[torch.Tensor] = []
    handles = [p.register_forward_pre_hook(lambda m, inp: acts.append(inp[0])) for p in down_projs(hf)]
    try:
        loss = answer_nll_per_example(hf, batch).sum()
        grads = torch.autograd.grad(loss, acts)
    finally:
        for h in handles:
            h.remove()
    mask = batch.attention_mask.float()[:, :, None]
    with torch.no_grad():
        return torch.stack([(g * a * mask).sum(1).abs().double().sum(0) for g, a in zip(grads, acts, strict=True)])


def captum_scores(hf, batch: EncodedBatch) -> torch.Tensor:
    """The same relevance through Captum's ``LayerGradientXActivation`` on the ``down_proj`` inputs."""
    from captum.attr import LayerGradientXActivation

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        return answer_nll_per_example(hf, batch)  # one output per example; captum takes the gradient of each

    method = LayerGradientXActivation(forward, down_projs(hf))
    per_layer = method.attribute(batch.input_ids, attribute_to_layer_input=True)
    mask = batch.attention_mask.float()[:, :, None]
    return torch.stack([(ga.detach() * mask).sum(1).abs().double().sum(0) for ga in per_layer])


def hf_training_step(hf, batch: EncodedBatch) -> None:
    params = list(hf.parameters())
    for p in params:
        p.requires_grad_(True)
    logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1][batch.target_mask[:, 1:]].float(),
                                             batch.input_ids[:, 1:][batch.target_mask[:, 1:]])
    loss.backward()
    for p in params:
        p.grad = None
        p.requires_grad_(False)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="about this many tokens per example")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load_model(args.model)
    hf = independent_model(args.model)
    task = make_task(args.batch, max(1, args.tokens - 45))  # the chat template adds ~45 tokens
    examples = list(task.train[: args.batch])
    batch = encode_examples(model, task, examples).to(model.cfg.device)
    hf.to(model.cfg.device)
    n_tokens = int(batch.attention_mask.sum())

    reference = attribute(model, task, n_examples=args.batch, batch_size=args.batch, cache=False, progress=False)
    checks = {"floor_vs_nrnlib_max_rel_err": relative_error(floor_scores(hf, batch).float().cpu(), reference)}
    contenders = {
        "nrnlib": lambda: attribute(model, task, n_examples=args.batch, batch_size=args.batch, cache=False,
                                    progress=False),
        "floor": lambda: floor_scores(hf, batch),
        "hf_fwd_bwd": lambda: hf_training_step(hf, batch),
    }
    try:
        import captum  # noqa: F401
        checks["captum_vs_nrnlib_max_rel_err"] = relative_error(captum_scores(hf, batch).float().cpu(), reference)
        contenders["captum"] = lambda: captum_scores(hf, batch)
    except ImportError:
        print("captum is not installed (pip install -e .[bench]): its row is skipped")
    times = interleaved(contenders, args.repeats)
    medians = {k: summary(v)["median_s"] for k, v in times.items()}
    report = {
        "machine": {**machine_info(), "device": str(model.cfg.device)},
        "model": args.model, "examples": args.batch, "tokens": n_tokens, "repeats": args.repeats,
        "attention": {"nrnlib": model.original_model.config._attn_implementation,
                      "floor": hf.config._attn_implementation},
        "checks": checks,
        "seconds": {k: summary(v) for k, v in times.items()},
        "tokens_per_s": {k: round(n_tokens / v, 1) for k, v in medians.items()},
        "ratio_to_floor": {k: round(v / medians["floor"], 3) for k, v in medians.items()},
        "ratio_to_floor_per_round": {k: round(sorted(a / f for a, f in zip(times[k], times["floor"], strict=True))[
            len(times[k]) // 2], 3) for k in times},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    out = args.out or RESULTS / f"attribution_speed_{torch.device(model.cfg.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    for name, s in report["seconds"].items():
        print(f"{name:11s} median {s['median_s']:.3f} s  min {s['min_s']:.3f} s  "
              f"{report['tokens_per_s'][name]:8.1f} tok/s  x{report['ratio_to_floor'][name]:.3f} of the floor")
    print(f"checks: {checks}; attention: {report['attention']}; wrote {out}")


if __name__ == "__main__":
    main()
