"""evaluate() against hand computations on the tiny model: full logits of one example at a time
through the bridge's own forward, no batching, no answer-position shortcuts."""

import pytest
import torch

from nrnlib.encoding import PromptTooLongError, answer_ids, encode_examples, label_token_ids, pad_batch, prompt_ids
from nrnlib.evaluate import evaluate, exact_match, greedy_decode, normalize_answer, rouge_l


def _full_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), return_type="logits")[0].float().log_softmax(-1)


def test_pad_batch_masks():
    batch = pad_batch([[1, 2, 3], [4]], [[5], [6, 7]], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 5], [4, 6, 7, 0]]
    assert batch.target_mask.tolist() == [[False, False, False, True], [False, True, True, False]]
    assert batch.attention_mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert batch.last_prompt_index.tolist() == [2, 0]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_classification_matches_hand_computation(tiny_llama, parity_task, batch_size):
    tok = tiny_llama.tokenizer
    labels = label_token_ids(tok, parity_task.labels)
    examples = parity_task.test
    correct, gold_lp, rows = [], [], []
    for ex in examples:
        lp = _full_logprobs(tiny_llama, prompt_ids(tok, parity_task, ex))[-1]
        pred = parity_task.labels[int(lp[labels].argmax())]
        correct.append(pred == parity_task.target(ex))
        gold_lp.append(float(lp[labels[parity_task.labels.index(parity_task.target(ex))]]))
        rows.append([float(lp[i]) for i in labels])
    # Batch Calibration by hand: subtract each label's mean log-prob over the examples, then argmax
    means = [sum(r[j] for r in rows) / len(rows) for j in range(len(labels))]
    calibrated = [parity_task.labels[max(range(len(labels)), key=lambda j: r[j] - means[j])] == parity_task.target(ex)
                  for r, ex in zip(rows, examples, strict=True)]
    score = evaluate(tiny_llama, parity_task, batch_size=batch_size, progress=False)
    assert score.n == len(examples)
    assert score.metrics["accuracy"] == pytest.approx(sum(correct) / len(correct), abs=1e-9)
    assert score.metrics["calibrated_accuracy"] == pytest.approx(sum(calibrated) / len(calibrated), abs=1e-9)
    assert score.metrics["label_logprob"] == pytest.approx(sum(gold_lp) / len(gold_lp), abs=1e-4)


def test_generation_teacher_forced_matches_hand_computation(tiny_llama, echo_task):
    tok = tiny_llama.tokenizer
    examples = echo_task.test
    sums, n_tok, n_ok = [], 0, 0
    for ex in examples:
        p, a = prompt_ids(tok, echo_task, ex), answer_ids(tok, echo_task, ex)
        lp = _full_logprobs(tiny_llama, p + a)
        rows = lp[len(p) - 1: len(p) + len(a) - 1]
        sums.append(float(rows.gather(-1, torch.tensor(a)[:, None]).sum()))
        n_ok += int((rows.argmax(-1) == torch.tensor(a)).sum())
        n_tok += len(a)
    assert a[-1] == tok.eos_token_id, "generation answers end with the end-of-turn token"
    score = evaluate(tiny_llama, echo_task, batch_size=4, decode=False, progress=False)
    assert score.metrics["answer_logprob"] == pytest.approx(sum(sums) / len(sums), abs=1e-3)
    assert score.metrics["token_accuracy"] == pytest.approx(n_ok / n_tok, abs=1e-9)


def test_greedy_decode_matches_manual_loop(tiny_llama, echo_task):
    tok = tiny_llama.tokenizer
    examples = echo_task.test[:3]
    decoded = greedy_decode(tiny_llama, echo_task, examples, max_new_tokens=4)
    for ex, text in zip(examples, decoded, strict=True):
        ids = prompt_ids(tok, echo_task, ex)
        new = []
        for _ in range(4):
            nxt = int(_full_logprobs(tiny_llama, ids + new)[-1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
        assert text == tok.decode(new, skip_special_tokens=True).strip()


def test_text_metrics_known_values():
    assert normalize_answer("The  Cat!") == "cat"
    assert exact_match(["Paris.", "london"], ["paris", "Rome"]) == 0.5
    # LCS("the cat sat", "the cat sat on the mat") = 3 tokens: P = 1, R = 1/2, F1 = 2/3
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(2 / 3)


def test_bad_inputs_give_clear_errors(tiny_llama, parity_task):
    from nrnlib.tasks import Task

    with pytest.raises(ValueError, match="No examples"):
        encode_examples(tiny_llama, parity_task, [])
    with pytest.raises(ValueError, match="n must be"):
        evaluate(tiny_llama, parity_task, n=0, progress=False)
    with pytest.raises(ValueError, match="'supercalifragilistic' -> [0-9]+ tokens"):
        label_token_ids(tiny_llama.tokenizer, ["yes", "supercalifragilistic"])
    long = Task.from_records("long", [{"input": "word " * 600, "target": "yes"}, {"input": "a", "target": "no"}] * 2,
                             "classification", labels=("yes", "no"), test_fraction=0.5)
    with pytest.raises(PromptTooLongError, match="more than the model's context of 512"):
        evaluate(tiny_llama, long, progress=False)


def test_chance_level_is_the_majority_rate_of_the_scored_examples(parity_task, echo_task):
    from nrnlib.evaluate import chance_level

    for n in (1, 3, len(parity_task.test)):
        targets = [ex["target"] for ex in parity_task.test[:n]]
        assert chance_level(parity_task, n) == max(targets.count("yes"), targets.count("no")) / n
    assert chance_level(echo_task, 3) == 0.0
