"""Per-tenant settings: system prompt, enabled handlers, knowledge base, language, moderation.

They come from one TOML file the operator edits (`PARLEY_TENANTS_FILE`, default
`bot/data/tenants.toml`), read and validated once at start-up: an invalid file stops
the start with one line naming the file, the tenant and the field. `[default]` applies
to every tenant not listed under `[tenants."ID"]`; a listed tenant inherits each field it
does not set from `[default]` (the `moderation` table too, key by key).

    [default]
    handlers = ["chat", "qa", "translate"]
    language = "en"
    [default.moderation]
    personal_data = "redact"

    [tenants."T0123ABCD"]          # a Slack team, Discord guild or web site id
    system_prompt = "You are Acme's support assistant."
    knowledge_base = "acme"
    actions = ["order_status"]     # allowed actions (bot/actions), defined once below
    [tenants."T0123ABCD".channel_actions]
    "C0SUPPORT" = ["order_status"] # a channel listed here gets only these
    [tenants."T0123ABCD".quota]    # its own quotas (PARLEY_QUOTA_* names, lower case)
    user_tokens_per_day = 50000

    [actions.order_status]         # an action: see bot/actions/spec.py
    description = "Look up an order"
    http = { url = "https://orders.acme.example/api/orders/{order_id}" }
    [mcp.files]                    # an MCP server whose allowed tools become actions
    command = ["acme-files-mcp"]
    tools = ["search_files"]
    env = { FILES_TOKEN = "{secret:files_token}" }  # a stdio server gets only these and a few
                                   # of ours (PATH, HOME...); {secret:NAME}: PARLEY_ACTIONS_SECRETS
    [mcp.wiki]                     # a streamable-HTTP server
    url = "https://wiki.acme.example/mcp"
    tools = ["search_pages"]
    headers = { Authorization = "Bearer {secret:wiki_token}" }

A server that goes down is reconnected in the background (1 s, doubling to 60 s); meanwhile
its actions fail at once with a clear error.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.actions.spec import ActionSpec, McpServer
from bot.errors import TenantConfigError

INTENTS = ("chat", "qa", "translate")
Action = Literal["refuse", "redact", "flag", "off"]
CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence", "illegal", "prompt-injection")
DEFAULT_KB = "default"
T = TypeVar("T")


DATA = Path(__file__).parent / "data"  # files shipped with Parley


def default_file() -> Path:
    return DATA / "tenants.toml"


class ModerationConfig(BaseModel):
    """What to do when a check fires: refuse (with a short explanation), redact (replace the
    matched text before it reaches the LLM or the context store), flag (let it through and
    report it), or off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profanity: Action = "refuse"
    personal_data: Action = "redact"  # e-mail, phone, card (Luhn), IBAN (mod 97)
    llm_check: bool = False  # also ask the LLM to classify each input over CATEGORIES
    llm_action: Action = "refuse"
    check_output: bool = True  # run the local checks on the bot's answers too
    moderators_channel: str = ""  # where flagged events go, if the adapter supports it


class QuotaConfig(BaseModel):
    """A tenant's own quotas (`[tenants."ID".quota]`), each replacing the PARLEY_QUOTA_ setting
    of the same name for its conversations; unset: the setting's. 0 turns a limit off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_tokens_per_hour: int | None = Field(None, ge=0)
    user_tokens_per_day: int | None = Field(None, ge=0)
    user_turns_per_minute: int | None = Field(None, ge=0)
    channel_tokens_per_hour: int | None = Field(None, ge=0)
    channel_tokens_per_day: int | None = Field(None, ge=0)
    channel_turns_per_minute: int | None = Field(None, ge=0)
    tenant_tokens_per_hour: int | None = Field(None, ge=0)
    tenant_tokens_per_day: int | None = Field(None, ge=0)
    tenant_turns_per_minute: int | None = Field(None, ge=0)


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str | None = None  # unset: PARLEY_CONTEXT_SYSTEM_PROMPT
    handlers: tuple[str, ...] = INTENTS
    knowledge_base: str = DEFAULT_KB  # names the KB in Redis; `parley kb ingest --tenant` fills it
    language: str = Field("en", pattern=r"^[a-z]{2}$")  # ISO 639-1: the translation target by default
    moderation: ModerationConfig = ModerationConfig()
    actions: tuple[str, ...] = ()  # the actions its conversations may use
    channel_actions: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # per channel: only these
    quota: QuotaConfig = QuotaConfig()  # quotas of its own (bot.dialogue.quota); unset: PARLEY_QUOTA_*

    def allowed_actions(self, channel: str) -> tuple[str, ...]:
        """The actions a conversation in `channel` may use (a channel's list narrows the tenant's)."""
        if channel in self.channel_actions:
            return tuple(a for a in self.channel_actions[channel] if a in self.actions)
        return self.actions

    @field_validator("handlers")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [h for h in v if h not in INTENTS]
        if unknown:
            raise ValueError(f"unknown handler {unknown[0]!r}; known: {', '.join(INTENTS)}")
        if "chat" not in v:
            raise ValueError("must include 'chat' (the fallback for every turn)")
        return v

    @field_validator("knowledge_base")
    @classmethod
    def _kb_name(cls, v: str) -> str:
        if not v or any(c in v for c in ":{} \t\n"):
            raise ValueError("must be a non-empty name without ':', '{', '}' or spaces")
        return v


@dataclass(frozen=True)
class Tenants:
    """The validated file: `get(tenant)` is a dict look-up on the turn's path."""

    path: Path
    default: TenantConfig
    listed: dict[str, TenantConfig] = field(default_factory=dict)
    actions: dict[str, ActionSpec] = field(default_factory=dict)  # defined in the file ([actions.NAME])
    mcp: dict[str, McpServer] = field(default_factory=dict)  # MCP servers; their allowed tools are actions

    def get(self, tenant: str) -> TenantConfig:
        return self.listed.get(tenant, self.default)

    def knowledge_bases(self) -> set[str]:
        return {self.default.knowledge_base, *(c.knowledge_base for c in self.listed.values())}


def _validate(path: Path, tenant: str, data: dict[str, Any]) -> TenantConfig:
    try:
        return TenantConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"] if not isinstance(part, int)) or "?"
        raise TenantConfigError(str(path), tenant, where, err["msg"]) from None


def load_tenants(path: Path | None) -> Tenants:
    """Read and validate the tenants file; raises `TenantConfigError` with one clear line."""
    path = path or default_file()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TenantConfigError(str(path), "-", "-", "file not found (PARLEY_TENANTS_FILE)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TenantConfigError(str(path), "-", "-", f"not valid TOML: {exc}") from None
    unknown = set(raw) - {"default", "tenants", "actions", "mcp"}
    if unknown:
        raise TenantConfigError(
            str(path),
            "-",
            sorted(unknown)[0],
            'unknown table; use [default], [tenants."ID"], [actions.NAME], [mcp.NAME]',
        )
    actions, servers = _actions(path, raw)
    base = raw.get("default", {})
    default = _validate(path, "default", base)
    listed = {}
    for tenant, own in (raw.get("tenants") or {}).items():
        if not isinstance(own, dict):
            raise TenantConfigError(str(path), tenant, "-", "must be a table")
        merged = {**base, **own}
        for table in ("moderation", "quota"):  # inherited key by key
            if isinstance(base.get(table), dict) and isinstance(own.get(table), dict):
                merged[table] = {**base[table], **own[table]}
        listed[tenant] = _validate(path, tenant, merged)
    names = set(actions) | {tool for server in servers.values() for tool in server.tools}
    for tenant, config in (("default", default), *listed.items()):
        wanted = [*config.actions, *(a for allowed in config.channel_actions.values() for a in allowed)]
        missing = [a for a in wanted if a not in names]
        if missing:
            raise TenantConfigError(str(path), tenant, "actions", f"no action named {missing[0]!r} is defined")
    return Tenants(path, default, listed, actions, servers)


def _actions(path: Path, raw: dict[str, Any]) -> tuple[dict[str, ActionSpec], dict[str, McpServer]]:
    """The `[actions.NAME]` and `[mcp.NAME]` tables, validated; an MCP tool may not take the
    name of an action defined in the file."""
    actions = {
        name: _definition(path, f"actions.{name}", ActionSpec.model_validate, body, name=name)
        for name, body in (raw.get("actions") or {}).items()
    }
    servers = {
        name: _definition(path, f"mcp.{name}", McpServer.model_validate, body)
        for name, body in (raw.get("mcp") or {}).items()
    }
    for server, config in servers.items():
        clash = [tool for tool in config.tools if tool in actions]
        if clash:
            raise TenantConfigError(str(path), f"mcp.{server}", "tools", f"{clash[0]!r} is also an [actions] name")
    return actions, servers


def _definition(path: Path, where: str, build: Callable[[dict[str, Any]], T], body: object, **fields: object) -> T:
    if not isinstance(body, dict):
        raise TenantConfigError(str(path), where, "-", "must be a table")
    try:
        return build({**body, **fields})
    except ValidationError as exc:
        err = exc.errors()[0]
        field_name = ".".join(str(part) for part in err["loc"] if not isinstance(part, int)) or "-"
        raise TenantConfigError(str(path), where, field_name, err["msg"]) from None
