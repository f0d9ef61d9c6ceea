"""The profanity matcher: better-profanity's list and look-alikes, at set-look-up speed."""

import random
from pathlib import Path

import better_profanity

from bot.moderation.moderator import _Profanity

CLEAN = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
]
LEET = {"a": "@", "o": "0", "i": "1", "e": "3", "s": "$"}


def test_every_listed_word_is_found_plain_and_disguised_and_clean_text_is_not():
    matcher = _Profanity()
    listed = [
        w.strip()
        for w in Path(better_profanity.__file__).with_name("profanity_wordlist.txt").read_text().splitlines()
        if w.strip()
    ]
    rng = random.Random(7)
    for word in listed:
        disguised = "".join(LEET.get(c, c) if rng.random() < 0.5 else c for c in word)
        for planted in (word, disguised, word.upper()):
            words = rng.sample(CLEAN, 5)
            words.insert(2, planted)
            text = " ".join(words) + rng.choice(["", ".", "!", "?"])
            assert matcher.found(text), text
    for _ in range(500):
        assert not matcher.found(" ".join(rng.sample(CLEAN, 8)))


def test_censor_hides_only_the_bad_words():
    assert _Profanity().censor("that sh1t is fine, class") == "that **** is fine, class"
