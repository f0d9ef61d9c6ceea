"""A small MCP server for the MCP runner's tests, built on the SDK's own server API (MCPServer).

    python tests/actions/mcp_server.py              # over stdio
    python tests/actions/mcp_server.py --http PORT  # streamable HTTP at http://127.0.0.1:PORT/mcp

Its tools cover what the runner must handle: a plain answer (`add`), a structured one
(`order_status`), a slow one (`slow`), a tool error (`fail`), a server that dies mid-call
(`crash`), content that is not text (`picture`) and a tool no allow-list names (`secret_tool`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
