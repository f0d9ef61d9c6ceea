"""`parley kb ingest` of a URL list fetches only what an operator meant (issue 12, item 9).

A 302 from a help-centre page to a loopback "metadata" server was followed, and the
credentials it served were ingested and quoted to users. These tests run the command's own
ingest function (`bot.tools.cli._kb_ingest`) against a real redis-server and real HTTP servers on
loopback. No public site can exist here, so the "good" site listens on 127.0.0.2 and is let
in by the operator setting (PARLEY_KB_FETCH_ALLOW=127.0.0.2/32); the "metadata" server
listens on 127.0.0.1, which nothing allows. Every refused URL must be named on its own line
with a reason, and the other URLs must still be ingested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bot.config import KBSettings, Settings, load_settings
from bot.errors import ConfigError, ParleyError
from bot.tools import cli

SECRET = "AKIA-parley-test-4711"  # what the metadata server hands out
GOOD_TEXT = "Support answers on weekdays from 8:00 to 18:00."
ENDLESS = 32 * 1024 * 1024  # more than loopback's socket buffers hold, so a reader that stops is seen


@dataclass
class Site:
    base: str
    hits: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization header)
    written: dict[str, int] = field(default_factory=dict)  # body bytes a streaming handler got out
    finished: dict[str, asyncio.Event] = field(default_factory=dict)


Handler = Callable[[web.Request, Site], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(host: str, routes: dict[str, Handler], port: int = 0) -> AsyncIterator[Site]:
    """An aiohttp server on `host` (a loopback address) that records every request."""
    sock = socket.socket()
    sock.bind((host, port))
    site = Site(f"http://{host}:{sock.getsockname()[1]}")

    async def handle(request: web.Request) -> web.StreamResponse:
        site.hits.append((request.path, request.headers.get("Authorization")))
        handler = routes.get(request.path) or routes.get("*")
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request, site)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield site
    finally:
        await runner.cleanup()


def text(body: str, content_type: str = "text/markdown") -> Handler:
    async def handler(request: web.Request, site: Site) -> web.StreamResponse:
        return web.Response(text=body, content_type=content_type)

    return handler


def redirect(to: Callable[[], str]) -> Handler:
    async def handler(request: web.Request, site: Site) -> web.StreamResponse:
        raise web.HTTPFound(to())

    return handler


async def metadata(request: web.Request, site: Site) -> web.StreamResponse:
    return web.Response(text=f"# Instance credentials\n\nAccessKeyId: {SECRET}\n", content_type="text/plain")


def streamed(name: str, head: bytes, piece: bytes, count: int, pause: float, tail: bytes) -> Handler:
    """A chunked body (no Content-Length): `head`, then `count` pieces `pause` seconds apart."""

    async def handler(request: web.Request, site: Site) -> web.StreamResponse:
        done = site.finished.setdefault(name, asyncio.Event())
        response = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
        await response.prepare(request)
        written = 0
        try:
            await response.write(head)
            for _ in range(count):
                await response.write(piece)
                written += len(piece)
                if pause:
                    await asyncio.sleep(pause)
            await response.write(tail)
            await response.write_eof()
        except ConnectionError:  # the reader went away
            pass
        finally:
            site.written[name] = written
            done.set()
        return response

    return handler


@pytest.fixture
async def metadata_server() -> AsyncIterator[Site]:
    async with serve("127.0.0.1", {"*": metadata}) as site:
        yield site


@pytest.fixture
async def good(metadata_server: Site) -> AsyncIterator[Site]:
    meta = metadata_server.base
    routes: dict[str, Handler] = {
        "/page": text(f"# Opening hours\n\n{GOOD_TEXT}\n"),
        "/moved": redirect(lambda: f"{meta}/latest/meta-data/iam/security-credentials/parley"),
        "/moved-by-name": redirect(lambda: meta.replace("127.0.0.1", "localhost") + "/latest/meta-data/"),
        "/moved-to-metadata": redirect(lambda: "http://169.254.169.254/latest/meta-data/"),
        "/moved-to-file": redirect(lambda: "file:///etc/passwd"),
        "/loop": redirect(lambda: "/loop"),
        "/declared-big": text(
            "<html><title>Big</title><body><p>Big.</p><script>" + "x" * 200_000 + "</script>", "text/html"
        ),
        "/endless": streamed(
            "endless",
            b"<html><title>Huge</title><body><p>Huge.</p><script>",
            b"x" * 65536,
            ENDLESS // 65536,
            0,
            b"</script></body></html>",
        ),
        "/slow": streamed("slow", b"<html><title>Slow</title><body><p>", b"tick ", 50, 0.1, b"</p></body></html>"),
    }
    async with serve("127.0.0.2", routes) as site:
        yield site


def kb_settings(**values: object) -> KBSettings:
    return KBSettings(_env_file=None, **{"fetch_allow": "127.0.0.2/32", **values})


@dataclass
class Run:
    out: str  # what the command printed (stderr and stdout)
    error: str  # its final error line, "" when it succeeded
    stored: dict[str, str]  # source -> the text of its chunks, as kept in Redis


async def ingest(settings: Settings, redis, tmp_path: Path, capsys, urls: list[str]) -> Run:
    """`parley kb ingest pages.urls` for the default tenant, and what it left in Redis."""
    path = tmp_path / "pages.urls"
    path.write_text("# the help centre\n" + "\n".join(urls) + "\n")
    error = ""
    try:
        await cli._kb_ingest(settings, path, None)
    except ParleyError as exc:
        error = str(exc)
    captured = capsys.readouterr()
    stored = {}
    prefix = settings.redis.prefix
    for source, meta in (await redis.hgetall(f"{prefix}:kb:default:docs")).items():
        chunks = json.loads(await redis.hget(json.loads(meta)["key"], "chunks"))
        stored[source.decode()] = "\n".join(chunk_text for _, chunk_text in chunks)
    return Run(captured.err + captured.out, error, stored)


def skipped_line(run: Run, url: str) -> str:
    """The one line that names `url` as skipped, and its reason."""
    lines = [ln for ln in run.out.splitlines() if f"skipped {url}:" in ln]
    assert len(lines) == 1, f"no single 'skipped {url}' line in:\n{run.out}"
    return lines[0]


def assert_good_page_ingested(run: Run, good: Site) -> None:
    assert f"{good.base}/page" in run.stored, run.out
    assert GOOD_TEXT in run.stored[f"{good.base}/page"]


async def test_loopback_private_link_local_and_metadata_hosts_are_refused(
    make_settings, redis, good, metadata_server, tmp_path, capsys, caplog
):
    """(a) Each non-public target is refused before any connection, with its reason; the
    metadata server never sees a request; the public page is still ingested."""
    port = metadata_server.base.rsplit(":", 1)[1]
    refused = {
        f"http://127.0.0.1:{port}/latest/meta-data/": "127.0.0.1 is a loopback address",
        f"http://localhost:{port}/latest/meta-data/": "resolves to 127.0.0.1, a loopback address",
        f"http://2130706433:{port}/": "2130706433 is 127.0.0.1, a loopback address",
        f"http://0177.0.0.1:{port}/": "0177.0.0.1 is 127.0.0.1, a loopback address",
        f"http://[::ffff:127.0.0.1]:{port}/": "an IPv6 form of 127.0.0.1, a loopback address",
        f"http://[::1]:{port}/": "::1 is a loopback address",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a cloud metadata address",
        "http://[fd00:ec2::254]/latest/meta-data/": "fd00:ec2::254 is a cloud metadata address",
        "http://metadata.google.internal/computeMetadata/v1/": "metadata.google.internal is a cloud metadata host",
        "http://169.254.10.20/": "169.254.10.20 is a link-local address",
        "http://10.1.2.3/": "10.1.2.3 is a private address",
        "http://100.64.0.1/": "100.64.0.1 is a shared (carrier-grade NAT) address",
    }
    settings = make_settings(kb=kb_settings())
    with caplog.at_level(logging.WARNING, logger="bot.knowledge.base"):
        run = await ingest(settings, redis, tmp_path, capsys, [f"{good.base}/page", *refused])

    for url, reason in refused.items():
        assert reason in skipped_line(run, url)
        assert any(url in record.getMessage() and reason in record.getMessage() for record in caplog.records)
    assert_good_page_ingested(run, good)
    assert list(run.stored) == [f"{good.base}/page"]
    assert metadata_server.hits == []
    assert run.error == f"{len(refused)} of {len(refused) + 1} URLs skipped (reasons above)"


async def test_a_redirect_to_a_refused_address_is_refused_at_that_hop(
    make_settings, redis, good, metadata_server, tmp_path, capsys
):
    """(b) Only 127.0.0.2/32 is allowed. Its redirects to the loopback metadata server (by
    address and by name), to 169.254.169.254 and to file:// are refused at the hop, so nothing
    of the target is fetched or stored; an endless redirect loop ends after a few hops."""
    settings = make_settings(kb=kb_settings())
    meta = metadata_server.base
    run = await ingest(
        settings,
        redis,
        tmp_path,
        capsys,
        [
            f"{good.base}/moved",
            f"{good.base}/moved-by-name",
            f"{good.base}/moved-to-metadata",
            f"{good.base}/moved-to-file",
            f"{good.base}/loop",
            f"{good.base}/page",
        ],
    )

    assert (
        f"redirect to {meta}/latest/meta-data/iam/security-credentials/parley: refused: 127.0.0.1 is a loopback address"
    ) in skipped_line(run, f"{good.base}/moved")
    assert "resolves to 127.0.0.1, a loopback address" in skipped_line(run, f"{good.base}/moved-by-name")
    assert "169.254.169.254 is a cloud metadata address" in skipped_line(run, f"{good.base}/moved-to-metadata")
    assert "only http and https URLs are fetched" in skipped_line(run, f"{good.base}/moved-to-file")
    assert "more than 5 redirects" in skipped_line(run, f"{good.base}/loop")
    assert metadata_server.hits == []
    assert not any(SECRET in t or "root:" in t for t in run.stored.values())
    assert_good_page_ingested(run, good)
    assert run.error.startswith("5 of 6 URLs skipped")


async def test_credentials_go_only_to_the_origin_they_were_written_for(make_settings, redis, tmp_path, capsys):
    """A URL's user name and password reach its own origin, never a redirect target on another
    host, and are never printed or stored (the source and citation drop them)."""

    async def private(request: web.Request, site: Site) -> web.StreamResponse:
        if request.headers.get("Authorization") is None:
            raise web.HTTPUnauthorized()
        raise web.HTTPFound(other.base + "/page")

    async with (
        serve("127.0.0.3", {"/page": text(f"# Elsewhere\n\n{GOOD_TEXT}\n")}) as other,
        serve("127.0.0.2", {"/private": private}) as origin,
    ):
        settings = make_settings(kb=kb_settings(fetch_allow="127.0.0.2/32,127.0.0.3/32"))
        listed = origin.base.replace("http://", "http://kb:hunter2@") + "/private"
        run = await ingest(settings, redis, tmp_path, capsys, [listed])

    assert origin.hits[0][1] is not None  # the first hop got the credentials
    assert other.hits == [("/page", None)]  # the other host did not
    assert list(run.stored) == [f"{origin.base}/private"] and GOOD_TEXT in run.stored[f"{origin.base}/private"]
    assert "hunter2" not in run.out and run.error == ""


async def test_a_page_over_the_byte_cap_is_skipped_without_reading_the_rest(
    make_settings, redis, good, tmp_path, capsys
):
    """(c) PARLEY_KB_FETCH_MAX_BYTES: a page over it is skipped, not cut short. A declared
    Content-Length over the cap is refused before the body; a chunked body is read only up to
    the cap, so an endless one cannot fill the machine's memory."""
    settings = make_settings(kb=kb_settings(fetch_max_bytes=20_000))
    run = await ingest(
        settings, redis, tmp_path, capsys, [f"{good.base}/declared-big", f"{good.base}/endless", f"{good.base}/page"]
    )

    assert "over the limit of 20000 (PARLEY_KB_FETCH_MAX_BYTES)" in skipped_line(run, f"{good.base}/declared-big")
    assert "over the limit of 20000 bytes (PARLEY_KB_FETCH_MAX_BYTES)" in skipped_line(run, f"{good.base}/endless")
    async with asyncio.timeout(60):  # a guard, not a measurement: the handler ends once its reader left
        await good.finished["endless"].wait()
    assert good.written["endless"] < ENDLESS
    assert list(run.stored) == [f"{good.base}/page"]
    assert run.error.startswith("2 of 3 URLs skipped")


async def test_a_server_that_trickles_past_the_deadline_is_skipped(make_settings, redis, good, tmp_path, capsys):
    """(d) PARLEY_KB_FETCH_TIMEOUT bounds the whole fetch, not each read: a server that sends
    a few bytes every 0.1 s for 5 s is given up on after 1 s, and the other URLs load."""
    settings = make_settings(kb=kb_settings(fetch_timeout=1.0))
    run = await ingest(settings, redis, tmp_path, capsys, [f"{good.base}/slow", f"{good.base}/page"])

    assert "no complete answer within 1 s (PARLEY_KB_FETCH_TIMEOUT)" in skipped_line(run, f"{good.base}/slow")
    assert list(run.stored) == [f"{good.base}/page"]
    assert run.error.startswith("1 of 2 URLs skipped")


async def test_only_http_and_https_urls_are_fetched(make_settings, redis, good, tmp_path, capsys):
    """(e) file://, ftp://, gopher:// and scheme-less lines of a URL list are refused by name."""
    settings = make_settings(kb=kb_settings())
    host = good.base.removeprefix("http://")
    refused = {
        "file:///etc/passwd": "not file:",
        f"ftp://{host}/page": "not ftp:",
        f"gopher://{host}/_GET%20/page": "not gopher:",
        f"{host}/page": "only http and https URLs are fetched",
    }
    run = await ingest(settings, redis, tmp_path, capsys, [*refused, f"{good.base}/page"])

    for url, reason in refused.items():
        assert reason in skipped_line(run, url)
    assert list(run.stored) == [f"{good.base}/page"]
    assert [path for path, _ in good.hits] == ["/page"]


async def test_a_skipped_url_keeps_the_version_ingested_before(make_settings, redis, tmp_path, capsys):
    """A page that fails this time (refused, too slow, down) is not pruned: its earlier
    version stays until a fetch succeeds or the URL leaves the list."""
    answers = iter([f"# Status\n\n{GOOD_TEXT}\n"])

    async def flaky(request: web.Request, site: Site) -> web.StreamResponse:
        body = next(answers, None)
        if body is None:
            raise web.HTTPServiceUnavailable()
        return web.Response(text=body, content_type="text/markdown")

    async with serve("127.0.0.2", {"/status": flaky}) as site:
        settings = make_settings(kb=kb_settings())
        first = await ingest(settings, redis, tmp_path, capsys, [f"{site.base}/status"])
        second = await ingest(settings, redis, tmp_path, capsys, [f"{site.base}/status"])

    assert first.error == "" and GOOD_TEXT in first.stored[f"{site.base}/status"]
    assert "HTTP 503 Service Unavailable" in skipped_line(second, f"{site.base}/status")
    assert second.stored == first.stored and "0 removed" in second.out


# -- (f) the address check itself ----------------------------------------------------------------

ADDRESSES = [
    # (address, what refuses it; None: allowed)
    ("93.184.216.34", None),
    ("2606:4700:4700::1111", None),
    ("::ffff:93.184.216.34", None),  # IPv4-mapped form of a public address
    ("2002:5db8:d822::1", None),  # 6to4 of a public address
    ("64:ff9b::5db8:d822", None),  # NAT64 of a public address
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "an IPv6 form of 127.0.0.1, a loopback address"),
    ("::ffff:7f00:1", "an IPv6 form of 127.0.0.1, a loopback address"),
    ("2002:7f00:1::1", "an IPv6 form of 127.0.0.1, a loopback address"),  # 6to4
    ("64:ff9b::a00:1", "an IPv6 form of 10.0.0.1, a private address"),  # NAT64
    ("::ffff:169.254.169.254", "a cloud metadata address"),
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("10.0.0.1", "a private address"),
    ("172.16.5.4", "a private address"),
    ("192.168.1.1", "a private address"),
    ("fc00::1", "a private address"),
    ("fd12:3456::1", "a private address"),
    ("169.254.1.1", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%2", "a link-local address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("ff0e::1", "a multicast address"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("100.127.255.254", "a shared (carrier-grade NAT) address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("::127.0.0.1", "a reserved address"),  # deprecated IPv4-compatible form
    ("fec0::1", "a site-local address"),
    ("64:ff9b:1::a00:1", "a local-use NAT64 address"),
    ("192.0.2.1", "a private address"),  # documentation range: special-purpose
    ("198.18.0.1", "a private address"),  # benchmarking
    ("2001:db8::1", "a private address"),
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.170.2", "a cloud metadata address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("100.100.100.200", "a cloud metadata address"),
    ("168.63.129.16", "a cloud metadata address"),  # Azure's is public: only the list catches it
]


@pytest.mark.parametrize(("address", "refused"), ADDRESSES)
def test_address_table(address, refused):
    from bot.knowledge.netguard import is_allowed, refusal

    assert refusal(address) == refused
    assert is_allowed(address) is (refused is None)


@pytest.mark.parametrize(
    ("address", "allow", "refused"),
    [
        ("127.0.0.2", "127.0.0.2/32", None),
        ("127.0.0.1", "127.0.0.2/32", "a loopback address"),
        ("::ffff:127.0.0.2", "127.0.0.2/32", None),  # judged by the IPv4 address it reaches
        ("10.20.1.1", "10.20.0.0/16,fd12::/48", None),
        ("fd12::5", "10.20.0.0/16,fd12::/48", None),
        ("10.21.0.1", "10.20.0.0/16,fd12::/48", "a private address"),
        ("169.254.169.254", "169.254.0.0/16", "a cloud metadata address"),  # never, whatever is allowed
        ("fd00:ec2::254", "fd00::/8", "a cloud metadata address"),
    ],
)
def test_an_allowed_range_lets_only_itself_in(address, allow, refused):
    from bot.knowledge.netguard import refusal

    assert refusal(address, KBSettings(_env_file=None, fetch_allow=allow).fetch_allow) == refused


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://example.com/help", None),  # a name: its addresses are checked as it is resolved
        ("https://93.184.216.34/help", None),
        ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("HTTP://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://2130706433/", "2130706433 is 127.0.0.1, a loopback address"),  # decimal
        ("http://0177.0.0.1/", "0177.0.0.1 is 127.0.0.1, a loopback address"),  # octal
        ("http://0x7f.0.0.1/", "0x7f.0.0.1 is 127.0.0.1, a loopback address"),  # hex
        ("http://127.1/", "127.1 is 127.0.0.1, a loopback address"),  # short form
        ("http://017700000001/", "017700000001 is 127.0.0.1, a loopback address"),
        ("http://0xa9fea9fe/", "0xa9fea9fe is 169.254.169.254, a cloud metadata address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://[0:0:0:0:0:0:0:1]/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("http://[fe80::1%25eth0]/", "a link-local address"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal is a cloud metadata host"),
        ("http://METADATA.google.internal./", "metadata.google.internal is a cloud metadata host"),
        ("http://metadata/", "metadata is a cloud metadata host"),
        ("file:///etc/passwd", "only http and https URLs are fetched, not file:"),
        ("ftp://example.com/", "only http and https URLs are fetched, not ftp:"),
        ("gopher://example.com/", "only http and https URLs are fetched, not gopher:"),
        ("//example.com/", "only http and https URLs are fetched, not a URL without a scheme"),
    ],
)
def test_url_table(url, refused):
    from bot.knowledge.netguard import url_refusal

    if refused is None:
        assert url_refusal(url) is None
    else:
        assert refused in (url_refusal(url) or "")


def test_a_legacy_numeric_host_is_refused_even_inside_an_allowed_range():
    """Tools disagree on what `127.1` means; an allowed range does not make it safe to guess."""
    from bot.knowledge.netguard import url_refusal

    allow = KBSettings(_env_file=None, fetch_allow="127.0.0.0/8").fetch_allow
    assert url_refusal("http://127.0.0.2/", allow) is None
    assert url_refusal("http://127.1/", allow) == "127.1 is 127.0.0.1 in a legacy numeric form; write 127.0.0.1"


def test_the_allow_setting_reads_a_comma_separated_cidr_list(monkeypatch, tmp_path):
    monkeypatch.setenv("PARLEY_KB_FETCH_ALLOW", "10.20.0.0/16, fd12::/48")
    assert [str(n) for n in load_settings(tmp_path / "none.env").kb.fetch_allow] == ["10.20.0.0/16", "fd12::/48"]
    monkeypatch.setenv("PARLEY_KB_FETCH_ALLOW", "10.20.0.1/16")  # host bits set: a typo, not a range
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "none.env")
    assert caught.value.setting == "PARLEY_KB_FETCH_ALLOW"
    monkeypatch.delenv("PARLEY_KB_FETCH_ALLOW")
    assert KBSettings(_env_file=None).fetch_allow == []  # by default nothing non-public is fetched


async def test_the_connection_goes_to_the_address_that_was_checked():
    """No DNS-rebinding window: a name is resolved once, the answer vetted, and that very answer
    connected to. A resolver that answers 127.0.0.2 (allowed) first and 127.0.0.1 afterwards
    never gets a request to the metadata server listening on 127.0.0.1 at the same port; a name
    with a refused address among its answers is refused whole."""
    from aiohttp.abc import AbstractResolver

    from bot.errors import FetchError
    from bot.knowledge.netguard import SafeFetcher

    class Rebinding(AbstractResolver):
        def __init__(self, answers: list[list[str]]) -> None:
            self.answers = answers
            self.calls = 0

        async def resolve(self, host, port=0, family=socket.AF_INET):
            answer = self.answers[min(self.calls, len(self.answers) - 1)]
            self.calls += 1
            return [
                {
                    "hostname": host,
                    "host": a,
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
                for a in answer
            ]

        async def close(self) -> None:
            pass

    allow = kb_settings().fetch_allow
    async with serve("127.0.0.2", {"*": text(f"# Good\n\n{GOOD_TEXT}\n")}) as good_site:
        port = int(good_site.base.rsplit(":", 1)[1])
        async with serve("127.0.0.1", {"*": metadata}, port=port) as shadow:
            rebinding = Rebinding([["127.0.0.2"], ["127.0.0.1"]])
            async with SafeFetcher(allow=allow, max_bytes=100_000, timeout=10, resolver=rebinding) as fetcher:
                for path in ("/one", "/two", "/three"):
                    with contextlib.suppress(FetchError):  # refused once the answer turns: fine
                        page = await fetcher.get(f"http://help.example:{port}{path}")
                        assert SECRET not in page.text
            assert shadow.hits == [] and len(good_site.hits) >= 1

            mixed = Rebinding([["127.0.0.2", "127.0.0.1"]])
            async with SafeFetcher(allow=allow, max_bytes=100_000, timeout=10, resolver=mixed) as fetcher:
                with pytest.raises(FetchError) as caught:
                    await fetcher.get(f"http://help.example:{port}/")
            assert caught.value.reason == "refused: help.example resolves to 127.0.0.1, a loopback address"
            assert shadow.hits == []
