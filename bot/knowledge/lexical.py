"""A lexical index (Okapi BM25) over the knowledge base's chunks, beside the dense one.

The dense embedding finds paraphrases and other languages; it misses rare exact words
(a product name, "PayPal", "429", "SCIM") that a support question often hinges on, and
BM25 finds exactly those. Measured on a held-out set: dense alone put the right document
first 88.8 %, BM25 alone 82.5 %; on the dev set they miss different questions, so
`base.py` fuses the two rankings.

The tokenizer needs no language model: Unicode word tokens, case- and accent-folded and
lightly stemmed, a short stop-word list for each language Parley's users write in (en,
fr, es, de, pt, it; ja and zh get theirs by script, below), and overlapping character
bigrams for Chinese and Japanese text, which has no spaces to split at (the usual
segmenter-free way to index CJK: a two-character word is one bigram, a longer one its
overlapping bigrams). Japanese hiragana runs (particles, verb endings) are not indexed.

The index is rebuilt from the chunks whenever the dense one is loaded (~50 us a chunk),
so nothing here is stored in Redis.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# Standard Okapi BM25 constants (Robertson and Zaragoza): term-frequency saturation and
# length normalisation.
K1 = 1.2
B = 0.75

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA_KATAKANA = "\u30a0-\u30ff"
_KANA_HIRAGANA = "\u3040-\u309f"
_HANGUL = "\uac00-\ud7af"
_CJK = _HAN + _KANA_KATAKANA + _KANA_HIRAGANA + _HANGUL
# One run of a single script per match; every alternative reads a character class with a
# possessive quantifier, and the classes are disjoint, so each character is read once
# (tests/security/test_patterns.py).
_RUN = re.compile(
    rf"(?P<han>[{_HAN}]++)"
    rf"|(?P<katakana>[{_KANA_KATAKANA}]++)"
    rf"|(?P<hiragana>[{_KANA_HIRAGANA}]++)"
    rf"|(?P<hangul>[{_HANGUL}]++)"
    rf"|(?P<word>(?:(?![{_CJK}])[^\W_])++)"
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Function words, accent-folded as the tokenizer folds them, and (for English) the light
# verbs of a question's frame ("how does X work", "what happens if"). Short on purpose: a
# word left out costs a little ranking noise (BM25's IDF already discounts common words),
# and a missing word in `evidence`; a content word put in ("free", "plan") would be invisible.
STOP_WORDS: dict[str, frozenset[str]] = {
    "en": _words(
        """a an the and or but if of to in on at by for with from as into about than then so
        is are was were be been being am do does did done doing have has had having
        i me my mine we us our ours you your yours he him his she her it its they them their
        this that these those there here what which who whom whose when where why how
        can could will would shall should may might must not no nor too very just also
        any some all each every other such own same only again once more most much many
        over under after before between through during until while because both few whether
        up down out off per via
        get gets getting got want wants need needs know knows like use used uses using see say says
        said tell try tried work works happen happens happened keep keeps let way now right away
        really actually already possible
        s t d ll m re ve don doesn didn isn aren wasn weren cannot couldn won wouldn shouldn
        please hi hello thanks thank anyone someone something still yet ever even"""
    ),
    "fr": _words(
        """le la les l un une des du de d et ou mais a au aux en dans sur sous pour par avec sans
        ce cet cette ces c est sont etre ete ai as avons avez ont suis es sommes etes
        je j tu il elle on nous vous ils elles me m te t se s moi toi lui leur leurs
        mon ma mes ton ta tes son sa ses notre nos votre vos qui que qu quoi quel quelle quels
        quelles comment combien pourquoi quand ne n pas plus peut peux puis pouvez faut y si
        tout tous toute toutes tres bien aussi donc car comme"""
    ),
    "es": _words(
        """el la los las lo un una unos unas de del al a en y e o u pero con sin por para que
        como cuando cuanto cuanta cuantos cuantas donde cual cuales quien es son esta estan
        estoy ser hay mi mis tu tus su sus nuestro nuestra nuestros se me te le les nos
        yo usted ustedes puedo puede pueden no si muy mas ya este esto eso"""
    ),
    "de": _words(
        """der die das den dem des ein eine einen einem einer eines und oder aber zu zum zur
        in im an am auf aus bei mit nach von vom fur uber um ist sind war waren wird werden
        wurde kann konnen darf durfen muss mussen soll ich du er sie es wir ihr mein meine
        meinen meinem meiner dein deine sein seine unser unsere ihre ihren nicht kein keine
        wie was wo wann warum welche welcher welches wer gibt bis dass so nur noch auch sich
        mich mir dich dir uns euch man da dann denn ja bitte"""
    ),
    "pt": _words(
        """o a os as um uma uns umas de do da dos das em no na nos nas e ou mas com sem por
        para pelo pela pelos pelas que como quando quanto quanta quantos quantas onde qual
        quais quem e sao ser estar esta estao eu voce voces meu minha meus minhas seu sua
        seus suas se me te lhe nao posso pode podem isso isto ao aos ja muito"""
    ),
    "it": _words(
        """il lo la i gli le l un uno una di del della dei delle dello degli a al alla ai agli
        alle da dal dalla in nel nella nei nelle su sul sulla con per tra fra e ed o ma che
        chi come quando quanto quanta quanti quante quale quali dove perche sono essere ho ha
        hanno io tu lui lei noi voi loro mi ti si ci vi mio mia miei mie tuo tua suo sua non
        posso puo possono c se anche piu molto"""
    ),
}
# Chinese function characters: a Han run is cut at them before its bigrams are made,
# so "的" and "吗" join no bigram. (Japanese needs no list: its function words are
# hiragana, and hiragana runs are not indexed.)
_ZH_BREAKS = frozenset("的了吗呢吧么啊是在我你他她它们和与或有没会能可以要怎什这那哪就都也还把被给让对从到")
_STOP = frozenset().union(*STOP_WORDS.values())


@dataclass(frozen=True, slots=True)
class Tokens:
    """A text's index terms, and the language its function words (or script) point to."""

    terms: list[str]
    language: str | None  # "en", "fr", ..., "ja", "zh", "ko"; None: no clue


@dataclass(frozen=True, slots=True)
class Term:
    """One distinct term of a question, as `evidence` weighs it."""

    term: str  # as indexed
    word: str  # as written (lower case), for logs
    name: bool  # a number, code or name: written the same in every language


@dataclass(frozen=True, slots=True)
class Question:
    terms: tuple[Term, ...]
    language: str | None


def fold(word: str) -> str:
    """Lower case without accents: "Économie" and "economie" are one term. ASCII (most
    words) skips the decomposition."""
    word = word.casefold()
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def stem(word: str) -> str:
    """A light suffix strip, so "invoices"/"invoice" and "syncing"/"synced"/"sync" meet. Only
    plural -s and English -ing/-ed, then a final -e, and never on short words: a full
    stemmer per language would earn little on support questions and would need a guess at
    the language of every chunk. (Applied to every Latin-script word of any language, it
    merges a French plural with its singular just as well.)"""
    if len(word) < 4:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ing") and len(word) > 5:
        word = _undouble(word[:-3])
    elif word.endswith("ed") and len(word) > 4 and not word.endswith("eed"):
        word = _undouble(word[:-2])
    elif word.endswith(("sses", "ches", "shes", "xes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def _undouble(word: str) -> str:
    return word[:-1] if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz" else word


def _bigrams(run: str) -> Iterator[str]:
    if len(run) == 1:
        yield run
    else:
        for i in range(len(run) - 1):
            yield run[i : i + 2]


def tokenize(text: str) -> Tokens:
    """Index terms of `text`, with its language as far as the stop words and script tell."""
    terms: list[str] = []
    language = _scan(text, terms, None)
    return Tokens(terms, language)


def analyse(question: str) -> Question:
    """A question's distinct terms, each marked when it is a name or number: one with a
    digit, an acronym ("SDK"), inner capitals ("iPad"), a capitalised word inside a
    sentence (not in German, which capitalises every noun), or a Latin-script word in
    Chinese or Japanese text."""
    terms: list[str] = []
    cues: list[tuple[str, int]] = []
    language = _scan(question, terms, cues)
    found: dict[str, Term] = {}
    for term, (word, cue) in zip(terms, cues, strict=True):
        name = bool(
            cue & _CODE
            or (cue & _CAPITALISED and language != "de")
            or (cue & _LATIN and language in ("ja", "zh", "ko"))
        )
        old = found.get(term)
        if old is None or (name and not old.name):
            found[term] = Term(term, word, name)
    return Question(tuple(found.values()), language)


# Name cues `_scan` notes for each term.
_CODE = 1  # digits, all capitals, inner capitals
_CAPITALISED = 2  # a capital first letter, not at a sentence start
_LATIN = 4  # a Latin-script (or other spaced-script) word
_SENTENCE_END = frozenset(".!?¿¡:;\n")


def _scan(text: str, terms: list[str], cues: list[tuple[str, int]] | None) -> str | None:
    """Appends `text`'s terms to `terms` (and, for a question, each one's written form and
    name cues to `cues`); returns the language."""
    stops: Counter[str] = Counter()
    scripts: Counter[str] = Counter()
    text = unicodedata.normalize("NFKC", text)
    shouting = text.isupper()  # then capitals mark nothing
    previous_end = 0
    for m in _RUN.finditer(text):
        kind, run = m.lastgroup, m[0]
        if kind == "word":
            word = fold(run)
            # "US" (a region) is no "us"; an acronym is kept whatever it folds to.
            if word in _STOP and (shouting or len(run) < 2 or not run.isupper()):
                stops.update(lang for lang, words in STOP_WORDS.items() if word in words)
            elif len(word) > 1 or word.isdigit():
                terms.append(word if word.isdigit() else stem(word))
                if cues is not None:
                    cues.append((word, 0 if shouting else _cues(run, text, previous_end, m.start())))
            previous_end = m.end()
            continue
        if kind == "hiragana":
            scripts["ja"] += len(run)  # particles and endings: a clue to the language, not terms
            continue
        before = len(terms)
        if kind == "han":
            scripts["han"] += len(run)
            start = 0
            for i, char in enumerate(run):
                if char in _ZH_BREAKS:
                    if i > start:
                        terms.extend(_bigrams(run[start:i]))
                    start = i + 1
            if start < len(run):
                terms.extend(_bigrams(run[start:]))
        else:  # katakana, hangul
            scripts["ja" if kind == "katakana" else "ko"] += len(run)
            if len(run) > 1:
                terms.extend(_bigrams(run))
        if cues is not None:
            cues.extend((term, 0) for term in terms[before:])
    return _language(stops, scripts)


def _cues(run: str, text: str, previous_end: int, start: int) -> int:
    cue = _LATIN
    if any(c.isdigit() for c in run) or (len(run) > 1 and (run.isupper() or any(c.isupper() for c in run[1:]))):
        cue |= _CODE
    elif run[0].isupper() and previous_end and not any(c in _SENTENCE_END for c in text[previous_end:start]):
        cue |= _CAPITALISED
    return cue


def _language(stops: Counter[str], scripts: Counter[str]) -> str | None:
    if scripts:
        if scripts["ja"]:
            return "ja"
        return "zh" if scripts["han"] >= scripts["ko"] else "ko"
    if not stops:
        return None
    (first, n), *rest = stops.most_common(2)
    return None if rest and rest[0][1] == n else first


@dataclass(frozen=True)
class LexicalIndex:
    """BM25 over a fixed list of passages (row i is chunk i of the dense index)."""

    postings: dict[str, tuple[np.ndarray, np.ndarray]]  # term -> (rows, term frequencies)
    lengths: np.ndarray  # terms per passage
    language: str | None  # the passages' most common language (None: no clue, or none at all)

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        rows: dict[str, list[int]] = {}
        counts: dict[str, list[int]] = {}
        lengths = np.zeros(len(texts), dtype=np.float32)
        languages: Counter[str] = Counter()
        for row, text in enumerate(texts):
            tokens = tokenize(text)
            if tokens.language:
                languages[tokens.language] += 1
            lengths[row] = len(tokens.terms)
            for term, tf in Counter(tokens.terms).items():
                rows.setdefault(term, []).append(row)
                counts.setdefault(term, []).append(tf)
        postings = {
            term: (np.array(rows[term], dtype=np.int32), np.array(counts[term], dtype=np.float32)) for term in rows
        }
        return cls(postings, lengths, languages.most_common(1)[0][0] if languages else None)

    @property
    def size(self) -> int:
        return len(self.lengths)

    def df(self, term: str) -> int:
        """How many passages hold `term`."""
        found = self.postings.get(term)
        return 0 if found is None else len(found[0])

    def idf(self, term: str) -> float:
        """BM25's IDF in the always-positive form (Lucene's): a term in no passage gets the
        highest value, one in every passage nearly zero."""
        n = self.df(term)
        return math.log(1 + (self.size - n + 0.5) / (n + 0.5))

    def scores(self, terms: Iterable[str]) -> np.ndarray:
        """The BM25 score of every passage for a query's terms (each distinct term once)."""
        out = np.zeros(self.size, dtype=np.float32)
        if not self.size:
            return out
        norm = K1 * (1 - B + B * self.lengths / max(float(self.lengths.mean()), 1.0))
        for term in dict.fromkeys(terms):
            found = self.postings.get(term)
            if found is None:
                continue
            rows, tf = found
            out[rows] += self.idf(term) * tf * (K1 + 1) / (tf + norm[rows])
        return out

    def ranking(self, terms: Sequence[str], limit: int) -> np.ndarray:
        """Rows of the passages with any of the terms, best first, at most `limit`."""
        scores = self.scores(terms)
        matched = np.flatnonzero(scores > 0)
        if len(matched) > limit:
            matched = matched[np.argpartition(scores[matched], -limit)[-limit:]]
        return matched[np.argsort(-scores[matched], kind="stable")]
