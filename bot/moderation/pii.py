"""Personal data in text: e-mail addresses, phone numbers, card numbers that pass the Luhn
check and IBANs that pass the mod-97 check (the checksums keep order numbers and the like
from being taken for cards or IBANs). A leaf: moderation, the support desk's transcripts and
the log formatter all redact with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

PII_KINDS = ("email", "phone", "card", "iban")

# Linear in the text's length: a local part is read at most 64 characters back from its "@"
# and a domain's first label at most 63 forward (the limits of RFC 5321 and 1035), so a long
# run of word characters and dots ("a.a.a…", a token) is not read again from each of its word
# boundaries to its end (that was quadratic: 0.15 s on 8,000 characters, 15 s on 80,000). A
# start next to a word character (a word boundary, as before, or inside a word) redacts even
# an over-long local part's last 64 characters.
_EMAIL = re.compile(r"(?>(?<=\w)|(?=\w))[\w.+-]{1,64}+@[\w-]{1,63}+(?:\.[\w-]+)+\b")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
# +country or a leading 0, then 6-14 more digits with spaces, dots, dashes or brackets.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?|\(?0)\(?\d{1,4}\)?(?:[\s.-]?\d){5,12}(?!\w)")
_NOT_DIGIT = re.compile(r"\D")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def find_pii(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each piece of personal data, without overlaps, in order."""
    found: list[tuple[str, int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for _, s, e in found)

    for m in _EMAIL.finditer(text):
        found.append(("email", m.start(), m.end()))
    for m in _IBAN.finditer(text):
        if free(m.start(), m.end()) and iban_ok(m[0]):
            found.append(("iban", m.start(), m.end()))
    for m in _CARD.finditer(text):
        digits = _NOT_DIGIT.sub("", m[0])
        if free(m.start(), m.end()) and 13 <= len(digits) <= 19 and luhn_ok(digits):
            found.append(("card", m.start(), m.end()))
    for m in _PHONE.finditer(text):
        digits = _NOT_DIGIT.sub("", m[0])
        if free(m.start(), m.end()) and 7 <= len(digits) <= 15:
            found.append(("phone", m.start(), m.end()))
    return sorted(found, key=lambda f: f[1])


def redact_pii(text: str, *, keep: Callable[[str, str], bool] | None = None) -> str:
    """`text` with each piece of personal data replaced by `[kind removed]`; `keep(kind, piece)`
    may spare a piece (log lines spare ids that only look like card numbers)."""
    return redact_found(text, find_pii(text), keep)


def redact_found(text: str, found: list[tuple[str, int, int]], keep: Callable[[str, str], bool] | None = None) -> str:
    for kind, start, end in reversed(found):
        if keep is None or not keep(kind, text[start:end]):
            text = text[:start] + f"[{kind} removed]" + text[end:]
    return text
