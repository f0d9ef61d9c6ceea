"""Every setting Parley reads, in one place: the only module that touches the environment.

Each section is a pydantic-settings class with its own environment prefix, read from
the process environment and from `.env`. Everything else in Parley is handed a
`Settings` object and never reads `os.environ`. Platform tokens use the names the
platforms' own docs use (`SLACK_BOT_TOKEN`, `DISCORD_TOKEN`); Parley's own knobs
start with `PARLEY_`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

DEFAULT_SYSTEM_PROMPT = (
    "You are Parley, a helpful assistant in a team chat. Answer clearly and briefly, "
    "use Markdown sparingly, and say so when you do not know."
)


def _section(prefix: str) -> SettingsConfigDict:
    # An empty variable (`SLACK_BOT_TOKEN=`) means unset, as in most .env files.
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", extra="ignore", validate_default=True, env_ignore_empty=True
    )


class LogSettings(BaseSettings):
    model_config = _section("PARLEY_LOG_")

    level: str = Field("INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR)$")
    json_lines: bool = False  # one JSON object per line, for log shippers


class RedisSettings(BaseSettings):
    model_config = _section("PARLEY_REDIS_")

    url: str | None = None  # redis://host:6379/0; unset: in-memory stores, for `parley chat` only
    prefix: str = Field("parley", min_length=1)
    context_ttl: int = Field(7 * 24 * 3600, gt=0)  # seconds a quiet conversation is kept
    dedupe_ttl: int = Field(24 * 3600, gt=0)  # seconds an event id is remembered
    socket_timeout: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v or None


class LLMSettings(BaseSettings):
    model_config = _section("PARLEY_LLM_")

    base_url: str | None = None  # http://host:8000/v1; unset: Parley starts a local engine
    model: str | None = None  # unset: the first model the engine lists
    api_key: SecretStr | None = None  # vLLM's --api-key, if the server has one
    max_concurrency: int = Field(64, ge=1)  # requests in flight to the engine at once
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)  # longest silence between two streamed chunks
    total_timeout: float = Field(300.0, gt=0)  # longest a whole answer may take
    retries: int = Field(1, ge=0)  # retries before the first token (connect errors, 429/503)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)  # JSON merged into each request

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/") if v else None


class ContextSettings(BaseSettings):
    model_config = _section("PARLEY_CONTEXT_")

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    token_budget: int = Field(3000, ge=64)  # history tokens kept for the prompt
    # When the history outgrows the budget it is cut back to this share of it in one
    # step, so the prompt's start (and vLLM's prefix cache) holds for several turns.
    compact_to: float = Field(0.5, gt=0, lt=1)
    max_input_chars: int = Field(8000, ge=1)


class DialogueSettings(BaseSettings):
    model_config = _section("PARLEY_DIALOGUE_")

    max_in_flight: int = Field(64, ge=1)  # turns handled at once by this process
    inbox_size: int = Field(1000, ge=1)  # turns waiting before users are told to retry
    drain_timeout: float = Field(30.0, ge=0)  # seconds shutdown waits for in-flight turns


class EngineSettings(BaseSettings):
    """The local vLLM engine that `parley engine` / `parley chat` start when no URL is set."""

    model_config = _section("PARLEY_ENGINE_")

    home: Path = Path.home() / ".cache" / "parley"  # engine venv, demo model, vLLM cache
    model: str | None = None  # a model path or name; unset: the locally built demo model
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port
    vllm_version: str = "0.32.0"
    max_num_seqs: int = Field(64, ge=1)
    max_model_len: int = Field(4096, ge=256)
    block_size: int = Field(32, ge=1)  # 32 beats the CPU default of 128 for prefix reuse
    kv_cache_bytes: int = Field(512 * 1024**2, ge=16 * 1024**2)
    startup_timeout: float = Field(600.0, gt=0)
    extra_args: list[str] = Field(default_factory=list)  # JSON list of further vLLM flags


class SlackSettings(BaseSettings):
    model_config = _section("SLACK_")

    bot_token: SecretStr | None = None  # xoxb-...
    app_token: SecretStr | None = None  # xapp-...: Socket Mode; unset: Events API over HTTP
    signing_secret: SecretStr | None = None  # verifies Events API requests
    api_base_url: str = "https://slack.com/api/"  # GovSlack or a proxy use another host
    http_host: str = "0.0.0.0"
    http_port: int = Field(3000, ge=0, le=65535)
    edit_interval: float = Field(1.0, ge=0)  # seconds between edits of a streaming message
    message_limit: int = Field(3000, ge=100, le=40000)
    native_streaming: bool = True  # chat.startStream/appendStream/stopStream where offered; else edits
    rate_limit_retries: int = Field(3, ge=0)  # retries of a call Slack answered 429, after its Retry-After
    request_timeout: float = Field(30.0, gt=0)  # seconds one Web API call may take
    thread_ttl: int = Field(7 * 24 * 3600, gt=0)  # seconds Parley keeps following a quiet thread

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None


class DiscordSettings(BaseSettings):
    model_config = _section("DISCORD_")

    token: SecretStr | None = None
    api_base_url: str = "https://discord.com/api/v10"  # a shared rate-limit proxy goes here
    gateway_url: str = "wss://gateway.discord.gg/"
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] | None = None  # this replica's shards, JSON list
    guild_ready_timeout: float = Field(2.0, ge=0)
    test_guild: int | None = None  # register slash commands here only (instant, for testing)
    allowed_guilds: list[int] = Field(default_factory=list)  # empty: every guild
    allowed_channels: list[int] = Field(default_factory=list)  # empty: every channel
    open_threads: bool = False  # start a thread for each new conversation
    edit_interval: float = Field(1.0, ge=0)
    message_limit: int = Field(2000, ge=100, le=2000)
    sync_commands: bool = True  # register slash commands at start-up; off on all but one replica
    thread_archive_minutes: int = 1440  # an opened thread hides after this quiet time: 60, 1440, 4320 or 10080

    @field_validator("api_base_url", "gateway_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must be an http(s):// or ws(s):// URL")
        return v

    @field_validator("shard_ids")
    @classmethod
    def _shards(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        count = info.data.get("shard_count")
        if v is not None and (count is None or not v or any(not 0 <= i < count for i in v)):
            raise ValueError("needs DISCORD_SHARD_COUNT, and each id in 0 .. count-1")
        return v

    @field_validator("thread_archive_minutes")
    @classmethod
    def _archive(cls, v: int) -> int:
        if v not in (60, 1440, 4320, 10080):
            raise ValueError("must be 60, 1440, 4320 or 10080")
        return v

    @property
    def enabled(self) -> bool:
        return self.token is not None


class Settings(BaseModel):
    """All sections together, as handed to every part of Parley."""

    log: LogSettings = Field(default_factory=LogSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    dialogue: DialogueSettings = Field(default_factory=DialogueSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)

    SECTIONS: ClassVar[tuple[str, ...]] = (
        "log", "redis", "llm", "context", "dialogue", "engine", "slack", "discord",
    )


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read every section, turning the first invalid value into one clear `ConfigError`."""
    sections: dict[str, BaseSettings] = {}
    for name in Settings.SECTIONS:
        cls = Settings.model_fields[name].default_factory
        try:
            sections[name] = cls(_env_file=env_file)  # type: ignore[misc, operator]
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            var = (cls.model_config.get("env_prefix", "") + field).upper()  # type: ignore[union-attr]
            # The message never echoes the value: it may be a secret.
            raise ConfigError(var, err["msg"]) from None
    return Settings(**sections)
