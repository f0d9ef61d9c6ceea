"""A small order-and-ticket service for the sample actions, kept in memory.

It exists so `parley chat` has something real to call: the shipped sample config's actions
look orders up (`GET /orders/{order_id}`, a read action) and open support tickets
(`POST /tickets`, a write action) here. Five demo orders (A1001 to A1005) are fixed; tickets
live until the process ends. Built with a token, every request needs `Authorization: Bearer
<token>`, as a real service would, so the secret-header path is exercised too.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger(__name__)

MAX_SUBJECT = 200
MAX_BODY = 5000
MAX_EMAIL = 254

ORDERS: dict[str, dict[str, Any]] = {
    "A1001": {
        "order_id": "A1001",
        "status": "delivered",
        "carrier": "DHL",
        "eta": "2025-03-03",
        "items": [{"sku": "KB-101", "name": "Mechanical keyboard", "qty": 1}],
    },
    "A1002": {
        "order_id": "A1002",
        "status": "shipped",
        "carrier": "UPS",
        "eta": "2025-03-12",
        "items": [
            {"sku": "MS-220", "name": "Wireless mouse", "qty": 1},
            {"sku": "PD-014", "name": "Mouse pad", "qty": 2},
        ],
    },
    "A1003": {
        "order_id": "A1003",
        "status": "processing",
        "carrier": None,
        "eta": "2025-03-18",
        "items": [{"sku": "MN-270", "name": "27-inch monitor", "qty": 1}],
    },
    "A1004": {
        "order_id": "A1004",
        "status": "delayed",
        "carrier": "DPD",
        "eta": "2025-03-21",
        "items": [{"sku": "HS-310", "name": "USB headset", "qty": 1}],
    },
    "A1005": {
        "order_id": "A1005",
        "status": "cancelled",
        "carrier": None,
        "eta": None,
        "items": [{"sku": "CB-002", "name": "USB-C cable", "qty": 3}],
    },
}


@dataclass
class Desk:
    """The tickets opened since start-up."""

    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_number: int = 1


DESK = web.AppKey("desk", Desk)
TOKEN = web.AppKey("token", str)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app.get(TOKEN)
    if token is not None:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return web.json_response(
                {"error": "a bearer token is required"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
    return await handler(request)


async def _order(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"].strip().upper()
    order = ORDERS.get(order_id)
    if order is None:
        return _error(404, f"no order {order_id[:40]}")
    return web.json_response(order)


async def _open_ticket(request: web.Request) -> web.Response:
    try:
        payload = json.loads(await request.text())
    except ValueError:
        return _error(400, "the body must be a JSON object")
    if not isinstance(payload, dict):
        return _error(400, "the body must be a JSON object")
    fields: dict[str, str] = {}
    for name, limit in (("subject", MAX_SUBJECT), ("body", MAX_BODY)):
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            return _error(400, f"{name} is required")
        if len(value) > limit:
            return _error(400, f"{name} is over {limit} characters")
        fields[name] = value.strip()
    email = payload.get("email")
    if email is not None:
        if not isinstance(email, str) or len(email) > MAX_EMAIL or "@" not in email.strip(" @"):
            return _error(400, "email is not an address")
        fields["email"] = email.strip()
    desk = request.app[DESK]
    ticket_id = f"T-{desk.next_number}"
    desk.next_number += 1
    desk.tickets[ticket_id] = {"ticket_id": ticket_id, "status": "open", **fields}
    log.info("sample service: opened %s", ticket_id)
    return web.json_response({"ticket_id": ticket_id, "status": "open"}, status=201)


def make_app(token: str | None = None) -> web.Application:
    """The service's app; with `token`, every request must carry it as a bearer token."""
    app = web.Application(middlewares=[_bearer], client_max_size=64 * 1024)
    app[DESK] = Desk()
    if token is not None:
        app[TOKEN] = token
    app.router.add_get("/orders/{order_id}", _order)
    app.router.add_post("/tickets", _open_ticket)
    return app


async def serve(host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> None:
    """Serve the sample service until cancelled."""
    runner = web.AppRunner(make_app(token), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("sample service on http://%s:%s (token %s)", host, port, "required" if token else "not required")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
