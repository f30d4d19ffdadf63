"""Classification tasks from Hugging Face datasets (network access, or a copy in the local cache).

:func:`load_hf_task` probes the Hub endpoint first. When it answers, the splits come from
``datasets.load_dataset`` as usual; when it does not, they are read from the local ``datasets`` cache
only, through the builder ``datasets`` itself uses for offline reloads, so nothing waits on retries
against an unreachable Hub and no global setting (``HF_HUB_OFFLINE``) is touched.
"""

from __future__ import annotations

import difflib
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from nrnlib.tasks.splits import MAX_TEST, MAX_TRAIN, dedupe, truncate_words
from nrnlib.tasks.task import Task, TaskError

__all__ = ["HF_TASKS", "HFSpec", "load_hf_task"]


@dataclass(frozen=True)
class HFSpec:
    """How to turn a Hugging Face classification dataset into a Task."""

    path: str
    text: tuple[str, ...]  # column(s) joined into the input
    label: str
    labels: tuple[str, ...]  # single-token label word per class id
    instruction: str
    train_split: str = "train"
    test_split: str = "test"
    config: str | None = None
    max_words: int = 150
    description: str = ""


_SENT = "Answer with one word: positive or negative."
HF_TASKS: dict[str, HFSpec] = {
    "sst2": HFSpec("stanfordnlp/sst2", ("sentence",), "label", ("negative", "positive"),
                   "Classify the sentiment of the movie review sentence below.\n\nSentence: {input}\n\n" + _SENT,
                   test_split="validation", description="SST-2 (GLUE); the test labels are hidden, so "
                   "the validation split is the test split."),
    "ag_news": HFSpec("fancyzhx/ag_news", ("text",), "label", ("World", "Sports", "Business", "Tech"),
                      "Classify the topic of the news article below.\n\nArticle: {input}\n\n"
                      "Answer with one word: World, Sports, Business or Tech.",
                      description="AG News (Sci/Tech -> Tech)."),
    "amazon_polarity": HFSpec("fancyzhx/amazon_polarity", ("title", "content"), "label", ("negative", "positive"),
                              "Classify the sentiment of the product review below.\n\nReview: {input}\n\n" + _SENT),
    "imdb": HFSpec("stanfordnlp/imdb", ("text",), "label", ("negative", "positive"),
                   "Classify the sentiment of the movie review below.\n\nReview: {input}\n\n" + _SENT,
                   description="IMDB reviews, cut to whole sentences of at most 150 words."),
    "yelp_polarity": HFSpec("fancyzhx/yelp_polarity", ("text",), "label", ("negative", "positive"),
                            "Classify the sentiment of the restaurant review below.\n\nReview: {input}\n\n" + _SENT),
}


def _hub_reachable(timeout: float) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within ``timeout`` seconds
    (DNS included: the probe runs in a daemon thread)."""
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        return False
    url = urlparse(getattr(datasets.config, "HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def _load_cached(path: str, config: str | None, split: str, cache_dir: str | None = None) -> Any:
    """One split of a Hub dataset from the local ``datasets`` cache, without contacting the Hub.

    Uses ``datasets``' own cache builder (what ``load_dataset`` falls back to offline), which finds the
    latest cached version of ``path`` under ``cache_dir`` (default: ``datasets.config.HF_DATASETS_CACHE``).
    """
    from datasets.packaged_modules.cache.cache import Cache

    builder = Cache(cache_dir=cache_dir, dataset_name=path.split("/")[-1], repo_id=path, config_name=config,
                    version="auto", hash="auto")
    builder.download_and_prepare()  # for the cache builder: only checks that the cached files exist
    return builder.as_dataset(split=split)


def _load_splits(spec: HFSpec, online: bool, cache_dir: str | None) -> dict[str, Any]:
    """The train and test splits of ``spec``: through the Hub when ``online``, else from the cache only."""
    names = (spec.train_split, spec.test_split)
    if online:
        import datasets

        return {s: datasets.load_dataset(spec.path, spec.config, split=s, cache_dir=cache_dir) for s in names}
    return {s: _load_cached(spec.path, spec.config, s, cache_dir) for s in names}


def load_hf_task(
    name: str, *, seed: int = 0, n_train: int = MAX_TRAIN, n_test: int = MAX_TEST, timeout: float = 3.0,
    cache_dir: str | None = None,
) -> Task:
    """A classification Task from a Hugging Face dataset listed in ``HF_TASKS`` (needs the network or a
    cached copy). Without a reachable hub it loads from the local cache only (``cache_dir``, default the
    ``datasets`` cache), failing fast with a :class:`TaskError` when the dataset is not cached."""
    if name not in HF_TASKS:
        close = difflib.get_close_matches(str(name), list(HF_TASKS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TaskError(f"unknown Hugging Face task {name!r}.{hint} Available: {', '.join(HF_TASKS)}; or build a "
                        "Task with Task.from_dataset(name, datasets.load_dataset(...), category, ...)")
    spec = HF_TASKS[name]
    online = _hub_reachable(timeout)
    try:
        splits = _load_splits(spec, online, cache_dir)
    except Exception as exc:  # noqa: BLE001 - any failure here means "could not fetch"
        from nrnlib.tasks.registry import list_tasks  # the registry imports this module

        builtin = ", ".join(list_tasks())
        why = "the Hugging Face Hub is unreachable and the dataset is not in the local cache" if not online else (
            "loading failed")
        why += f" ({type(exc).__name__}: {str(exc)[:200]})"
        raise TaskError(
            f"could not fetch the dataset {spec.path!r} for task {name!r}: {why}. load_hf_task needs network "
            "access to huggingface.co or a cached copy (load it once online, then pass cache_dir= or set HF_HOME "
            f"to the cache holding it). Built-in offline tasks: {builtin} (get_task(name))."
        ) from exc

    def records(split: Any, n: int) -> list[dict]:
        split = split.shuffle(seed=seed)
        out = []
        for row in split.select(range(min(len(split), 3 * n))):
            text = ". ".join(str(row[c]).strip().rstrip(".") for c in spec.text if row.get(c))
            label = row[spec.label]
            if isinstance(label, int) and 0 <= label < len(spec.labels) and text.strip():
                out.append({"input": truncate_words(text, spec.max_words), "target": spec.labels[label]})
        return dedupe(out)[:n]

    train = records(splits[spec.train_split], n_train)
    test = records(splits[spec.test_split], n_test)
    return Task(
        name=name, category="classification", instruction=spec.instruction, train=tuple(train),
        test=tuple(test), labels=spec.labels, role="custom", source=f"Hugging Face datasets: {spec.path}",
        licence="see the dataset card on the Hugging Face Hub", description=spec.description,
    )
