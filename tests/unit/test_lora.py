"""LoRA through peft on the TransformerBridge: hooks still fire, the forward is W x + (α/r) B A x,
only the adapters train, the merge is what the bridge then computes, and the base weights come back
bit-exactly; the cosine schedule against a hand computation and against transformers'."""

import math

import pytest
import torch

from nrnlib.lora import (
    LoraSettings,
    LoraTargetError,
    adapter_parameters,
    cosine_factor,
    lora_adapter,
    lora_target_names,
    train_lora,
)
from nrnlib.model_state import restored_after, unique_parameters

IDS = torch.tensor([[5, 17, 99, 3, 8, 250]])


@pytest.fixture(scope="module")
def llama():
    from nrnlib.models import load_model
    from nrnlib.workers import one_thread

    with one_thread():
        yield load_model("tiny-random-llama", device="cpu", dtype=torch.float32)


def _snapshot(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in unique_parameters(model)]


def _same(model, snapshot) -> bool:
    params = unique_parameters(model)
    return len(params) == len(snapshot) and all(torch.equal(p, s) for p, s in zip(params, snapshot, strict=True))


def _qv(model) -> dict[str, torch.nn.Linear]:
    hf = model.original_model
    return {name: hf.get_submodule(name) for name in lora_target_names(model)}


def test_targets_are_the_inner_q_and_v_linears(llama):
    names = lora_target_names(llama)
    assert len(names) == 2 * llama.cfg.n_layers
    assert all(n.endswith(("q_proj._original_component", "v_proj._original_component")) for n in names)
    assert all(type(m) is torch.nn.Linear for m in _qv(llama).values())


def test_adapter_forward_is_w_plus_scaled_ba_and_hooks_fire(llama):
    """With random B (A from the seed), the bridge's logits equal those of a plain copy of the weights
    with W ← W + (α/r) B A written in by hand; hook_q fires on the adapted projection; on exit the
    plain nn.Linear modules, the flags and the base weights are back, bit-identical."""
    snapshot = _snapshot(llama)
    flags = [p.requires_grad for p in unique_parameters(llama)]
    settings = LoraSettings(alpha=24.0)  # scaling 3, to see that α/r is applied
    seen = []
    names = lora_target_names(llama)  # inside the block they sit one level deeper, as peft's base_layer
    with lora_adapter(llama, settings, seed=3) as layers:
        assert len(layers) == 2 * llama.cfg.n_layers
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in layers:
                b = layer.lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
        trainable = [p for p in llama.parameters() if p.requires_grad]
        assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(layers)}
        deltas = {}
        for name, layer in zip(names, layers, strict=True):
            deltas[name] = 3.0 * layer.lora_B["default"].weight.detach() @ layer.lora_A["default"].weight.detach()
        with torch.no_grad(), llama.hooks(fwd_hooks=[("blocks.1.attn.hook_q", lambda x, hook: seen.append(1))]):
            adapted = llama(IDS)
    assert seen == [1]
    assert all(type(m) is torch.nn.Linear for m in _qv(llama).values())
    assert "peft_config" not in vars(llama.original_model)
    assert [p.requires_grad for p in unique_parameters(llama)] == flags
    assert _same(llama, snapshot)
    with restored_after(llama), torch.no_grad():
        for name, linear in _qv(llama).items():
            linear.weight += deltas[name]
        by_hand = llama(IDS)
    assert _same(llama, snapshot)
    torch.testing.assert_close(adapted, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(adapted, llama(IDS).detach(), atol=1e-3)


def test_train_lora_moves_only_q_and_v_by_a_low_rank_delta_and_restores_exactly(llama, parity_task):
    """train_lora: the loss falls; every parameter but the q/v weights is bit-identical afterwards;
    each q/v change has rank ≤ r; the merged bridge is the adapter's forward; restored_after gives
    the exact original weights back; the same seed gives the same merged weights."""
    snapshot = _snapshot(llama)
    qv = {id(m.weight) for m in _qv(llama).values()}
    settings = LoraSettings(lr=2e-2, epochs=4, batch_size=4, r=2, alpha=4.0)
    base_logits = llama(IDS).detach()
    merged = []
    for _ in range(2):
        with restored_after(llama):
            log = train_lora(llama, parity_task, settings, seed=1, progress=False)
            merged.append([p.detach().clone() for p in unique_parameters(llama)])
            for p, s in zip(unique_parameters(llama), snapshot, strict=True):
                if id(p) in qv:
                    assert not torch.equal(p, s)
                    assert torch.linalg.matrix_rank(p.detach() - s, atol=1e-6) <= 2
                else:
                    assert torch.equal(p, s)
            assert not torch.allclose(llama(IDS), base_logits, atol=1e-4)
        assert _same(llama, snapshot)
    assert all(torch.equal(a, b) for a, b in zip(*merged, strict=True))
    assert log.steps == settings.total_steps(8) == 8 and log.epochs_seen == 4.0
    assert log.n_trainable_entries == sum(2 * (m.in_features + m.out_features) for m in _qv(llama).values())
    assert sum(log.losses[-2:]) < sum(log.losses[:2])
    with restored_after(llama):
        other = train_lora(llama, parity_task, settings, seed=2, progress=False)
        assert other.steps == log.steps
        assert not all(torch.equal(p, m) for p, m in zip(unique_parameters(llama), merged[0], strict=True))


def test_merged_forward_equals_the_adapters_forward(llama, parity_task, monkeypatch):
    """The logits of the merged, plain bridge equal those computed with the trained adapters still
    in place (captured just before the merge), up to float rounding."""
    import contextlib

    import nrnlib.lora as L

    captured = {}
    original = L.lora_adapter

    @contextlib.contextmanager
    def spy(model, settings, seed):
        with original(model, settings, seed) as layers:
            yield layers
            # train_lora has trained and merged: unmerge for a moment to read the adapters' forward
            for layer in layers:
                layer.unmerge()
            with torch.no_grad():
                captured["adapter"] = model(IDS).detach()
            for layer in layers:
                layer.merge()

    monkeypatch.setattr(L, "lora_adapter", spy)
    with restored_after(llama):
        train_lora(llama, parity_task, LoraSettings(lr=2e-2, epochs=2, batch_size=4), progress=False)
        merged = llama(IDS).detach()
    torch.testing.assert_close(merged, captured["adapter"], atol=1e-5, rtol=1e-5)


def test_peft_unmerge_is_exact_only_up_to_rounding(llama):
    """W + ΔW − ΔW is W up to float rounding, not bit for bit: why restored_after (a snapshot copy)
    is the way back, and why train_lora leaves the merged weights for it to undo."""
    snapshot = _snapshot(llama)
    with lora_adapter(llama, LoraSettings(), seed=0) as layers:
        with torch.no_grad():
            for layer in layers:
                layer.lora_B["default"].weight.normal_(0, 0.3)
        for layer in layers:
            layer.merge()
            layer.unmerge()
    params = unique_parameters(llama)
    for p, s in zip(params, snapshot, strict=True):
        torch.testing.assert_close(p.detach(), s, atol=1e-6, rtol=0)
    with torch.no_grad():
        for p, s in zip(params, snapshot, strict=True):
            p.copy_(s)
    assert _same(llama, snapshot)


def test_cosine_schedule_matches_a_hand_computation_and_transformers(llama, parity_task):
    """lr_t = lr · ½(1 + cos(π t / T)) for t = 0..T−1 without warm-up (T = 6 here: 8 examples, 4 per
    step, 3 epochs), and HF's get_cosine_schedule_with_warmup with warm-up."""
    from transformers import get_cosine_schedule_with_warmup

    settings = LoraSettings(lr=1e-3, epochs=3, batch_size=4)
    with restored_after(llama):
        log = train_lora(llama, parity_task, settings, progress=False)
    total = 6
    assert log.steps == total
    hand = [1e-3 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert log.lrs == pytest.approx(hand, rel=1e-12, abs=0)
    assert log.lrs[0] == 1e-3 and all(a > b for a, b in zip(log.lrs, log.lrs[1:], strict=False))
    assert all(math.isfinite(g) for g in log.grad_norms) and len(log.grad_norms) == total
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=20)
    theirs = []
    for _ in range(20):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [cosine_factor(t, 20, 3) for t in range(20)] == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def test_settings_steps_and_errors(tiny_model):
    """Paper B's defaults; T = ceil(epochs · ceil(n / batch)) capped by max_steps; bad settings and a
    model without q_proj / v_proj (GPT-2's fused c_attn) are refused with what to do."""
    s = LoraSettings()
    assert (s.r, s.alpha, s.dropout, s.lr, s.epochs, s.batch_size, s.targets) == (
        8, 16.0, 0.0, 5e-5, 3.0, 16, ("q_proj", "v_proj"))
    assert s.scaling == 2.0 and s.total_steps(500) == 3 * 32 and LoraSettings(max_steps=10).total_steps(500) == 10
    assert LoraSettings(epochs=0.5, batch_size=4).total_steps(10) == 2
    assert s.key()["targets"] == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="r"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.0)
    if tiny_model.cfg.model_name == "tiny-random-gpt2":
        with pytest.raises(LoraTargetError, match="c_attn"):
            with lora_adapter(tiny_model):
                pass


# --------------------------------------------------------------------------------------------------
# notebook 07 on Paper B's protocol: states trained with LoRA, references, ranges
# --------------------------------------------------------------------------------------------------


def _curves(b_by_task, e_by_task, estimator="linear"):
    """Synthetic cka_curves rows: per task, base and E values per block (layer index = block + 1)."""
    import pandas as pd

    rows = []
    for task in b_by_task:
        for model, values in (("base", b_by_task[task]), ("E", e_by_task[task])):
            rows.append({"task": task, "seen": True, "model": model, "estimator": estimator, "layer": 0,
                         "cka": float("nan")})
            rows += [{"task": task, "seen": True, "model": model, "estimator": estimator, "layer": i + 1, "cka": v}
                     for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_range_sweep_on_synthetic_curves():
    """b = base curve, e = E curve: at τ = 0.95 shared [0,3), transition [3,5); at τ = 0.85 the base
    stays above τ one block longer and E two more; at τ = 0.995 only block 0 is shared, no transition."""
    from nrnlib.experiments import ranges as LR

    b = [1.0, 0.99, 0.97, 0.9, 0.8, 0.7, 0.6, 0.5]
    e = [1.0, 0.99, 0.98, 0.97, 0.96, 0.86, 0.85, 0.6]
    sweep = LR.range_sweep(_curves({"t": b}, {"t": e}), taus=(0.85, 0.95, 0.995), estimator="linear")
    got = {(r.tau, r.range): (r.first, r.end) for r in sweep.itertuples()}
    assert got[(0.95, "shared")] == (0, 3) and got[(0.95, "transition")] == (3, 5)
    assert got[(0.95, "refinement")] == (5, 8)
    assert got[(0.85, "shared")] == (0, 4) and got[(0.85, "transition")] == (4, 7)
    assert got[(0.995, "shared")] == (0, 1) and got[(0.995, "transition")] == (1, 1)
    assert (sweep.blocks == sweep.end - sweep.first).all() and len(sweep) == 9
    assert LR.TAU_GRID[0] == 0.5 and LR.TAU_GRID[-1] == 0.95 and len(LR.TAU_GRID) == 10


def test_gap_rule_on_synthetic_curves():
    """Three tasks whose E − base gap is 0.2 ± 0.01 on blocks 3-5 and 0 ± 0.01 elsewhere: transition
    [3, 6), shared [0, 3), refinement [6, 8); with δ = 0.3 no block clears it and all ranges are
    empty; the table's CI brackets each block's mean gap."""
    from nrnlib.experiments import ranges as LR

    b = {t: [0.9] * 8 for t in "abc"}
    noise = {"a": -0.01, "b": 0.0, "c": 0.01}
    e = {t: [0.9 + noise[t] + (0.2 if 3 <= i <= 5 else 0.0) for i in range(8)] for t in "abc"}
    ranges, table = LR.gap_ranges(_curves(b, e), estimator="linear")
    assert ranges == {"shared": (0, 3), "transition": (3, 6), "refinement": (6, 8)}
    assert list(table.block) == list(range(8)) and list(table.closer) == [False] * 3 + [True] * 3 + [False] * 2
    assert ((table.ci_low <= table.gap) & (table.gap <= table.ci_high)).all()
    assert table.gap[4] == pytest.approx(0.2)
    none, _ = LR.gap_ranges(_curves(b, e), delta=0.3, estimator="linear")
    assert none == {"shared": (0, 0), "transition": (0, 0), "refinement": (0, 0)}


def test_ceiling_of_identical_states_is_one_and_references_are_labelled():
    """A ceiling control equal to the control gives CKA 1 at every layer (both estimators); floor and
    cross-task rows carry their model and ``other``; with n = 12 prompts in d = 20 dimensions the
    debiased estimator is the primary one; mean_curves labels the reference curves."""
    from nrnlib.experiments import layer_by_layer as LBL
    from nrnlib.experiments import ranges as LR

    gen = torch.Generator().manual_seed(0)

    def s():
        return torch.randn(4, 12, 20, generator=gen)

    control = {"word_polarity": s(), "antonym": s()}
    states = {"base": {t: s() for t in control}, "E": {t: s() for t in control}, "control": control,
              "ceiling": {t: v.clone() for t, v in control.items()},
              "cross": {"word_polarity": {"antonym": s()}, "antonym": {"word_polarity": s()}}}
    floor = {t: s() for t in control}
    curves = LBL.cka_curves(states, floor=floor)
    ceiling = curves[curves.model == "ceiling"]
    assert len(ceiling) == 2 * 2 * 4 and ceiling.cka.to_numpy() == pytest.approx(1.0)
    assert set(curves.model) == {"E", "base", "ceiling", "floor", "cross"}
    cross = curves[curves.model == "cross"]
    assert set(zip(cross.task, cross.other, strict=True)) == {("antonym", "word_polarity"),
                                                              ("word_polarity", "antonym")}
    assert set(curves[curves.primary].estimator) == {"debiased"} and (curves.n == 12).all()
    assert LBL.primary_estimator(600, 576) == "linear" and LBL.primary_estimator(60, 576) == "debiased"
    mean = LR.mean_curves(curves)
    assert set(mean.estimator) == {"debiased"}
    assert {"ceiling: C_t (seed + 1) vs C_t", "floor: random-init vs C_t", "cross-task: C_u vs C_t",
            "E vs C_t, seen tasks", "base vs C_t, unseen tasks"} <= set(mean.curve)
    assert mean[mean.curve.str.startswith("ceiling")].cka.to_numpy() == pytest.approx(1.0)
    assert set(mean.layer) == {1, 2, 3}


def test_mossa_states_with_lora_references_and_cache(llama, tmp_path, monkeypatch):
    """method="lora" on the tiny Llama: the model is unchanged afterwards; base is the untouched
    model's states; E, the controls and the seed + 1 ceiling differ from base and from each other;
    every control read every task (cross); loss curves come back; a rerun is served from the cache,
    and other LoRA settings are another cache entry."""
    from dataclasses import replace

    import nrnlib.experiments.layer_by_layer as LBL
    from nrnlib.profiles import get_profile
    from nrnlib.representations import last_token_states
    from nrnlib.tasks import get_task

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    profile = replace(get_profile("smoke"), n_eval=4, n_train=4, batch_size=4)
    lora = LoraSettings(lr=1e-2, epochs=2, batch_size=2)
    tasks, train = ["word_polarity", "antonym"], ["word_polarity"]
    snapshot = _snapshot(llama)
    states = LBL.mossa_states(llama, profile, tasks, train, method="lora", lora=lora, ceiling=True, cross=True)
    assert _same(llama, snapshot)
    direct = last_token_states(llama, get_task("antonym"), n=4, progress=False)
    torch.testing.assert_close(states["base"]["antonym"], direct)
    last = {k: states[k]["antonym"][-1] for k in ("base", "E", "control", "ceiling")}
    for a in last:
        for b in last:
            assert a == b or not torch.allclose(last[a], last[b]), (a, b)
    assert set(states["cross"]) == set(tasks) and set(states["cross"]["antonym"]) == {"word_polarity"}
    assert len(states["losses"]["E"]) == lora.total_steps(4) == 4
    assert set(states["losses"]) == {"E", "control:word_polarity", "control:antonym", "ceiling:word_polarity",
                                     "ceiling:antonym"}

    calls = []
    monkeypatch.setattr(LBL, "train_lora", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("retrained a cached model")))
    again = LBL.mossa_states(llama, profile, tasks, train, method="lora", lora=lora, ceiling=True, cross=True)
    assert torch.equal(again["E"]["antonym"], states["E"]["antonym"])
    with pytest.raises(AssertionError, match="retrained"):
        LBL.mossa_states(llama, profile, tasks, train, method="lora", lora=replace(lora, lr=2e-2))
    with pytest.raises(ValueError, match="method"):
        LBL.mossa_states(llama, profile, tasks, train, method="adapter")


def test_mossa_states_with_two_workers_equals_one_process(llama, tmp_path, monkeypatch):
    """The models trained by two forked processes give the same states and loss curves as one process
    (each its own fresh cache), and the second process trained some of them."""
    import json
    import os
    from dataclasses import replace

    import nrnlib.experiments.layer_by_layer as LBL
    from nrnlib.profiles import get_profile

    profile = replace(get_profile("smoke"), n_eval=4, n_train=4, batch_size=4)
    lora = LoraSettings(lr=1e-2, epochs=2, batch_size=2)
    tasks, train = ["word_polarity", "antonym", "hypernym"], ["word_polarity", "antonym"]
    got = {}
    for workers in (1, 2):
        monkeypatch.setenv("NRN_CACHE", str(tmp_path / f"cache{workers}"))
        got[workers] = LBL.mossa_states(llama, profile, tasks, train, method="lora", lora=lora, ceiling=["antonym"],
                                        cross=["word_polarity", "antonym"], workers=workers)
    for kind in ("base", "E", "control", "ceiling"):
        assert got[1][kind].keys() == got[2][kind].keys()
        for t in got[1][kind]:
            assert torch.equal(got[1][kind][t], got[2][kind][t]), (kind, t)
    assert torch.equal(got[1]["cross"]["antonym"]["word_polarity"], got[2]["cross"]["antonym"]["word_polarity"])
    assert all(torch.equal(got[1]["losses"][k], got[2]["losses"][k]) for k in got[1]["losses"])
    entries = (tmp_path / "cache2" / "mossa_states").glob("*.safetensors")
    from safetensors import safe_open

    pids = set()
    for path in entries:
        with safe_open(str(path), framework="pt") as f:
            pids.add(json.loads(f.metadata()["provenance"])["pid"])
    assert os.getpid() in pids and len(pids) == 2


def test_lora_to_convergence_merges_the_best_epoch_on_a_cosine_over_the_cap(llama, parity_task):
    """train_lora_to_convergence (notebook 07 under the protocol): the dev loss before training and
    after every epoch of ceil(n / batch) steps; the model afterwards equals a hand loop (a fresh
    adapter, AdamW, the protocol's seeded batches, lr_t = lr·½(1 + cos(πt/T)) over the cap T =
    epochs · steps per epoch) run for exactly the best evaluation's steps and merged; weights restored."""
    from nrnlib.experiments.lbl_training import train_lora_to_convergence
    from nrnlib.finetune import _encode_items, batch_stream
    from nrnlib.lora import LoraTrainer
    from nrnlib.protocol import Protocol, dev_split

    protocol = Protocol(dev_size=2, patience=2, n_train=5)
    lora = LoraSettings(lr=1.0, epochs=6, batch_size=2)  # a large lr: the dev loss turns, training stops early
    train = dev_split(parity_task, 2, 5).train  # 8 train examples: 2 dev, the first 5 of the other 6 trained
    per_epoch, cap = math.ceil(len(train) / 2), 6 * math.ceil(len(train) / 2)
    snapshot = _snapshot(llama)
    with restored_after(llama):
        curve = train_lora_to_convergence(llama, [parity_task], lora, protocol, seed=3)
        merged = _snapshot(llama)
    assert _same(llama, snapshot)
    assert len(train) == 5 and per_epoch == 3
    assert curve.dev_steps == list(range(0, curve.steps + 1, per_epoch))
    assert curve.stopped == "early" and curve.best_step < curve.steps < cap  # the best adapter is not the last
    assert curve.best_dev_loss == min(curve.dev_loss) < curve.dev_loss[0]

    with restored_after(llama), torch.random.fork_rng():
        torch.manual_seed(3)
        with lora_adapter(llama, lora, 3) as layers:
            trainer = LoraTrainer(llama, layers, lora.lr, 0.0, lora.max_grad_norm)
            batches = batch_stream(llama, _encode_items(llama, [(parity_task, ex) for ex in train]), 2, 3)
            llama.train()
            for t in range(curve.best_step):
                for group in trainer.optimizer.param_groups:
                    group["lr"] = lora.lr * 0.5 * (1 + math.cos(math.pi * t / cap))
                trainer.step(next(batches))
            llama.eval()
            with torch.no_grad():
                for layer in layers:
                    layer.merge()
        by_hand = _snapshot(llama)
    assert len(by_hand) == len(merged)
    for a, b in zip(merged, by_hand, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(merged, snapshot, strict=True))


def test_mossa_states_under_the_protocol_has_dev_curves_and_a_cache_key_of_its_own(llama, tmp_path, monkeypatch):
    """mossa_states(..., protocol=...): every model has a dev curve evaluated once per epoch of its own
    data (E over the union of the seen tasks), the control's states are those of the model
    train_lora_to_convergence leaves; convergence_table and lora_runs read the curves; the same call is
    served from the cache, and another patience is another entry."""
    from dataclasses import replace

    import nrnlib.experiments.layer_by_layer as LBL
    from nrnlib.experiments.lbl_training import convergence_table, lora_runs
    from nrnlib.profiles import get_profile
    from nrnlib.protocol import Protocol, curves_frame, dev_split
    from nrnlib.representations import last_token_states
    from nrnlib.tasks import get_task

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    profile = replace(get_profile("smoke"), n_eval=4, batch_size=4)
    lora = LoraSettings(lr=5e-2, epochs=3, batch_size=2)
    protocol = Protocol(dev_size=2, patience=1)
    tasks, train = ["word_polarity", "antonym"], ["word_polarity", "antonym"]
    states = LBL.mossa_states(llama, profile, tasks, train, method="lora", lora=lora, n_train=4, n_read=4,
                              protocol=protocol)
    n_e = sum(len(dev_split(get_task(t), 2, 4).train) for t in train)
    assert n_e == 8 and states["curves"]["E"]["dev_steps"][:2] == [0, 4]
    assert states["curves"]["control:antonym"]["dev_steps"][:2] == [0, 2]
    assert states["curves"]["E"]["max_steps"] == 12 and states["curves"]["control:antonym"]["max_steps"] == 6
    with restored_after(llama):
        LBL.train_lora_to_convergence(llama, ["antonym"], lora, replace(protocol, n_train=4), seed=0)
        direct = last_token_states(llama, get_task("antonym"), n=4, batch_size=4, progress=False)
    torch.testing.assert_close(states["control"]["antonym"], direct, rtol=0, atol=1e-5)
    table = convergence_table(states).set_index("model")
    assert table.loc["E", "steps_per_epoch"] == 4 and table.loc["control:antonym", "steps_per_epoch"] == 2
    assert set(table.stopped) <= {"early", "max_steps"}
    frame = curves_frame(lora_runs(states, lr=lora.lr))
    assert set(frame.arm) == {"E:seen tasks", "control:word_polarity", "control:antonym"}
    assert len(frame[(frame.arm == "E:seen tasks") & (frame.split == "train")]) == states["curves"]["E"]["steps"]

    monkeypatch.setattr(LBL, "train_lora_to_convergence", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("retrained a cached model")))
    again = LBL.mossa_states(llama, profile, tasks, train, method="lora", lora=lora, n_train=4, n_read=4,
                             protocol=protocol)
    assert torch.equal(again["E"]["antonym"], states["E"]["antonym"]) and again["curves"] == states["curves"]
    with pytest.raises(AssertionError, match="retrained"):
        LBL.mossa_states(llama, profile, tasks, train, method="lora", lora=lora, n_train=4, n_read=4,
                         protocol=replace(protocol, patience=2))
    with pytest.raises(ValueError, match="protocol trains the LoRA models"):
        LBL.mossa_states(llama, profile, tasks, train, method="full", protocol=protocol)
    with pytest.raises(ValueError, match="no dev curves"):
        convergence_table({"losses": {}})
