"""Integration tests on the embedded SmolLM2-135M-Instruct (one shared load per session)."""

import pytest
import torch

from nrnlib.encoding import encode_examples, label_token_ids
from nrnlib.evaluate import evaluate, greedy_decode
from nrnlib.losses import last_prompt_logits
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
    records = [{"input": "What is the capital of France?", "target": "Paris"},
               {"input": "What is the capital of Italy?", "target": "Rome"}]
    capital = Task.from_records("capital", records, "generation", test_fraction=0.5)
    france = [ex for ex in capital.train + capital.test if "France" in ex["input"]]
    assert "Paris" in greedy_decode(smollm2, capital, france, max_new_tokens=12)[0]


def test_every_label_word_is_one_token(smollm2):
    for name in list_tasks(category="classification"):
        task = get_task(name)
        assert len(label_token_ids(smollm2.tokenizer, task.labels)) == len(task.labels)


def test_word_polarity_margin_separates_the_classes(smollm2):
    """Zero-shot, SmolLM2 answers "positive" to almost every word (accuracy near the base rate, see
    notebook 00), but its margin log p(positive) - log p(negative) still ranks positive words above
    negative ones: the AUC of the margin is well above 0.5 (measured 0.75 on 48 words)."""
    task = get_task("word_polarity")
    examples = task.test[:32]
    batch = encode_examples(smollm2, task, examples, with_answers=False)
    ids = label_token_ids(smollm2.tokenizer, task.labels)
    with torch.no_grad():
        lp = last_prompt_logits(smollm2, batch).log_softmax(-1)[:, ids]
    margin = lp[:, task.labels.index("positive")] - lp[:, task.labels.index("negative")]
    positive = torch.tensor([task.target(ex) == "positive" for ex in examples])
    auc = (margin[positive][:, None] > margin[~positive][None, :]).float().mean()
    assert auc > 0.6
    score = evaluate(smollm2, task, n=32, progress=False)
    assert 0 <= score.metrics["accuracy"] <= 1 and score.metrics["label_logprob"] < 0


def test_last_block_state_reproduces_the_label_logits(smollm2):
    """The state read after the last block at the last prompt token, through the final norm and the
    unembedding, gives the logits that classification uses (so the token index and the hook are right)."""
    from nrnlib.representations import last_token_states, layer_cka

    task = get_task("word_polarity")
    states = last_token_states(smollm2, task, n=6, batch_size=4, progress=False)
    assert states.shape == (smollm2.cfg.n_layers + 1, 6, smollm2.cfg.d_model)
    hf = smollm2.original_model
    with torch.no_grad():
        logits = hf.get_output_embeddings()(hf.base_model.norm(states[-1]))
        expected = last_prompt_logits(smollm2, encode_examples(smollm2, task, task.test[:6], with_answers=False))
    torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-4)
    cka = layer_cka(states, states)
    assert all(abs(c - 1) < 1e-9 for c in cka[1:])
