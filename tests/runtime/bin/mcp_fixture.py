"""A deterministic MCP server for the pool tests (the SDK's own MCPServer).

`mcp_fixture.py stdio [linger]` or `mcp_fixture.py http PORT`. Tools: `env` (this process's environment
and cwd, read-only), `pid`, `slow` (sleeps), `grow` (adds a tool and sends tools/list_changed),
`picture` (an image block) and `big` (a long text).
"""

import asyncio
import json
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ImageContent, ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True)
srv = MCPServer("aofd-fixture")


@srv.tool(annotations=READ_ONLY)
def env() -> str:
    """This server's environment and working directory."""
    return json.dumps({"env": dict(os.environ), "cwd": os.getcwd()})


@srv.tool(annotations=READ_ONLY)
def pid() -> str:
    return str(os.getpid())


@srv.tool(annotations=READ_ONLY)
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@srv.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
async def grow(ctx: Context) -> str:
    srv.add_tool(lambda: "new", name="extra", annotations=READ_ONLY)
    await ctx.session.send_tool_list_changed()
    return "grown"


@srv.tool(annotations=READ_ONLY)
def picture() -> list[ImageContent]:
    return [ImageContent(data="aGVsbG8=", mime_type="image/png")]


@srv.tool(annotations=READ_ONLY)
def big(chars: int) -> str:
    return "x" * chars


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        srv.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        srv.run("stdio")
        if "linger" in sys.argv:  # outlive stdin's end: only a signal stops it
            import time

            time.sleep(3600)
