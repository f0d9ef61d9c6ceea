"""Reciprocal-rank fusion, and the evidence that decides between answering, asking the LLM
and refusing. The inputs are made by hand, so each rule is seen alone."""

import numpy as np

from bot.config import KBSettings
from bot.knowledge.base import RRF_K, _fused, fuse
from bot.knowledge.evidence import assess
from bot.knowledge.lexical import LexicalIndex, analyse

SETTINGS = KBSettings(_env_file=None)


def test_rrf_rewards_agreement_and_follows_the_formula():
    # 1 is second in both rankings; 0 and 2 are each first in one only.
    assert fuse([([0, 1], 1.0), ([2, 1], 1.0)])[0] == 1
    assert fuse([([0, 1, 2], 1.0), ([1], 1.0)], k=RRF_K) == [1, 0, 2]
    # A ranking of weight 0 changes nothing; a small weight only breaks ties.
    assert fuse([([3, 4, 5], 1.0), ([5, 4, 3], 0.0)]) == [3, 4, 5]
    assert fuse([([0, 1], 1.0), ([1, 0], 1.0)]) == [0, 1]  # a tie keeps the first-seen order
    assert fuse([([0, 1], 1.0), ([1, 0], 1.01)]) == [1, 0]


CHUNKS = [
    "Import and export. Quillstack imports from Evernote and Notion under Settings > Import.",
    "Invoices and receipts. Quillstack invoices are on the Billing page.",
    "Reset your password. On the sign-in page choose Forgot password.",
    "Apps. Quillstack runs in the browser and has apps for every platform.",
]


def test_a_rare_word_lifts_the_passage_the_dense_side_ranked_second():
    lexical = LexicalIndex.build(CHUNKS)
    sims = np.array([0.30, 0.35, 0.10, 0.20])  # the embedding put the invoices passage first
    question = analyse("Can I import my notes from Notion?")
    assert _fused(sims, lexical, question, "dense")[0] == 1
    assert _fused(sims, lexical, question, "lexical")[0] == 0
    assert _fused(sims, lexical, question, "hybrid")[0] == 0


def test_a_question_in_another_language_is_not_reordered_by_one_shared_word():
    lexical = LexicalIndex.build(CHUNKS)
    sims = np.array([0.10, 0.20, 0.40, 0.38])  # dense: the password passage, then the apps one
    question = analyse("Posso hospedar o Quillstack nos meus próprios servidores?")
    assert set(_fused(sims, lexical, question, "lexical")) == {0, 1, 3}  # the passages with "quillstack"
    # Only "quillstack" of its words is in the KB: the lexical side weighs (share)^2, next to nothing.
    assert _fused(sims, lexical, question, "hybrid")[:2] == [2, 3]
    assert fuse([([2, 3, 1, 0], 1.0), ([3, 1, 0], 1.0)])[0] == 3  # what an unweighted fusion would have done


KB_TEXT = [
    "Plans and pricing. Pro costs $8 per user per month. Business adds audit logs and single sign-on.",
    "Billing. We accept Visa, Mastercard and American Express. PayPal is not supported.",
    "Sync and offline mode. Changes sync within seconds on every device.",
    "API tokens. Create a personal API token under Settings > Developer.",
    "Apps. Quillstack has apps for Windows, macOS, Linux, iOS and Android.",
]
KB = LexicalIndex.build(KB_TEXT)


def test_a_question_whose_words_are_all_in_the_passages_is_covered():
    evidence = assess(analyse("How much does Pro cost per month?"), [KB_TEXT[0]], 0.45, KB, SETTINGS)
    assert evidence.covered and not evidence.borderline
    assert evidence.coverage == 1.0 and evidence.missing == () and evidence.language == "en"


def test_a_question_about_something_else_is_refused_with_its_missing_words():
    evidence = assess(analyse("How do I bake sourdough bread?"), [KB_TEXT[2]], 0.05, KB, SETTINGS)
    assert not evidence.covered and evidence.score < SETTINGS.refuse_below
    assert set(evidence.missing) == {"bake", "sourdough", "bread"} and evidence.coverage == 0.0


def test_a_missing_name_weighs_more_than_a_missing_word():
    name = assess(analyse("Does Business add audit logs for Slack?"), [KB_TEXT[0]], 0.3, KB, SETTINGS)
    word = assess(analyse("Does Business add audit logs for channels?"), [KB_TEXT[0]], 0.3, KB, SETTINGS)
    assert name.missing == ("slack",) and word.missing == ("channels",)
    assert name.coverage < word.coverage and name.score < word.score


def test_the_dense_similarity_carries_a_paraphrase_the_words_miss():
    question = analyse("Is Mastercard accepted for a wire transfer?")
    low = assess(question, [KB_TEXT[1]], 0.12, KB, SETTINGS)
    high = assess(question, [KB_TEXT[1]], 0.45, KB, SETTINGS)
    assert low.coverage == high.coverage and 0 < low.coverage < 1 and low.missing == ("wire", "transfer")
    assert not low.covered and high.covered


def test_another_language_is_judged_by_its_shared_words_and_names_and_by_the_cosine():
    # No word in common with the English KB: the cosine alone carries the question.
    german = analyse("Wo erstelle ich persönliche Zugangsschlüssel für die Entwicklerschnittstelle?")
    close = assess(german, [KB_TEXT[3]], 0.45, KB, SETTINGS)
    far = assess(german, [KB_TEXT[3]], 0.12, KB, SETTINGS)
    assert close.language == "de" and close.missing == () and close.score == 1.0
    assert close.covered and not far.covered
    # Words the KB has too ("API", "Token") are judged like English ones.
    shared = assess(analyse("Wo erstelle ich ein API-Token?"), [KB_TEXT[3]], 0.12, KB, SETTINGS)
    assert shared.coverage == 1.0 and shared.score > far.score and shared.covered
    # Words absent from the English KB are not counted as missing; a missing name is.
    python = assess(analyse("Existe-t-il un SDK officiel pour Python ?"), [KB_TEXT[3]], 0.45, KB, SETTINGS)
    assert python.language == "fr" and set(python.missing) == {"sdk", "python"} and python.score < close.score


def test_borderline_evidence_lies_between_the_two_thresholds():
    settings = KBSettings(_env_file=None, refuse_below=0.2, check_below=0.9)
    evidence = assess(analyse("Does Business add audit logs for Slack?"), [KB_TEXT[0]], 0.3, KB, settings)
    assert 0.2 <= evidence.score < 0.9 and evidence.covered and evidence.borderline
    assert "borderline" in str(evidence) and "slack" in str(evidence)


def test_no_passages_is_no_evidence():
    evidence = assess(analyse("How much does Pro cost?"), [], 0.0, KB, SETTINGS)
    assert not evidence.covered and evidence.score == 0.0
