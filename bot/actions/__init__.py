"""Actions: operator-defined tools the bot can call for a user (an HTTP endpoint or an MCP
server's tool), read ones at once, write ones after the user confirms.

spec      what an action is (name, description, argument schema, read or write, its runner)
http      runs an HTTP action (fixed host, guarded address, deadline, size cap, chosen fields)
mcp       runs an MCP server's tool (stdio or streamable HTTP), listed at start-up
"""
