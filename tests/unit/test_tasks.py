"""Tests of nrnlib.tasks: the Task type, the twelve built-in tasks, the registry and the HF loader; bad
inputs (missing values, conflicting labels, multi-token label words, wrong types) and ``Task.digest``."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nrnlib
from nrnlib import encoding, tasks
from nrnlib.tasks import (
    CATEGORIES,
    HELDOUT_TASKS,
    TRAIN_TASKS,
    Task,
    TaskError,
    as_task,
    check_label_tokens,
    get_task,
    list_tasks,
    load_hf_task,
    register_task,
    unregister_task,
)

BUILTIN = [name for c in CATEGORIES for name in TRAIN_TASKS[c] + HELDOUT_TASKS[c]]
# documented minimum sizes (trivia has only 260 well-formed pairs in chatterbot-corpus)
MIN_TEST = 200
MIN_TRAIN = {"trivia_qa": 60}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    """The SmolLM2-135M-Instruct tokenizer."""
    try:
        from nrnlib.models import load_tokenizer

        return load_tokenizer()
    except Exception as exc:  # noqa: BLE001 - fall back to a saved copy of the tokenizer
        proto = Path("/tmp/proto/tok")
        if proto.is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(proto)
        pytest.skip(f"SmolLM2 tokenizer unavailable: {exc}")


def _records(n: int = 40, labels: tuple[str, ...] = ("yes", "no")) -> list[dict]:
    return [{"input": f"example number {i}", "target": labels[i % len(labels)]} for i in range(n)]


def _digest(task: Task) -> str:
    return hashlib.sha256(json.dumps([task.train, task.test], sort_keys=True).encode()).hexdigest()


# ---- the built-in suite --------------------------------------------------------------------------


def test_roles_three_train_three_heldout_per_category():
    for category in CATEGORIES:
        assert len(TRAIN_TASKS[category]) == 3 and len(HELDOUT_TASKS[category]) == 3
        assert list_tasks(category, "train") == list(TRAIN_TASKS[category])
        assert list_tasks(category, "heldout") == list(HELDOUT_TASKS[category])
    assert set(list_tasks()) >= set(BUILTIN) and len(set(BUILTIN)) == 12
    for name in BUILTIN:
        task = get_task(name)
        assert task.role == ("train" if any(name in v for v in TRAIN_TASKS.values()) else "heldout")
        assert name in TRAIN_TASKS[task.category] + HELDOUT_TASKS[task.category]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_task_is_well_formed(name):
    task = get_task(name)
    assert task.name == name
    assert len(task.test) >= MIN_TEST, f"{name}: {len(task.test)} test examples"
    assert len(task.train) >= MIN_TRAIN.get(name, 250), f"{name}: {len(task.train)} train examples"
    assert len(task.test) <= tasks.MAX_TEST and len(task.train) <= tasks.MAX_TRAIN
    train_inputs = {ex["input"] for ex in task.train}
    test_inputs = [ex["input"] for ex in task.test]
    assert not train_inputs & set(test_inputs), "train and test share inputs"
    assert len(set(test_inputs)) == len(test_inputs) and len(train_inputs) == len(task.train)
    for ex in task.train + task.test:
        assert ex["input"] == ex["input"].strip() and ex["input"]
        assert ex["target"] == ex["target"].strip() and ex["target"]
        assert "_" not in ex["target"] and set(ex) == {"input", "target"}
    assert task.source and task.licence and task.description
    example = task.test[0]
    assert example["input"] in task.user_message(example)
    if task.category == "classification":
        assert task.labels and {ex["target"] for ex in task.train + task.test} == set(task.labels)
        counts = [sum(ex["target"] == lab for ex in task.test) for lab in task.labels]
        assert max(counts) <= 3 * min(counts), f"{name}: test classes unbalanced {counts}"
        assert all(lab in task.instruction for lab in task.labels), "the instruction lists the answers"
    else:
        assert task.labels == ()


def test_classification_label_words_are_single_tokens(tokenizer):
    for name in list_tasks("classification"):
        task = get_task(name)
        ids = check_label_tokens(task, tokenizer)
        assert len(ids) == len(task.labels) == len(set(ids))
        for label, tid in zip(task.labels, ids, strict=True):
            assert tokenizer(label, add_special_tokens=False)["input_ids"] == [tid]


def test_generation_targets_fit_the_decoding_budget(tokenizer):
    for name in list_tasks("generation"):
        task = get_task(name)
        longest = max(len(tokenizer(ex["target"], add_special_tokens=False)["input_ids"]) for ex in task.test)
        assert longest <= task.max_new_tokens, f"{name}: target of {longest} tokens"


def test_prompts_stay_short(tokenizer):
    for name in ("news_topic", "headline_generation"):
        task = get_task(name)
        longest = max(len(tokenizer(task.user_message(ex))["input_ids"]) for ex in task.test + task.train)
        assert longest < 300, f"{name}: a prompt of {longest} tokens"


def test_splits_deterministic_and_seed_dependent():
    for name in ("news_topic", "trivia_qa", "reverse_dictionary", "antonym"):
        assert tasks._REGISTRY[name].factory(0) == get_task(name)  # a fresh build equals the memoized one
        assert get_task(name, seed=0) is get_task(name, seed=0)
        other = get_task(name, seed=1)
        assert [ex["input"] for ex in other.test] != [ex["input"] for ex in get_task(name).test]


def test_splits_identical_across_processes():
    names = ["news_topic", "wordnet_category", "question_topic"]
    code = (
        "import hashlib, json; from nrnlib.tasks import get_task\n"
        f"for n in {names!r}:\n"
        "    t = get_task(n)\n"
        "    print(hashlib.sha256(json.dumps([t.train, t.test], sort_keys=True).encode()).hexdigest(), t.digest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [d for n in names for d in (_digest(get_task(n)), get_task(n).digest())]


def test_n_test_takes_a_prefix():
    full = get_task("word_polarity")
    cut = get_task("word_polarity", n_test=7)
    assert cut.test == full.test[:7] and cut.train == full.train
    assert get_task("word_polarity", n_test=10**6).test == full.test
    with pytest.raises(TaskError, match="n_test"):
        get_task("word_polarity", n_test=0)


def test_heldout_tasks_share_no_examples_with_training_tasks():
    news, headlines, gen = get_task("news_topic"), get_task("headline_topic"), get_task("headline_generation")
    gen_titles = {ex["target"] for ex in gen.train + gen.test}
    gen_bodies = {ex["input"] for ex in gen.train + gen.test}
    assert not {ex["input"] for ex in headlines.train + headlines.test} & gen_titles
    assert not {ex["input"] for ex in news.train + news.test} & gen_bodies
    assert len(gen_titles) > 500
    rev, cat, defs = get_task("reverse_dictionary"), get_task("wordnet_category"), get_task("definition")
    rev_defs = {ex["input"] for ex in rev.train + rev.test}
    assert not rev_defs & {ex["input"] for ex in cat.train + cat.test}
    assert not rev_defs & {ex["target"] for ex in defs.train + defs.test}
    trivia = {ex["input"] for ex in get_task("trivia_qa").train + get_task("trivia_qa").test}
    qt = get_task("question_topic")
    assert not trivia & {ex["input"] for ex in qt.train + qt.test}


def test_unknown_task_name_suggests_a_close_match():
    with pytest.raises(TaskError, match="Did you mean 'tweet_sentiment'") as err:
        get_task("tweet_sentimnt")
    assert "word_polarity" in str(err.value)  # lists the available tasks
    with pytest.raises(TaskError, match="Available tasks"):
        get_task("zzz")


def test_wordnet_missing_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("NRN_WORDNET_DIR", str(tmp_path))
    with pytest.raises(TaskError, match="apt-get install wordnet-base"):
        get_task("hypernym", seed=424242)
    assert get_task("word_polarity", seed=424242).test  # the other tasks still build


# ---- Task type -----------------------------------------------------------------------------------


def test_from_records_round_trip_and_stratification():
    records = _records(40)
    task = Task.from_records("yn", records, "classification", labels=("yes", "no"),
                             instruction="Q: {input}\nAnswer with one word: yes or no.", seed=3)
    assert task.role == "custom" and task.labels == ("yes", "no")
    both = sorted((ex["input"], ex["target"]) for ex in task.train + task.test)
    assert both == sorted((r["input"], r["target"]) for r in records)
    assert len(task.test) == 20 and sum(ex["target"] == "yes" for ex in task.test) == 10
    assert task == Task.from_records("yn", records, "classification", labels=("yes", "no"),
                                     instruction="Q: {input}\nAnswer with one word: yes or no.", seed=3)
    other = Task.from_records("yn", records, "classification", labels=("yes", "no"), seed=4)
    assert [ex["input"] for ex in other.test] != [ex["input"] for ex in task.test]
    small = Task.from_records("g", records, "generation", test_fraction=0.25, input_key="input")
    assert len(small.test) == 10 and len(small.train) == 30


def test_from_records_custom_keys_and_prompt_messages():
    recs = [{"q": f"question {i}", "a": f"answer {i}", "id": i} for i in range(10)]
    task = Task.from_records("qa", recs, "generation", instruction="Question: {input}", input_key="q",
                             target_key="a", description="toy", max_new_tokens=5)
    ex, shot = task.test[0], task.train[0]
    assert ex["id"] == int(ex["input"].split()[-1]) and task.target(ex) == ex["target"]
    assert task.user_message(ex) == f"Question: {ex['input']}"
    assert task.messages(ex, [shot]) == [
        {"role": "user", "content": f"Question: {shot['input']}"},
        {"role": "assistant", "content": shot["target"]},
        {"role": "user", "content": f"Question: {ex['input']}"},
    ]
    assert task.split("train") is task.train and task.split("test") is task.test
    with pytest.raises(ValueError, match="unknown split"):
        task.split("dev")


def test_from_dataset_round_trip():
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    data = {"text": [f"review {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}
    ds = datasets.Dataset.from_dict(data, features=feats)
    task = Task.from_dataset("rev", ds, "classification", labels=("negative", "positive"), input_key="text",
                             target_key="label", instruction="Review: {input}")
    both = sorted((ex["input"], ex["target"]) for ex in task.train + task.test)
    names = ("negative", "positive")
    assert both == sorted((t, names[y]) for t, y in zip(data["text"], data["label"], strict=True))
    dd = datasets.DatasetDict({"train": ds.select(range(20)), "test": ds.select(range(20, 30))})
    task2 = Task.from_dataset("rev2", dd, "classification", input_key="text", target_key="label")
    assert task2.labels == ("neg", "pos") or set(task2.labels) == {"neg", "pos"}
    assert {ex["input"] for ex in task2.test} == {f"review {i}" for i in range(20, 30)}
    with pytest.raises(TaskError, match="no column 'sentence'"):
        Task.from_dataset("bad", ds, "classification", labels=("neg", "pos"), input_key="sentence")


def test_duplicates_across_splits_are_removed_from_test():
    train = [{"input": "a", "target": "x"}, {"input": "b", "target": "y"}]
    test = [{"input": "a", "target": "x"}, {"input": "c", "target": "y"}]
    task = Task("dup", "generation", "{input}", train, test)
    assert [ex["input"] for ex in task.test] == ["c"]
    with pytest.raises(TaskError, match="every test input also occurs in train"):
        Task("dup", "generation", "{input}", train, train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"records": []}, "no records given"),
        ({"records": [{"text": "hi", "target": "yes"}]}, "has no key 'input'"),
        ({"records": [{"input": "hi"}]}, "has no key 'target'"),
        pytest.param({"records": "not a list"}, "must be a list of dicts", marks=pytest.mark.wrong_type),
        ({"labels": ()}, "needs labels"),
        ({"labels": ("yes",)}, "not among the labels"),
        ({"category": "regression"}, "unknown category"),
        ({"instruction": "Answer yes or no."}, "placeholder \\{input\\}"),
        ({"instruction": "{input} {other}"}, "placeholder other than"),
        ({"records": _records(1)}, "at least 2 distinct inputs"),
    ],
)
def test_clear_errors(kwargs, message):
    args = {"records": _records(10), "category": "classification", "labels": ("yes", "no")} | kwargs
    with pytest.raises(TaskError, match=message):
        Task.from_records("bad", args.pop("records"), args.pop("category"), **args)


def test_multi_token_label_word_is_named(tokenizer):
    recs = [{"input": f"x{i}", "target": "supercalifragilistic" if i % 2 else "yes"} for i in range(8)]
    task = Task.from_records("long", recs, "classification", labels=("yes", "supercalifragilistic"))
    with pytest.raises(TaskError, match="'supercalifragilistic' -> [0-9]+ tokens") as err:
        check_label_tokens(task, tokenizer)
    assert "'yes'" not in str(err.value).split("but")[1]  # only the offending word is listed
    assert check_label_tokens(get_task("headline_topic"), tokenizer)
    assert check_label_tokens(get_task("trivia_qa"), tokenizer) == []


def test_register_task_and_factory():
    task = Task.from_records("my_custom_task", _records(12), "classification", labels=("yes", "no"))
    try:
        assert register_task(task) == "my_custom_task"
        assert get_task("my_custom_task") is task
        assert "my_custom_task" in list_tasks("classification", "custom")
        assert "my_custom_task" not in list_tasks(role="train")
        with pytest.raises(TaskError, match="already registered"):
            register_task(task)
        calls = []

        def factory(seed: int) -> Task:
            calls.append(seed)
            return Task.from_records("my_factory_task", _records(12), "generation", seed=seed, role="heldout")

        register_task(factory, name="my_factory_task", category="generation", role="heldout")
        assert calls == [] and "my_factory_task" in list_tasks("generation", "heldout")
        assert get_task("my_factory_task", seed=5).test and calls == [5]
        get_task("my_factory_task", seed=5)
        assert calls == [5]
        with pytest.raises(TaskError, match="built-in"):
            register_task(Task.from_records("antonym", _records(4), "generation"))
    finally:
        for name in ("my_custom_task", "my_factory_task"):
            if name in list_tasks():
                unregister_task(name)
    assert "my_custom_task" not in list_tasks()


# ---- Hugging Face loader ------------------------------------------------------------------------


def test_load_hf_task_fails_fast_offline(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    # an unreachable endpoint and an empty cache: the real offline path, whatever this machine's network
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    start = time.perf_counter()
    with pytest.raises(TaskError, match="could not fetch the dataset") as err:
        load_hf_task("sst2")
    assert time.perf_counter() - start < 15
    message = str(err.value)
    assert "network" in message and "cached" in message and "tweet_sentiment" in message
    with pytest.raises(TaskError, match="Did you mean 'ag_news'"):
        load_hf_task("agnews")


def test_load_hf_task_reads_a_cached_copy_without_the_hub(monkeypatch, tmp_path):
    """Offline, a dataset in the local cache is read without calling load_dataset (no Hub retries) and
    without switching the process to offline mode."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub_constants
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    # a copy of "stanfordnlp/sst2" laid out as datasets caches a Hub dataset: <ns>___<name>/<config>/<ver>/<hash>
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["negative", "positive"])})
    sizes = {"train": 30, "validation": 12}
    for split, n in sizes.items():
        rows = {"sentence": [f"{split} sentence number {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
        datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / f"{split}.parquet"))
    files = DataFilesDict.from_patterns({s: [f"{s}.parquet"] for s in sizes}, base_path=str(tmp_path))
    builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name="sst2", config_name="default",
                      data_files=files, hash="0123abcd")
    builder.download_and_prepare()
    cache = tmp_path / "cache"
    (cache / "stanfordnlp___sst2" / "default" / "0.0.0").mkdir(parents=True)
    Path(builder._output_dir).rename(cache / "stanfordnlp___sst2" / "default" / "0.0.0" / "0123abcd")

    def no_hub(*args, **kwargs):
        raise AssertionError("load_dataset (which contacts the Hub) was called offline")

    offline_before = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    task = load_hf_task("sst2", cache_dir=str(cache), n_train=10)
    assert (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE) == offline_before
    assert task.labels == ("negative", "positive") and len(task.train) == 10 and len(task.test) == 12
    for ex in task.train + task.test:
        split, number = re.fullmatch(r"(train|validation) sentence number (\d+)", ex["input"]).groups()
        assert ex["target"] == ("positive" if int(number) % 2 else "negative")
        assert split == ("train" if ex in task.train else "validation")  # SST-2's test split is validation
    assert {ex["input"] for ex in task.test} == {f"validation sentence number {i}" for i in range(12)}


# ---- bad inputs ----------------------------------------------------------------------------------


def _missing_values() -> list:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    return [float("nan"), np.nan, np.float32("nan"), pd.NA, pd.NaT, None]


@pytest.mark.parametrize("column", ["input", "target"])
@pytest.mark.parametrize("index", range(6))
def test_missing_values_are_refused_not_turned_into_text(column, index):
    value = _missing_values()[index]
    records = _records(10)
    records[3] = {**records[3], column: value}
    with pytest.raises(TaskError, match=rf"example 3 '{column}' is a missing value .*dropna") as err:
        Task.from_records("bad", records, "classification", labels=("yes", "no"))
    assert "drop or fill" in str(err.value)
    train = [{"input": "a", "target": "x"}, {"input": "b", "target": "y"}]
    with pytest.raises(TaskError, match="missing value"):
        Task("bad", "generation", "{input}", train, [{"input": "c", column: value, **{
            k: "z" for k in ("input", "target") if k != column}}])


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(value):
    records = _records(10, labels=("1", "2"))
    records[0] = {"input": value, "target": "1"}
    with pytest.raises(TaskError, match=r"example 0 'input' is the non-finite number -?inf.*drop that row"):
        Task.from_records("bad", records, "classification", labels=("1", "2"))


def test_missing_value_in_a_dataframe_is_refused():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(8)], "label": ["yes", "no"] * 4})
    frame.loc[5, "label"] = None  # pandas stores it as NaN in an object column of a float-less frame
    with pytest.raises(TaskError, match="example 5 'label' is a missing value"):
        Task.from_records("df", frame.to_dict("records"), "classification", labels=("yes", "no"),
                          input_key="text", target_key="label")


def test_finite_numbers_become_their_text():
    np = pytest.importorskip("numpy")
    records = [{"input": np.int64(i), "target": float(i) / 2} for i in range(1, 7)]
    task = Task.from_records("numbers", records, "generation")
    assert sorted((ex["input"], ex["target"]) for ex in task.train + task.test) == [
        ("1", "0.5"), ("2", "1.0"), ("3", "1.5"), ("4", "2.0"), ("5", "2.5"), ("6", "3.0")]
    with pytest.raises(TaskError, match="must be a string, got bool"):
        Task.from_records("bools", [{"input": True, "target": "x"}] * 2, "generation")


def test_one_input_under_two_labels_is_refused():
    records = _records(10) + [{"input": "example number 4", "target": "no"}]  # example 4 is "yes" in _records
    with pytest.raises(TaskError, match="'example number 4' is listed under two different labels, 'yes' and 'no'"):
        Task.from_records("conflict", records, "classification", labels=("yes", "no"))
    # across the splits of a directly built task too (it used to drop the test copy silently)
    with pytest.raises(TaskError, match="'b' is listed under two different labels, 'no' and 'yes'"):
        Task("conflict", "classification", "{input}", [{"input": "a", "target": "yes"}, {"input": "b", "target": "no"}],
             [{"input": "b", "target": "yes"}, {"input": "c", "target": "no"}], labels=("yes", "no"))


def test_identical_duplicates_are_dropped_and_generation_keeps_several_references():
    records = _records(10)
    task = Task.from_records("dups", records + records[:4], "classification", labels=("yes", "no"))
    assert sorted(ex["input"] for ex in task.train + task.test) == sorted(r["input"] for r in records)
    refs = [{"input": f"q{i}", "target": f"a{i}"} for i in range(6)] + [{"input": "q0", "target": "another a0"}]
    gen = Task.from_records("refs", refs, "generation")
    where = [("train" if ex in gen.train else "test", ex["target"]) for ex in gen.train + gen.test
             if ex["input"] == "q0"]
    assert sorted(t for _, t in where) == ["a0", "another a0"] and len({s for s, _ in where}) == 1


# ---- as_task -------------------------------------------------------------------------------------


def test_as_task_accepts_a_task_or_a_name():
    task = Task.from_records("as_task_demo", _records(6), "classification", labels=("yes", "no"))
    assert as_task(task) is task
    assert as_task("antonym") is get_task("antonym")
    with pytest.raises(TaskError, match="Did you mean 'antonym'"):
        as_task("antonymm")


@pytest.mark.wrong_type
def test_as_task_refuses_a_non_task():
    for bad in (None, 3, ["antonym"], {"input": "x"}):
        with pytest.raises(TaskError, match=f"expected a Task or a task name, got {type(bad).__name__}"):
            as_task(bad)


@pytest.mark.wrong_type
def test_entry_points_refuse_a_non_task(tiny_model):
    with pytest.raises(TaskError, match="expected a Task or a task name, got int"):
        nrnlib.evaluate(tiny_model, 42, progress=False)
    with pytest.raises(TaskError, match="expected a Task or a task name, got list"):
        nrnlib.last_token_states(tiny_model, ["antonym"], progress=False)


def test_entry_points_suggest_a_task_name(tiny_model):
    with pytest.raises(TaskError, match="Did you mean 'tweet_sentiment'"):
        nrnlib.evaluate(tiny_model, "tweet_sentimnt", progress=False)


# ---- multi-token label words through every entry point -------------------------------------------


@pytest.fixture(scope="module")
def long_label_task() -> Task:
    recs = [{"input": f"Is {n} even?", "target": "yes" if n % 2 == 0 else "supercalifragilistic"} for n in range(12)]
    return Task.from_records("long_label", recs, "classification", labels=("yes", "supercalifragilistic"),
                             instruction="Question: {input}\nAnswer yes or supercalifragilistic.")


LONG_LABEL = r"task 'long_label': label words must be exactly one token .*'supercalifragilistic' -> \d+ tokens"


def test_attribute_refuses_a_multi_token_label(tiny_model, long_label_task):
    with pytest.raises(TaskError, match=LONG_LABEL) as err:
        nrnlib.attribute(tiny_model, long_label_task, n_examples=4, cache=False, progress=False)
    assert "choose other words" in str(err.value) and "'yes'" not in str(err.value).split("but")[1]


def test_finetune_refuses_a_multi_token_label_and_moves_nothing(tiny_model, long_label_task):
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    with pytest.raises(TaskError, match=LONG_LABEL):
        nrnlib.finetune(tiny_model, [long_label_task], steps=2, progress=False)
    assert all(torch.equal(p, before[name]) for name, p in tiny_model.named_parameters())


def test_evaluate_and_states_refuse_a_multi_token_label(tiny_model, long_label_task):
    with pytest.raises(TaskError, match="'supercalifragilistic' -> \\d+ tokens"):
        nrnlib.evaluate(tiny_model, long_label_task, progress=False)
    with pytest.raises(TaskError, match=LONG_LABEL):
        nrnlib.last_token_states(tiny_model, long_label_task, progress=False)


def test_label_check_is_memoized_per_tokenizer_task_and_labels(tiny_model, monkeypatch):
    calls = []
    real = encoding.label_token_ids

    def counting(tokenizer, labels):
        calls.append(tuple(labels))
        return real(tokenizer, labels)

    monkeypatch.setattr(encoding, "label_token_ids", counting)
    recs = [{"input": f"Is {n} even?", "target": "yes" if n % 2 == 0 else "no"} for n in range(8)]
    task = Task.from_records("memo_check_task", recs, "classification", labels=("yes", "no"))
    for _ in range(3):
        encoding.encode_examples(tiny_model, task, task.test)
    assert calls == [("yes", "no")]  # once, not once per example or per call
    swapped = Task.from_records("memo_check_task", recs, "classification", labels=("no", "yes"))
    encoding.encode_examples(tiny_model, swapped, swapped.test)
    assert calls == [("yes", "no"), ("no", "yes")]  # other labels: checked again
    generation = Task.from_records("memo_check_gen", recs, "generation")
    encoding.encode_examples(tiny_model, generation, generation.test)
    assert len(calls) == 2  # nothing to check for a generation task


# ---- Task.digest ---------------------------------------------------------------------------------


def _digest_base(**changes) -> Task:
    fields = {"name": "digest_demo", "category": "classification", "instruction": "Q: {input}\nA: yes or no.",
              "train": [{"input": "a", "target": "yes"}, {"input": "b", "target": "no"}],
              "test": [{"input": "c", "target": "no"}, {"input": "d", "target": "yes"}],
              "labels": ("yes", "no")}
    return Task(**(fields | changes))


def test_digest_is_short_hex_and_stable():
    task = _digest_base()
    assert re.fullmatch(r"[0-9a-f]{16}", task.digest())
    assert task.digest() == _digest_base().digest()  # equal tasks, equal digests
    assert task.digest() == task.digest(task.train + task.test)  # default: all train then test examples
    assert task.digest() == _digest_base(description="other words", source="elsewhere", licence="x").digest()


def test_digest_changes_with_every_key_input():
    task = _digest_base()
    demo = [{"input": "a", "target": "yes"}]
    d = {"input": "d", "target": "yes"}
    digests = {
        "base": task.digest(),
        "instruction": _digest_base(instruction="Question: {input}\nA: yes or no.").digest(),
        "labels": _digest_base(labels=("yes", "no", "maybe")).digest(),
        "label order": _digest_base(labels=("no", "yes")).digest(),
        "example input": _digest_base(test=[{"input": "c!", "target": "no"}, d]).digest(),
        "example target": _digest_base(test=[{"input": "c", "target": "yes"}, d]).digest(),
        "extra field": _digest_base(test=[{"input": "c", "target": "no", "id": 1}, d]).digest(),
        "name": _digest_base(name="digest_demo2").digest(),
        "role": _digest_base(role="heldout").digest(),
        "max_new_tokens": _digest_base(max_new_tokens=17).digest(),
        "subset": task.digest(task.test),
        "order": task.digest(task.test[::-1]),
        "demonstration": task.digest(task.test, demonstrations=demo),
        "other demonstration": task.digest(task.test, demonstrations=[{"input": "b", "target": "no"}]),
    }
    assert len(set(digests.values())) == len(digests), digests


@pytest.mark.wrong_type
def test_digest_refuses_what_is_not_a_list_of_examples():
    task = _digest_base()
    with pytest.raises(TaskError, match="sequence of example dicts"):
        task.digest(task.test[0])
    with pytest.raises(TaskError, match=r"demonstrations\[0\] is a str"):
        task.digest(demonstrations=["a"])
