"""The null model: the embedded model's architecture and tokenizer with seeded random weights.

Built from the dequantized embedded model's config (cached by ``models._smollm2_dir``); no trained
weights are read except through the session's shared load of the trained model (identity check).
"""

import pytest
import torch

from nrnlib.model_state import model_fingerprint, model_identity, tokenizer_digest
from nrnlib.models import DEFAULT_MODEL, NULL_MODEL, _null_hf_model, _smollm2_dir, load_model, load_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def null0():
    return load_model(NULL_MODEL, device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture(scope="module")
def null1():
    return load_model(NULL_MODEL, device="cpu", dtype=torch.float32, seed=1)


def _state(hf) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in hf.state_dict().items()}


def test_other_seed_other_weights_and_the_global_rng_untouched(null0, null1):
    """Seed 1: every weight matrix differs from seed 0's (that seed 0 gives exactly the seeded HF init
    twice is checked below); the global RNG is untouched by a load (drawn inside a forked RNG)."""
    rng = torch.random.get_rng_state()
    load_model(NULL_MODEL, device="cpu", dtype=torch.float32, seed=2)
    assert torch.equal(torch.random.get_rng_state(), rng)
    a, c = _state(null0.original_model), _state(null1.original_model)
    matrices = [k for k in a if a[k].ndim == 2]
    assert matrices and all(not torch.equal(a[k], c[k]) for k in matrices)


def test_null_model_is_the_embedded_architecture_with_hf_init(null0):
    """A TransformerBridge with the embedded model's config (30 layers x 1536 neurons, d_model 576),
    its tokenizer and chat template, the Hugging Face init N(0, 0.02²) in every linear/embedding
    weight and ones in the RMSNorm weights; the bridge holds exactly the seeded weights."""
    from transformer_lens import TransformerBridge
    from transformers import AutoConfig

    assert isinstance(null0, TransformerBridge)
    assert (null0.cfg.n_layers, null0.cfg.d_mlp, null0.cfg.d_model) == (30, 1536, 576)
    assert "blocks.29.mlp.hook_post" in null0.hook_dict
    config = AutoConfig.from_pretrained(_smollm2_dir(), local_files_only=True).to_dict()
    mine = null0.original_model.config.to_dict()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "rope_theta", "tie_word_embeddings", "rms_norm_eps"):
        assert mine.get(key) == config.get(key), key
    assert tokenizer_digest(null0.tokenizer) == tokenizer_digest(load_tokenizer(DEFAULT_MODEL))
    hf = null0.original_model
    layer = hf.model.layers[3]
    q = layer._original_component.self_attn._original_component.q_proj._original_component.weight.detach()
    assert abs(float(q.std()) - 0.02) < 5e-4 and abs(float(q.mean())) < 5e-4
    norms = [p for n, p in hf.named_parameters() if "norm" in n]
    assert norms and all(torch.equal(p, torch.ones_like(p)) for p in norms)
    seeded = _state(_null_hf_model(0))
    # the bridge's own names carry "._original_component" (and aliases): strip it to get HF names
    bridged = {n.replace("._original_component", ""): t for n, t in _state(hf).items()
               if "._original_component" in n or "." not in n}
    assert set(seeded) <= set(bridged)
    assert all(torch.equal(seeded[k], bridged[k]) for k in seeded)


def test_identity_differs_from_trained_model_and_fingerprint_from_other_seeds(null0, null1, smollm2):
    """The name enters the identity: the null model never passes for the trained model (NeuronSet
    checks, cache keys), although architecture and tokenizer are the same; two seeds share the
    identity (same model kind) but not the fingerprint (other weights)."""
    assert model_identity(null0) != model_identity(smollm2)
    assert model_fingerprint(null0) != model_fingerprint(smollm2)
    assert model_identity(null1) == model_identity(null0)
    assert model_fingerprint(null1) != model_fingerprint(null0)


def test_null_model_runs_forward(null0):
    """Finite logits over the vocabulary (no NaN from the random init)."""
    ids = null0.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = null0(ids)
    assert logits.shape[-1] == len(null0.tokenizer) or logits.shape[-1] == null0.cfg.d_vocab
    assert torch.isfinite(logits).all()
