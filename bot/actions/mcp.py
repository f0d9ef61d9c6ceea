"""Runs the tools of MCP servers as actions, through the official `mcp` SDK (2.x).

At start-up the runner connects to every server of the tenants file's `[mcp.SERVER]` tables
(a command spoken to over stdio, or a streamable-HTTP URL), lists its tools and keeps only
those on the server's allow-list, with the description and argument schema the server gives
them. A tool the allow-list names that the server lacks stops the start: the operator
misspelt it, or the server changed under them.

Ownership. The SDK's clients are async context managers built on anyio task groups, and a
failure inside one of those groups (a streamable-HTTP server that went away mid-call, say)
cancels the task that entered the group. So no caller's task enters a client: each server's
`mcp.Client` is entered by a task of its own, which the runner's one task group owns. A
server's failure ends that task (the server is then marked down) and nothing else. The
group itself lives in an `AsyncExitStack` entered by `start()` and closed by `aclose()`;
anyio's cancel scopes must be exited by the task that entered them, so `start()` and
`aclose()` must run in the same task (the composition root's). `run()` may be called from
any task of the same event loop.

A server that dies (its process exits, its connection closes) is marked down: the call in
flight fails as "unavailable", and so does every later call, at once. The runner does not
reconnect; a restart of Parley does.
"""

from __future__ import annotations

import copy
import logging
import math
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
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

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


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """A tool's input schema as an action's parameters: a copy, and always an object schema."""
    parameters = copy.deepcopy(schema)
    if parameters.get("type") != "object":
        parameters["type"] = "object"
    return parameters


@dataclass(slots=True)
class _Connection:
    """One server: its client (while its task holds it open), its allowed tools, and whether
    it is down."""

    name: str
    server: McpServer
    writes: frozenset[str]  # the allowed tools that are write actions
    start_timeout: float
    client: Client | None = None
    specs: dict[str, ActionSpec] = field(default_factory=dict)
    down: str | None = None  # why the server is down; None while it serves
    closing: anyio.Event | None = None  # set to close the client; made in the event loop, by start()

    def mark_down(self, reason: str) -> None:
        if self.down is None:
            self.down = reason
            log.warning("MCP server %s is down: %s", self.name, reason)

    def _client(self) -> Client:
        if self.server.url is not None:
            return Client(streamable_http_client(self.server.url))
        command, *args = self.server.command
        # The SDK gives the server only a few variables of ours (PATH, HOME, ...): none of
        # Parley's secrets reach it.
        return Client(stdio_client(StdioServerParameters(command=command, args=args)))

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, list the allowed tools, report started, and hold the client open until
        `closing` is set or the connection fails. A failure before `started()` is raised to
        `start()` as an ActionError; one after it marks the server down."""
        assert self.closing is not None, "start() makes the event before it starts the task"
        closing = self.closing
        started = False
        failure: ActionError | None = None
        # One deadline for connecting and listing; lifted once the server is up.
        scope = anyio.CancelScope(deadline=anyio.current_time() + self.start_timeout)
        try:
            with scope:
                async with self._client() as client:
                    try:
                        self.specs = await self._load(client)
                    except ActionError as exc:
                        failure = exc  # raised below, once the client is closed
                    else:
                        self.client = client
                        scope.deadline = math.inf
                        started = True
                        task_status.started()
                        await closing.wait()
        except Exception as exc:  # the boundary around this server: nothing else is stopped
            if not started:
                raise self._start_error(exc) from None
            self.mark_down(f"the connection failed ({_names(exc)})")
        finally:
            self.client = None
            if started and not closing.is_set():
                self.mark_down("the connection closed")
        if failure is not None:
            raise failure
        if not started:
            if scope.cancelled_caught:
                raise ActionError(
                    self.name,
                    f"MCP server {self.name} did not answer within {self.start_timeout:g}s",
                    kind="unavailable",
                )
            raise ActionError(self.name, f"MCP server {self.name} closed before it was ready", kind="unavailable")

    def _start_error(self, exc: BaseException) -> ActionError:
        if any(isinstance(leaf, MCPError) and leaf.code != mcp_types.CONNECTION_CLOSED for leaf in _leaves(exc)):
            return ActionError(
                self.name, f"MCP server {self.name} refused the handshake ({_names(exc)})", kind="protocol"
            )
        what = "could not be started" if self.server.command else "could not be reached"
        return ActionError(self.name, f"MCP server {self.name} {what} ({_names(exc)})", kind="unavailable")

    async def _load(self, client: Client) -> dict[str, ActionSpec]:
        """The allowed tools as actions; an allowed tool the server lacks is an error."""
        offered: dict[str, mcp_types.Tool] = {}
        cursor: str | None = None
        for _ in range(LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            offered.update((tool.name, tool) for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
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
                    mode="write" if name in self.writes else "read",
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
    `start_timeout` bounds connecting to and listing one server.

    `start()` and `aclose()` must be awaited by the same task (see the module's docstring).
    """

    def __init__(
        self,
        servers: Mapping[str, McpServer],
        *,
        start_timeout: float = 30.0,
    ) -> None:
        self._connections = {
            name: _Connection(name, server, frozenset(server.writes), start_timeout) for name, server in servers.items()
        }
        self._stack: AsyncExitStack | None = None
        self._specs: list[ActionSpec] = []

    async def start(self) -> None:
        """Connect to every server and list its allowed tools.

        Raises ActionError: "unavailable" when a server cannot be started or reached,
        "protocol" when an allowed tool is missing or two servers offer the same name. Then
        no server is left running.
        """
        if self._stack is not None:
            raise RuntimeError("McpRunner.start() was already called")
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
            if connection.closing is not None:
                connection.closing.set()

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

        timeout = connection.server.timeout
        try:
            with anyio.fail_after(timeout):
                result = await client.call_tool(tool, arguments)
        except TimeoutError:
            raise ActionError(spec.name, f"no answer within {timeout:g}s", kind="timeout") from None
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                connection.mark_down("its connection closed during a call")
                raise ActionError(spec.name, f"MCP server {connection.name} went down", kind="unavailable") from None
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ActionError(spec.name, f"no answer within {timeout:g}s", kind="timeout") from None
            kind = "invalid" if exc.code == mcp_types.INVALID_PARAMS else "status"
            reason = _one_line(f"MCP error {exc.code}: {exc.message}")
            raise ActionError(spec.name, reason, kind=kind) from None
        except (ValidationError, RuntimeError) as exc:
            # A result that does not parse, breaks the tool's output schema, or asks for
            # input (sampling, elicitation) that Parley does not give.
            raise ActionError(spec.name, f"unusable answer from the tool ({_names(exc)})", kind="protocol") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            connection.mark_down("its connection broke during a call")
            raise ActionError(spec.name, f"MCP server {connection.name} went down", kind="unavailable") from None

        if result.is_error:
            reason = _one_line(_text(result)) or "the tool reported an error"
            raise ActionError(spec.name, reason, kind="status")
        data = result.structured_content if result.structured_content is not None else _text(result)
        return ActionResult(data=data)
