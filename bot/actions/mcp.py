"""Runs the tools of MCP servers as actions, through the official `mcp` SDK (2.x).

At start-up the runner connects to every server of the tenants file's `[mcp.SERVER]` tables
(a command spoken to over stdio, or a streamable-HTTP URL), lists its tools and keeps only
those on the server's allow-list, with the description and argument schema the server gives
them. A tool the allow-list names that the server lacks stops the start: the operator
misspelt it, or the server changed under them.

Secrets. A stdio server's `env` and an HTTP server's `headers` may hold `{secret:NAME}`,
filled from PARLEY_ACTIONS_SECRETS by `start()` (a name that is not set stops the start, as
for an HTTP action). The values go to the server only: every error reason and every result
has them replaced (`http.scrub`), in case the server echoes them, and nothing logs them.

Ownership. The SDK's clients are async context managers built on anyio task groups, and a
failure inside one of those groups (a streamable-HTTP server that went away mid-call, say)
cancels the task that entered the group. So no caller's task enters a client: each server's
`mcp.Client` is entered by a task of its own, which the runner's one task group owns. A
server's failure ends that connection (the server is then marked down) and nothing else. The
group itself lives in an `AsyncExitStack` entered by `start()` and closed by `aclose()`;
anyio's cancel scopes must be exited by the task that entered them, so `start()` and
`aclose()` must run in the same task (the composition root's). `run()` may be called from
any task of the same event loop.

Reconnection. A server that dies (its process exits, its connection closes or breaks, it
stops answering the check made every `Reconnect.check` seconds) is marked down: the call in
flight fails as "unavailable", and so does every later call, at once. Its task then makes the
connection again (a stdio server is started anew) after a jittered wait that doubles with
each failed attempt, from `Reconnect.first` up to `Reconnect.most` seconds; once it is up its
tools are listed again and the allow-list applied. An allowed tool it no longer offers is
logged, and its calls fail as "unavailable" until a later connection offers it again; the
actions themselves (names, schemas) stay those listed at start-up. `aclose()` stops a wait or
an attempt at once. Each change (down, reconnecting, up) is logged once.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc
import mcp_types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

# The SDK's own factory (its `__all__` exports it): an httpx client with the timeouts its
# transport expects (a long read for the event stream), here with the operator's headers.
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import SecretStr, ValidationError

from bot.actions.secrets import UnknownSecret, fill_secrets, scrub, scrub_data, scrubbed
from bot.actions.spec import ActionResult, ActionSpec, McpServer, McpTool
from bot.errors import ActionError

log = logging.getLogger(__name__)

REASON_CHARS = 200  # an error reason is one line of at most this many characters
DESCRIPTION_CHARS = 1000  # ActionSpec's cap on a description
LIST_PAGES = 100  # tools/list pages read at most: a server that paginates forever cannot hang start-up


def _one_line(text: str, limit: int = REASON_CHARS) -> str:
    """Text as one line of at most `limit` characters (whitespace runs become one space)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _names(exc: BaseException) -> str:
    """The class names of what failed. Not the messages: an HTTP error's can hold the URL, and
    an operator may have written credentials into it."""
    return ", ".join(sorted({type(leaf).__name__ for leaf in _leaves(exc)}))


def _describe(block: mcp_types.ContentBlock) -> str:
    """One content block of a tool result as text for the model."""
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return resource.text
        return f"[resource {resource.uri}]"
    if isinstance(block, mcp_types.ResourceLink):
        return f"[resource link {block.uri}]"
    return f"[{block.type}]"  # image, audio, and whatever later revisions add


def _text(result: mcp_types.CallToolResult) -> str:
    return "\n".join(_describe(block) for block in result.content)


async def _offered(client: Client) -> dict[str, mcp_types.Tool]:
    """The tools a server offers, by name."""
    offered: dict[str, mcp_types.Tool] = {}
    cursor: str | None = None
    for _ in range(LIST_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        offered.update((tool.name, tool) for tool in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return offered


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """A tool's input schema as an action's parameters: a copy, and always an object schema."""
    parameters = copy.deepcopy(schema)
    if parameters.get("type") != "object":
        parameters["type"] = "object"
    return parameters


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a server that went down is connected again: the first attempt after about `first`
    seconds, each failed one doubling the wait up to `most`; every wait is jittered (half to
    all of it), so servers that fell together do not come knocking together. A connection
    that stayed up `most` seconds starts the next series at `first` again (one that keeps
    dying at once backs off like a failed attempt). `check`: seconds between checks that a
    server that is up still answers (tools/list): without them, one that died while idle is
    noticed only by the next call, which then fails."""

    first: float = 1.0
    most: float = 60.0
    check: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.most or self.check <= 0:
            raise ValueError("Reconnect needs 0 < first <= most and check > 0")


@dataclass(slots=True)
class _Connection:
    """One server: its client (while its task holds it open), its allowed tools, and whether
    it is down. Its secret values are in `env`, `headers` and `secrets`, kept out of repr."""

    name: str
    server: McpServer
    start_timeout: float
    reconnect: Reconnect
    client: Client | None = None
    specs: dict[str, ActionSpec] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()  # allowed tools the server stopped offering
    down: str | None = None  # why the server is down; None while it serves
    closing: anyio.Event | None = None  # set to close the client; made in the event loop, by start()
    wake: anyio.Event | None = None  # set to let go of the current connection (closing, or it was lost)
    attempt: anyio.CancelScope | None = None  # a connection being made: cancelled by close()
    env: dict[str, str] = field(default_factory=dict, repr=False)  # filled: for the stdio process
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # filled: for every HTTP request
    secrets: list[str] = field(default_factory=list, repr=False)  # the values filled in, to scrub

    def fill(self, secrets: Mapping[str, SecretStr]) -> None:
        """Fill `{secret:NAME}` in `env` and `headers`; a name not set is a "protocol" error."""
        used: list[str] = []
        try:
            self.env = {k: fill_secrets(f"env {k}", v, secrets, used) for k, v in self.server.env.items()}
            self.headers = {k: fill_secrets(f"header {k}", v, secrets, used) for k, v in self.server.headers.items()}
        except UnknownSecret as exc:
            raise ActionError(self.name, f"MCP server {self.name}: {exc}", kind="protocol") from None
        self.secrets = scrubbed(used)

    def close(self) -> None:
        """Let go of the connection, stop an attempt or a wait, and make no other."""
        if self.closing is not None:
            self.closing.set()
        if self.wake is not None:
            self.wake.set()
        if self.attempt is not None:
            self.attempt.cancel()

    def mark_down(self, reason: str) -> None:
        if self.down is None:
            self.down = reason
            log.warning("MCP server %s is down: %s", self.name, reason)

    def lose(self, client: Client, reason: str) -> None:
        """A call found `client`'s connection gone: mark the server down and let go of it (a
        stdio server whose process died while idle is noticed no other way between checks)."""
        if self.client is client:
            self.mark_down(reason)
            if self.wake is not None:
                self.wake.set()

    async def _open(self, stack: AsyncExitStack) -> Client:
        if self.server.url is not None:
            http = await stack.enter_async_context(create_mcp_http_client(headers=self.headers or None))
            return await stack.enter_async_context(Client(streamable_http_client(self.server.url, http_client=http)))
        command, *args = self.server.command
        # The SDK gives the server only a few variables of ours (PATH, HOME, ...), and `env`:
        # none of Parley's own settings or secrets reach it unless the operator named them.
        params = StdioServerParameters(command=command, args=args, env=self.env or None)
        return await stack.enter_async_context(Client(stdio_client(params)))

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, list the allowed tools, report started, and hold the connection until
        `close()`. A failure before `started()` is raised to `start()` as an ActionError; once
        started, a connection that fails marks the server down and is made again, with backoff."""
        assert self.closing is not None, "start() makes the event before it starts the task"
        closing = self.closing
        await self._session(task_status, first=True)
        delay = self.reconnect.first
        while not closing.is_set():
            log.info("MCP server %s: reconnecting", self.name)
            while not closing.is_set():
                with anyio.move_on_after(delay * random.uniform(0.5, 1.0)):
                    await closing.wait()
                if closing.is_set():
                    return
                delay = min(delay * 2, self.reconnect.most)
                try:
                    up_for = await self._session(anyio.TASK_STATUS_IGNORED, first=False)
                except ActionError as exc:
                    if not closing.is_set():  # else close() stopped the attempt
                        log.debug("MCP server %s: reconnection failed: %s", self.name, exc.reason)
                    continue
                if up_for >= self.reconnect.most:
                    delay = self.reconnect.first
                break

    async def _session(self, task_status: anyio.abc.TaskStatus[None], *, first: bool) -> float:
        """Make one connection, list the tools, and hold it until `close()` or until it
        fails (then the server is marked down). The seconds it was up; ActionError when it
        could not be made: the start's error when `first` (the allow-list is checked then)."""
        assert self.closing is not None
        closing = self.closing
        self.wake = wake = anyio.Event()
        up_at: float | None = None
        failure: ActionError | None = None
        # One deadline for connecting and listing; lifted once the server is up.
        scope = self.attempt = anyio.CancelScope(deadline=anyio.current_time() + self.start_timeout)
        try:
            with scope:
                async with AsyncExitStack() as stack:
                    client = await self._open(stack)
                    try:
                        offered = await _offered(client)
                        if first:
                            self.specs = self._load(offered)
                    except ActionError as exc:
                        failure = exc  # raised below, once the client is closed
                    else:
                        self.attempt, scope.deadline = None, math.inf
                        self._up(offered, first=first)
                        self.client, up_at = client, anyio.current_time()
                        task_status.started()
                        await self._watch(client, wake)
        except Exception as exc:  # the boundary around this server: nothing else is stopped
            if up_at is None:
                raise self._start_error(exc) from None
            self.mark_down(f"the connection failed ({_names(exc)})")
        finally:
            self.client = self.attempt = None
            if up_at is not None and not closing.is_set():
                self.mark_down("the connection closed")
        if failure is not None:
            raise failure
        if up_at is None:
            if scope.cancelled_caught:
                raise ActionError(
                    self.name,
                    f"MCP server {self.name} did not answer within {self.start_timeout:g}s",
                    kind="unavailable",
                )
            raise ActionError(self.name, f"MCP server {self.name} closed before it was ready", kind="unavailable")
        return anyio.current_time() - up_at

    def _up(self, offered: Mapping[str, mcp_types.Tool], *, first: bool) -> None:
        """The server serves (again): the allowed tools it lacks now fail their calls."""
        self.missing = frozenset(tool for tool in self.server.tools if tool not in offered)
        self.down = None
        if first:
            return
        if self.missing:
            log.warning(
                "MCP server %s is up again without the allowed tools %s: their calls fail until it offers them",
                self.name,
                ", ".join(sorted(self.missing)),
            )
        else:
            log.info("MCP server %s is up again", self.name)

    async def _watch(self, client: Client, wake: anyio.Event) -> None:
        """Return once `wake` is set, or once a check finds the server gone (marked down)."""
        while True:
            with anyio.move_on_after(self.reconnect.check):
                await wake.wait()
            if wake.is_set():
                return
            try:
                with anyio.fail_after(self.server.timeout):
                    await client.list_tools(cache_mode="bypass")
            except TimeoutError:
                self.mark_down(f"it did not answer a check within {self.server.timeout:g}s")
                return
            except MCPError as exc:
                if exc.code == mcp_types.CONNECTION_CLOSED:
                    self.mark_down("its connection closed")
                    return
                # Any other error is an answer: the server is there.

    def _start_error(self, exc: BaseException) -> ActionError:
        if any(isinstance(leaf, MCPError) and leaf.code != mcp_types.CONNECTION_CLOSED for leaf in _leaves(exc)):
            return ActionError(
                self.name, f"MCP server {self.name} refused the handshake ({_names(exc)})", kind="protocol"
            )
        what = "could not be started" if self.server.command else "could not be reached"
        return ActionError(self.name, f"MCP server {self.name} {what} ({_names(exc)})", kind="unavailable")

    def _load(self, offered: Mapping[str, mcp_types.Tool]) -> dict[str, ActionSpec]:
        """The allowed tools as actions; an allowed tool the server lacks is an error."""
        specs: dict[str, ActionSpec] = {}
        for name in self.server.tools:
            tool = offered.get(name)
            if tool is None:
                raise ActionError(
                    name, f"MCP server {self.name} does not offer the allowed tool {name!r}", kind="protocol"
                )
            description = (tool.description or "").strip() or f"{name} (a tool of MCP server {self.name})"
            try:
                specs[name] = ActionSpec(
                    name=name,
                    description=description[:DESCRIPTION_CHARS],
                    parameters=_parameters(tool.input_schema),
                    mode="write" if name in self.server.writes else "read",
                    mcp=McpTool(server=self.name, tool=name),
                )
            except ValidationError as exc:
                problem = _one_line(exc.errors()[0]["msg"])
                raise ActionError(
                    name, f"MCP server {self.name}'s tool {name!r} cannot be an action: {problem}", kind="protocol"
                ) from None
        return specs


class McpRunner:
    """Runs actions that are tools of MCP servers (`ActionSpec.mcp`).

    `servers` are the `[mcp.SERVER]` tables by name: the tools a server's `writes` names are
    write actions (the user confirms each call), its other allowed tools read actions.
    `secrets` fill `{secret:NAME}` in their `env` and `headers` (PARLEY_ACTIONS_SECRETS).
    `start_timeout` bounds connecting to and listing one server, `reconnect` how a server
    that went down is connected again.

    `start()` and `aclose()` must be awaited by the same task (see the module's docstring).
    """

    def __init__(
        self,
        servers: Mapping[str, McpServer],
        *,
        secrets: Mapping[str, SecretStr] | None = None,
        start_timeout: float = 30.0,
        reconnect: Reconnect = Reconnect(),
    ) -> None:
        self._connections = {
            name: _Connection(name, server, start_timeout, reconnect) for name, server in servers.items()
        }
        self._secrets: Mapping[str, SecretStr] = secrets if secrets is not None else {}
        self._stack: AsyncExitStack | None = None
        self._specs: list[ActionSpec] = []

    def __repr__(self) -> str:
        return f"McpRunner(servers={sorted(self._connections)}, secrets={sorted(self._secrets)})"

    async def start(self) -> None:
        """Connect to every server and list its allowed tools.

        Raises ActionError: "unavailable" when a server cannot be started or reached,
        "protocol" when a secret its `env` or `headers` names is not set, an allowed tool is
        missing or two servers offer the same name. Then no server is left running.
        """
        if self._stack is not None:
            raise RuntimeError("McpRunner.start() was already called")
        for connection in self._connections.values():
            connection.fill(self._secrets)  # before any server starts
        self._stack = AsyncExitStack()
        try:
            group = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(self._signal_close)  # runs first on close: the tasks end, the group exits
            for connection in self._connections.values():
                connection.closing = anyio.Event()
            # All servers at once: start-up takes as long as the slowest, not the sum. The first
            # failure cancels the servers still starting.
            try:
                async with anyio.create_task_group() as starting:
                    for connection in self._connections.values():
                        serve = partial(group.start, connection.serve, name=f"mcp-server-{connection.name}")
                        starting.start_soon(serve)
            except BaseExceptionGroup as exc:
                errors = [leaf for leaf in _leaves(exc) if isinstance(leaf, ActionError)]
                if not errors:
                    raise
                for other in errors[1:]:
                    log.warning("MCP start-up also failed: %s", other)
                raise errors[0] from None
            owner: dict[str, str] = {}
            for connection in self._connections.values():
                for name in connection.specs:
                    if name in owner:
                        raise ActionError(
                            name,
                            f"tool {name!r} is offered by MCP servers {owner[name]} and {connection.name}",
                            kind="protocol",
                        )
                    owner[name] = connection.name
            self._specs = [spec for c in self._connections.values() for spec in c.specs.values()]
        except BaseException:
            await self.aclose()
            raise

    def _signal_close(self) -> None:
        for connection in self._connections.values():
            connection.close()

    async def aclose(self) -> None:
        """Stop every server (a stdio server's stdin is closed, then it is killed if it lingers).
        Safe to call twice."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def specs(self) -> list[ActionSpec]:
        """One action per allowed tool of every server, as listed by `start()`."""
        return list(self._specs)

    async def run(self, spec: ActionSpec, arguments: dict[str, Any]) -> ActionResult:
        """Call the tool within its server's timeout. Its structured content is the result's
        data when it has some; its content blocks as text otherwise."""
        if spec.mcp is None:
            raise ActionError(spec.name, "not an MCP action", kind="protocol")
        connection = self._connections.get(spec.mcp.server)
        tool = spec.mcp.tool or spec.name
        if connection is None or tool not in connection.server.tools:
            raise ActionError(
                spec.name, f"tool {tool!r} is not allowed on MCP server {spec.mcp.server}", kind="refused"
            )
        if connection.down is not None:
            raise ActionError(spec.name, f"MCP server {connection.name} is down: {connection.down}", kind="unavailable")
        client = connection.client
        if client is None:
            raise ActionError(spec.name, f"MCP server {connection.name} is not started", kind="unavailable")
        if tool in connection.missing:
            raise ActionError(
                spec.name, f"MCP server {connection.name} no longer offers the tool {tool!r}", kind="unavailable"
            )

        secrets = connection.secrets
        timeout = connection.server.timeout
        try:
            with anyio.fail_after(timeout):
                result = await client.call_tool(tool, arguments)
        except TimeoutError:
            raise ActionError(spec.name, f"no answer within {timeout:g}s", kind="timeout") from None
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                connection.lose(client, "its connection closed during a call")
                raise ActionError(spec.name, f"MCP server {connection.name} went down", kind="unavailable") from None
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ActionError(spec.name, f"no answer within {timeout:g}s", kind="timeout") from None
            kind = "invalid" if exc.code == mcp_types.INVALID_PARAMS else "status"
            reason = _one_line(scrub(f"MCP error {exc.code}: {exc.message}", secrets))
            raise ActionError(spec.name, reason, kind=kind) from None
        except (ValidationError, RuntimeError) as exc:
            # A result that does not parse, breaks the tool's output schema, or asks for
            # input (sampling, elicitation) that Parley does not give.
            raise ActionError(spec.name, f"unusable answer from the tool ({_names(exc)})", kind="protocol") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            connection.lose(client, "its connection broke during a call")
            raise ActionError(spec.name, f"MCP server {connection.name} went down", kind="unavailable") from None

        if result.is_error:
            reason = _one_line(scrub(_text(result), secrets)) or "the tool reported an error"
            raise ActionError(spec.name, reason, kind="status")
        data = result.structured_content if result.structured_content is not None else _text(result)
        return ActionResult(data=scrub_data(data, secrets) if secrets else data)
