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
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.errors import TenantConfigError

INTENTS = ("chat", "qa", "translate")
Action = Literal["refuse", "redact", "flag", "off"]
CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence", "illegal", "prompt-injection")
DEFAULT_KB = "default"


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


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str | None = None  # unset: PARLEY_CONTEXT_SYSTEM_PROMPT
    handlers: tuple[str, ...] = INTENTS
    knowledge_base: str = DEFAULT_KB  # names the KB in Redis; `parley kb ingest --tenant` fills it
    language: str = Field("en", pattern=r"^[a-z]{2}$")  # ISO 639-1: the translation target by default
    moderation: ModerationConfig = ModerationConfig()

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
    unknown = set(raw) - {"default", "tenants"}
    if unknown:
        raise TenantConfigError(str(path), "-", sorted(unknown)[0], 'unknown table; use [default] and [tenants."ID"]')
    base = raw.get("default", {})
    default = _validate(path, "default", base)
    listed = {}
    for tenant, own in (raw.get("tenants") or {}).items():
        if not isinstance(own, dict):
            raise TenantConfigError(str(path), tenant, "-", "must be a table")
        merged = {**base, **own}
        if isinstance(base.get("moderation"), dict) and isinstance(own.get("moderation"), dict):
            merged["moderation"] = {**base["moderation"], **own["moderation"]}
        listed[tenant] = _validate(path, tenant, merged)
    return Tenants(path, default, listed)
