"""The BM25 tokenizer and index: folding, stems, CJK bigrams, stop words, names, Okapi scores."""

import math

import numpy as np
import pytest

from bot.knowledge.lexical import K1, B, LexicalIndex, analyse, stem, tokenize


def test_accents_and_case_are_folded():
    assert tokenize("Café RÉSUMÉ Über").terms == tokenize("cafe resume uber").terms
    assert not any(c in term for term in tokenize("Données hébergées à Zürich").terms for c in "éàü")
    assert tokenize("\uff21\uff30\uff29 Straße").terms == ["api", "strass"]  # NFKC (full-width API), casefold, stem


def test_light_stems_meet_across_inflections():
    assert stem("invoices") == stem("invoice")
    assert stem("syncing") == stem("synced") == stem("sync") == "sync"
    assert stem("deleted") == stem("delete")
    assert stem("stopped") == "stop" and stem("billing") == "bill"
    assert stem("business") == "business" and stem("status") == "status"  # -ss, -us are no plurals
    assert stem("ios") == "ios"  # too short to touch


def test_chinese_is_indexed_as_overlapping_bigrams_cut_at_function_characters():
    assert tokenize("删除笔记").terms == ["删除", "除笔", "笔记"]
    assert tokenize("我的笔记").terms == ["笔记"]  # 我 and 的 join no bigram
    assert tokenize("删除笔记").language == "zh"


def test_japanese_bigrams_per_script_run_without_hiragana():
    tokens = tokenize("添付ファイルを削除")
    assert tokens.terms == ["添付", "ファ", "ァイ", "イル", "削除"]  # を (a particle) is no term
    assert tokens.language == "ja"


def test_latin_words_inside_cjk_text_are_terms_and_names():
    question = analyse("API 有官方的 Python SDK 吗\uff1f")
    names = {t.term for t in question.terms if t.name}
    assert names == {"api", "python", "sdk"} and question.language == "zh"


def test_stop_words_are_dropped_and_tell_the_language():
    tokens = tokenize("How do I reset my password?")
    assert (tokens.terms, tokens.language) == (["reset", "password"], "en")
    assert tokenize("Wie kann ich mein Abo kündigen?").language == "de"
    assert tokenize("Est-ce que je peux utiliser une clé ?").language == "fr"
    assert tokenize("Se torno al piano gratuito, posso ancora aggiungere allegati?").language == "it"
    assert tokenize("Quillstack").language is None  # no clue


def test_names_and_numbers_are_marked():
    terms = {t.term: t.name for t in analyse("Is there a Slack integration for SOC 2 and iPad?").terms}
    assert terms == {"slack": True, "integration": False, "soc": True, "2": True, "ipad": True}
    # German capitalises every noun: a capital says nothing there.
    assert not any(t.name for t in analyse("Gibt es eine Integration mit Teams?").terms)
    # An acronym that folds to a stop word is kept; shouting marks nothing.
    region = analyse("Is my data in the US region?")
    assert {t.term: t.name for t in region.terms} == {"data": False, "us": True, "region": False}
    shouted = analyse("HOW DO I RESET MY PASSWORD")
    assert [t.term for t in shouted.terms] == ["reset", "password"] and not any(t.name for t in shouted.terms)


def test_a_repeated_term_is_one_question_term_with_its_written_form():
    question = analyse("Invoices, invoice, INVOICES")
    assert [(t.term, t.word) for t in question.terms] == [("invoic", "invoices")]


PASSAGES = [
    "Refunds: monthly plans can be refunded within 14 days of a payment.",
    "Invoices: every payment produces an invoice; download invoices as PDF.",
    "Webhooks send a signed request when a note is created, updated or deleted. " * 3,
    "Payment methods: Visa, Mastercard and American Express. PayPal is not supported.",
]


def test_bm25_scores_follow_the_okapi_formula():
    index = LexicalIndex.build(PASSAGES)
    terms = tokenize("paypal payment").terms
    scores = index.scores(terms)
    avgdl = index.lengths.mean()

    def expected(row: int) -> float:
        total = 0.0
        for term in terms:
            tf = tokenize(PASSAGES[row]).terms.count(term)
            n = sum(term in tokenize(p).terms for p in PASSAGES)
            idf = math.log(1 + (len(PASSAGES) - n + 0.5) / (n + 0.5))
            total += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * index.lengths[row] / avgdl))
        return total

    assert scores == pytest.approx([expected(row) for row in range(len(PASSAGES))], rel=1e-5)


def test_bm25_ranks_the_rare_word_first_and_lists_only_matches():
    index = LexicalIndex.build(PASSAGES)
    assert index.language == "en"
    assert index.idf("paypal") > index.idf("payment") > 0  # one passage against two
    assert index.idf("never-seen") > index.idf("paypal")  # a word in no passage weighs most
    ranked = index.ranking(tokenize("Is PayPal accepted for a payment?").terms, 10)
    assert ranked.tolist() == [3, 1, 0]  # paypal and payment; then payment in the shorter passage first
    assert index.ranking(tokenize("invoice payment").terms, 1).tolist() == [1]  # tf and length decide, limit kept
    assert index.ranking(tokenize("sourdough").terms, 10).size == 0


def test_longer_passages_score_lower_for_the_same_term_frequency():
    index = LexicalIndex.build(["alpha beta", "alpha beta gamma delta epsilon zeta eta theta"])
    scores = index.scores(["alpha"])
    assert scores[0] > scores[1] > 0


def test_an_empty_index_scores_nothing():
    index = LexicalIndex.build([])
    assert index.scores(["x"]).shape == (0,) and index.ranking(["x"], 5).size == 0 and index.language is None
    assert np.isfinite(index.idf("x"))
