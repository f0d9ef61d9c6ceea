"""McpRunner against a real MCP server (tests/actions/mcp_server.py, built on the SDK's own
server API), started over stdio by the runner and over streamable HTTP as a subprocess.

The runner's `start()` and `aclose()` must run in one task, and pytest-asyncio sets a
fixture up and tears it down in different tasks; so each test enters `running()` in its own
body, and the shared runner is owned by a task of its own (which also shows that `run()`
works from any task). The reconnection tests kill the server's process from outside and
use a short `Reconnect` so they stay fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
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
from pydantic import SecretStr

from bot.actions.mcp import McpRunner, Reconnect
from bot.actions.spec import ActionSpec, McpServer, McpTool
from bot.engine.launcher import free_port
from bot.errors import ActionError

SCRIPT = str(Path(__file__).with_name("mcp_server.py"))
STDIO = (sys.executable, SCRIPT)
ALLOWED = ("add", "order_status", "slow", "fail", "picture")
TIMEOUT = 0.5  # seconds for one tool call
TOKEN = "tok-5b1e9d42-parley-files"  # what the "files_token" secret holds
SECRETS = {"files_token": SecretStr(TOKEN)}
FAST = Reconnect(first=0.05, most=0.4, check=0.2)  # reconnection at test speed


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


class HttpServer:
    """The server script over streamable HTTP on a free loopback port, which a test may stop
    and start again on the same port; with `token`, it answers only requests that carry it."""

    def __init__(self, token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, SCRIPT, "--http", str(self.port)]
        env = dict(os.environ)
        if self.token is not None:
            argv += ["--token-env", "MCP_TEST_TOKEN"]
            env["MCP_TEST_TOKEN"] = self.token
        self.proc = proc = subprocess.Popen(argv, env=env)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the MCP test server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.proc = None


@pytest.fixture
def http_server() -> Iterator[str]:
    """The server script over streamable HTTP; its URL."""
    server = HttpServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def guarded_http_server() -> Iterator[HttpServer]:
    """The same, answering only requests with `Authorization: Bearer TOKEN`."""
    server = HttpServer(token=TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def eventually(runner: McpRunner, name: str, arguments: dict[str, Any], within: float = 15) -> Any:
    """The data of the first call of `name` that succeeds; the ones before must fail as
    "unavailable" (the server is down or reconnecting)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return (await runner.run(spec_of(runner, name), arguments)).data
        except ActionError as exc:
            assert exc.kind == "unavailable", exc
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def state_changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The runner's log of down / reconnecting / up, in order."""
    changes = []
    for record in caplog.records:
        if record.name != "bot.actions.mcp":
            continue
        message = record.getMessage()
        for change in ("is down", "reconnecting", "up again"):
            if change in message:
                changes.append(change)
    return changes


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


# --- environment and secrets ----------------------------------------------------------------


async def test_env_and_a_secret_reach_a_stdio_server_and_never_the_model_or_the_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PARLEY_TEST_PRIVATE", "of Parley's own environment")
    env = {"FILES_TOKEN": "{secret:files_token}", "FILES_AUTH": "Bearer {secret:files_token}", "FILES_MODE": "test"}
    server = McpServer(command=STDIO, tools=("env", "env_fail"), env=env)
    async with running({"files": server}, secrets=SECRETS) as runner:
        env_spec = spec_of(runner, "env")
        assert (await runner.run(env_spec, {"name": "FILES_MODE"})).data["value"] == "test"
        assert (await runner.run(env_spec, {"name": "PARLEY_TEST_PRIVATE"})).data["value"] is None
        assert (await runner.run(env_spec, {"name": "PATH"})).data["value"]  # the SDK's safe defaults stay

        # The server got the secret (its hash says so); the model reads only "[secret]".
        token = (await runner.run(env_spec, {"name": "FILES_TOKEN"})).data
        assert token["sha256"] == hashlib.sha256(TOKEN.encode()).hexdigest()
        assert token["value"] == "[secret]"
        auth = (await runner.run(env_spec, {"name": "FILES_AUTH"})).data
        assert auth["sha256"] == hashlib.sha256(f"Bearer {TOKEN}".encode()).hexdigest()
        assert auth["value"] == "Bearer [secret]"

        # A server that echoes it in an error: the reason has it replaced.
        with pytest.raises(ActionError) as caught:
            await runner.run(spec_of(runner, "env_fail"), {"name": "FILES_TOKEN"})
        assert caught.value.kind == "status"
        assert "cannot log in with '[secret]'" in caught.value.reason
        for shown in (caught.value.reason, str(caught.value), repr(caught.value), repr(runner)):
            assert TOKEN not in shown
        assert TOKEN not in repr(runner._connections["files"])
    assert TOKEN not in caplog.text


async def test_an_unknown_secret_stops_the_start_before_any_server_starts() -> None:
    before = live_children()
    good = McpServer(command=STDIO, tools=("add",))
    bad = McpServer(command=STDIO, tools=("pid",), env={"FILES_TOKEN": "Bearer {secret:billing_key}"})
    runner = McpRunner({"shop": good, "files": bad}, secrets=SECRETS)
    with pytest.raises(ActionError) as caught:
        await runner.start()
    assert caught.value.kind == "protocol"
    assert caught.value.reason == (
        "MCP server files: env FILES_TOKEN names the secret billing_key, which is not set (PARLEY_ACTIONS_SECRETS)"
    )
    assert live_children() <= before
    await runner.aclose()

    web = McpServer(url="http://127.0.0.1:9/mcp", tools=("add",), headers={"Authorization": "{secret:nope}"})
    with pytest.raises(ActionError) as caught:
        await McpRunner({"web": web}).start()
    assert "MCP server web: header Authorization names the secret nope" in caught.value.reason


def test_env_and_headers_are_checked() -> None:
    for kwargs, problem in [
        ({"command": STDIO, "env": {"files_token": "x"}}, "not a variable name"),
        ({"command": STDIO, "env": {"1TOKEN": "x"}}, "not a variable name"),
        ({"command": STDIO, "env": {"TOKEN": "{secret:files-token}"}}, "is not a placeholder"),
        ({"command": STDIO, "env": {"TOKEN": "{token}"}}, "is not a placeholder"),
        ({"command": STDIO, "headers": {"X-Token": "x"}}, "headers are for a streamable-HTTP server"),
        ({"url": "http://127.0.0.1:9/mcp", "env": {"TOKEN": "x"}}, "env is for a stdio server"),
        ({"url": "http://127.0.0.1:9/mcp", "headers": {"X Token": "x"}}, "not a header name"),
        ({"url": "http://127.0.0.1:9/mcp", "headers": {"X-Token": "a\r\nHost: evil"}}, "line break"),
    ]:
        with pytest.raises(ValueError, match=problem):
            McpServer(tools=("add",), **kwargs)
    # JSON in a value is not a placeholder.
    assert McpServer(command=STDIO, env={"CONFIG": '{"a": 1}'}).env == {"CONFIG": '{"a": 1}'}


async def test_an_http_server_gets_the_secret_in_its_header(
    guarded_http_server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": "Bearer {secret:files_token}"}
    server = McpServer(url=guarded_http_server.url, tools=("add",), headers=headers)
    async with running({"files": server}, secrets=SECRETS) as runner:
        assert (await runner.run(spec_of(runner, "add"), {"a": 2, "b": 3})).data == {"result": 5}

    # The loopback server does check it: a wrong token is turned away at the start, and the
    # reason does not show the token sent.
    wrong = "tok-wrong-0123456789"
    runner = McpRunner({"files": server}, secrets={"files_token": SecretStr(wrong)})
    with pytest.raises(ActionError) as caught:
        await runner.start()
    assert "files" in caught.value.reason
    assert wrong not in caught.value.reason and wrong not in caplog.text and TOKEN not in caplog.text


# --- reconnection ---------------------------------------------------------------------------


async def test_a_killed_stdio_server_is_started_again_and_its_allow_list_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.actions.mcp")
    before = live_children()
    hide = tmp_path / "hide"
    server = McpServer(command=STDIO, tools=("add", "order_status", "pid"), env={"MCP_TEST_HIDE": str(hide)})
    async with running({"shop": server}, reconnect=FAST) as runner:
        first = (await runner.run(spec_of(runner, "pid"), {})).data["result"]
        hide.write_text("order_status\n")  # the next process will not offer it
        os.kill(first, signal.SIGKILL)
        assert await eventually(runner, "add", {"a": 1, "b": 2}) == {"result": 3}
        assert (await runner.run(spec_of(runner, "pid"), {})).data["result"] != first

        # The tool that vanished fails with a clear error; the actions stay those of the start.
        with pytest.raises(ActionError) as caught:
            await runner.run(spec_of(runner, "order_status"), {"order_id": "A-17"})
        assert caught.value.kind == "unavailable"
        assert "no longer offers the tool 'order_status'" in caught.value.reason
        assert {spec.name for spec in runner.specs()} == {"add", "order_status", "pid"}
    assert state_changes(caplog) == ["is down", "reconnecting", "up again"]
    up = next(r for r in caplog.records if "up again" in r.getMessage())
    assert up.levelno == logging.WARNING and "order_status" in up.getMessage()
    assert live_children() <= before


async def test_a_server_that_dies_while_idle_is_noticed_by_the_check(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.actions.mcp")
    server = McpServer(command=STDIO, tools=("add", "pid"), timeout=5)
    async with running({"shop": server}, reconnect=FAST) as runner:
        first = (await runner.run(spec_of(runner, "pid"), {})).data["result"]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while "up again" not in state_changes(caplog):  # no call made: the check notices
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert (await runner.run(spec_of(runner, "add"), {"a": 1, "b": 2})).data == {"result": 3}
    assert state_changes(caplog) == ["is down", "reconnecting", "up again"]


async def test_an_http_server_that_comes_back_is_reconnected(guarded_http_server: HttpServer) -> None:
    headers = {"Authorization": "Bearer {secret:files_token}"}
    server = McpServer(url=guarded_http_server.url, tools=("add",), headers=headers, timeout=5)
    async with running({"files": server}, secrets=SECRETS, reconnect=FAST) as runner:
        guarded_http_server.stop()
        with pytest.raises(ActionError) as caught:
            await runner.run(spec_of(runner, "add"), {"a": 1, "b": 1})
        assert caught.value.kind == "unavailable"
        await asyncio.sleep(0.5)  # a few attempts fail while nothing listens
        guarded_http_server.start()  # the same port, a new process: a new MCP session
        assert await eventually(runner, "add", {"a": 2, "b": 2}) == {"result": 4}


async def test_aclose_during_the_backoff_returns_at_once() -> None:
    before = live_children()
    server = McpServer(command=STDIO, tools=("add", "crash"), timeout=5)
    runner = McpRunner({"shop": server}, reconnect=Reconnect(first=30, most=60))
    await runner.start()
    try:
        with pytest.raises(ActionError):
            await runner.run(spec_of(runner, "crash"), {})
        await asyncio.sleep(0.2)  # the server's task is now waiting to reconnect
    finally:
        started = time.monotonic()
        await runner.aclose()
    assert time.monotonic() - started < 1.0
    assert live_children() <= before


async def test_aclose_during_a_reconnection_attempt_returns_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.actions.mcp")
    before = live_children()
    env = {"MCP_TEST_MUTE_AGAIN": str(tmp_path / "started")}
    server = McpServer(command=STDIO, tools=("add", "crash"), env=env, timeout=5)
    runner = McpRunner({"shop": server}, start_timeout=30, reconnect=FAST)
    await runner.start()
    try:
        with pytest.raises(ActionError):
            await runner.run(spec_of(runner, "crash"), {})
        deadline = time.monotonic() + 10
        while not live_children() - before:  # the new process is started, and will say nothing
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert state_changes(caplog) == ["is down", "reconnecting"]
    finally:
        started = time.monotonic()
        await runner.aclose()
    # Far below the attempt's 30 s deadline: the attempt was stopped, not waited out. (The
    # bound is loose because the SDK waits for the process, which may still be importing.)
    assert time.monotonic() - started < 3.0
    assert live_children() <= before
