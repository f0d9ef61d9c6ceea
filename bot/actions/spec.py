"""What an action is: the operator's definition, checked once at start-up.

Actions are defined in the tenants file (`[actions.NAME]` tables) and allowed per tenant and
per channel there. The model sees an action's name, description and argument schema; it
fills the arguments and never the host or the headers, which the operator fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# `{name}` in a URL template: an argument, URL-quoted when filled; `{secret:NAME}` in a
# header value: PARLEY_ACTIONS_SECRETS' entry NAME.
PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]{0,63})\}")
SECRET = re.compile(r"\{secret:([A-Za-z0-9_]{1,64})\}")


class HttpCall(BaseModel):
    """An HTTP endpoint. Arguments fill `{name}` placeholders in the URL's path and query;
    the rest go as query parameters (GET, DELETE) or as a JSON body (POST, PUT, PATCH)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)  # values may hold {secret:NAME}
    timeout: float = Field(10.0, gt=0, le=120)  # seconds for the whole call
    max_bytes: int = Field(1_000_000, ge=1024, le=50_000_000)  # a larger answer is refused, not cut
    returns: tuple[str, ...] = ()  # dotted fields of a JSON answer given to the model; empty: all

    @field_validator("url")
    @classmethod
    def _fixed_host(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if scheme not in ("http", "https") or not sep:
            raise ValueError("must be an http:// or https:// URL")
        authority = rest.split("/", 1)[0].split("?", 1)[0]
        if not authority or "{" in authority or "@" in authority:
            raise ValueError("the host is fixed by the operator: no placeholder or credentials before the path")
        return v


class McpTool(BaseModel):
    """A tool of an MCP server named in `[mcp.SERVER]`; `tool` defaults to the action's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str
    tool: str | None = None


ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
# Anything that looks like a placeholder once the `{secret:NAME}` ones are taken out: a
# misspelt secret (`{secret:bad-name}`, `{Secret:x}`) or an argument-style `{name}`, which
# would otherwise reach the server as written.
STRAY_PLACEHOLDER = re.compile(r"\{\s*[A-Za-z_][A-Za-z0-9_-]*\s*(?::[^{}]*)?\}")


class McpServer(BaseModel):
    """An MCP server: a command started over stdio, or a streamable-HTTP URL. Only the tools
    listed in `tools` are offered (an allow-list), each under the action named after it.

    A stdio server's process gets the SDK's few safe variables (PATH, HOME, ...) and `env`;
    a streamable-HTTP server's requests carry `headers`. Their values may hold
    `{secret:NAME}`, filled from PARLEY_ACTIONS_SECRETS when the server is started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: tuple[str, ...] = ()  # argv of a stdio server
    url: str | None = None  # a streamable-HTTP endpoint
    tools: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()  # those of `tools` that change something: the user confirms each call
    timeout: float = Field(10.0, gt=0, le=120)  # seconds for one tool call
    env: dict[str, str] = Field(default_factory=dict)  # a stdio server's extra variables; values may hold {secret:NAME}
    headers: dict[str, str] = Field(default_factory=dict)  # an HTTP server's; values may hold {secret:NAME}

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if bool(self.command) == bool(self.url):
            raise ValueError("set exactly one of command (stdio) or url (streamable HTTP)")
        unlisted = [tool for tool in self.writes if tool not in self.tools]
        if unlisted:
            raise ValueError(f"writes names {unlisted[0]!r}, which is not among tools")
        if self.env and not self.command:
            raise ValueError("env is for a stdio server (command); an HTTP server takes headers")
        if self.headers and not self.url:
            raise ValueError("headers are for a streamable-HTTP server (url); a stdio server takes env")
        for name, value in self.env.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"env: {name!r} is not a variable name (A-Z, 0-9 and _, not starting with a digit)")
            self._check_template(f"env {name}", value)
            if "\0" in value:
                raise ValueError(f"env {name} holds a NUL character")
        for name, value in self.headers.items():
            if not HEADER_NAME.match(name):
                raise ValueError(f"headers: {name!r} is not a header name")
            self._check_template(f"header {name}", value)
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
        return self

    @staticmethod
    def _check_template(where: str, value: str) -> None:
        stray = STRAY_PLACEHOLDER.search(SECRET.sub("", value))
        if stray:
            raise ValueError(f"{where}: {stray.group(0)!r} is not a placeholder; the only one is {{secret:NAME}}")


class ActionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = Field(min_length=1, max_length=1000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    mode: Literal["read", "write"] = "read"
    # How a write action is put to the user before it runs: `{name}` placeholders are the
    # arguments; unset: the action's name and its arguments.
    confirm: str | None = None
    http: HttpCall | None = None
    mcp: McpTool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lower-case letters, digits and _, starting with a letter (at most 64)")
        return v

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(v)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        if v.get("type") != "object":
            raise ValueError('must be a JSON Schema with "type": "object"')
        return v

    @model_validator(mode="after")
    def _one_runner(self) -> ActionSpec:
        if (self.http is None) == (self.mcp is None):
            raise ValueError("set exactly one of http or mcp")
        if self.http is not None:
            properties = set(self.parameters.get("properties", {}))
            unknown = [p for p in PLACEHOLDER.findall(self.http.url) if p not in properties]
            if unknown:
                raise ValueError(f"the URL names {unknown[0]!r}, which is not among the parameters")
        return self


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What a call gave back: `data` is JSON-able and already cut to the fields the operator
    chose; `status` is the HTTP status where there is one."""

    data: Any
    status: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    """Runs one kind of action (HTTP, MCP). Raises `ActionError` on every failure."""

    async def run(self, spec: ActionSpec, arguments: dict[str, Any]) -> ActionResult: ...
