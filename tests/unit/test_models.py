"""Model loading, neuron geometry, device/dtype choice and clear errors."""

import pytest
import torch

from nrnlib.models import ModelNotAvailableError, NeuronGeometry, default_dtype, load_model


def test_tiny_models_are_bridges_with_hooks(tiny_llama, tiny_gpt2):
    from transformer_lens import TransformerBridge

    for model in (tiny_llama, tiny_gpt2):
        assert isinstance(model, TransformerBridge)
        assert f"blocks.{model.cfg.n_layers - 1}.mlp.hook_post" in model.hook_dict


def test_tiny_model_is_seeded():
    a, b = load_model("tiny-random-llama", seed=1), load_model("tiny-random-llama", seed=1)
    c = load_model("tiny-random-llama", seed=2)
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_geometry_slices_reproduce_hook_post(fixture, request):
    """Neuron j's input slices compute hook_post[..., j]; its output slice maps it to the residual."""
    model = request.getfixturevalue(fixture)
    geo = NeuronGeometry.of(model)
    assert (geo.n_layers, geo.d_mlp) == (model.cfg.n_layers, model.cfg.d_mlp)
    captured = {}
    ids = torch.tensor([[5, 17, 99, 3]])
    with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_in", lambda x, hook: captured.setdefault("in", x)),
                                ("blocks.1.mlp.hook_post", lambda x, hook: captured.setdefault("post", x)),
                                ("blocks.1.hook_mlp_out", lambda x, hook: captured.setdefault("out", x))]):
        model(ids)
    x, post = captured["in"], captured["post"]
    w = {s.name: s.param.detach() for s in geo.slices(model, 1)}
    if geo.kind == "gated":
        gate = x @ w["gate_proj.weight"].T
        manual = torch.nn.functional.silu(gate) * (x @ w["up_proj.weight"].T)
        out = post @ w["down_proj.weight"].T
    else:
        pre = x @ w["c_fc.weight"] + w["c_fc.bias"]
        manual = torch.nn.functional.gelu(pre, approximate="tanh")
        out = post @ w["c_proj.weight"] + model.original_model.transformer.h[1].mlp.c_proj.bias
    torch.testing.assert_close(manual, post, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, captured["out"], atol=1e-5, rtol=1e-4)


def test_neuron_vector_shape(tiny_llama):
    geo = NeuronGeometry.of(tiny_llama)
    vec = geo.neuron_vector(tiny_llama, 0, torch.tensor([0, 5]))
    assert vec.shape == (2, 3 * tiny_llama.cfg.d_model)
    torch.testing.assert_close(vec[1, : tiny_llama.cfg.d_model], geo.input_slices(tiny_llama, 0)[0].param[5])


def test_uncached_model_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match="not in the local Hugging Face cache.*load_model"):
        load_model("nobody/definitely-not-a-cached-model")


def test_bad_model_name():
    with pytest.raises(ValueError, match="model name"):
        load_model("")


def test_default_dtype(monkeypatch):
    monkeypatch.delenv("NRN_DTYPE", raising=False)
    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda") == torch.bfloat16
    monkeypatch.setenv("NRN_DTYPE", "float16")
    assert default_dtype("cpu") == torch.float16
    monkeypatch.setenv("NRN_DTYPE", "int3")
    with pytest.raises(ValueError, match="NRN_DTYPE"):
        default_dtype("cpu")
