"""A small MCP server for the MCP runner's tests, built on the SDK's own server API (MCPServer).

    python tests/actions/mcp_server.py              # over stdio
    python tests/actions/mcp_server.py --http PORT  # streamable HTTP at http://127.0.0.1:PORT/mcp
    python tests/actions/mcp_server.py --http PORT --token-env VAR
        # ... answering only requests with "Authorization: Bearer <the value of VAR>"

Its tools cover what the runner must handle: a plain answer (`add`), a structured one
(`order_status`), a slow one (`slow`), a tool error (`fail`), a server that dies mid-call
(`crash`), content that is not text (`picture`), a tool no allow-list names (`secret_tool`),
the environment the server was given (`env`, and `env_fail`, whose error shows a value) and
its process id (`pid`, to kill it from outside).

If the variable MCP_TEST_HIDE names a file when the server starts, the tools that file lists
(one a line) are not offered: a server that changed between two connections. If
MCP_TEST_MUTE_AGAIN names a file, the first start makes it and serves, and a later one finds
it and never answers (it reads its stdin to the end): a restart that hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ContentBlock, ImageContent, TextContent

server = MCPServer("parley-test", log_level="WARNING")
_DOT = base64.b64encode(b"\x89PNG not really").decode()


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def order_status(order_id: str) -> dict[str, str]:
    """The status of an order."""
    return {"order_id": order_id, "status": "shipped", "carrier": "DHL"}


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer: for deadlines."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def fail() -> str:
    """Always answers a tool error."""
    raise ToolError("the order system refused:\nno such order")


@server.tool()
def crash() -> str:
    """Kill the server mid-call, as a crashing server would."""
    os._exit(1)


@server.tool(structured_output=False)
def picture() -> list[ContentBlock]:
    """A caption and an image: content the runner must describe as text."""
    return [TextContent(text="a red dot"), ImageContent(data=_DOT, mime_type="image/png")]


@server.tool()
def secret_tool() -> str:
    """A tool that no allow-list names: it must never be offered."""
    return "leaked"


@server.tool()
def env(name: str) -> dict[str, Any]:
    """A variable of the server's environment: its value and that value's SHA-256 (which
    shows what arrived even where the runner hides the value)."""
    value = os.environ.get(name)
    digest = hashlib.sha256(value.encode()).hexdigest() if value is not None else None
    return {"name": name, "value": value, "sha256": digest}


@server.tool()
def env_fail(name: str) -> str:
    """A tool error that shows a variable's value, as a careless server would."""
    raise ToolError(f"cannot log in with {os.environ.get(name)!r}")


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


def _setup() -> None:
    listed = os.environ.get("MCP_TEST_HIDE")
    if listed and Path(listed).exists():
        for name in Path(listed).read_text().split():
            server.remove_tool(name)
    mark = os.environ.get("MCP_TEST_MUTE_AGAIN")
    if mark and Path(mark).exists():
        sys.stdin.read()
        sys.exit(0)
    if mark:
        Path(mark).touch()


def _with_token(app: Any, token: str) -> Any:
    """`app`, answering 401 to an HTTP request without `Authorization: Bearer <token>`."""
    expected = f"Bearer {token}".encode()

    async def checked(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"no or wrong token"})
            return
        await app(scope, receive, send)

    return checked


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    parser.add_argument("--token-env", metavar="VAR", help="require the bearer token this variable holds")
    args = parser.parse_args()
    _setup()
    if args.http is None:
        server.run("stdio")
    elif args.token_env is None:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        import uvicorn

        app = _with_token(server.streamable_http_app(), os.environ[args.token_env])
        uvicorn.run(app, host="127.0.0.1", port=args.http, log_level="warning")


if __name__ == "__main__":
    main()
