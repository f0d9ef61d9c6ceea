"""Per-tenant settings, and per channel: system prompt, enabled handlers, knowledge base,
language, moderation, actions, quotas, mention rule, model, support desk channel.

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
    [tenants."T0123ABCD".channels."C0SUPPORT"]  # a channel's profile: any field above but
    system_prompt = "You answer Acme's customers."  # `channels` and `channel_actions`; the rest
    mention_rule = "always"                          # is the tenant's
    handoff_channel = "C0ACMEDESK"                   # its tickets go there; unset: PARLEY_HANDOFF_SLACK_CHANNEL

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

A channel's profile (`channels."ID"`: a Slack channel id, a Discord channel id, for a thread
its parent's; or a path of the web site, which is the tenant: `Profiles.page_profile`) is
merged over its tenant's table as the tenant's is over `[default]`, and validated the same
way. `channel_actions."ID" = [...]` is a shorthand for that channel's `actions` (narrowed to the
tenant's own). An operator overrides profile fields at run time (`parley profile set`,
`bot.profiles`): those are merged over the file's and validated here too, by `Tenants.resolve`.
Each profile is resolved once (at start-up, or when an override changes), never per turn, and
its system prompt is its conversations' shared stable prefix (vLLM's prefix cache).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.actions.spec import ActionSpec, McpServer
from bot.errors import TenantConfigError

INTENTS = ("chat", "qa", "translate")
Action = Literal["refuse", "redact", "flag", "off"]
CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence", "illegal", "prompt-injection")
DEFAULT_KB = "default"
SLACK_CHANNEL = re.compile(r"[CG][A-Z0-9]{2,30}")  # a channel's id (a private one's older ids: G...)
TABLES = ("moderation", "quota")  # inherited (and overridden at run time) key by key
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
    # When the bot answers in a channel: "mention" (mentions, DMs and threads it is in: what the
    # adapters do), "always" (every message), "threads" (only in threads). Adapters decide which
    # messages become turns, so they read it (`Profiles.profile(tenant, channel).mention_rule`).
    mention_rule: Literal["mention", "always", "threads"] = "mention"
    # The served model (or LoRA adapter) its requests name; unset: PARLEY_LLM_MODEL or the first listed.
    model: str | None = Field(None, min_length=1, max_length=200, pattern=r"^\S+$")
    # Up to 4 prompts Slack's assistant pane and App Home suggest; empty: SLACK_SUGGESTED_PROMPTS.
    suggested_prompts: tuple[str, ...] = Field((), max_length=4)
    # The Slack channel its tickets open in (bot.handoff: the support desk); empty:
    # PARLEY_HANDOFF_SLACK_CHANNEL. With many workspaces (SLACK_CLIENT_ID), a channel of the
    # tenant's own workspace: each workspace names its own desk.
    handoff_channel: str = ""

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

    @field_validator("handoff_channel")
    @classmethod
    def _slack_channel(cls, v: str) -> str:
        if v and not SLACK_CHANNEL.fullmatch(v):
            raise ValueError("must be a Slack channel id (C or G, then capitals and digits), or empty")
        return v

    @field_validator("knowledge_base")
    @classmethod
    def _kb_name(cls, v: str) -> str:
        if not v or any(c in v for c in ":{} \t\n"):
            raise ValueError("must be a non-empty name without ':', '{', '}' or spaces")
        return v


# What a channel profile and a run-time override may set: a tenant's fields, less the two that
# name channels; `moderation.KEY` and `quota.KEY` set one key of those tables.
PROFILE_FIELDS = tuple(name for name in TenantConfig.model_fields if name != "channel_actions")
FIELD_NAMES = (
    *(name for name in PROFILE_FIELDS if name not in TABLES),
    *(f"moderation.{key}" for key in ModerationConfig.model_fields),
    *(f"quota.{key}" for key in QuotaConfig.model_fields),
)


class ProfileSource(Protocol):
    """Where the dialogue manager finds a turn's settings: the file alone (`Tenants`), or the
    file with the run-time overrides (`bot.profiles.Profiles`)."""

    def profile(self, tenant: str, channel: str) -> TenantConfig: ...


@dataclass(frozen=True)
class Tenants:
    """The validated file: `get(tenant)` and `profile(tenant, channel)` are dict look-ups on the
    turn's path. `tables` keeps each listed tenant's merged table and `channel_tables` each
    channel's own, so that run-time overrides are merged and validated as the file was."""

    path: Path
    default: TenantConfig
    listed: dict[str, TenantConfig] = field(default_factory=dict)
    actions: dict[str, ActionSpec] = field(default_factory=dict)  # defined in the file ([actions.NAME])
    mcp: dict[str, McpServer] = field(default_factory=dict)  # MCP servers; their allowed tools are actions
    channels: dict[tuple[str, str], TenantConfig] = field(default_factory=dict)  # (tenant, channel): profile
    tables: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    channel_tables: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def get(self, tenant: str) -> TenantConfig:
        return self.listed.get(tenant, self.default)

    def profile(self, tenant: str, channel: str) -> TenantConfig:
        """The settings of a turn in `channel`: its profile, else its tenant's."""
        return self.channels.get((tenant, channel)) or self.get(tenant)

    def knowledge_bases(self) -> set[str]:
        return {
            self.default.knowledge_base,
            *(c.knowledge_base for c in self.listed.values()),
            *(c.knowledge_base for c in self.channels.values()),
        }

    def action_names(self) -> set[str]:
        return set(self.actions) | {tool for server in self.mcp.values() for tool in server.tools}

    def resolve(self, tenant: str, channel: str, overrides: dict[str, Any], *, source: str) -> TenantConfig:
        """The profile of `channel` with run-time `overrides` (field name, dotted for a key of
        `moderation` or `quota`, to value) merged over the file's, validated as the file is:
        an invalid value raises `TenantConfigError` naming `source`, the profile and the field."""
        where = f"{tenant}.channels.{channel}"
        own = dict(self.channel_tables.get((tenant, channel), {}))
        for name, value in overrides.items():
            if name not in FIELD_NAMES:
                raise TenantConfigError(source, where, name, f"unknown field; known: {', '.join(FIELD_NAMES)}")
            table, _, key = name.partition(".")
            if key:
                own[table] = {**own.get(table, {}), key: value}
            else:
                own[name] = value
        return _profile(source, self, tenant, channel, own)


def _validate(path: Path | str, tenant: str, data: dict[str, Any]) -> TenantConfig:
    try:
        return TenantConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"] if not isinstance(part, int)) or "?"
        raise TenantConfigError(str(path), tenant, where, err["msg"]) from None


def _merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """`own` over `base`, the `moderation` and `quota` tables key by key."""
    merged = {**base, **own}
    for table in TABLES:
        if isinstance(base.get(table), dict) and isinstance(own.get(table), dict):
            merged[table] = {**base[table], **own[table]}
    return merged


def _check_actions(path: Path | str, where: str, config: TenantConfig, names: set[str]) -> None:
    wanted = [*config.actions, *(a for allowed in config.channel_actions.values() for a in allowed)]
    missing = [a for a in wanted if a not in names]
    if missing:
        raise TenantConfigError(str(path), where, "actions", f"no action named {missing[0]!r} is defined")


def _profile(path: Path | str, tenants: Tenants, tenant: str, channel: str, own: dict[str, Any]) -> TenantConfig:
    """A channel's profile: its own table over its tenant's (a `channel_actions` entry as its
    `actions`, narrowed to the tenant's). The profile names no channels: its `actions` are the
    channel's already."""
    where = f"{tenant}.channels.{channel}"
    named = sorted({"channels", "channel_actions"} & set(own))
    if named:
        raise TenantConfigError(str(path), where, named[0], "a channel's profile cannot name channels")
    config = tenants.get(tenant)
    table = _merged(tenants.tables.get(tenant, tenants.tables.get("default", {})), own)
    table.pop("channels", None)
    table.pop("channel_actions", None)
    if channel in config.channel_actions:
        if "actions" in tenants.channel_tables.get((tenant, channel), {}):
            raise TenantConfigError(
                str(path), where, "actions", f"also in channel_actions.{channel}: set the channel's actions once"
            )
        if "actions" not in own:  # (an operator's run-time `actions` replaces the shorthand's)
            table["actions"] = list(config.allowed_actions(channel))
    profile = _validate(path, where, table)
    _check_actions(path, where, profile, tenants.action_names())
    return profile


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
    if "channels" in base:
        raise TenantConfigError(str(path), "default", "channels", 'channel profiles go under [tenants."ID".channels]')
    default = _validate(path, "default", base)
    listed = {}
    tables: dict[str, dict[str, Any]] = {"default": base}
    channel_tables: dict[tuple[str, str], dict[str, Any]] = {}
    for tenant, own in (raw.get("tenants") or {}).items():
        if not isinstance(own, dict):
            raise TenantConfigError(str(path), tenant, "-", "must be a table")
        channels = own.get("channels", {})
        if not isinstance(channels, dict) or not all(isinstance(t, dict) for t in channels.values()):
            raise TenantConfigError(str(path), tenant, "channels", 'must be tables: [tenants."ID".channels."CHANNEL"]')
        channel_tables.update(((tenant, channel), table) for channel, table in channels.items())
        tables[tenant] = merged = _merged(base, {k: v for k, v in own.items() if k != "channels"})
        listed[tenant] = _validate(path, tenant, merged)
    tenants = Tenants(path, default, listed, actions, servers, tables=tables, channel_tables=channel_tables)
    names = tenants.action_names()
    for tenant, config in (("default", default), *listed.items()):
        _check_actions(path, tenant, config, names)
    for (tenant, channel), table in channel_tables.items():
        tenants.channels[(tenant, channel)] = _profile(path, tenants, tenant, channel, table)
    return tenants


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
