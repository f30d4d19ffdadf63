"""NeuronSet: sizes, set algebra, IoU, random controls, persistence, validation."""

import pytest
import torch

from nrnlib.neurons import NeuronSet


def _set(indices, name=""):
    return NeuronSet.from_indices(3, 8, indices, name=name)


def test_sizes_and_indices():
    s = _set({0: [1, 5], 2: [7, 0, 1]})
    assert s.count == len(s) == 5 and s.fraction == 5 / 24
    assert s.counts_per_layer().tolist() == [2, 0, 3]
    assert s.indices(2).tolist() == [0, 1, 7] and s.indices(1).tolist() == []
    assert s.layers() == [0, 2] and s.shape == (3, 8)


def test_set_algebra_and_iou():
    a, b = _set({0: [0, 1, 2]}, "a"), _set({0: [2, 3]}, "b")
    assert (a | b).indices(0).tolist() == [0, 1, 2, 3] and (a & b).indices(0).tolist() == [2]
    assert a.union(b) == a | b and a.intersection(b) == a & b
    assert a.iou(a) == 1.0 and a.iou(b) == 1 / 4
    assert a.iou(_set({1: [0]})) == 0.0  # disjoint
    c = _set({2: [5]})
    assert a.union(b, c).count == 5 and a.intersection(b, c).count == 0
    assert (a - b).indices(0).tolist() == [0, 1]


def test_random_like_is_seeded_and_keeps_layer_counts():
    s = _set({0: [0, 1, 2], 2: [4]}, "task")
    r1, r2, r3 = s.random_like(seed=1), s.random_like(seed=1), s.random_like(seed=2)
    assert r1 == r2 and r1 != r3
    assert r1.counts_per_layer().tolist() == s.counts_per_layer().tolist() == r3.counts_per_layer().tolist()
    big = NeuronSet.from_indices(4, 200, {layer: range(0, 200, 3) for layer in range(4)})
    rb = big.random_like(seed=0)
    assert torch.equal(rb.counts_per_layer(), big.counts_per_layer()) and rb.iou(big) < 0.5


def test_random_like_total_keeps_only_the_total_and_spreads_uniformly():
    """match="total": same count, drawn over all neurons; the per-layer counts of a set packed into
    one layer spread out (expected count per layer = total / n_layers, checked over many seeds)."""
    packed = NeuronSet.from_indices(4, 100, {0: range(40)})
    draws = [packed.random_like(seed=s, match="total") for s in range(200)]
    assert all(d.count == 40 for d in draws)
    assert packed.random_like(seed=3, match="total") == draws[3] and draws[3] != draws[4]
    mean_per_layer = torch.stack([d.counts_per_layer().float() for d in draws]).mean(0)
    assert torch.allclose(mean_per_layer, torch.full((4,), 10.0), atol=1.0)
    assert draws[0].metadata["random_match"] == "total"
    with pytest.raises(ValueError, match="match must be one of"):
        packed.random_like(seed=0, match="per_layer")


def test_save_load_round_trip(tmp_path):
    s = NeuronSet(_set({0: [1], 2: [3, 4]}).mask, name="parity top-10%", metadata={"k": "0.1", "scope": "global"})
    path = s.save(tmp_path / "sub" / "set.safetensors")
    back = NeuronSet.load(path)
    assert back == s and back.name == s.name and back.metadata == s.metadata
    assert back.mask.dtype == torch.bool
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["set.safetensors"]


@pytest.mark.wrong_type  # a mask of another shape or dtype than the annotated Bool[Tensor, "n_layers d_mlp"]
def test_mask_of_a_wrong_shape_or_dtype():
    with pytest.raises(ValueError, match="2-D"):
        NeuronSet(torch.zeros(8, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        NeuronSet(torch.zeros(2, 8))


def test_validation_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        _set({0: [1]}) | NeuronSet.from_indices(2, 8, {0: [1]})
    with pytest.raises(IndexError):
        NeuronSet.from_indices(3, 8, {0: [8]})
    with pytest.raises(IndexError):
        NeuronSet.from_indices(3, 8, {3: [0]})
    with pytest.raises(ValueError, match="3 layers x 8"):
        NeuronSet.from_indices(2, 4, {}).check_shape(3, 8)


def test_check_model(tiny_model):
    NeuronSet.empty(tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp).check_model(tiny_model)
    with pytest.raises(ValueError, match="MLP neurons"):
        NeuronSet.empty(tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_mlp).check_model(tiny_model)


def test_digest_depends_on_the_mask_only():
    a = NeuronSet.from_indices(2, 8, {0: [1, 3]}, name="a")
    assert a.digest() == NeuronSet.from_indices(2, 8, {0: [1, 3]}, name="other name").digest()
    assert a.digest() != NeuronSet.from_indices(2, 8, {0: [1, 4]}).digest()
