"""Score a model on a task.

Classification: the label words' logits at the last prompt token, restricted to the label set;
``accuracy`` = argmax over labels equals the gold label; ``label_logprob`` = mean
``log p(gold label token)`` under the full vocabulary softmax (far more sensitive than accuracy);
``calibrated_accuracy`` = Batch Calibration (Zhou et al., ICLR 2024): argmax over labels of
``log p(y|x) − mean_{x' in the evaluated examples} log p(y|x')``, which removes the model's prior
preference for one label word (no gold labels are used).

Generation: teacher-forced ``answer_logprob`` (mean over examples of the summed log-prob of the
answer tokens, end-of-turn included) and ``token_accuracy`` (argmax equals the answer token);
greedy decoding with ``exact_match`` (after normalisation) and ``rougeL`` (F1, ``rouge_score``).
The primary metric is accuracy for classification and ROUGE-L for generation. Every pass runs each
batch's common prompt prefix once (``losses.final_hidden``, ``share_prefix``); for generation the
prompts run once (``losses.prompt_pass``), and both the teacher-forced answers and greedy decoding
continue from their cache.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib.checks import check_int
from nrnlib.encoding import (
    EncodedBatch,
    batches,
    check_generation_fits,
    encode_examples,
    end_of_answer_id,
    label_token_ids,
    pad_id,
)
from nrnlib.losses import (
    PromptPass,
    answer_logits_after_prompt,
    answer_token_logits,
    crop_cache,
    last_prompt_logits,
    prompt_pass,
)
from nrnlib.tasks import as_task

PRIMARY_METRIC = {"classification": "accuracy", "generation": "rougeL"}


@dataclass
class TaskScore:
    """Metrics of one model on one task, with per-example outputs.

    ``per_example``: the values each metric averages, one per scored example (in order), for
    bootstrap CIs: ``correct`` and ``calibrated_correct`` (0/1) and ``label_logprob`` for
    classification; ``answer_logprob``, and with decoding ``exact_match`` (0/1) and ``rougeL``, for
    generation."""

    task: str
    category: str
    n: int
    metrics: dict[str, float]
    predictions: list[str] = field(default_factory=list, repr=False)
    per_example: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def primary(self) -> float:
        return self.metrics[PRIMARY_METRIC[self.category]]


def select_examples(task, split: str = "test", n: int | None = None) -> Sequence[dict]:
    """The first ``n`` examples of a split (all when ``n`` is None)."""
    examples = task.split(split)
    if check_int(n, "n", minimum=1, none_ok=True) is not None:
        examples = examples[:n]
    if len(examples) == 0:
        raise ValueError(f"Task {task.name!r} has no {split} examples")
    return examples


def few_shot_examples(task, shots: int, seed: int = 0) -> list[dict]:
    """``shots`` demonstrations from the train split, chosen by seed (never from the test split)."""
    if check_int(shots, "shots", minimum=0) == 0:
        return []
    pool = list(task.split("train"))
    if shots > len(pool):
        raise ValueError(f"Task {task.name!r} has {len(pool)} train examples, fewer than shots={shots}")
    return random.Random(seed).sample(pool, shots)


def classify_batch(
    model, batch: EncodedBatch, label_ids: Int[Tensor, " n_labels"]
) -> tuple[Int[Tensor, " batch"], Float[Tensor, "batch n_labels"]]:
    """Predicted label index (argmax over label logits) and full-vocabulary label log-probs."""
    logprobs = last_prompt_logits(model, batch, share_prefix=True).log_softmax(-1)[:, label_ids]
    return logprobs.argmax(-1), logprobs


def teacher_forced_batch(
    model, batch: EncodedBatch, prompts: PromptPass | None = None
) -> tuple[Float[Tensor, " batch"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """Per example: summed answer log-prob, number of answer tokens, number predicted correctly
    (on the cache of ``prompts`` = ``losses.prompt_pass`` of the batch when given)."""
    logits = (answer_token_logits(model, batch, share_prefix=True) if prompts is None
              else answer_logits_after_prompt(model, batch, prompts))
    targets = batch.input_ids[batch.target_mask]
    token_lp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    correct = (logits.argmax(-1) == targets).long()
    rows = batch.target_mask.nonzero(as_tuple=True)[0]
    n = len(batch)
    lp = torch.zeros(n, device=token_lp.device).index_add_(0, rows, token_lp)
    n_tok = torch.zeros(n, dtype=torch.long, device=rows.device).index_add_(0, rows, torch.ones_like(rows))
    n_ok = torch.zeros(n, dtype=torch.long, device=rows.device).index_add_(0, rows, correct)
    return lp, n_tok, n_ok


def greedy_decode(
    model, task, examples: Sequence[dict], shots: Sequence[dict] = (), max_new_tokens: int | None = None
) -> list[str]:
    """Greedy continuations of the prompts, cut at end-of-turn (``greedy_after_prompt``)."""
    batch = encode_examples(model, task, examples, with_answers=False, shots=shots).to(model.cfg.device)
    _decoding_length(model, task, int(batch.prompt_lengths.max()), max_new_tokens)  # bad lengths fail before any pass
    return greedy_after_prompt(model, task, prompt_pass(model, batch, pad_id(model.tokenizer)), max_new_tokens)


def _decoding_length(model, task, prompt_length: int, max_new_tokens: int | None) -> int:
    """``max_new_tokens`` (None: the task's, else 16), checked to fit the context after the prompt."""
    new_tokens = check_int(max_new_tokens or getattr(task, "max_new_tokens", 16), "max_new_tokens", minimum=1)
    check_generation_fits(model, prompt_length, new_tokens, f"greedy decoding of task {task.name!r}")
    return new_tokens


def greedy_after_prompt(model, task, prompts: PromptPass, max_new_tokens: int | None = None) -> list[str]:
    """Greedy continuations (``greedy_tokens``) decoded to text, cut at end-of-turn."""
    tok = model.tokenizer
    new_tokens = _decoding_length(model, task, int(prompts.lengths.max()), max_new_tokens)
    rows = greedy_tokens(model, prompts, new_tokens).cpu()
    return [tok.decode(row, skip_special_tokens=True).strip() for row in rows]


def greedy_tokens(model, prompts: PromptPass, max_new_tokens: int) -> Int[Tensor, "batch new"]:
    """Greedy decoding (``generate``) continuing a ``losses.prompt_pass``: its cache holds the
    prompts, so only the new tokens run; the prompts' layout (a shared prefix, pads, the rest)
    gives ``generate`` the position ids ``cumsum(mask) − 1``. Rows that end early are padded.
    Consumes the cache."""
    tok = model.tokenizer
    crop_cache(prompts.cache, prompts.width - 1)  # generate runs the last prompt token to get its logits
    out = model.original_model.generate(
        input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, past_key_values=prompts.cache,
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id(tok), eos_token_id=end_of_answer_id(tok),
    )
    return out[:, prompts.width:]


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after ``normalize_answer``."""
    pairs = zip(predictions, references, strict=True)
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in pairs) / len(references)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 per pair (``rouge_score``, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]


@torch.no_grad()
def evaluate(
    model,
    task,
    n: int | None = None,
    split: str = "test",
    batch_size: int = 16,
    shots: int = 0,
    seed: int = 0,
    decode: bool = True,
    progress: bool = True,
) -> TaskScore:
    """Score ``model`` on the first ``n`` examples of ``task``'s ``split`` (see module docstring).

    ``shots`` demonstrations from the train split are prepended as earlier chat turns.
    ``decode=False`` skips greedy decoding for generation tasks (teacher-forced metrics only).
    """
    task = as_task(task)
    n = check_int(n, "n", minimum=1, where="evaluate", none_ok=True)
    batch_size = check_int(batch_size, "batch_size", minimum=1, where="evaluate")
    shots = check_int(shots, "shots", minimum=0, where="evaluate")
    examples = select_examples(task, split, n)
    demos = few_shot_examples(task, shots, seed)
    desc = f"eval {task.name}"
    if task.category == "classification":
        return _evaluate_classification(model, task, examples, demos, batch_size, progress, desc)
    if task.category != "generation":
        raise ValueError(f"Unknown task category {task.category!r}")
    return _evaluate_generation(model, task, examples, demos, batch_size, decode, progress, desc)


def _evaluate_classification(model, task, examples, demos, batch_size, progress, desc) -> TaskScore:
    label_ids = torch.tensor(label_token_ids(model.tokenizer, task.labels), device=model.cfg.device)
    gold = torch.tensor([task.labels.index(task.target(ex)) for ex in examples])
    preds, label_lps = [], []
    for batch in tqdm(list(batches(model, task, examples, batch_size, False, demos)), desc=desc, disable=not progress):
        pred, lp = classify_batch(model, batch.to(model.cfg.device), label_ids)
        preds.append(pred.cpu())
        label_lps.append(lp.cpu())
    pred = torch.cat(preds)
    label_lp = torch.cat(label_lps)
    calibrated = (label_lp - label_lp.mean(0, keepdim=True)).argmax(-1)
    per_example = {"correct": (pred == gold).float().tolist(),
                   "calibrated_correct": (calibrated == gold).float().tolist(),
                   "label_logprob": label_lp.gather(-1, gold[:, None]).squeeze(-1).tolist()}
    metrics = {"accuracy": float((pred == gold).float().mean()),
               "calibrated_accuracy": float((calibrated == gold).float().mean()),
               "label_logprob": float(label_lp.gather(-1, gold[:, None]).mean())}
    return TaskScore(task.name, task.category, len(examples), metrics, [task.labels[i] for i in pred.tolist()],
                     per_example)


def _evaluate_generation(model, task, examples, demos, batch_size, decode, progress, desc) -> TaskScore:
    lps, n_tok, n_ok, texts = [], [], [], []
    chunks = [examples[i: i + batch_size] for i in range(0, len(examples), batch_size)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress):
        batch = encode_examples(model, task, chunk, with_answers=True, shots=demos).to(model.cfg.device)
        prompts = prompt_pass(model, batch, pad_id(model.tokenizer))  # the prompts run once for both
        lp, nt, no = teacher_forced_batch(model, batch, prompts)
        lps.append(lp.cpu())
        n_tok.append(nt.cpu())
        n_ok.append(no.cpu())
        if decode:
            texts.extend(greedy_after_prompt(model, task, prompts))
    n_tok_all = torch.cat(n_tok)
    metrics = {
        "answer_logprob": float(torch.cat(lps).mean()),
        "token_accuracy": float(torch.cat(n_ok).sum() / n_tok_all.sum()),
    }
    per_example = {"answer_logprob": torch.cat(lps).tolist()}
    if decode:
        refs = [task.target(ex) for ex in examples]
        metrics["exact_match"] = exact_match(texts, refs)
        per_example["exact_match"] = [float(normalize_answer(t) == normalize_answer(r))
                                      for t, r in zip(texts, refs, strict=True)]
        per_example["rougeL"] = rouge_l(texts, refs)
        metrics["rougeL"] = sum(per_example["rougeL"]) / len(refs)
    return TaskScore(task.name, task.category, len(examples), metrics, texts, per_example)


def chance_level(task, n: int | None = None, split: str = "test") -> float:
    """Accuracy of always answering the most frequent label among the scored examples (the first
    ``n`` of ``split``; all when None) for classification; 0 for generation."""
    if task.category != "classification":
        return 0.0
    targets = [task.target(ex) for ex in select_examples(task, split, n)]
    return max(targets.count(label) for label in task.labels) / len(targets)
