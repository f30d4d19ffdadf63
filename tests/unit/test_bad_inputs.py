"""Bad input through the public API: a clear nrnlib error naming the problem, or correct behaviour.

One test per bad input of the audit (parametrized where natural). Every ``pytest.raises`` checks
the nrnlib error type and a message that names the argument; the behaviour tests check values.
"""

import math
import warnings

import pytest
import torch

import nrnlib.losses
from nrnlib.ablation import Deactivation, DeactivationError, DeactivationNotEnteredWarning, deactivate
from nrnlib.checks import ArgumentTypeError, InvalidArgumentError
from nrnlib.encoding import PromptTooLongError
from nrnlib.evaluate import evaluate, greedy_decode
from nrnlib.finetune import (
    NonFiniteLossError,
    WeightDecayPrecisionWarning,
    _count_entries,
    _decay_,
    _mask_grad,
    finetune,
    parameter_masks,
)
from nrnlib.model_state import model_identity
from nrnlib.models import DeviceNotAvailableError, load_model, resolve_device, resolve_dtype
from nrnlib.neurons import NeuronIndexError, NeuronIndexTypeError, NeuronSet, NeuronSetError, OtherModelError
from nrnlib.representations import NonFiniteRepresentationError, last_token_states, linear_cka, rbf_cka
from nrnlib.selection import select_neurons
from nrnlib.tasks import TaskError

WRONG_TYPE = pytest.mark.wrong_type  # a deliberately wrong type: checked without NRN_TYPECHECK (conftest.py)


def _load(name, dtype=torch.float32):
    return load_model(name, device="cpu", dtype=dtype)


@pytest.fixture(scope="module")
def llama():
    from nrnlib.workers import one_thread

    with one_thread():
        yield _load("tiny-random-llama")


@pytest.fixture
def model(llama):
    """The module's tiny Llama, its parameters put back after each test."""
    snap = [p.detach().clone() for p in llama.parameters()]
    yield llama
    with torch.no_grad():
        for p, s in zip(llama.parameters(), snap, strict=True):
            p.copy_(s)


def _neurons(model, **kw):
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    return NeuronSet.from_indices(L, D, {0: [3, 40], L - 1: [0, 1, D - 1]}, **kw)


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model, snap):
    return all(torch.equal(p, s) for p, s in zip(model.parameters(), snap, strict=True))


# ---------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_select_neurons_refuses_non_finite_scores(bad):
    scores = torch.rand(3, 8)
    scores[1, 2] = bad
    with pytest.raises(ValueError, match=r"non-finite.*\[1, 2\]"):
        select_neurons(scores, k=0.1)


@pytest.mark.parametrize("indices", [pytest.param({0: [1.7]}, marks=WRONG_TYPE),
                                     pytest.param({1.0: [1]}, marks=WRONG_TYPE),
                                     {0: torch.tensor([1.0, 2.0])}, {0: [True]},
                                     pytest.param({0: 3}, marks=WRONG_TYPE)])
def test_from_indices_refuses_non_integer_indices(indices):
    with pytest.raises(NeuronIndexTypeError, match="must be (an int|ints|an iterable of ints), got"):
        NeuronSet.from_indices(3, 8, indices)
    assert issubclass(NeuronIndexTypeError, TypeError) and issubclass(NeuronIndexError, IndexError)


def test_from_indices_accepts_integer_types():
    import numpy as np

    s = NeuronSet.from_indices(3, 8, {np.int64(2): np.array([1, 7]), 0: torch.tensor([0, 5]), 1: range(2)})
    assert s.indices(2).tolist() == [1, 7] and s.indices(0).tolist() == [0, 5] and s.count == 6


@pytest.mark.parametrize("layer", [pytest.param(1.5, marks=WRONG_TYPE), pytest.param(1.0, marks=WRONG_TYPE), True])
def test_indices_refuses_non_integer_layer(layer):
    s = NeuronSet.from_indices(3, 8, {1: [4]})
    with pytest.raises(NeuronIndexTypeError, match="layer must be an int"):
        s.indices(layer)


@pytest.mark.parametrize("use", ["deactivate", "finetune"])
def test_set_from_another_model_is_refused(model, parity_task, use):
    other = _load("tiny-random-gpt2")  # same shape [3, 96], another model
    assert (other.cfg.n_layers, other.cfg.d_mlp) == (model.cfg.n_layers, model.cfg.d_mlp)
    foreign = _neurons(model).for_model(other)
    assert foreign.model_identity == model_identity(other) != model_identity(model)
    snap = _snapshot(model)
    with pytest.raises(OtherModelError, match="found on another model.*allow_other_model=True"):
        if use == "deactivate":
            deactivate(model, foreign)
        else:
            finetune(model, parity_task, neurons=foreign, steps=1, progress=False)
    assert _unchanged(model, snap)
    if use == "deactivate":  # the override
        with deactivate(model, foreign, allow_other_model=True) as off:
            assert off.active
    else:
        log = finetune(model, parity_task, neurons=foreign, steps=1, progress=False, allow_other_model=True)
        assert log.steps == 1 and not _unchanged(model, snap)


def test_model_identity_is_checked_kept_and_saved(model, tmp_path):
    mine = _neurons(model).for_model(model)
    mine.check_model(model)  # its own model: fine
    _neurons(model).check_model(model)  # no identity: fits any model of its shape
    assert (mine | _neurons(model)).model_identity == mine.model_identity == (~mine).model_identity
    assert mine.random_like(seed=1).model_identity == mine.model_identity
    back = NeuronSet.load(mine.save(tmp_path / "s.safetensors"))
    assert back.model_identity == model_identity(model)
    with pytest.raises(OtherModelError, match="another model"):
        mine.for_model("0123456789abcdef").check_model(model)
    with pytest.raises(OtherModelError, match="different models"):
        _ = mine | mine.for_model("0123456789abcdef")
    assert mine.for_model(None).model_identity is None


def test_deactivate_without_with_warns_and_changes_nothing(model):
    snap = _snapshot(model)
    with pytest.warns(DeactivationNotEnteredWarning, match="without `with`") as record:
        deactivate(model, _neurons(model), mode="parameter")  # the bug: no `with`
    assert record[0].filename == __file__  # points at the line that forgot `with`
    assert _unchanged(model, snap)
    off = deactivate(model, _neurons(model))
    assert isinstance(off, Deactivation) and "inactive" in repr(off)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # entering it: no warning, ever
        with off:
            with pytest.raises(DeactivationError, match="already active"):
                off.__enter__()
        del off


def test_deactivate_checks_arguments_at_the_call(model):
    with pytest.raises(NeuronSetError, match="MLP neurons"):
        deactivate(model, NeuronSet.empty(2, 5))  # no `with`: still refused at once


@pytest.mark.wrong_type
def test_deactivate_checks_the_type_of_include_inputs_at_the_call(model):
    with pytest.raises(TypeError, match="include_inputs"):
        deactivate(model, _neurons(model), mode="parameter", include_inputs="yes")


@pytest.mark.parametrize("n_train", [-2, 0])
def test_finetune_refuses_n_train_below_one(model, parity_task, n_train):
    with pytest.raises(InvalidArgumentError, match=f"n_train must be an int >= 1 or None, got {n_train}"):
        finetune(model, parity_task, steps=1, n_train=n_train, progress=False)


@pytest.mark.parametrize(("arg", "value"), [("lr", math.inf), ("lr", math.nan), ("lr", 0.0), ("lr", -1e-3),
                                            ("weight_decay", math.nan), ("weight_decay", math.inf),
                                            ("weight_decay", -0.1)])
def test_finetune_refuses_bad_lr_and_weight_decay(model, parity_task, arg, value):
    snap = _snapshot(model)
    with pytest.raises(InvalidArgumentError, match=f"{arg} must be a finite number"):
        finetune(model, parity_task, neurons=_neurons(model), steps=2, progress=False, **{arg: value})
    assert _unchanged(model, snap)


def test_finetune_stops_at_a_non_finite_loss_before_training_on_it(model, parity_task, monkeypatch):
    start = _snapshot(model)
    real, calls = nrnlib.losses.answer_loss, []

    def nan_at_step_2(m, batch, **kw):
        calls.append(1)
        loss = real(m, batch, **kw)
        return loss * math.nan if len(calls) == 2 else loss

    monkeypatch.setattr(nrnlib.losses, "answer_loss", nan_at_step_2)
    with pytest.raises(NonFiniteLossError, match="loss at step 2 of 5 is nan; stopped before training on it"):
        finetune(model, parity_task, neurons=_neurons(model), steps=5, lr=1e-2, progress=False)
    after_error = _snapshot(model)
    assert all(torch.isfinite(p).all() for p in after_error) and not _unchanged(model, start)
    # the same run stopped after 1 step gives the same weights: step 2 was not applied
    monkeypatch.setattr(nrnlib.losses, "answer_loss", real)
    with torch.no_grad():
        for p, s in zip(model.parameters(), start, strict=True):
            p.copy_(s)
    finetune(model, parity_task, neurons=_neurons(model), steps=1, lr=1e-2, progress=False)
    assert _unchanged(model, after_error)


def test_finetune_nan_loss_applies_no_update(model, parity_task, monkeypatch):
    """A NaN loss at step 1: the model is exactly as before (no update trained on NaN)."""
    snap = _snapshot(model)
    real = nrnlib.losses.answer_loss
    monkeypatch.setattr(nrnlib.losses, "answer_loss", lambda m, b, **kw: real(m, b, **kw) * math.inf)
    with pytest.raises(NonFiniteLossError, match="step 1 of 3"):
        finetune(model, parity_task, steps=3, lr=1e-2, weight_decay=0.1, progress=False)
    assert _unchanged(model, snap)
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_gradient_mask_keeps_non_finite_gradients_off_frozen_entries():
    mask = torch.tensor([[True], [False], [False]])
    grad = torch.tensor([[1.0, math.inf], [math.nan, 2.0], [math.inf, -math.inf]])
    out = _mask_grad(mask)(grad)
    assert torch.equal(out[1:], torch.zeros(2, 2))  # a product `grad * mask` gives NaN here
    assert out[0, 0] == 1.0 and out[0, 1] == math.inf


def test_trainable_entries_are_counted_in_integers():
    param = torch.nn.Parameter(torch.zeros(3001, 2, dtype=torch.bfloat16))
    mask = torch.ones(3001, 1, dtype=torch.bool)
    mask[5] = False
    assert _count_entries({param: mask}) == 2 * 3000  # a bf16 sum of 3000 ones gives 2992 or 3008


def test_weight_decay_in_bf16_is_exact_for_frozen_entries_and_applied_to_trained_ones(parity_task):
    """On a bf16 tiny model: frozen entries bit-identical, trained entries decayed."""
    bf16 = _load("tiny-random-llama", torch.bfloat16)
    neurons = _neurons(bf16)
    start = _snapshot(bf16)
    masks = parameter_masks(bf16, neurons)
    runs = {}
    for wd in (0.0, 20.0):  # lr * wd = 0.02 per step, above bf16's resolution
        with torch.no_grad():
            for p, s in zip(bf16.parameters(), start, strict=True):
                p.copy_(s)
        finetune(bf16, parity_task, neurons=neurons, steps=3, lr=1e-3, weight_decay=wd, batch_size=2,
                 progress=False)
        runs[wd] = {id(p): p.detach().clone() for p in bf16.parameters()}
    for p, s in zip(bf16.parameters(), start, strict=True):
        trained = masks[p].expand_as(p) if p in masks else torch.zeros_like(p, dtype=torch.bool)
        for wd in runs:
            assert torch.equal(runs[wd][id(p)][~trained], s[~trained])  # frozen: bit-identical
        if trained.any():
            decayed, plain = runs[20.0][id(p)][trained].float(), runs[0.0][id(p)][trained].float()
            assert decayed.abs().sum() < 0.97 * plain.abs().sum()  # about 0.98^3 of the undecayed size
    # the decay itself, one step on a bf16 tensor: p - rate * p in fp32, rounded once
    p = torch.full((4, 2), 1.5, dtype=torch.bfloat16)
    _decay_(p, torch.tensor([[True], [False], [True], [False]]), 0.01)
    assert torch.equal(p[[1, 3]], torch.full((2, 2), 1.5, dtype=torch.bfloat16))
    assert torch.equal(p[[0, 2]], torch.full((2, 2), 1.5 * 0.99).to(torch.bfloat16))


def test_weight_decay_below_bf16_resolution_warns(parity_task):
    bf16 = _load("tiny-random-llama", torch.bfloat16)
    with pytest.warns(WeightDecayPrecisionWarning, match="below the resolution of torch.bfloat16"):
        finetune(bf16, parity_task, neurons=_neurons(bf16), steps=1, lr=1e-4, weight_decay=0.01, progress=False)


@pytest.mark.parametrize("kind", ["linear", "debiased", "rbf"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_cka_refuses_non_finite_representations(kind, bad):
    x = torch.randn(10, 4, dtype=torch.float64)
    y = x.clone()
    y[3, 1] = bad
    fn = {"linear": linear_cka, "debiased": lambda a, b: linear_cka(a, b, debiased=True), "rbf": rbf_cka}[kind]
    with pytest.raises(NonFiniteRepresentationError, match="input y has 1 non-finite"):
        fn(x, y)


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"n": -1}, InvalidArgumentError, "n must be an int >= 1 or None, got -1"),
    ({"n": 0}, InvalidArgumentError, "n must be an int >= 1"),
    pytest.param({"n": 2.5}, ArgumentTypeError, "n must be an int", marks=WRONG_TYPE),
    pytest.param({"batch_size": 2.5}, ArgumentTypeError, r"batch_size must be an int >= 1, got 2\.5", marks=WRONG_TYPE),
    ({"batch_size": 0}, InvalidArgumentError, "batch_size must be an int >= 1"),
])
def test_last_token_states_bad_counts(model, parity_task, kw, error, match):
    with pytest.raises(error, match=f"last_token_states: {match}"):
        last_token_states(model, parity_task, progress=False, **kw)


def test_last_token_states_n_counts_examples(model, parity_task):
    states = last_token_states(model, parity_task, n=3, batch_size=2, progress=False)
    assert states.shape == (model.cfg.n_layers + 1, 3, model.cfg.d_model)


# ---------------------------------------------------------------- errors from deep inside torch/stdlib


@pytest.mark.wrong_type
@pytest.mark.parametrize("entry", ["finetune", "evaluate", "last_token_states"])
def test_float_batch_size_is_refused(model, parity_task, entry):
    call = {"finetune": lambda: finetune(model, parity_task, steps=1, batch_size=2.5, progress=False),
            "evaluate": lambda: evaluate(model, parity_task, batch_size=2.5, progress=False),
            "last_token_states": lambda: last_token_states(model, parity_task, batch_size=2.5, progress=False)}
    with pytest.raises(ArgumentTypeError, match=f"{entry}: batch_size must be an int >= 1, got 2.5"):
        call[entry]()
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(InvalidArgumentError, ValueError)


@pytest.mark.parametrize(("kw", "error"), [({"shots": -1}, InvalidArgumentError),
                                           pytest.param({"shots": 1.5}, ArgumentTypeError, marks=WRONG_TYPE),
                                           ({"n": 0}, InvalidArgumentError),
                                           pytest.param({"n": 2.5}, ArgumentTypeError, marks=WRONG_TYPE)])
def test_evaluate_bad_shots_and_n(model, parity_task, kw, error):
    (arg, value), = kw.items()
    with pytest.raises(error, match=f"evaluate: {arg} must be an int"):
        evaluate(model, parity_task, progress=False, **kw)


def test_finetune_with_zero_steps_has_no_loss(model, parity_task):
    snap = _snapshot(model)
    log = finetune(model, parity_task, neurons=_neurons(model), steps=0, progress=False)
    assert log.steps == 0 and log.losses == [] and log.first_loss is None and log.last_loss is None
    assert _unchanged(model, snap)


@pytest.mark.parametrize(("steps", "error"), [pytest.param(2.5, ArgumentTypeError, marks=WRONG_TYPE),
                                              (-1, InvalidArgumentError)])
def test_finetune_bad_steps(model, parity_task, steps, error):
    with pytest.raises(error, match="finetune: steps must be an int >= 0"):
        finetune(model, parity_task, steps=steps, progress=False)


@pytest.mark.parametrize("task", ["no_such_task", pytest.param(42, marks=WRONG_TYPE)])
def test_finetune_resolves_task_names(model, task):
    with pytest.raises(TaskError, match="no_such_task|expected a Task"):
        finetune(model, task, steps=0, progress=False)


@pytest.mark.parametrize(("given", "expected"), [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                                 ("float16", torch.float16), ("torch.bfloat16", torch.bfloat16),
                                                 (torch.float16, torch.float16), (None, None)])
def test_dtype_names_and_torch_dtypes_are_accepted(given, expected):
    assert resolve_dtype(given) == expected


def test_load_model_with_a_dtype_string():
    model = load_model("tiny-random-gpt2", device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(("dtype", "error"), [("int8", ValueError), ("fp33", ValueError), (torch.int64, ValueError),
                                              pytest.param(3, TypeError, marks=WRONG_TYPE)])
def test_load_model_refuses_other_dtypes(dtype, error):
    with pytest.raises(error, match="float32, bfloat16 or float16"):
        load_model("tiny-random-llama", device="cpu", dtype=dtype)


@pytest.mark.parametrize("device", ["cuda", "cuda:3", torch.device("cuda", 0)])
def test_cuda_without_cuda_names_the_available_devices(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = r"device='cuda.*no CUDA GPU is available.*Available devices: cpu"
    with pytest.raises(DeviceNotAvailableError, match=expected):
        load_model("tiny-random-llama", device=device)


def test_bad_device_names(monkeypatch):
    with pytest.raises(DeviceNotAvailableError, match="'gpu' is not a device name; available here: cpu"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("NRN_DEVICE", "cuda")
    with pytest.raises(DeviceNotAvailableError, match="NRN_DEVICE='cuda' is not available"):
        load_model("tiny-random-llama")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.wrong_type
def test_device_of_a_wrong_type():
    with pytest.raises(TypeError, match="device must be a device name"):
        resolve_device(0.5)


def test_greedy_decoding_past_the_context_names_the_lengths(model, echo_task):
    examples = list(echo_task.split("test"))[:2]
    n_ctx = model.cfg.n_ctx
    with pytest.raises(PromptTooLongError, match=rf"needs \d+ prompt \+ {n_ctx} new tokens = \d+ positions, more "
                                                 rf"than the model's context of {n_ctx}; lower max_new_tokens"):
        greedy_decode(model, echo_task, examples, max_new_tokens=n_ctx)
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        greedy_decode(model, echo_task, examples, max_new_tokens=-3)
    assert len(greedy_decode(model, echo_task, examples, max_new_tokens=2)) == 2


@pytest.mark.parametrize("content", [b"not a safetensors file at all" * 4, b"", b"\xff" * 8])
def test_neuron_set_load_of_a_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(NeuronSetError, match="garbage.safetensors is not a saved NeuronSet"):
        NeuronSet.load(path)


def test_neuron_set_load_of_other_safetensors_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(NeuronSetError, match="no 'mask' tensor"):
        NeuronSet.load(tmp_path / "w.safetensors")
    save_file({"mask": torch.full((2, 3), 7, dtype=torch.uint8)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(NeuronSetError, match="not a 2-D 0/1 mask"):
        NeuronSet.load(tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="No NeuronSet file"):
        NeuronSet.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("where", ["/nowhere/chromium", "."])
def test_browser_path_pointing_nowhere(monkeypatch, tmp_path, where):
    import plotly.graph_objects as go

    from nrnlib.plots import BrowserPathWarning, _find_browser, save_figure

    monkeypatch.setenv("BROWSER_PATH", where)
    monkeypatch.setenv("NRN_FIGURES", str(tmp_path))
    with pytest.warns(BrowserPathWarning, match=f"BROWSER_PATH='{where}' (does not exist|is not an executable)"):
        assert _find_browser() is None
    with pytest.warns(BrowserPathWarning, match="BROWSER_PATH"), pytest.warns(UserWarning, match="HTML only"):
        written = save_figure(go.Figure(), "fig", formats=("png", "html"))
    # no PNG without a browser: the HTML, and the figure's JSON for the gallery (always written)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == ["fig.html", "json/fig.json"]


def test_attribute_and_evaluate_take_a_task_name(tiny_model):
    """A task passed by name is resolved with get_task (it used to crash deep inside)."""
    import nrnlib
    from nrnlib.tasks import TaskError, get_task

    by_name = nrnlib.attribute(tiny_model, "word_polarity", n_examples=2, progress=False, cache=False)
    by_task = nrnlib.attribute(tiny_model, get_task("word_polarity"), n_examples=2, progress=False, cache=False)
    assert torch.equal(by_name, by_task)
    with pytest.raises(TaskError, match="no_such_task|Unknown|unknown"):
        nrnlib.attribute(tiny_model, "no_such_task", n_examples=2, progress=False, cache=False)
