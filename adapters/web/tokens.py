"""Visitor tokens: who an anonymous web-chat visitor is, signed so that nobody can claim to be
someone else. Pure logic, no I/O.

A token is `v1.<visitor>.<expires>.<mac>`:

- `visitor`: 16 random bytes, base64url (22 characters); the conversation's channel is its
  hash (`conversation_id`), so the id is never shown outside the token;
- `expires`: Unix seconds after which the token no longer opens the conversation;
- `mac`: base64url HMAC-SHA256 over `v1.<site>.<visitor>.<expires>` with the server secret.

The site (tenant) is inside the MAC but not the token, so a token one site issued opens
nothing on another site that shares the secret. Nothing about the visitor is stored on the
server: the token is the whole session, so any replica can check it. A bad token is never
an error the visitor sees: the caller starts a new conversation instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

from bot.errors import ParleyError

VERSION = "v1"
MAX_TOKEN_CHARS = 128  # a real token is 3 + 22 + 10 + 43 characters and three dots
_VISITOR = re.compile(r"[A-Za-z0-9_-]{22}")
_TOKEN = re.compile(r"v1\.([A-Za-z0-9_-]{22})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


class InvalidToken(ParleyError):
    """A visitor token that opens nothing. `reason`: malformed, forged or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason} visitor token")
        self.reason = reason


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_visitor() -> str:
    """A fresh anonymous visitor id (128 random bits: unguessable, and never reused)."""
    return _b64(secrets.token_bytes(16))


def is_visitor(value: str) -> bool:
    return bool(_VISITOR.fullmatch(value))


def conversation_id(visitor: str) -> str:
    """The name a visitor's conversation goes by past the adapter (turns, the context in Redis,
    support tickets, logs): a one-way hash of the visitor id, in the same shape (22 base64url
    characters). The visitor id itself stays inside the token, so a ticket header or a log
    line never shows a part of anyone's token."""
    return _b64(hashlib.sha256(b"parley-web-conversation:" + visitor.encode("ascii")).digest()[:16])


class TokenSigner:
    """Issues and checks the tokens of one site. `clock` is injectable so expiry is testable."""

    def __init__(self, secret: bytes, *, site: str, ttl: int, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("an empty secret signs nothing")
        self._secret = secret
        self._site = site
        self._ttl = ttl
        self._clock = clock

    def _mac(self, visitor: str, expires: int) -> str:
        message = f"{VERSION}.{self._site}.{visitor}.{expires}".encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def issue(self, visitor: str) -> str:
        """A token for `visitor`, valid for `ttl` seconds from now. Re-issued on every visit,
        so a conversation lasts while the visitor keeps coming back."""
        if not is_visitor(visitor):
            raise ValueError("not a visitor id")
        expires = int(self._clock()) + self._ttl
        return f"{VERSION}.{visitor}.{expires}.{self._mac(visitor, expires)}"

    def verify(self, token: str) -> str:
        """The visitor the token names; `InvalidToken` if it is malformed, forged or expired."""
        match = _TOKEN.fullmatch(token) if len(token) <= MAX_TOKEN_CHARS else None
        if match is None:
            raise InvalidToken("malformed")
        visitor, expires, mac = match.group(1), int(match.group(2)), match.group(3)
        # Constant time, so the MAC cannot be found byte by byte from response times.
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(visitor, expires).encode("ascii")):
            raise InvalidToken("forged")
        if expires <= self._clock():
            raise InvalidToken("expired")
        return visitor
