"""Fetching a URL someone else chose, without becoming a way into our own network (SSRF).

Parley fetches URLs that operators list (`parley kb ingest pages.urls`) and, later, URLs that
tools or models name. A URL on a public site can redirect to `http://169.254.169.254/`, to a
port on loopback or to an office printer; a name can resolve to a private address, or to a
public one when checked and a private one a second later (DNS rebinding). So:

- `refusal(address, allow)` says whether one IP address may be connected to: public unicast
  only, unless the operator allowed a range explicitly; cloud metadata addresses never.
- `url_refusal(url, allow)` applies the rules that need no DNS: the scheme, metadata host
  names, and hosts written as IP addresses (in any form `getaddrinfo` would accept).
- `GuardedResolver` is an aiohttp resolver that vets every address a name resolves to. The
  connector connects to exactly the addresses it returned, so what was checked is what is
  connected to: there is no second lookup for a rebinding answer to slip into.
- `SafeFetcher` follows redirects itself, applying all of the above at every hop, with a
  byte cap, one deadline for the whole fetch, no cookies, and credentials only for the origin
  they were written for.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from bot.errors import FetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
ACCEPT = {"Accept": "text/html, text/markdown, text/plain;q=0.9, */*;q=0.1"}

# Instance metadata services hand out cloud credentials to whatever asks from inside the
# machine. Refused even inside a range the operator allowed (169.254.0.0/16, fd00::/8, ...).
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        "169.254.170.2/32",  # AWS ECS task credentials
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
        "168.63.129.16/32",  # Azure WireServer: a public address, so only this list catches it
        "192.0.0.192/32",  # Oracle Cloud (classic)
    )
)
METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; Python calls it neither private nor global
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are the IPv4 target
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): reaches site-internal IPv4


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through mapping, 6to4 or NAT64."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _category(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is, or None for a public unicast one."""
    # The explicit tests first, so the reason names the kind; `is_global` last catches the
    # rest of the special-purpose registry (documentation, benchmarking, IETF, Teredo, ...).
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip in _SHARED, "a shared (carrier-grade NAT) address"),
        (ip in _NAT64_LOCAL, "a local-use NAT64 address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (not ip.is_global, "not a public address"),
    )
    return next((kind for hit, kind in checks if hit), None)


def refusal(address: IPAddress | str, allow: Sequence[IPNetwork] = ()) -> str | None:
    """What makes `address` refused ("a loopback address", ...), or None when it is allowed.

    Allowed: public unicast addresses, and addresses inside a range of `allow` (the operator's
    explicit list). Never allowed: cloud metadata addresses. An IPv6 address that carries an
    IPv4 one (::ffff:a.b.c.d, 6to4, NAT64) is judged by the IPv4 address it reaches."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(int(ip))  # fe80::1%eth0: the zone does not change what it is
    inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    reached = [a for a in (ip, inner) if a is not None]
    if any(a in net for a in reached for net in METADATA_NETWORKS if a.version == net.version):
        return "a cloud metadata address"
    if any(a in net for a in reached for net in allow if a.version == net.version):
        return None
    if inner is not None:
        kind = _category(inner)
        return f"an IPv6 form of {inner}, {kind}" if kind else None
    return _category(ip)


def is_allowed(address: IPAddress | str, allow: Sequence[IPNetwork] = ()) -> bool:
    return refusal(address, allow) is None


def _literal_address(host: str) -> tuple[IPAddress, bool] | None:
    """The address a host written as an IP address stands for, and whether it is written in a
    legacy IPv4 form: `2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1` are refused by `ipaddress`
    but mapped onto an address by `getaddrinfo`, so they are judged by that address."""
    try:
        return ipaddress.ip_address(host.strip("[]")), False
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host)), True
        except OSError:
            return None
    return None


def url_refusal(url: URL | str, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why `url` is refused before any DNS lookup, or None when only its name's addresses
    remain to be checked (which `GuardedResolver` does as the connector resolves it)."""
    url = URL(url) if isinstance(url, str) else url
    if url.scheme not in SCHEMES:
        return (
            f"only http and https URLs are fetched, not {url.scheme + ':' if url.scheme else 'a URL without a scheme'}"
        )
    host = (url.host or "").lower().rstrip(".")
    if not host:
        return "the URL has no host"
    if host in METADATA_HOSTS:
        return f"{host} is a cloud metadata host"
    literal = _literal_address(host)
    if literal is None:
        return None
    address, legacy = literal
    kind = refusal(address, allow)
    if legacy:
        # Even when allowed: tools disagree on what such a host means, so it is never fetched.
        return f"{host} is {address}" + (f", {kind}" if kind else f" in a legacy numeric form; write {address}")
    return f"{address} is {kind}" if kind else None


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` (the system resolver by default) and refuses the host when any of
    its addresses is refused, so the connector only ever gets, and connects to, vetted
    addresses. A name with one public and one private address is refused whole rather than
    filtered: nothing legitimate needs that, and an attacker's name would."""

    def __init__(self, allow: Sequence[IPNetwork] = (), *, inner: AbstractResolver | None = None) -> None:
        self._allow = tuple(allow)
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower().rstrip(".") in METADATA_HOSTS:
            raise FetchError(host, f"{host} is a cloud metadata host", kind="address")
        if self._inner is None:
            self._inner = ThreadedResolver()  # made here: it needs the running loop
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if (kind := refusal(result["host"], self._allow)) is not None:
                raise FetchError(host, f"{host} resolves to {result['host']}, {kind}", kind="address")
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str  # where the body came from, after redirects (credentials removed)
    content_type: str
    charset: str | None
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(self.charset or "utf-8", errors="replace")


def _bare(url: URL) -> URL:
    """`url` without user name and password (yarl refuses `with_user` on host-less URLs)."""
    return url.with_user(None) if url.user is not None or url.password is not None else url


def shown(url: URL | str) -> str:
    """The URL as it may be printed, logged or stored: without user name and password, and
    otherwise as written (so an operator finds it in their list)."""
    if isinstance(url, URL):
        return str(_bare(url))
    text = url.strip()
    try:
        parsed = URL(text)
    except ValueError:
        return re.sub(r"//[^/@]*@", "//", text)  # unparsable: cut anything that looks like userinfo
    return str(_bare(parsed)) if parsed.user is not None or parsed.password is not None else text


class SafeFetcher:
    """GET requests to URLs someone else chose, under one policy; an async context manager that
    owns its aiohttp session.

    Every hop (the URL and each redirect target) passes `url_refusal`, and its name's
    addresses pass `GuardedResolver` as the connector resolves them. `timeout` bounds the whole
    fetch (every hop and the whole body), so a server that trickles a byte a second cannot
    hold it. A body past `max_bytes` is refused, not cut: a truncated page would be ingested
    as if it were whole. User name and password from the URL go only to that URL's origin,
    never to a redirect target elsewhere; no cookies are kept."""

    def __init__(
        self,
        *,
        allow: Sequence[IPNetwork] = (),
        max_bytes: int,
        timeout: float,
        max_redirects: int = 5,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._allow = tuple(allow)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._resolver = GuardedResolver(self._allow, inner=resolver)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SafeFetcher:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=self._resolver),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # an environment proxy would resolve names itself, past our checks
            timeout=aiohttp.ClientTimeout(total=None),  # `get` keeps one deadline over all hops
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def get(self, url: str) -> Fetched:
        """The body at `url`; raises `FetchError` with a one-line reason otherwise. The error's
        `url` is always the one asked for (credentials removed); its reason names the hop."""
        if self._session is None:
            raise RuntimeError("use SafeFetcher as `async with SafeFetcher(...) as fetcher`")
        asked = shown(url)
        try:
            first = URL(url.strip())
        except ValueError as exc:
            raise FetchError(asked, f"not a valid URL: {exc}", kind="scheme") from None
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(self._session, first, asked)
        except TimeoutError:
            raise FetchError(asked, f"no complete answer within {self._timeout:g} s", kind="deadline") from None

    async def _follow(self, session: aiohttp.ClientSession, first: URL, asked: str) -> Fetched:
        origin = first.origin() if first.is_absolute() else None
        credentials = f"{first.user or ''}:{first.password or ''}" if first.user or first.password else None
        auth = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()} if credentials else {}
        current = _bare(first)
        for hop in range(self._max_redirects + 1):
            where = f"redirect to {current}: " if hop else ""
            if (reason := url_refusal(current, self._allow)) is not None:
                raise FetchError(
                    asked, f"{where}refused: {reason}", kind="address" if current.scheme in SCHEMES else "scheme"
                )
            try:
                async with session.get(
                    current,
                    allow_redirects=False,
                    headers={**ACCEPT, **(auth if current.origin() == origin else {})},
                ) as response:
                    if response.status in REDIRECTS:
                        location = response.headers.get("Location", "")
                        if not location:
                            raise FetchError(asked, f"{where}HTTP {response.status} without a Location", kind="status")
                        # Credentials never come from a redirect; ours go only to their own origin.
                        current = _bare(current.join(URL(location)))
                        continue
                    if response.status >= 400:
                        raise FetchError(
                            asked, f"{where}HTTP {response.status} {response.reason or ''}".rstrip(), kind="status"
                        )
                    body = await self._read(response, asked, where)
                    return Fetched(str(current), response.content_type, response.charset, body)
            except FetchError as exc:
                if exc.kind != "address":
                    raise
                # From GuardedResolver, which knows the host but not the URL or the hop.
                raise FetchError(asked, f"{where}refused: {exc.reason}", kind="address") from None
            except (aiohttp.ClientError, ValueError) as exc:
                raise FetchError(
                    asked, f"{where}cannot fetch it: {exc.__class__.__name__}: {exc}", kind="network"
                ) from None
        raise FetchError(asked, f"more than {self._max_redirects} redirects", kind="redirects")

    async def _read(self, response: aiohttp.ClientResponse, asked: str, where: str) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self._max_bytes:
            raise FetchError(asked, f"{where}{declared} bytes, over the limit of {self._max_bytes}", kind="size")
        body = bytearray()
        async for piece in response.content.iter_chunked(64 * 1024):
            body += piece
            if len(body) > self._max_bytes:  # stop here: the rest is never read
                raise FetchError(asked, f"{where}over the limit of {self._max_bytes} bytes", kind="size")
        return bytes(body)
