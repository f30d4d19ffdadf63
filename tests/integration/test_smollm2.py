"""Integration tests on the embedded SmolLM2-135M-Instruct (one shared load per session)."""

import pytest
import torch

from nrnlib.encoding import label_token_ids
from nrnlib.evaluate import evaluate, greedy_decode
from nrnlib.models import NeuronGeometry
from nrnlib.tasks import Task, get_task, list_tasks

pytestmark = pytest.mark.integration


def test_shape_and_geometry(smollm2):
    geo = NeuronGeometry.of(smollm2)
    assert (geo.n_layers, geo.d_mlp, geo.kind) == (30, 1536, "gated")
    assert sum(p.numel() for p in smollm2.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_bridge_logits_equal_hugging_face_logits(smollm2):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        bridge = smollm2(ids, return_type="logits")
        hf = smollm2.original_model(ids).logits
    torch.testing.assert_close(bridge, hf, atol=1e-4, rtol=1e-4)


def test_greedy_decoding_knows_paris(smollm2):
    capital = Task.from_records("capital", [{"input": "What is the capital of France?", "target": "Paris"}] * 2,
                                "generation", test_fraction=0.5)
    assert "Paris" in greedy_decode(smollm2, capital, capital.test, max_new_tokens=8)[0]


def test_every_label_word_is_one_token(smollm2):
    for name in list_tasks(category="classification"):
        task = get_task(name)
        assert len(label_token_ids(smollm2.tokenizer, task.labels)) == len(task.labels)


def test_word_polarity_clearly_above_chance(smollm2):
    score = evaluate(smollm2, get_task("word_polarity"), n=32, progress=False)
    assert score.metrics["accuracy"] >= 0.7
