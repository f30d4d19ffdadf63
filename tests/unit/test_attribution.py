"""Attribution scores against plain autograd on the Hugging Face modules, the Taylor estimate
against real ablations, selection, specificity, determinism and the on-disk cache."""

import pytest
import torch

import nrnlib.losses
from nrnlib import attribution as A
from nrnlib import selection as S
from nrnlib.encoding import encode_examples
from nrnlib.neurons import NeuronSet


def _capture_down_inputs(model, hf_mlps, edit=None):
    """Plain torch pre-hooks on each down projection: capture its input (retain_grad), optionally
    replace it with ``edit(layer, x)``. Returns (captured dict, handles)."""
    captured, handles = {}, []
    for layer, (_, proj) in enumerate(hf_mlps(model)):
        def pre(module, args, layer=layer):
            x = args[0]
            if edit is not None:
                x = edit(layer, x)
            if x.requires_grad:
                x.retain_grad()
            captured[layer] = x
            return (x,) + tuple(args[1:])

        handles.append(proj.register_forward_pre_hook(pre))
    return captured, handles


def _manual_per_example_loss(model, batch, full_logits=True):
    """Per-example mean answer-token cross-entropy, by hand: from the HF model's full logits, or
    (cheaper) from its final hidden states and output embedding at the answer-predicting positions."""
    hf = model.original_model
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long())
    if full_logits:
        logits = hf(**kw).logits
    else:
        hidden = hf.base_model(**kw).last_hidden_state
    out = []
    for b in range(len(batch)):
        ts = batch.target_mask[b].nonzero().flatten()
        row = logits[b, ts - 1] if full_logits else hf.get_output_embeddings()(hidden[b, ts - 1])
        logp = row.float().log_softmax(-1)
        out.append(-logp[torch.arange(len(ts)), batch.input_ids[b, ts]].mean())
    return torch.stack(out)


def _reference(model, hf_mlps, task, n):
    """Scores per aggregation from plain autograd, all n examples in ONE batch (attribute uses
    batches of 4, so this also checks that scores do not depend on batch composition)."""
    batch = encode_examples(model, task, list(task.split("train")[:n]))
    captured, handles = _capture_down_inputs(model, hf_mlps)
    try:
        _manual_per_example_loss(model, batch).sum().backward()
    finally:
        for h in handles:
            h.remove()
        model.original_model.zero_grad(set_to_none=True)
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    ref = {agg: torch.zeros(L, D, dtype=torch.float64) for agg in A.AGGREGATIONS}
    for layer in range(L):
        ga = (captured[layer].grad * captured[layer].detach()).double()
        for b in range(len(batch)):
            length = int(batch.attention_mask[b].sum())
            answer = batch.target_mask[b].nonzero().flatten()
            ref["signed_sum"][layer] += ga[b, :length].sum(0).abs()
            ref["abs_sum"][layer] += ga[b, :length].abs().sum(0)
            ref["answer_positions"][layer] += ga[b, answer - 1].sum(0).abs()
    return ref


def test_attribution_equals_plain_autograd(tiny_model, hf_mlps, echo_task):
    """Generation task: multi-token answers of different lengths, so the three aggregations differ."""
    task = echo_task
    ref = _reference(tiny_model, hf_mlps, task, n=4)
    for agg in A.AGGREGATIONS:
        got = A.attribute(tiny_model, task, n_examples=4, batch_size=3, aggregation=agg, cache=False, progress=False)
        assert got.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp) and got.dtype == torch.float32
        rel = float((got.double() - ref[agg]).abs().max() / ref[agg].abs().max())
        assert rel < 1e-5, (agg, rel)
    assert not torch.allclose(ref["signed_sum"], ref["abs_sum"])
    assert not torch.allclose(ref["signed_sum"], ref["answer_positions"])


def test_signed_sum_predicts_loss_change_of_zeroing(tiny_model, hf_mlps, parity_task):
    """First-order Taylor: |L(ω_j = 0) − L| ≈ |Σ_pos g·a| (small activations: nearly linear)."""
    layer = 1
    scores = A.attribute(tiny_model, parity_task, n_examples=1, cache=False, progress=False)
    batch = encode_examples(tiny_model, parity_task, [parity_task.split("train")[0]])
    neurons = torch.argsort(scores[layer], descending=True)[:4].tolist() + [0, 1]
    actual = []
    with torch.no_grad():
        base = _manual_per_example_loss(tiny_model, batch, full_logits=False)[0]
        for j in neurons:
            def zero_j(lay, x, j=j):
                if lay != layer:
                    return x
                x = x.clone()
                x[..., j] = 0
                return x

            _, handles = _capture_down_inputs(tiny_model, hf_mlps, edit=zero_j)
            try:
                actual.append(float((_manual_per_example_loss(tiny_model, batch, False)[0] - base).abs()))
            finally:
                for h in handles:
                    h.remove()
    est, actual = scores[layer, neurons].double(), torch.tensor(actual, dtype=torch.float64)
    assert torch.corrcoef(torch.stack([est, actual]))[0, 1] > 0.99
    top = slice(0, 3)
    assert torch.allclose(est[top], actual[top], rtol=0.1), (est, actual)


def test_attribution_leaves_no_trace(tiny_model, parity_task, monkeypatch):
    params = list(tiny_model.parameters())
    flags = [p.requires_grad for p in params]
    A.attribute(tiny_model, parity_task, n_examples=2, cache=False, progress=False)
    assert [p.requires_grad for p in params] == flags
    assert all(p.grad is None for p in params)  # no parameter gradients computed

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(nrnlib.losses, "answer_token_logprobs", boom)
    with pytest.raises(RuntimeError, match="boom"):
        A.attribute(tiny_model, parity_task, n_examples=2, cache=False, progress=False)
    assert [p.requires_grad for p in params] == flags
    for layer in range(tiny_model.cfg.n_layers):
        assert not tiny_model.hook_dict[f"blocks.{layer}.mlp.hook_post"].fwd_hooks
    assert not tiny_model.hook_dict["hook_embed"].fwd_hooks


def test_activation_scores_equal_mean_abs_activation(tiny_model, hf_mlps, parity_task):
    examples = list(parity_task.split("train")[:5])
    batch = encode_examples(tiny_model, parity_task, examples)
    captured, handles = _capture_down_inputs(tiny_model, hf_mlps)
    try:
        with torch.no_grad():
            tiny_model.original_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long())
    finally:
        for h in handles:
            h.remove()
    ref = torch.stack([
        torch.stack([captured[layer][b, : int(batch.attention_mask[b].sum())].abs().mean(0) for b in range(5)]).mean(0)
        for layer in range(tiny_model.cfg.n_layers)
    ])
    got = A.activation_scores(tiny_model, parity_task, n_examples=5, batch_size=2, cache=False, progress=False)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_same_inputs_give_the_same_neurons(tiny_model, echo_task):
    runs = [
        S.select_neurons(A.attribute(tiny_model, echo_task, n_examples=4, cache=False, progress=False), k=0.1)
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and runs[0].count == round(0.1 * runs[0].mask.numel())


def test_n_examples_validation(tiny_model, parity_task):
    with pytest.raises(ValueError, match="n_examples"):
        A.attribute(tiny_model, parity_task, n_examples=0, cache=False, progress=False)
    with pytest.raises(ValueError, match="aggregation"):
        A.attribute(tiny_model, parity_task, n_examples=1, aggregation="max", cache=False, progress=False)
    from nrnlib.tasks import Task

    small = Task.from_records("small", parity_task.split("train")[:4], "classification", labels=("yes", "no"))
    n_train = len(small.split("train"))
    with pytest.warns(UserWarning, match="only"):
        many = A.attribute(tiny_model, small, n_examples=n_train + 5, cache=False, progress=False)
    exact = A.attribute(tiny_model, small, n_examples=n_train, cache=False, progress=False)
    assert torch.equal(many, exact)


def test_cache_hit_skips_the_model_and_misses_after_weight_change(tiny_model, parity_task, monkeypatch, tmp_path):
    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    first = A.attribute(tiny_model, parity_task, n_examples=3, progress=False)
    files = [f for f in (tmp_path / "attribution").iterdir() if f.is_file()]
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left behind

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(nrnlib.losses, "final_hidden", spy)
    again = A.attribute(tiny_model, parity_task, n_examples=3, progress=False)
    assert torch.equal(first, again) and not calls

    # Anything in the key changes -> recomputed (the spy fires).
    with pytest.raises(AssertionError, match="cache hit"):
        A.attribute(tiny_model, parity_task, n_examples=3, aggregation="abs_sum", progress=False)
    with pytest.raises(AssertionError, match="cache hit"):
        A.attribute(tiny_model, parity_task, n_examples=2, progress=False)
    param = next(p for n, p in tiny_model.named_parameters() if "mlp" in n)
    with torch.no_grad():
        old = param[0, 0].clone()
        param[0, 0] += 1e-3  # "fine-tuned": must not reuse the base model's scores
    try:
        with pytest.raises(AssertionError, match="cache hit"):
            A.attribute(tiny_model, parity_task, n_examples=3, progress=False)
    finally:
        with torch.no_grad():
            param[0, 0] = old
    assert len(calls) == 3


# ---- selection ----------------------------------------------------------------------------------


def test_select_neurons_global_vs_layer():
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0], [1.0, 2.0, 3.0, 0.5]])
    glob = S.select_neurons(scores, k=0.25, scope="global")  # 2 of 8, both in layer 0
    assert glob.indices(0).tolist() == [0, 1] and glob.indices(1).tolist() == []
    layer = S.select_neurons(scores, k=0.25, scope="layer")  # 1 per layer
    assert layer.indices(0).tolist() == [0] and layer.indices(1).tolist() == [2]
    assert glob.metadata["scope"] == "global" and float(glob.metadata["k"]) == 0.25
    assert S.select_neurons(scores, k=1.0).count == 8
    assert S.select_neurons(scores, k=0.01).count == 1  # at least one


def test_select_neurons_ties_go_to_lower_index():
    scores = torch.ones(2, 5)
    assert S.select_neurons(scores, k=0.3).mask.flatten().nonzero().flatten().tolist() == [0, 1, 2]
    assert S.select_neurons(scores, k=0.4, scope="layer").indices(1).tolist() == [0, 1]


@pytest.mark.parametrize("k", [0, -0.1, 1.5, float("nan"), pytest.param("0.1", marks=pytest.mark.wrong_type), True])
def test_select_neurons_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        S.select_neurons(torch.rand(2, 4), k=k)


def test_select_neurons_rejects_bad_scope():
    with pytest.raises(ValueError, match="scope"):
        S.select_neurons(torch.rand(2, 4), scope="block")


@pytest.mark.wrong_type  # 1-D scores, not the annotated [n_layers, d_mlp]
def test_select_neurons_rejects_bad_shape():
    with pytest.raises(ValueError, match="n_layers"):
        S.select_neurons(torch.rand(8), k=0.5)


def test_specificity_formulas():
    s = {"a": torch.tensor([[4.0, 2.0, 2.0]]), "b": torch.tensor([[1.0, 1.0, 1.0]]),
         "c": torch.tensor([[1.0, 2.0, 3.0]])}
    q = {t: v / v.sum() * 3 for t, v in s.items()}  # scaled to mean 1
    allq = torch.stack(list(q.values()))
    z = S.specificity_scores(s, "zscore")
    expect = (q["a"] - (q["b"] + q["c"]) / 2) / (allq.std(0, unbiased=False) + 1e-6)
    assert torch.allclose(z["a"], expect, atol=1e-5)
    r = S.specificity_scores(s, "ratio")
    assert torch.allclose(r["b"], torch.log(q["b"] + 1e-6) - torch.log((q["a"] + q["c"]) / 2 + 1e-6), atol=1e-5)
    rk = S.specificity_scores(s, "rank")
    # ranks (0 = least relevant; ties by index): a [2,0,1], b [0,1,2], c [0,1,2]
    assert rk["a"].tolist() == [[2.0, -1.0, -1.0]]
    top = S.select_specific_neurons(s, "a", k=1 / 3, method="zscore")
    assert top.indices(0).tolist() == [0] and top.metadata["method"] == "zscore"


def test_specificity_validation():
    with pytest.raises(ValueError, match="two tasks"):
        S.specificity_scores({"a": torch.rand(2, 3)})
    with pytest.raises(ValueError, match="shape"):
        S.specificity_scores({"a": torch.rand(2, 3), "b": torch.rand(2, 4)})
    with pytest.raises(ValueError, match="method"):
        S.specificity_scores({"a": torch.rand(2, 3), "b": torch.rand(2, 3)}, method="pmi")
    with pytest.raises(KeyError):
        S.select_specific_neurons({"a": torch.rand(2, 3), "b": torch.rand(2, 3)}, "c")


def test_selected_neurons_are_a_neuron_set(tiny_model, parity_task):
    scores = A.attribute(tiny_model, parity_task, n_examples=2, cache=False, progress=False)
    chosen = S.select_neurons(scores, k=0.05, scope="layer", name="parity")
    assert isinstance(chosen, NeuronSet) and chosen.name == "parity"
    assert chosen.counts_per_layer().tolist() == [round(0.05 * tiny_model.cfg.d_mlp)] * tiny_model.cfg.n_layers


def test_disjoint_chunks_add_up_to_the_reference(tiny_model, hf_mlps, echo_task):
    """attribute(start=...) scores examples [start, start+n); two chunks sum to plain autograd's
    scores of their union (relevance is a sum over examples)."""
    ref = _reference(tiny_model, hf_mlps, echo_task, n=4)["signed_sum"]
    a = A.attribute(tiny_model, echo_task, n_examples=2, start=0, cache=False, progress=False)
    b = A.attribute(tiny_model, echo_task, n_examples=2, start=2, cache=False, progress=False)
    assert float(((a + b).double() - ref).abs().max() / ref.abs().max()) < 1e-5
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="start"):
        A.attribute(tiny_model, echo_task, n_examples=2, start=-1, cache=False, progress=False)
    with pytest.raises(ValueError, match="none from index"):
        A.attribute(tiny_model, echo_task, n_examples=2, start=10_000, cache=False, progress=False)
