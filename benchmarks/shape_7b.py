"""Memory of neuron-sparse training at the Llama-2-7B shape, measured on slices of 1 and 2 layers.

Without an accelerator the full 7B shape cannot be trained here, but its memory is a sum of parts
that either do not depend on the depth or grow by the same amount per layer. The script builds
Llama-2-7B-shaped models with random weights (config only: hidden 4096, MLP 11008, 32 heads,
vocabulary 32000; no download) with ``L = 1`` and ``L = 2`` layers, wraps each in a
TransformerBridge as ``load_model`` does, and runs one neuron-sparse training step
(``nrnlib.finetune.training``, mode "sparse", 10% of each layer's neurons) on random tokens.
It counts, exactly:

- ``W``: the bytes of the model's parameters;
- ``S``: the trainable slices, their gradients and AdamW's two moments after the step;
- ``A``: the activations autograd saves for the backward (``torch.autograd.graph.saved_tensors_hooks``,
  unique storages, parameters excluded), per token of the batch.

Each part is ``fixed + L × per_layer``; the two depths give both terms, and the 7B-shape estimate is
``M(32, n_tokens) = W(32) + S(32) + n_tokens × A(32)``, with the transient of the largest
backward step (one layer's activations) on top. The same formula is given for full AdamW
fine-tuning (``4 W`` in the parameters' dtype: weights, gradients and two moments).

    python benchmarks/shape_7b.py [--tokens 512] [--dtype bfloat16] [--k 0.1]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from bench_common import machine_info
from transformers import AutoModelForCausalLM, LlamaConfig

from nrnlib.encoding import EncodedBatch
from nrnlib.finetune import training
from nrnlib.models import _boot, load_tokenizer
from nrnlib.neurons import NeuronSet

OUT = Path(__file__).resolve().parent / "results" / "shape_7b_cpu.json"
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
GIB = 2**30


def llama2_7b_shape(n_layers: int, dtype: torch.dtype):
    """A TransformerBridge over a randomly initialised Llama-2-7B-shaped model with ``n_layers`` layers."""
    config = LlamaConfig(num_hidden_layers=n_layers, **LLAMA2_7B)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return _boot(f"llama2-7b-shape-{n_layers}l", hf, load_tokenizer(), torch.device("cpu"), dtype)


def random_per_layer(n_layers: int, d_mlp: int, k: float, seed: int = 0) -> NeuronSet:
    """``round(k · d_mlp)`` neurons drawn uniformly in every layer."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    for layer in range(n_layers):
        mask[layer, torch.randperm(d_mlp, generator=gen)[: round(k * d_mlp)]] = True
    return NeuronSet(mask, name=f"random {k:.0%} per layer")


def random_batch(n_tokens: int, n_answer: int, vocab: int) -> EncodedBatch:
    """One sequence of random token ids whose last ``n_answer`` tokens are the answer."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, n_tokens), generator=gen)
    target = torch.zeros(1, n_tokens, dtype=torch.bool)
    target[0, -n_answer:] = True
    return EncodedBatch(ids, torch.ones(1, n_tokens, dtype=torch.bool), target,
                        torch.tensor([n_tokens - n_answer]))


def measure(n_layers: int, args) -> dict:
    dtype = getattr(torch, args.dtype)
    model = llama2_7b_shape(n_layers, dtype)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    neurons = random_per_layer(n_layers, int(model.cfg.d_mlp), args.k)
    batch = random_batch(args.tokens, args.answer_tokens, LLAMA2_7B["vocab_size"])
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with training(model, neurons, lr=1e-4, mode="sparse") as trainer:
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trainer.step(batch)
        step_s = time.perf_counter() - start
        state = [t for s in trainer.optimizer.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor) and t.dim() > 0]
        slices = sum(p.numel() * p.element_size() for p in trainer.params)
        grads = sum(p.grad.numel() * p.grad.element_size() for p in trainer.params if p.grad is not None)
        adam = sum(t.numel() * t.element_size() for t in state)
    return {"layers": n_layers, "neurons": neurons.count, "weight_bytes": weights,
            "sparse_state_bytes": slices + grads + adam,
            "sparse_parts": {"slices": slices, "grads": grads, "adam_moments": adam},
            "saved_activation_bytes": sum(saved.values()), "tokens": args.tokens,
            "step_s": round(step_s, 2), "maxrss_gib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def linear_in_depth(one: float, two: float) -> tuple[float, float]:
    """(fixed, per_layer) from the values at 1 and 2 layers."""
    return one - (two - one), two - one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512, help="sequence length of the measured step")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--k", type=float, default=0.10)
    parser.add_argument("--target-layers", type=int, default=32)
    parser.add_argument("--target-batch", type=int, default=8, help="sequences of --tokens in the estimate")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = [measure(n, args) for n in (1, 2)]
    for r in rows:
        print(f"{r['layers']} layer(s): weights {r['weight_bytes'] / GIB:.3f} GiB, sparse state "
              f"{r['sparse_state_bytes'] / GIB:.3f} GiB, saved activations {r['saved_activation_bytes'] / GIB:.3f} GiB "
              f"for {r['tokens']} tokens; one step {r['step_s']} s on CPU", flush=True)
    parts = {}
    for key in ("weight_bytes", "sparse_state_bytes", "saved_activation_bytes"):
        fixed, per_layer = linear_in_depth(rows[0][key], rows[1][key])
        parts[key] = {"fixed": fixed, "per_layer": per_layer}
    n, seqs = args.target_layers, args.target_batch
    act_per_seq = parts["saved_activation_bytes"]
    estimate = {
        "weights": parts["weight_bytes"]["fixed"] + n * parts["weight_bytes"]["per_layer"],
        "sparse_state": parts["sparse_state_bytes"]["fixed"] + n * parts["sparse_state_bytes"]["per_layer"],
        "saved_activations": seqs * (act_per_seq["fixed"] + n * act_per_seq["per_layer"]),
        "transient_one_layer_backward": seqs * act_per_seq["per_layer"],
    }
    estimate["total_sparse"] = sum(estimate.values())
    estimate["total_full_adamw"] = 4 * estimate["weights"] + estimate["saved_activations"] + estimate[
        "transient_one_layer_backward"]
    report = {"machine": machine_info(), "shape": {**LLAMA2_7B, "num_hidden_layers": n}, "dtype": args.dtype,
              "k": args.k, "measured": rows, "parts_bytes": parts,
              "estimate": {"layers": n, "sequences": seqs, "tokens_per_sequence": args.tokens,
                           "formula": "M = W_fixed + L*W_layer + S_fixed + L*S_layer + B*(A_fixed + L*A_layer) "
                                      "+ B*A_layer (one layer's backward transient); full AdamW: 4W + activations",
                           "gib": {k: round(v / GIB, 2) for k, v in estimate.items()}}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    gib = report["estimate"]["gib"]
    print(f"estimate at {n} layers, {seqs} x {args.tokens} tokens ({args.dtype}): weights {gib['weights']} GiB, sparse "
          f"state {gib['sparse_state']} GiB, saved activations {gib['saved_activations']} GiB, transient "
          f"{gib['transient_one_layer_backward']} GiB: neuron-sparse total {gib['total_sparse']} GiB; full AdamW "
          f"{gib['total_full_adamw']} GiB. Wrote {args.out}")


if __name__ == "__main__":
    main()
