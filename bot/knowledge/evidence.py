"""Do the retrieved passages answer the question? Judged from the evidence in them.

A similarity threshold cannot tell: on a held-out set, refusing 17 of 20 unanswerable
questions by the best passage's cosine also refused 21 of 80 answerable ones. A question
the KB does not answer is often about the product ("How long are audit logs kept?") and
as close to the passages as one it does; what differs is whether its distinctive words
are in them. So the score (0 to 1) mixes two signals:

- coverage: the question's terms found in the passages, each weighted by its IDF over the
  KB (a word in every passage says nothing), names and numbers twice: an unknown "Slack"
  or "27001" is the surest sign the KB does not cover the question;
- the best passage's cosine, mapped onto 0..1 between `dense_none` and `dense_full`.

Coverage counts for `LEXICAL_SHARE` of the score, times the share of the question that
word matching can judge: all of it when the question is in the KB's language. In another
language the KB's words cannot match, so only names, numbers and the words the KB has
too ("API", "PDF", "Okta") are judged, and the rest of the weight goes to the dense
similarity, which works across languages.

Three outcomes (KBSettings): below `refuse_below` the bot says it does not know without
asking the LLM; from there up to `check_below` the QA handler asks the LLM whether the
passages answer (the borderline band); above, it answers.

Measured on the dev set (bot/data/kb-eval.jsonl: 114 answerable and 40 unanswerable
questions in 8 languages), with the defaults: evidence alone refuses 45 % of the
unanswerable and 4 % of the answerable questions and leaves 29 % of all to the LLM, 6 of
the 40 unanswerable ones above the band. The best passage's cosine alone, held to the
same 4 % and the same 6, refuses 42 % and leaves 44 % to the LLM. Thresholds tuned on
one half of that set and checked on the other moved by up to 0.1 and let 2-7 % of
answerable questions be refused: 40 unanswerable questions are few to set a band with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.config import KBSettings
from bot.knowledge.lexical import LexicalIndex, Question, tokenize

# The most the term coverage weighs in the score; the rest is the dense similarity, which
# also carries paraphrases ("lockout" for "locked"), where words cannot match.
LEXICAL_SHARE = 0.7
NAME_WEIGHT = 2.0  # names and numbers count twice a plain word of the same IDF


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a question is answered, checked or refused: shown in logs and by `parley eval kb`."""

    covered: bool  # the passages may answer it (False: "I don't know", no LLM call)
    borderline: bool  # covered, but not clearly: the LLM is asked to confirm
    score: float  # 0..1, what the thresholds read
    coverage: float  # share of the question's judged term weight found in the passages
    cosine: float  # the best passage's dense similarity
    missing: tuple[str, ...]  # the question's judged words not in the passages, weightiest first
    language: str | None  # the question's language as the stop words tell

    def __str__(self) -> str:
        verdict = "borderline" if self.borderline else "covered" if self.covered else "not covered"
        missing = ", ".join(self.missing[:5]) or "-"
        return (
            f"{verdict}: evidence {self.score:.2f} (coverage {self.coverage:.2f}, cosine {self.cosine:.2f}, "
            f"language {self.language or '?'}), missing {missing}"
        )


def assess(
    question: Question, passages: Sequence[str], cosine: float, lexical: LexicalIndex, settings: KBSettings
) -> Evidence:
    """The evidence that `passages` (their lexical text: title, heading, text) answer `question`;
    `cosine` is the best passage's dense similarity to it."""
    seen: set[str] = set()
    for text in passages:
        seen.update(tokenize(text).terms)
    same_language = question.language is None or question.language == lexical.language
    total = judged = found = 0.0
    missing: list[tuple[float, str]] = []
    for term in question.terms:
        weight = lexical.idf(term.term) * (NAME_WEIGHT if term.name else 1.0)
        total += weight
        if same_language or term.name or lexical.df(term.term):
            judged += weight
            if term.term in seen:
                found += weight
            else:
                missing.append((weight, term.word))
    coverage = found / judged if judged else 0.0
    share = LEXICAL_SHARE * (judged / total if total else 0.0)
    dense = min(max((cosine - settings.dense_none) / (settings.dense_full - settings.dense_none), 0.0), 1.0)
    score = share * coverage + (1 - share) * dense if passages else 0.0
    covered = score >= settings.refuse_below
    return Evidence(
        covered=covered,
        borderline=covered and score < settings.check_below,
        score=score,
        coverage=coverage,
        cosine=cosine,
        missing=tuple(word for _, word in sorted(missing, key=lambda m: -m[0])),
        language=question.language,
    )
