"""The HTTP action runner against real aiohttp servers on loopback, and the sample service.

Loopback is refused by default (it is how an action would reach our own network), so every
runner here is built with `fetch_allow=["127.0.0.0/8"]`, except the ones proving the refusal.
The servers record what reached them, so the tests assert on the request as the service saw
it: the raw path, the query, the headers, the body.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from bot.actions.http import HttpRunner
from bot.actions.spec import ActionSpec, HttpCall
from bot.config import ActionsSettings
from bot.errors import ActionError
from bot.tools.sample_service import make_app

TOKEN = "tok-7f3a9c2e-parley-orders"  # what the "orders_token" secret holds
LOOPBACK = ["127.0.0.0/8"]
HUGE = 50 * 1024 * 1024


@dataclass
class Hit:
    method: str
    raw_path: str  # path and query exactly as sent
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Site:
    base: str
    hits: list[Hit] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)  # body bytes a streaming handler got out
    finished: dict[str, asyncio.Event] = field(default_factory=dict)


Handler = Callable[[web.Request, Site], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """`app` on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


async def echo(request: web.Request, site: Site) -> web.StreamResponse:
    hit = site.hits[-1]
    return web.json_response(
        {"method": hit.method, "path": hit.raw_path, "query": hit.query, "body": hit.body.decode() or None}
    )


async def order(request: web.Request, site: Site) -> web.StreamResponse:
    return web.json_response(
        {
            "status": "shipped",
            "internal_note": "do not show",
            "shipping": {"eta": "2025-03-12", "carrier": "UPS", "cost": 4.9},
            "items": [{"sku": "MS-220", "qty": 1}, {"name": "gift card"}, {"sku": "PD-014", "qty": 2}],
        }
    )


async def orders(request: web.Request, site: Site) -> web.StreamResponse:
    return web.json_response(
        [
            {"id": "A1", "status": "open", "shipping": {"eta": "monday", "cost": 3}},
            {"id": "A2", "secret_field": "x"},
        ]
    )


async def not_found(request: web.Request, site: Site) -> web.StreamResponse:
    return web.json_response({"error": "no such order"}, status=404)


async def broken(request: web.Request, site: Site) -> web.StreamResponse:
    return web.Response(
        text="Internal error\n  at line 12\n" + "x" * 5000, status=500, headers={"X-Debug": "header-not-in-reason"}
    )


async def whoami(request: web.Request, site: Site) -> web.StreamResponse:
    # A careless service that echoes the credentials it refused.
    return web.Response(text=f"token rejected: {request.headers.get('Authorization')}", status=401)


async def leaky(request: web.Request, site: Site) -> web.StreamResponse:
    return web.json_response({"you_sent": request.headers.get("Authorization"), "ok": True})


async def slow(request: web.Request, site: Site) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.json_response({"late": True})


async def redirect(request: web.Request, site: Site) -> web.StreamResponse:
    raise web.HTTPFound("/redirected-here")


async def latin(request: web.Request, site: Site) -> web.StreamResponse:
    return web.Response(body="Café ouvert: 9\u201317 h".encode("cp1252"), content_type="text/plain", charset="cp1252")


async def huge(request: web.Request, site: Site) -> web.StreamResponse:
    """50 MB of JSON-looking bytes, chunked (no Content-Length), recording how much got out."""
    done = site.finished.setdefault("huge", asyncio.Event())
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    written = 0
    piece = b" " * (64 * 1024)
    try:
        await response.write(b"[")
        while written < HUGE:
            await response.write(piece)
            written += len(piece)
        await response.write(b"]")
        await response.write_eof()
    except ConnectionError:  # the reader went away
        pass
    finally:
        site.written["huge"] = written
        done.set()
    return response


async def declared(request: web.Request, site: Site) -> web.StreamResponse:
    """Announces 10 MB, sends 100 bytes, then stalls: only a Content-Length check ends it fast."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 10_000_000
    await response.prepare(request)
    await response.write(b"x" * 100)
    await asyncio.sleep(5)
    return response


ROUTES: dict[str, Handler] = {
    "/order": order,
    "/orders": orders,
    "/missing": not_found,
    "/broken": broken,
    "/whoami": whoami,
    "/leaky": leaky,
    "/slow": slow,
    "/redirect": redirect,
    "/latin": latin,
    "/huge": huge,
    "/declared": declared,
}


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    state = Site(base="")

    async def handle(request: web.Request) -> web.StreamResponse:
        state.hits.append(
            Hit(
                request.method,
                request.raw_path,
                {k: request.query.getall(k) for k in request.query},
                dict(request.headers),
                await request.read(),
            )
        )
        return await ROUTES.get(request.raw_path.split("?", 1)[0], echo)(request, state)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_app(app) as base:
        state.base = base
        yield state


def settings(**overrides: Any) -> ActionsSettings:
    values: dict[str, Any] = {"fetch_allow": LOOPBACK, "secrets": {"orders_token": TOKEN}, **overrides}
    return ActionsSettings(_env_file=None, **values)


@pytest.fixture
async def runner() -> AsyncIterator[HttpRunner]:
    async with HttpRunner(settings()) as r:
        yield r


def action(url: str, *params: str, **http: Any) -> ActionSpec:
    return ActionSpec(
        name="lookup",
        description="A test action.",
        parameters={"type": "object", "properties": {p: {"type": "string"} for p in params}},
        http=HttpCall(url=url, **http),
    )


async def failure(runner: HttpRunner, spec: ActionSpec, arguments: dict[str, Any] | None = None) -> ActionError:
    with pytest.raises(ActionError) as caught:
        await runner.run(spec, arguments or {})
    assert caught.value.action == spec.name
    assert "\n" not in caught.value.reason
    return caught.value


# --- the request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        ("../admin?x=1", "..%2Fadmin%3Fx%3D1"),
        ("x/y?z", "x%2Fy%3Fz"),
        ("%2E%2E", "%252E%252E"),
        ("a b&c=d#e", "a%20b%26c%3Dd%23e"),
        ("A1002", "A1002"),
    ],
)
async def test_get_fills_the_url_and_keeps_each_argument_in_its_segment(
    site: Site, runner: HttpRunner, value: str, raw: str
) -> None:
    spec = action(site.base + "/orders/{order_id}/status?lang={lang}", "order_id", "lang")
    result = await runner.run(spec, {"order_id": value, "lang": "de&admin=1", "page": 2, "open": True})
    hit = site.hits[-1]
    path, _, query = hit.raw_path.partition("?")
    assert path == f"/orders/{raw}/status"
    assert hit.method == "GET"
    assert hit.query == {"lang": ["de&admin=1"], "page": ["2"], "open": ["true"]}
    assert query.startswith("lang=de%26admin%3D1&")
    assert result.status == 200
    assert result.data["path"] == hit.raw_path
    assert result.meta["bytes"] > 0


@pytest.mark.parametrize("value", [".", "..", ""])
async def test_a_dot_segment_is_refused_in_the_path(site: Site, runner: HttpRunner, value: str) -> None:
    error = await failure(runner, action(site.base + "/orders/{order_id}", "order_id"), {"order_id": value})
    assert error.kind == "invalid"
    assert "order_id" in error.reason
    assert site.hits == []


async def test_post_sends_the_other_arguments_as_a_json_body(site: Site, runner: HttpRunner) -> None:
    spec = action(site.base + "/orders/{order_id}/notes", "order_id", method="POST")
    arguments = {"order_id": "A 1", "note": "Leave it at the door", "urgent": True, "tags": ["door", "x"]}
    result = await runner.run(spec, arguments)
    hit = site.hits[-1]
    assert hit.method == "POST"
    assert hit.raw_path == "/orders/A%201/notes"
    assert hit.query == {}
    assert hit.headers["Content-Type"].startswith("application/json")
    assert json.loads(hit.body) == {"note": "Leave it at the door", "urgent": True, "tags": ["door", "x"]}
    assert result.data["method"] == "POST"


async def test_a_secret_header_reaches_the_server_and_no_error(site: Site, runner: HttpRunner) -> None:
    headers = {"Authorization": "Bearer {secret:orders_token}", "X-Client": "parley"}
    result = await runner.run(action(site.base + "/echo", headers=headers), {})
    hit = site.hits[-1]
    assert hit.headers["Authorization"] == f"Bearer {TOKEN}"
    assert hit.headers["X-Client"] == "parley"
    assert hit.headers["Accept"] == "application/json"
    assert hit.headers["User-Agent"] == "Parley-actions"
    assert TOKEN not in json.dumps(result.data)

    # The service echoes the header it refused: the reason must not carry it.
    error = await failure(runner, action(site.base + "/whoami", headers=headers))
    assert site.hits[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    assert (error.kind, error.status) == ("status", 401)
    assert "token rejected" in error.reason
    for shown in (error.reason, str(error), repr(error), repr(runner), repr(runner._settings)):
        assert TOKEN not in shown

    # ...nor the result the model reads.
    leaked = await runner.run(action(site.base + "/leaky", headers=headers), {})
    assert leaked.data["ok"] is True
    assert leaked.data["you_sent"] == "Bearer [secret]"


async def test_an_unknown_secret_is_named_and_nothing_is_sent(site: Site, runner: HttpRunner) -> None:
    spec = action(site.base + "/echo", headers={"Authorization": "Bearer {secret:billing_key}"})
    error = await failure(runner, spec)
    assert error.kind == "protocol"
    assert "billing_key" in error.reason
    assert site.hits == []


# --- the answer ----------------------------------------------------------------------------


async def test_returns_keeps_only_the_chosen_fields(site: Site, runner: HttpRunner) -> None:
    spec = action(site.base + "/order", returns=("status", "shipping.eta", "items", "items.sku", "nope.deeper"))
    result = await runner.run(spec, {})
    assert result.data == {
        "status": "shipped",
        "shipping.eta": "2025-03-12",
        "items": [{"sku": "MS-220", "qty": 1}, {"name": "gift card"}, {"sku": "PD-014", "qty": 2}],
        "items.sku": ["MS-220", "PD-014"],
    }


async def test_returns_applies_to_each_element_of_a_top_level_list(site: Site, runner: HttpRunner) -> None:
    result = await runner.run(action(site.base + "/orders", returns=("id", "shipping.eta")), {})
    assert result.data == [{"id": "A1", "shipping.eta": "monday"}, {"id": "A2"}]


async def test_without_returns_the_whole_json_answer(site: Site, runner: HttpRunner) -> None:
    result = await runner.run(action(site.base + "/order"), {})
    assert result.data["internal_note"] == "do not show"
    assert result.data["shipping"]["cost"] == 4.9


@pytest.mark.parametrize(("path", "status", "text"), [("/missing", 404, "no such order"), ("/broken", 500, "x")])
async def test_an_error_status_is_a_status_error(
    site: Site, runner: HttpRunner, path: str, status: int, text: str
) -> None:
    error = await failure(runner, action(site.base + path))
    assert (error.kind, error.status) == ("status", status)
    assert str(status) in error.reason
    assert text in error.reason
    assert "header-not-in-reason" not in error.reason
    assert len(error.reason) < 200 + 40  # the body's share is cut to 200 characters


async def test_a_non_json_answer_is_text_in_its_charset(site: Site, runner: HttpRunner) -> None:
    result = await runner.run(action(site.base + "/latin"), {})
    assert result.data == "Café ouvert: 9\u201317 h"
    assert result.status == 200


async def test_a_redirect_is_not_followed(site: Site, runner: HttpRunner) -> None:
    error = await failure(runner, action(site.base + "/redirect"))
    assert (error.kind, error.status) == ("status", 302)
    assert [h.raw_path for h in site.hits] == ["/redirect"]


# --- bounds --------------------------------------------------------------------------------


async def test_a_slow_service_times_out_within_the_deadline(site: Site, runner: HttpRunner) -> None:
    started = time.monotonic()
    error = await failure(runner, action(site.base + "/slow", timeout=0.3))
    elapsed = time.monotonic() - started
    assert error.kind == "timeout"
    assert "0.3 s" in error.reason
    assert 0.25 < elapsed < 1.0


async def test_a_50_mb_answer_is_refused_without_reading_it(site: Site, runner: HttpRunner) -> None:
    started = time.monotonic()
    error = await failure(runner, action(site.base + "/huge", max_bytes=1_000_000, timeout=20))
    elapsed = time.monotonic() - started
    assert error.kind == "size"
    assert "1000000" in error.reason
    await asyncio.wait_for(site.finished["huge"].wait(), 5)
    assert site.written["huge"] < 20 * 1024 * 1024  # the server could not send it all: nobody read it
    assert elapsed < 1.5


async def test_a_content_length_over_the_cap_is_refused_at_once(site: Site, runner: HttpRunner) -> None:
    started = time.monotonic()
    error = await failure(runner, action(site.base + "/declared", max_bytes=1024, timeout=3))
    assert error.kind == "size"
    assert "10000000" in error.reason
    assert time.monotonic() - started < 1.0  # not the 5 s the body would stall for


async def test_loopback_is_refused_unless_allowed(site: Site) -> None:
    async with HttpRunner(ActionsSettings(_env_file=None)) as runner:
        literal = await failure(runner, action(site.base + "/echo"))
        assert literal.kind == "refused"
        assert "loopback" in literal.reason
        port = site.base.rsplit(":", 1)[1]
        named = await failure(runner, action(f"http://localhost:{port}/echo"))
        assert named.kind == "refused"
        assert "localhost" in named.reason
    assert site.hits == []


async def test_a_metadata_address_is_refused_even_when_allowed() -> None:
    async with HttpRunner(settings(fetch_allow=["169.254.0.0/16"])) as runner:
        error = await failure(runner, action("http://169.254.169.254/latest/meta-data/"))
    assert error.kind == "refused"
    assert "metadata" in error.reason


async def test_a_closed_port_is_unavailable(runner: HttpRunner) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    error = await failure(runner, action(f"http://127.0.0.1:{port}/echo", timeout=3))
    assert error.kind == "unavailable"
    assert str(port) in error.reason


async def test_a_closed_runner_refuses_calls(site: Site) -> None:
    runner = HttpRunner(settings())
    assert (await runner.run(action(site.base + "/order"), {})).status == 200
    await runner.aclose()
    await runner.aclose()  # twice is fine
    error = await failure(runner, action(site.base + "/order"))
    assert error.kind == "unavailable"


# --- the sample service --------------------------------------------------------------------


@pytest.fixture
async def sample() -> AsyncIterator[str]:
    async with serve_app(make_app(TOKEN)) as base:
        yield base


AUTH = {"Authorization": "Bearer {secret:orders_token}"}


def order_status(base: str, **http: Any) -> ActionSpec:
    return ActionSpec(
        name="order_status",
        description="Look an order up.",
        parameters={"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        http=HttpCall(url=base + "/orders/{order_id}", **http),
    )


def open_ticket(base: str) -> ActionSpec:
    return ActionSpec(
        name="open_ticket",
        description="Open a support ticket.",
        mode="write",
        parameters={
            "type": "object",
            "properties": {"subject": {"type": "string"}, "body": {"type": "string"}, "email": {"type": "string"}},
        },
        http=HttpCall(method="POST", url=base + "/tickets", headers=AUTH),
    )


async def test_sample_orders_found_and_not_found(sample: str, runner: HttpRunner) -> None:
    spec = order_status(sample, headers=AUTH, returns=("status", "eta", "items"))
    found = await runner.run(spec, {"order_id": "a1002"})
    assert found.status == 200
    assert found.data["status"] == "shipped"
    assert [i["sku"] for i in found.data["items"]] == ["MS-220", "PD-014"]
    assert set(found.data) == {"status", "eta", "items"}

    error = await failure(runner, spec, {"order_id": "A9999"})
    assert (error.kind, error.status) == ("status", 404)
    assert "A9999" in error.reason


async def test_sample_ticket_created_and_bad_input_refused(sample: str, runner: HttpRunner) -> None:
    spec = open_ticket(sample)
    first = await runner.run(spec, {"subject": "Broken mouse", "body": "It stopped clicking.", "email": "a@b.example"})
    second = await runner.run(spec, {"subject": "Late", "body": "Where is A1004?"})
    assert first.status == second.status == 201
    assert first.data["status"] == "open"
    assert first.data["ticket_id"].startswith("T-")
    assert first.data["ticket_id"] != second.data["ticket_id"]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"body": "no subject"}, "subject"),
        ({"subject": "  ", "body": "blank subject"}, "subject"),
        ({"subject": "no body"}, "body"),
        ({"subject": "long", "body": "x" * 5001}, "body"),
        ({"subject": "mail", "body": "b", "email": "nobody"}, "email"),
    ]
    for arguments, named in bad:
        error = await failure(runner, spec, arguments)
        assert (error.kind, error.status) == ("status", 400), arguments
        assert named in error.reason


async def test_sample_needs_its_token(sample: str, runner: HttpRunner) -> None:
    error = await failure(runner, order_status(sample), {"order_id": "A1001"})
    assert (error.kind, error.status) == ("status", 401)
    wrong = order_status(sample, headers={"Authorization": "Bearer not-the-token"})
    assert (await failure(runner, wrong, {"order_id": "A1001"})).status == 401


async def test_sample_without_a_token_is_open(runner: HttpRunner) -> None:
    async with serve_app(make_app(None)) as base:
        result = await runner.run(order_status(base), {"order_id": "A1005"})
    assert result.data["status"] == "cancelled"
