"""CKA against known identities and a hand-computed example; hidden states against Hugging Face's
own ``output_hidden_states``."""

import math

import pytest
import torch

from nrnlib.representations import last_token_states, layer_cka, linear_cka, rbf_cka


def _data(n=64, p=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g, dtype=torch.float64), g


def test_cka_of_x_with_itself_is_one():
    x, _ = _data()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_hand_computed_3x2_example():
    """X = [[1,0],[0,1],[1,1]], Y = X diag(1, 2). Centered Xc has XcᵀXc = [[2/3,−1/3],[−1/3,2/3]];
    ||YᵀX||² = 25/9, ||XᵀX|| = √(10/9), ||YᵀY|| = √(76/9), so CKA = 25/√760."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = x @ torch.diag(torch.tensor([1.0, 2.0]))
    assert linear_cka(x, y) == pytest.approx(25 / math.sqrt(760), abs=1e-12)


def test_invariances():
    x, g = _data()
    y = torch.tanh(x @ torch.randn(12, 8, generator=g, dtype=torch.float64))  # a nonlinear function of x
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.1 < base < 0.99
    for debiased in (False, True):
        ref = linear_cka(x, y, debiased)
        assert linear_cka(x @ q, y, debiased) == pytest.approx(ref, abs=1e-10)  # orthogonal transform
        assert linear_cka(3.7 * x, 0.2 * y, debiased) == pytest.approx(ref, abs=1e-10)  # isotropic scaling
        assert linear_cka(x + 5.0, y, debiased) == pytest.approx(ref, abs=1e-10)  # translation (centering)
    assert rbf_cka(x @ q, 2.0 * y) == pytest.approx(rbf_cka(x, y), abs=1e-10)
    # a general invertible linear map (anisotropic scaling) changes CKA
    stretch = torch.diag(torch.tensor([10.0] + [1.0] * 11, dtype=torch.float64))
    assert abs(linear_cka(x @ stretch, y) - base) > 1e-3


def test_biased_and_debiased_agree_as_n_grows():
    gaps = []
    for n in (16, 256, 4096):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(n, 6, generator=g, dtype=torch.float64)
        y = x[:, :3] + 0.8 * torch.randn(n, 3, generator=g, dtype=torch.float64)
        gaps.append(abs(linear_cka(x, y) - linear_cka(x, y, debiased=True)))
    assert gaps[2] < gaps[0] and gaps[2] < 0.01


def test_cka_of_independent_data_goes_to_zero_only_when_debiased():
    """Biased CKA of independent high-dimensional data stays well above 0 at small n; debiased ≈ 0."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 200, generator=g, dtype=torch.float64)
    y = torch.randn(40, 200, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) > 0.5 and abs(linear_cka(x, y, debiased=True)) < 0.1


@pytest.mark.wrong_type  # shapes other than the annotated [n, p] and [n, q]
def test_bad_shapes():
    x, _ = _data(n=5)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, x[:4])
    with pytest.raises(ValueError, match="matrices"):
        linear_cka(x[0], x[0])


def test_bad_inputs():
    x, _ = _data(n=5)
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(5, 3), x)
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="kind"):
        layer_cka(x[None], x[None], kind="cosine")


def test_last_token_states_match_hugging_face_hidden_states(tiny_model, parity_task):
    """Index 0 = embedding output, index l+1 = block l's output, at the last prompt token, whatever the
    padding; compared with HF output_hidden_states on each prompt alone (no padding)."""
    from nrnlib.encoding import prompt_ids

    examples = list(parity_task.test[:5])
    states = last_token_states(tiny_model, parity_task, n=5, batch_size=3, progress=False)
    L = tiny_model.cfg.n_layers
    assert states.shape == (L + 1, 5, tiny_model.cfg.d_model)
    for b, ex in enumerate(examples):
        ids = torch.tensor([prompt_ids(tiny_model.tokenizer, parity_task, ex)])
        with torch.no_grad():
            hs = tiny_model.original_model(input_ids=ids, output_hidden_states=True).hidden_states
        for index in range(L):  # HF's last entry is after the final norm, so compare blocks 0..L-2 outputs
            torch.testing.assert_close(states[index, b], hs[index][0, -1].float(), atol=1e-4, rtol=1e-4)
    # every prompt ends with the same template token: without position embeddings (Llama) the embedding
    # there is constant and CKA undefined (NaN); GPT-2 adds a position embedding, so it is defined
    cka = layer_cka(states, states)
    assert cka[1:] == pytest.approx([1.0] * L, abs=1e-9)
    assert math.isnan(cka[0]) if tiny_model.cfg.positional_embedding_type == "rotary" else cka[0] == pytest.approx(1.0)
