"""Notebook 05 (Paper A Figure 3): the trained models' similarities against a hand run, per-layer
correlations against numpy, and the verdicts by hand."""

import numpy as np
import pandas as pd
import pytest
import torch

from nrnlib.experiments import parameter_similarity as PS
from nrnlib.experiments.generalization import proportion_sets
from nrnlib.similarity import layer_similarity


def test_similarity_models_rows_equal_a_hand_run(tiny_model, parity_task, echo_task, tmp_path, monkeypatch):
    """Trained rows: the similarity of N_parity and N_echo inside the model trained on parity's neurons
    (hand run at the chosen lr and seed), the shuffled control on random sets of the same layer
    counts; untrained rows: the same on the loaded model. The model is restored afterwards."""
    from nrnlib.model_state import restored_after
    from nrnlib.protocol import Protocol, train_to_convergence

    monkeypatch.setenv("NRN_CACHE", str(tmp_path))
    tasks = {"parity": parity_task, "echo": echo_task}
    monkeypatch.setattr(PS, "get_task", tasks.__getitem__)
    L, D = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    gen = torch.Generator().manual_seed(1)
    scores = {t: torch.rand(L, D, generator=gen) for t in tasks}
    protocol = Protocol(dev_size=2, eval_every=1, patience=1, max_steps=2, batch_size=2, n_train=4, dev_batch_size=2,
                        lr_grids={"neurons": (1e-2, 3e-2)})
    before = [p.detach().clone() for p in tiny_model.parameters()]
    fig3 = PS.similarity_models(tiny_model, scores, protocol, ["parity"], ["echo"], k=0.25, seeds=(0, 1), n_test=4,
                                progress=False)
    assert all(torch.equal(p, b) for p, b in zip(tiny_model.parameters(), before, strict=True))
    sets = proportion_sets(scores, 0.25)
    rows = fig3.rows
    untrained = rows[(rows.stage == "untrained") & (rows.definition == "centroid")].sort_values("layer")
    np.testing.assert_allclose(untrained.similarity.to_numpy(float),
                               layer_similarity(tiny_model, sets["parity"], sets["echo"]).numpy(), rtol=1e-6)
    with restored_after(tiny_model):
        train_to_convergence(tiny_model, [parity_task], protocol, lr=fig3.lr["lr"], seed=1, neurons=sets["parity"])
        expected = layer_similarity(tiny_model, sets["parity"], sets["echo"], "matching").numpy()
        shuffled = layer_similarity(tiny_model, sets["parity"].random_like(1, match="layer"),
                                    sets["echo"].random_like(2, match="layer"), "matching").numpy()
    got = rows[(rows.stage == "trained") & (rows.seed == 1) & (rows.definition == "matching")].sort_values("layer")
    np.testing.assert_allclose(got.similarity.to_numpy(float), expected, rtol=1e-5)
    np.testing.assert_allclose(got.shuffled.to_numpy(float), shuffled, rtol=1e-5)
    assert set(got.setting) == {"classification -> generation"}


@pytest.mark.one_model
def test_similarity_models_with_two_workers_equal_one_process(tiny_model, parity_task, echo_task, tmp_path,
                                                               monkeypatch):
    """The models shared over two forked processes give the same rows, lr choice and curves as one
    process (each a fresh cache), and both processes trained some of them."""
    import json
    import os

    from nrnlib.protocol import Protocol

    tasks = {"parity": parity_task, "echo": echo_task}
    monkeypatch.setattr(PS, "get_task", tasks.__getitem__)
    gen = torch.Generator().manual_seed(1)
    scores = {t: torch.rand(tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp, generator=gen) for t in tasks}
    protocol = Protocol(dev_size=2, eval_every=1, patience=1, max_steps=2, batch_size=2, n_train=4, dev_batch_size=2,
                        lr_grids={"neurons": (1e-2, 3e-2)})
    out = {}
    for workers in (1, 2):
        monkeypatch.setenv("NRN_CACHE", str(tmp_path / f"cache{workers}"))
        out[workers] = PS.similarity_models(tiny_model, scores, protocol, ["parity", "echo"], ["echo", "parity"],
                                            k=0.25, seeds=(0, 1), n_test=4, progress=False, workers=workers)
    assert out[1].lr == out[2].lr
    pd.testing.assert_frame_equal(out[1].rows, out[2].rows)
    assert [r["curve"]["train_loss"] for r in out[1].runs] == [r["curve"]["train_loss"] for r in out[2].runs]
    entries = (tmp_path / "cache2" / "protocol_arm").glob("*.json")
    pids = {json.loads(p.read_text())["provenance"]["pid"] for p in entries}
    assert os.getpid() in pids and len(pids) >= 2


def _rows(n_models=3, n_tests=3, n_layers=4, slope=1.0):
    """Synthetic trained rows: gain = slope x similarity in the deeper layers, noise-free; the shuffled
    control is 0.1 below the similarity."""
    rows = []
    for i in range(n_models):
        for j in range(n_tests):
            gain = float(i + 2 * j)
            for layer in range(n_layers):
                sim = 0.1 * (i + 2 * j) * slope if layer >= n_layers // 2 else 0.5
                rows.append({"stage": "trained", "model_task": f"m{i}", "seed": 0, "test_task": f"t{j}",
                             "setting": "classification -> classification", "definition": "centroid",
                             "layer": layer, "similarity": sim + 0.01 * layer, "shuffled": sim - 0.1,
                             "logprob_gain": gain, "decoded_gain": 0.0})
    return pd.DataFrame(rows)


def test_layer_correlations_against_numpy_and_scipy():
    from scipy import stats

    rows = _rows()
    corr = PS.layer_correlations(rows).set_index("layer")
    deep = rows[(rows.layer == 3)]
    assert corr.loc[3, "pearson"] == pytest.approx(np.corrcoef(deep.similarity, deep.logprob_gain)[0, 1])
    assert corr.loc[3, "spearman"] == pytest.approx(stats.spearmanr(deep.similarity, deep.logprob_gain)[0])
    assert np.isnan(corr.loc[0, "pearson"])  # constant similarity in the early layers: undefined
    assert corr.loc[3, "n_pairs"] == 9


def test_similarity_claims_by_hand():
    from nrnlib.experiments.verdicts import similarity_claims

    claims = similarity_claims(_rows(), "smoke")
    per_layer = [c for c in claims if c.id.endswith("per_layer")]
    assert [c.scope for c in per_layer] == ["classification -> classification; layer 3",
                                            "classification -> classification; layer 4"]
    assert all(c.estimate == pytest.approx(1.0) and c.verdict == "holds" for c in per_layer)
    tally = next(c for c in claims if c.id == "A.similarity.layer_correlation")
    assert tally.verdict == "holds" and tally.estimate == 2
    shuffled = next(c for c in claims if c.id == "ours.similarity.beyond_shuffled")
    assert shuffled.estimate == pytest.approx(0.1 + 0.01 * 2.5)  # similarity + 0.01 layer vs sim - 0.1
    with pytest.raises(ValueError, match="no trained rows"):
        similarity_claims(_rows().assign(stage="untrained"), "smoke")
