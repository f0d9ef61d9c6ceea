"""McpRunner against a real MCP server (tests/actions/mcp_server.py, built on the SDK's own
server API), started over stdio by the runner and over streamable HTTP as a subprocess.

The runner's `start()` and `aclose()` must run in one task, and pytest-asyncio sets a
fixture up and tears it down in different tasks; so each test enters `running()` in its own
body, and the shared runner is owned by a task of its own (which also shows that `run()`
works from any task).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.actions.mcp import McpRunner
from bot.actions.spec import ActionSpec, McpServer, McpTool
from bot.engine.launcher import free_port
from bot.errors import ActionError

SCRIPT = str(Path(__file__).with_name("mcp_server.py"))
STDIO = (sys.executable, SCRIPT)
ALLOWED = ("add", "order_status", "slow", "fail", "picture")
TIMEOUT = 0.5  # seconds for one tool call


@asynccontextmanager
async def running(servers: dict[str, McpServer], **kwargs: Any) -> AsyncIterator[McpRunner]:
    runner = McpRunner(servers, **kwargs)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.aclose()


def spec_of(runner: McpRunner, name: str) -> ActionSpec:
    return next(spec for spec in runner.specs() if spec.name == name)


def live_children() -> set[int]:
    """This process's child processes that have not exited (Linux /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            children.add(int(entry.name))
    return children


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared() -> AsyncIterator[McpRunner]:
    """One stdio server for the tests that leave it healthy, owned by its own task."""
    ready: asyncio.Future[McpRunner] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def own() -> None:
        try:
            async with running({"shop": McpServer(command=STDIO, tools=ALLOWED, timeout=TIMEOUT)}) as runner:
                ready.set_result(runner)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    owner = asyncio.create_task(own())
    try:
        yield await ready
    finally:
        stop.set()
        await owner


@pytest.fixture
def http_server() -> Iterator[str]:
    """The server script over streamable HTTP on a free loopback port; its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, SCRIPT, "--http", str(port)])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the MCP test server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(timeout=5)


async def test_only_allowed_tools_become_actions_with_their_schemas(shared: McpRunner) -> None:
    specs = {spec.name: spec for spec in shared.specs()}
    assert set(specs) == set(ALLOWED)  # secret_tool and crash are offered but not allowed
    add = specs["add"]
    assert add.description == "Add two integers."
    assert add.parameters["type"] == "object"
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert set(add.parameters["required"]) == {"a", "b"}
    assert specs["order_status"].parameters["properties"]["order_id"]["type"] == "string"
    assert add.mcp == McpTool(server="shop", tool="add")
    assert {spec.mode for spec in specs.values()} == {"read"}


async def test_add(shared: McpRunner) -> None:
    result = await shared.run(spec_of(shared, "add"), {"a": 2, "b": 40})
    assert result.data == {"result": 42}


async def test_structured_result(shared: McpRunner) -> None:
    result = await shared.run(spec_of(shared, "order_status"), {"order_id": "A-17"})
    assert result.data == {"order_id": "A-17", "status": "shipped", "carrier": "DHL"}


async def test_content_that_is_not_text_is_described(shared: McpRunner) -> None:
    result = await shared.run(spec_of(shared, "picture"), {})
    assert result.data == "a red dot\n[image]"


async def test_tool_error_is_a_status_error_on_one_line(shared: McpRunner) -> None:
    with pytest.raises(ActionError) as caught:
        await shared.run(spec_of(shared, "fail"), {})
    assert caught.value.kind == "status"
    assert "the order system refused: no such order" in caught.value.reason
    assert "\n" not in caught.value.reason
    assert len(caught.value.reason) <= 200


async def test_slow_tool_times_out_and_the_server_stays_usable(shared: McpRunner) -> None:
    started = time.monotonic()
    with pytest.raises(ActionError) as caught:
        await shared.run(spec_of(shared, "slow"), {"seconds": 5})
    elapsed = time.monotonic() - started
    assert caught.value.kind == "timeout"
    assert TIMEOUT <= elapsed < TIMEOUT + 0.5
    assert (await shared.run(spec_of(shared, "add"), {"a": 1, "b": 1})).data == {"result": 2}


async def test_a_tool_outside_the_allow_list_is_refused(shared: McpRunner) -> None:
    secret = ActionSpec(name="secret_tool", description="x", mcp=McpTool(server="shop", tool="secret_tool"))
    with pytest.raises(ActionError) as caught:
        await shared.run(secret, {})
    assert caught.value.kind == "refused"


async def test_crash_marks_the_server_down_and_later_calls_fail_fast() -> None:
    before = live_children()
    server = McpServer(command=STDIO, tools=("add", "crash"), writes=("crash",), timeout=5)
    async with running({"shop": server}) as runner:
        assert spec_of(runner, "crash").mode == "write"
        with pytest.raises(ActionError) as caught:
            await runner.run(spec_of(runner, "crash"), {})
        assert caught.value.kind == "unavailable"
        started = time.monotonic()
        with pytest.raises(ActionError) as caught:
            await runner.run(spec_of(runner, "add"), {"a": 1, "b": 2})
        assert caught.value.kind == "unavailable"
        assert "down" in caught.value.reason
        assert time.monotonic() - started < 0.2
    assert live_children() <= before


async def test_an_allowed_tool_the_server_lacks_stops_the_start() -> None:
    before = live_children()
    runner = McpRunner({"shop": McpServer(command=STDIO, tools=("add", "refund"))})
    with pytest.raises(ActionError) as caught:
        await runner.start()
    assert caught.value.kind == "protocol"
    assert "shop" in caught.value.reason and "refund" in caught.value.reason
    assert runner.specs() == []
    assert live_children() <= before  # the server that did start was stopped


async def test_two_servers_offering_one_name_stop_the_start() -> None:
    before = live_children()
    runner = McpRunner(
        {"one": McpServer(command=STDIO, tools=("add",)), "two": McpServer(command=STDIO, tools=("add",))}
    )
    with pytest.raises(ActionError) as caught:
        await runner.start()
    assert caught.value.kind == "protocol"
    assert "one" in caught.value.reason and "two" in caught.value.reason
    assert live_children() <= before


async def test_a_command_that_does_not_exist_is_unavailable(tmp_path: Path) -> None:
    runner = McpRunner({"ghost": McpServer(command=(str(tmp_path / "no-such-server"),), tools=("add",))})
    with pytest.raises(ActionError) as caught:
        await runner.start()
    assert caught.value.kind == "unavailable"
    assert "ghost" in caught.value.reason


async def test_a_server_that_never_answers_is_unavailable_after_the_start_timeout() -> None:
    # Reads its stdin to the end and says nothing: the runner gives up, then the server ends
    # when its stdin closes.
    mute = McpServer(command=(sys.executable, "-c", "import sys; sys.stdin.read()"), tools=("add",))
    runner = McpRunner({"mute": mute}, start_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ActionError) as caught:
        await runner.start()
    assert caught.value.kind == "unavailable"
    assert "0.3s" in caught.value.reason
    assert time.monotonic() - started < 1.5


async def test_streamable_http(http_server: str) -> None:
    server = McpServer(url=http_server, tools=("add", "crash"), timeout=5)
    async with running({"web": server}) as runner:
        assert (await runner.run(spec_of(runner, "add"), {"a": 2, "b": 3})).data == {"result": 5}
        # The server process dies mid-call: the call fails, the server is down, and this task
        # (which owns the runner) is not cancelled by the SDK's failed task group.
        with pytest.raises(ActionError) as caught:
            await runner.run(spec_of(runner, "crash"), {})
        assert caught.value.kind == "unavailable"
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(ActionError) as caught:
            await runner.run(spec_of(runner, "add"), {"a": 2, "b": 3})
        assert caught.value.kind == "unavailable"
        assert time.monotonic() - started < 0.2


async def test_an_unreachable_url_is_unavailable() -> None:
    runner = McpRunner({"web": McpServer(url=f"http://127.0.0.1:{free_port()}/mcp", tools=("add",))})
    with pytest.raises(ActionError) as caught:
        await runner.start()
    assert caught.value.kind == "unavailable"
    assert "web" in caught.value.reason


def test_writes_must_name_allowed_tools() -> None:
    with pytest.raises(ValueError, match="refund"):
        McpServer(command=STDIO, tools=("add",), writes=("refund",))
