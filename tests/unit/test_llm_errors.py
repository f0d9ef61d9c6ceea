"""How engine answers map onto Parley's error tree, and what the user is told."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from bot import messages
from bot.config import LLMSettings
from bot.errors import EngineFailed, EngineOverloaded, EngineRejected, EngineTimeout, EngineUnavailable
from bot.llm.client import LLMClient
from bot.llm.transport import map_status, map_transport_error

URL = "http://engine:8000/v1"


@pytest.mark.parametrize(
    ("status", "headers", "kind"),
    [
        (429, {"Retry-After": "3"}, EngineOverloaded),
        (503, {}, EngineOverloaded),
        (400, {}, EngineRejected),
        (404, {}, EngineRejected),
        (500, {}, EngineFailed),
    ],
)
def test_status_codes_map_to_typed_errors_with_their_data(status, headers, kind):
    error = map_status(status, headers, b'{"message": "nope"}', URL)
    assert isinstance(error, kind) and error.url == URL
    if kind is EngineOverloaded:
        assert error.retryable and error.status == status
        assert error.retry_after == (3.0 if headers else None)
    if kind is EngineRejected:
        assert not error.retryable and "nope" in error.detail


def test_transport_errors_map_to_unavailable_or_timeout():
    settings = LLMSettings(_env_file=None, connect_timeout=5.0, read_timeout=60.0)
    for gone in (
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(111, "refused"),
        aiohttp.ClientPayloadError("cut short"),
    ):
        refused = map_transport_error(gone, URL, settings)
        assert isinstance(refused, EngineUnavailable) and refused.retryable
    silent = map_transport_error(aiohttp.SocketTimeoutError("slow"), URL, settings)
    assert isinstance(silent, EngineTimeout) and (silent.phase, silent.timeout) == ("read", 60.0)
    connect = map_transport_error(aiohttp.ConnectionTimeoutError("slow"), URL, settings)
    assert isinstance(connect, EngineTimeout) and (connect.phase, connect.timeout) == ("connect", 5.0)


def test_every_engine_error_has_a_short_user_sentence_without_internals():
    errors = [
        EngineUnavailable("boom at http://10.0.0.1", url=URL),
        EngineTimeout("x", url=URL, phase="read", timeout=1),
        EngineOverloaded("x", url=URL, status=429, retry_after=None),
        EngineRejected("x", url=URL, status=400, detail="d"),
        EngineFailed("x", url=URL),
    ]
    sentences = {messages.for_user(e) for e in errors}
    assert len(sentences) == len(errors)  # each failure is explained in its own words
    assert all(URL not in s and "10.0.0.1" not in s and len(s) < 120 for s in sentences)


async def test_a_malformed_stream_or_answer_is_an_engine_failure_and_a_full_stream_keeps_its_connection(loopback):
    peers = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        peers.append(request.transport.get_extra_info("peername"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        event = (
            b'{"choices": [{"delta": {"content": "ok"}}]}' if body["messages"][0]["content"] == "fine" else b"{not json"
        )
        await response.write(b"data: " + event + b"\n\ndata: [DONE]\n\n")
        return response

    async def models(request: web.Request) -> web.Response:
        return web.Response(text="<html>a proxy's error page</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    async with loopback(app) as url, LLMClient(LLMSettings(_env_file=None, model="m"), base_url=url) as llm:
        for _ in range(2):
            async with llm.stream([{"role": "user", "content": "fine"}]) as stream:
                assert [d async for d in stream] == ["ok"]
        assert peers[0] == peers[1]  # a stream read to its end leaves its connection for the next request
        with pytest.raises(EngineFailed, match="malformed event"):
            async with llm.stream([{"role": "user", "content": "broken"}]) as stream:
                [d async for d in stream]
    async with loopback(app) as url, LLMClient(LLMSettings(_env_file=None), base_url=url) as llm:
        with pytest.raises(EngineFailed, match="other than JSON") as failed:
            await llm.model()
        assert "a proxy's error page" in failed.value.detail


async def test_an_idle_connection_is_dropped_before_the_engine_would_drop_it(loopback):
    # Reused just as the server closes it, a connection fails the request; the client lets its
    # idle connections go after PARLEY_LLM_KEEPALIVE seconds, before the server's keep-alive ends.
    peers = []

    async def models(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"data": [{"id": "m"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    settings = LLMSettings(_env_file=None, keepalive=0.2)
    async with loopback(app) as url, LLMClient(settings, base_url=url) as llm:
        await llm._http.request(llm.engines[0], "GET", f"{url}/models")
        await llm._http.request(llm.engines[0], "GET", f"{url}/models")
        await asyncio.sleep(0.6)
        await llm._http.request(llm.engines[0], "GET", f"{url}/models")
    assert peers[0] == peers[1] != peers[2]
