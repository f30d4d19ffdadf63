"""Unit-test fixtures: fresh tiny random models per test module, and two small tasks.

``tiny_model`` is module-scoped (a fresh load per module, so one module's mutations never leak into
another's) and parametrized over the gated Llama MLP and the GPT-2 MLP.
"""

import pytest
import torch

TINY_MODEL_NAMES = ("tiny-random-llama", "tiny-random-gpt2")


def pytest_configure(config):
    config.addinivalue_line("markers", "one_model: runs on the tiny Llama only (what it checks does not depend on "
                                       "the MLP: sharing work over processes); the GPT-2 copy is deselected")


def pytest_collection_modifyitems(config, items):
    """Deselect the ``tiny-random-gpt2`` copy of tests marked ``one_model`` (CI time)."""
    dropped = [item for item in items if item.get_closest_marker("one_model") is not None
               and getattr(item, "callspec", None) is not None
               and item.callspec.params.get("tiny_model") == "tiny-random-gpt2"]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(scope="module", params=TINY_MODEL_NAMES)
def tiny_model(request):
    from nrnlib.models import load_model
    from nrnlib.workers import one_thread

    # Tiny matrices: one intra-op thread is faster, and immune to oversubscribed CPU cores (with 2
    # threads on 2 busy cores, a 64-wide matmul was measured 25x slower). Restored afterwards.
    with one_thread():
        yield load_model(request.param, device="cpu", dtype=torch.float32)


@pytest.fixture
def model(tiny_model):
    """The module's tiny model, its parameters put back (bit-exactly) after each test that trains it."""
    snap = [p.detach().clone() for p in tiny_model.parameters()]
    yield tiny_model
    with torch.no_grad():
        for p, s in zip(tiny_model.parameters(), snap, strict=True):
            p.copy_(s)


@pytest.fixture(scope="session")
def parity_task():
    """Classification, single-token labels yes/no: 8 train and 8 test examples."""
    from nrnlib.tasks import Task

    records = [{"input": f"Is {n} an even number?", "target": "yes" if n % 2 == 0 else "no"} for n in range(2, 18)]
    return Task.from_records("parity", records, "classification", labels=("yes", "no"),
                             instruction="Question: {input}\nAnswer yes or no.")


@pytest.fixture(scope="session")
def echo_task():
    """Generation: repeat a short phrase (multi-token answers of different lengths)."""
    from nrnlib.tasks import Task

    phrases = ["red apple", "blue sky at night", "green tea", "a small cat", "old stone bridge", "fast car",
               "cold winter morning", "sweet honey", "dark forest path", "bright sun", "quiet library room",
               "open door"]
    records = [{"input": p, "target": p} for p in phrases]
    return Task.from_records("echo", records, "generation", instruction="Repeat exactly: {input}")


def _unwrapped_mlps(model) -> list[torch.nn.Module]:
    """The Hugging Face MLP modules (LlamaMLP / GPT2MLP) by layer, found by walking module names
    (independently of nrnlib's NeuronGeometry)."""
    import re

    found = {}
    for name, module in model.original_model.named_modules():
        match = re.fullmatch(r".*\.(\d+)\._original_component\.mlp\._original_component", name)
        if match:
            found[int(match.group(1))] = module
    assert sorted(found) == list(range(model.cfg.n_layers)), sorted(found)
    return [found[i] for i in range(len(found))]


def _inner(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "_original_component", module)


@pytest.fixture(scope="session")
def hf_mlps():
    """``hf_mlps(model)`` -> per layer ``(mlp, out_proj)``: the HF MLP and the plain module whose
    input is the neuron activations (``down_proj`` Linear or GPT-2 ``c_proj`` Conv1D)."""

    def get(model):
        out = []
        for mlp in _unwrapped_mlps(model):
            proj = mlp.down_proj if hasattr(mlp, "down_proj") else mlp.c_proj
            out.append((mlp, _inner(proj)))
        return out

    return get
