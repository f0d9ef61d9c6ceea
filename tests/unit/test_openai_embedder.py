"""`OpenAIEmbedder` against a loopback `/v1/embeddings` server that speaks the OpenAI wire format."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from bot.errors import EmbedderError
from bot.routing.embeddings import OpenAIEmbedder


@dataclass
class FakeEndpoint:
    url: str = ""
    requests: list[tuple[str | None, dict]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.headers.get("Authorization"), body))
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="model 'nope' does not exist " + "x" * 400)
        # Rows out of order, as the format allows: `index` says where each belongs.
        rows = [
            {"object": "embedding", "index": i, "embedding": [float(i + 1), 0.0, 0.0, 1.0]}
            for i in range(len(body["input"]))
        ]
        return web.json_response({"object": "list", "data": rows[::-1], "model": body["model"]})


@pytest_asyncio.fixture
async def endpoint(
    loopback: Callable[[web.Application], AbstractAsyncContextManager[str]],
) -> AsyncIterator[FakeEndpoint]:
    fake = FakeEndpoint()
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.embeddings)
    async with loopback(app) as url:
        fake.url = url
        yield fake


async def test_rows_come_back_normalised_in_input_order(endpoint: FakeEndpoint) -> None:
    embedder = OpenAIEmbedder(endpoint.url + "/", model="bge-small", api_key="sk-test")
    try:
        rows = await embedder.embed(["a", "b", "c"])
        assert (await embedder.embed([])).shape == (0, 0)  # nothing to ask for: no request
    finally:
        await embedder.aclose()
    assert endpoint.requests == [("Bearer sk-test", {"model": "bge-small", "input": ["a", "b", "c"]})]
    assert rows.dtype == np.float32 and rows.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rows[:, 0] / rows[:, 3], [1.0, 2.0, 3.0], rtol=1e-6)


async def test_without_a_key_no_authorization_is_sent(endpoint: FakeEndpoint) -> None:
    embedder = OpenAIEmbedder(endpoint.url, model="bge-small")
    try:
        await embedder.embed(["a"])
    finally:
        await embedder.aclose()
    assert endpoint.requests[0][0] is None


async def test_an_error_status_is_an_embedder_error_with_the_start_of_the_answer(endpoint: FakeEndpoint) -> None:
    endpoint.status = 404
    embedder = OpenAIEmbedder(endpoint.url, model="nope")
    try:
        with pytest.raises(EmbedderError, match=r"answered 404: model 'nope' does not exist x+$") as caught:
            await embedder.embed(["a"])
    finally:
        await embedder.aclose()
    assert str(caught.value).endswith("x" * (200 - len("model 'nope' does not exist ")))


async def test_an_endpoint_out_of_reach_is_an_embedder_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    embedder = OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", model="bge-small")
    try:
        with pytest.raises(EmbedderError, match="cannot reach the embeddings endpoint"):
            await embedder.embed(["a"])
    finally:
        await embedder.aclose()


async def test_a_slow_answer_times_out_as_an_embedder_error(endpoint: FakeEndpoint) -> None:
    endpoint.delay = 2.0
    embedder = OpenAIEmbedder(endpoint.url, model="bge-small", timeout=0.2)
    try:
        with pytest.raises(EmbedderError, match="cannot reach the embeddings endpoint"):
            await asyncio.wait_for(embedder.embed(["a"]), 1.5)
    finally:
        await embedder.aclose()
        await embedder.aclose()  # closing twice is harmless
