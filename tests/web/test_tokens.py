"""Visitor tokens: only a token this server signed, for this site, and not yet expired, names a visitor."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from adapters.web.tokens import InvalidToken, TokenSigner, conversation_id, is_visitor, new_visitor

SECRET = b"a-test-secret-that-signs-visitor-tokens"
NOW = 1_750_000_000.0
TTL = 3600


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signer(secret: bytes = SECRET, *, site: str = "shop", clock: Clock | None = None) -> TokenSigner:
    return TokenSigner(secret, site=site, ttl=TTL, clock=clock or Clock())


def reason(s: TokenSigner, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        s.verify(token)
    return caught.value.reason


def test_issued_token_names_its_visitor_and_expires_after_the_ttl():
    visitor = new_visitor()
    token = signer().issue(visitor)
    assert signer().verify(token) == visitor
    version, named, expires, mac = token.split(".")
    assert (version, named, int(expires)) == ("v1", visitor, int(NOW) + TTL)
    assert len(mac) == 43 and visitor not in mac


def test_new_visitors_are_random_and_well_formed():
    visitors = {new_visitor() for _ in range(1000)}
    assert len(visitors) == 1000 and all(is_visitor(v) for v in visitors)


def test_expired_token_is_refused_even_though_correctly_signed():
    clock = Clock()
    s = signer(clock=clock)
    token = s.issue(new_visitor())
    clock.now = NOW + TTL - 1
    s.verify(token)
    clock.now = NOW + TTL
    assert reason(s, token) == "expired"


def test_tampering_with_any_part_is_forgery():
    s = signer()
    token = s.issue(new_visitor())
    version, visitor, expires, mac = token.split(".")
    other = new_visitor()
    assert reason(s, f"{version}.{other}.{expires}.{mac}") == "forged"  # someone else's conversation
    assert reason(s, f"{version}.{visitor}.{int(expires) + 10**6}.{mac}") == "forged"  # a longer life
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    assert reason(s, f"{version}.{visitor}.{expires}.{flipped}") == "forged"


def test_a_mac_computed_without_the_secret_or_for_another_site_is_forgery():
    visitor = new_visitor()
    expires = int(NOW) + TTL

    def mac(key: bytes, site: str) -> str:
        digest = hmac.new(key, f"v1.{site}.{visitor}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    s = signer()
    assert s.verify(f"v1.{visitor}.{expires}.{mac(SECRET, 'shop')}") == visitor  # the real recipe, to be sure
    assert reason(s, f"v1.{visitor}.{expires}.{mac(b'guessed-secret', 'shop')}") == "forged"
    assert reason(s, f"v1.{visitor}.{expires}.{mac(SECRET, 'other-site')}") == "forged"
    assert reason(signer(b"another-server-secret-0123456789"), s.issue(visitor)) == "forged"
    assert reason(signer(site="other-site"), s.issue(visitor)) == "forged"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "null",
        "v1",
        "v1...",
        "v2." + "A" * 22 + ".1.x",
        "v1." + "A" * 21 + ".1750003600." + "A" * 43,
        "v1." + "A" * 22 + ".-5." + "A" * 43,
        "v1." + "A" * 22 + ".17e9." + "A" * 43,
        "v1." + "A" * 22 + ".1." + "A" * 44,
        "v1.AAAAAAAAAAAAAAAAAAAAA=.1.x",
        " v1." + "A" * 22 + ".1750003600." + "A" * 43,
        "x" * 10_000,
        "v1." + "A" * 22 + ".1750003600." + "A" * 42 + "\u00e9",
        "v1." + "A" * 22 + ".1750003600." + "A" * 43 + "\n",
    ],
)
def test_malformed_tokens_are_refused_before_any_mac_is_computed(token):
    assert reason(signer(), token) == "malformed"


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError):
        TokenSigner(b"", site="shop", ttl=TTL)


def test_the_conversation_id_is_a_one_way_hash_of_the_visitor_in_the_same_shape():
    visitor = new_visitor()
    conversation = conversation_id(visitor)
    assert conversation == conversation_id(visitor) and is_visitor(conversation)  # 22 base64url characters
    assert conversation != visitor and conversation_id(new_visitor()) != conversation
    assert visitor not in conversation and conversation not in signer().issue(visitor)
