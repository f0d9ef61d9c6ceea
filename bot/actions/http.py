"""Runs an HTTP action: the operator fixed the host, the path and the headers; the model only
fills arguments, and those can never reach past the place the operator gave them.

- Each `{name}` in the URL is filled with its argument quoted with `safe=""`, so "../admin"
  or "x/y?z" stay one encoded path segment (or one query value); the URL is then used exactly
  as built (yarl's `encoded=True`), because yarl would otherwise decode `%2E%2E` and drop the
  segment before it. An argument that is exactly "." or ".." (or empty) is refused in the
  path: servers and proxies collapse such a segment however it is written.
- Every address is vetted: a host written as an IP address by `url_refusal` before any
  connection, a name by `GuardedResolver` as the connector resolves it (so a name that
  resolves to loopback, a private range or a metadata address is refused unless inside
  `fetch_allow`). Redirects are not followed: a 3xx is an error, never a second request.
- One deadline covers the whole call (connect, send, read); a body over `max_bytes` is
  refused as soon as its Content-Length says so or the bytes read pass the cap, never read
  to the end and never cut.
- Secrets (`{secret:NAME}` in header values) go in the request only. Every error reason,
  and the result itself, has the values of the secrets used replaced, in case the service
  echoes a header back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from bot.actions.secrets import UnknownSecret, fill_secrets, scrub, scrub_data, scrubbed
from bot.actions.spec import PLACEHOLDER, ActionResult, ActionSpec, HttpCall
from bot.config import ActionsSettings
from bot.errors import ActionError, FetchError
from bot.knowledge.netguard import GuardedResolver, url_refusal

log = logging.getLogger(__name__)

USER_AGENT = "Parley-actions"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
CHUNK = 64 * 1024
ERROR_PEEK = 2048  # bytes of an error answer read for its reason; the rest is never read
ERROR_CHARS = 200  # characters of an error answer's body put in the reason
# Characters of the operator's own URL text kept as written (everything reserved, and `%` so
# an escape they wrote stays one); anything else (a space, non-ASCII) is percent-encoded.
STATIC_SAFE = "!#$%&'()*+,/:;=?@[]~"
_MISSING = object()


class HttpRunner:
    """The `Runner` for `[actions.NAME.http]`. Owns one aiohttp session (made on first use, on
    the running loop, or by `open()`); `aclose()` closes it and may be called twice."""

    def __init__(self, settings: ActionsSettings) -> None:
        self._settings = settings
        self._allow = tuple(settings.fetch_allow)
        self._resolver: GuardedResolver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpRunner(fetch_allow={[str(n) for n in self._allow]}, secrets={sorted(self._settings.secrets)})"

    async def open(self) -> None:
        self._open()

    async def __aenter__(self) -> HttpRunner:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:  # a connector closes only a resolver it made itself
            await resolver.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                raise RuntimeError("HttpRunner is closed")
            self._resolver = GuardedResolver(self._allow)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._resolver),
                cookie_jar=aiohttp.DummyCookieJar(),  # one call must not carry state into the next
                trust_env=False,  # an environment proxy would resolve names itself, past the resolver
                timeout=aiohttp.ClientTimeout(total=None),  # `run` keeps one deadline over the call
            )
        return self._session

    async def run(self, spec: ActionSpec, arguments: dict[str, Any]) -> ActionResult:
        call = spec.http
        if call is None:
            raise ActionError(spec.name, "not an HTTP action", kind="protocol")
        if self._closed:
            raise ActionError(spec.name, "the action runner is shut down", kind="unavailable")
        url, rest = _build_url(spec.name, call, arguments)
        if (why := url_refusal(url, self._allow)) is not None:
            raise ActionError(spec.name, f"refused: {why}", kind="refused")
        headers, secrets = self._headers(spec.name, call)
        body: dict[str, Any] | None = None
        if call.method in BODY_METHODS:
            body = rest
        elif rest:
            url = _with_query(url, rest)
        origin = str(url.origin())
        started = time.monotonic()
        try:
            async with asyncio.timeout(call.timeout):
                session = self._open()
                async with session.request(
                    call.method, url, headers=headers, json=body, allow_redirects=False
                ) as response:
                    result = await _answer(spec.name, call, response, secrets)
        except TimeoutError:
            raise ActionError(
                spec.name, f"no complete answer from {origin} within {call.timeout:g} s", kind="timeout"
            ) from None
        except FetchError as exc:  # from GuardedResolver: a name resolving to a refused address
            raise ActionError(spec.name, f"refused: {scrub(exc.reason, secrets)}", kind="refused") from None
        except (aiohttp.ClientError, ValueError) as exc:
            reason = scrub(f"cannot reach {origin}: {exc.__class__.__name__}: {exc}", secrets)
            raise ActionError(spec.name, _one_line(reason), kind="unavailable") from None
        log.debug(
            "action %s: %s %s answered %s (%s bytes) in %.3f s",
            spec.name,
            call.method,
            origin,
            result.status,
            result.meta.get("bytes"),
            time.monotonic() - started,
        )
        return result

    def _headers(self, action: str, call: HttpCall) -> tuple[CIMultiDict[str], list[str]]:
        """The request's headers with `{secret:NAME}` filled, and the secret values to scrub."""
        headers: CIMultiDict[str] = CIMultiDict({"Accept": "application/json", "User-Agent": USER_AGENT})
        used: list[str] = []
        for name, template in call.headers.items():
            try:
                value = fill_secrets(f"header {name}", template, self._settings.secrets, used)
            except UnknownSecret as exc:
                raise ActionError(action, str(exc), kind="protocol") from None
            if "\r" in value or "\n" in value:
                raise ActionError(action, f"header {name} would hold a line break", kind="protocol")
            headers[name] = value  # replaces a default of the same name, in any case
        return headers, scrubbed(used)


def _text(value: Any) -> str:
    """An argument as it is written into a URL: JSON's spelling for anything not a string."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _build_url(action: str, call: HttpCall, arguments: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """The URL with its placeholders filled, and the arguments it did not use."""
    scheme, _, rest = call.url.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    try:
        origin = str(URL(f"{scheme}://{rest[:cut]}"))  # yarl writes an IDN host in its ASCII form
    except ValueError as exc:
        raise ActionError(action, f"the action's URL is not valid: {exc}", kind="protocol") from None
    tail = rest[cut:].split("#", 1)[0]  # a fragment is never sent
    path, sep, query = tail.partition("?")
    used: set[str] = set()

    def fill(part: str, in_path: bool) -> str:
        pieces = PLACEHOLDER.split(part)  # static, name, static, name, ..., static
        out: list[str] = []
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                out.append(quote(piece, safe=STATIC_SAFE))
                continue
            if piece not in arguments or arguments[piece] is None:
                raise ActionError(action, f"the argument {piece} is required: the URL needs it", kind="invalid")
            value = _text(arguments[piece])
            if in_path and value in ("", ".", ".."):
                raise ActionError(action, f"the argument {piece} cannot be {value!r}", kind="invalid")
            used.add(piece)
            out.append(quote(value, safe=""))
        return "".join(out)

    filled = fill(path, True) + sep + fill(query, False)
    try:
        url = URL(origin + filled, encoded=True)
    except ValueError as exc:
        raise ActionError(action, f"the action's URL is not valid: {exc}", kind="protocol") from None
    return url, {k: v for k, v in arguments.items() if k not in used}


def _with_query(url: URL, params: dict[str, Any]) -> URL:
    """`url` with `params` appended to its query, each quoted like a placeholder. A list gives
    the name once per element; None leaves the parameter out."""
    pairs: list[str] = []
    for name, value in params.items():
        values: Iterable[Any] = value if isinstance(value, list) else [value]
        pairs += [f"{quote(name, safe='')}={quote(_text(v), safe='')}" for v in values if v is not None]
    if not pairs:
        return url
    query = url.raw_query_string
    return URL(f"{url.with_query(None)}?{query + '&' if query else ''}{'&'.join(pairs)}", encoded=True)


async def _answer(action: str, call: HttpCall, response: aiohttp.ClientResponse, secrets: list[str]) -> ActionResult:
    status = response.status
    if 300 <= status < 400:
        response.close()
        raise ActionError(
            action, f"HTTP {status}: a redirect, which actions do not follow", kind="status", status=status
        )
    if status >= 400:
        peek = await _peek(response)
        response.close()
        text = _one_line(scrub(_decode(peek, response.charset), secrets))[:ERROR_CHARS]
        raise ActionError(action, f"HTTP {status}" + (f": {text}" if text else ""), kind="status", status=status)
    declared = response.content_length
    if declared is not None and declared > call.max_bytes:
        response.close()
        raise ActionError(action, f"the answer is {declared} bytes, over the cap of {call.max_bytes}", kind="size")
    body = bytearray()
    async for piece in response.content.iter_chunked(CHUNK):
        body += piece
        if len(body) > call.max_bytes:  # stop here: the rest is never read
            response.close()
            raise ActionError(action, f"the answer is over the cap of {call.max_bytes} bytes", kind="size")
    data: Any
    if not body:
        data = None
    elif _is_json(response.content_type):
        try:
            data = json.loads(_decode(bytes(body), response.charset).removeprefix("\ufeff"))
        except (ValueError, RecursionError) as exc:
            raise ActionError(
                action, f"the answer says JSON but is not: {_one_line(str(exc))}", kind="protocol"
            ) from None
        if call.returns:
            data = select(data, call.returns)
    else:
        data = _decode(bytes(body), response.charset)
    if secrets:
        data = scrub_data(data, secrets)
    return ActionResult(data=data, status=status, meta={"bytes": len(body)})


async def _peek(response: aiohttp.ClientResponse) -> bytes:
    """The first bytes of an answer, enough for an error's reason."""
    peek = bytearray()
    while len(peek) < ERROR_PEEK:
        piece = await response.content.read(ERROR_PEEK - len(peek))
        if not piece:
            break
        peek += piece
    return bytes(peek)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def select(data: Any, fields: Sequence[str]) -> Any:
    """The `fields` (dotted paths) of a JSON answer, as a dict keyed by path; missing ones are
    left out. A list at the top level gives one such dict per element. Inside a path, a list
    maps the rest of the path over its elements ("items.sku": every item's sku)."""
    if isinstance(data, list):
        return [_select_one(element, fields) for element in data]
    return _select_one(data, fields)


def _select_one(data: Any, fields: Sequence[str]) -> dict[str, Any]:
    picked = {path: _pick(data, path.split(".")) for path in fields}
    return {path: value for path, value in picked.items() if value is not _MISSING}


def _pick(value: Any, parts: list[str]) -> Any:
    for i, part in enumerate(parts):
        if isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, list):
            found = [v for v in (_pick(element, parts[i:]) for element in value) if v is not _MISSING]
            return found if found else _MISSING
        else:
            return _MISSING
    return value
