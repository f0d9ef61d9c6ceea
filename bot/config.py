"""Every setting Parley reads, in one place: the only module that touches the environment.

Each section is a pydantic-settings class with its own environment prefix, read from
the process environment and from `.env`. Everything else in Parley is handed a
`Settings` object and never reads `os.environ`. Platform tokens use the names the
platforms' own docs use (`SLACK_BOT_TOKEN`, `DISCORD_TOKEN`); Parley's own knobs
start with `PARLEY_`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError

DEFAULT_SYSTEM_PROMPT = (
    "You are Parley, a helpful assistant in a team chat. Answer clearly and briefly, "
    "use Markdown sparingly, and say so when you do not know."
)
# The rates a quota is given in, each with the seconds its bucket takes to fill up again.
RATES = {"tokens_per_hour": 3600.0, "tokens_per_day": 86400.0, "turns_per_minute": 60.0}
MIN_WEB_SECRET_BYTES = 32  # PARLEY_WEB_SECRET signs visitor tokens with HMAC-SHA256: a key as long as its output


def tokenizer_file(path: Path) -> Path | None:
    """`path` itself, or the tokenizer.json in the folder `path`, when that file exists."""
    file = path / "tokenizer.json" if path.is_dir() else path
    return file if file.is_file() else None


def _section(prefix: str) -> SettingsConfigDict:
    # An empty variable (`SLACK_BOT_TOKEN=`) means unset, as in most .env files.
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", extra="ignore", validate_default=True, env_ignore_empty=True
    )


class LogSettings(BaseSettings):
    model_config = _section("PARLEY_LOG_")

    level: str = Field("INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR)$")  # DEBUG, INFO, WARNING or ERROR
    json_lines: bool = False  # one JSON object per line, for log shippers
    redact_pii: bool = True  # mask e-mail addresses, phone, card and IBAN numbers in log lines


class RedisSettings(BaseSettings):
    model_config = _section("PARLEY_REDIS_")

    url: str | None = None  # redis://host:6379/0; unset: in-memory stores, for `parley chat` only
    prefix: str = Field("parley", min_length=1)  # every Redis key starts with this (several bots can share a Redis)
    context_ttl: int = Field(7 * 24 * 3600, gt=0)  # seconds a quiet conversation is kept
    dedupe_ttl: int = Field(24 * 3600, gt=0)  # seconds an event id is remembered
    socket_timeout: float = Field(5.0, gt=0)  # seconds a Redis call may take
    password: SecretStr | None = None  # Redis's requirepass, kept out of PARLEY_REDIS_URL (a password in the URL wins)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v or None


class LLMSettings(BaseSettings):
    model_config = _section("PARLEY_LLM_")

    base_url: str | None = None  # http://host:8000/v1, or several comma-separated; unset: Parley starts a local engine
    model: str | None = None  # unset: the first model the engine lists
    api_key: SecretStr | None = None  # vLLM's --api-key, if the server has one
    max_concurrency: int = Field(64, ge=1)  # requests in flight to the engine at once
    # Whose turn it is when requests wait for one of those slots (bot/llm/fairness.py):
    # round-robin per user (of a tenant) or per tenant; none: first come, first served.
    fair_share: str = Field("user", pattern=r"^(user|tenant|none)$")
    connect_timeout: float = Field(5.0, gt=0)  # seconds to connect to the engine
    read_timeout: float = Field(60.0, gt=0)  # longest silence between two streamed chunks
    total_timeout: float = Field(300.0, gt=0)  # longest a whole answer may take
    keepalive: float = Field(4.0, gt=0)  # seconds an idle connection is kept: below the engine's (vLLM: 5 s)
    retries: int = Field(1, ge=0)  # retries before the first token (connect errors, 429/503)
    max_tokens: int = Field(512, ge=1)  # longest answer, in tokens
    temperature: float = Field(0.7, ge=0)  # sampling temperature of answers
    extra_body: dict[str, Any] = Field(default_factory=dict)  # JSON merged into each request
    breaker_threshold: int = Field(3, ge=1)  # consecutive failures that take an engine out of use
    breaker_cooldown: float = Field(10.0, gt=0)  # seconds before a down engine is probed again
    sticky: bool = True  # each conversation stays on one engine (prefix cache); false: round-robin
    affinity_header: str = "X-Session-ID"  # carries the conversation key for a router's session affinity; empty: none
    # The served model's tokenizer.json (or its model folder), to count tokens in process;
    # unset: the model folder the engine reports when it is on this machine, else vLLM's /tokenize.
    tokenizer: Path | None = None

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_file(cls, v: Path | None) -> Path | None:
        if v is None:
            return None
        if (file := tokenizer_file(v)) is None:
            raise ValueError(f"no tokenizer.json at {v}")
        return file  # a folder becomes its tokenizer.json

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        urls = [u.strip().rstrip("/") for u in (v or "").split(",") if u.strip()]
        if any(not u.startswith(("http://", "https://")) for u in urls):
            raise ValueError("each URL must start with http:// or https://")
        return ",".join(urls) or None


class ContextSettings(BaseSettings):
    model_config = _section("PARLEY_CONTEXT_")

    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # the default system prompt (a tenant's own replaces it)
    token_budget: int = Field(3000, ge=64)  # history tokens kept for the prompt
    # When the history outgrows the budget it is cut back to this share of it in one
    # step, so the prompt's start (and vLLM's prefix cache) holds for several turns.
    compact_to: float = Field(0.5, gt=0, lt=1)  # share of the budget kept when history is cut back
    max_input_chars: int = Field(8000, ge=1)  # longer messages are refused with a clear answer


class DialogueSettings(BaseSettings):
    model_config = _section("PARLEY_DIALOGUE_")

    # Turns handled at once by this process: above PARLEY_LLM_MAX_CONCURRENCY, so that turns
    # wait for the engine in its fair queue rather than first come, first served in the inbox.
    max_in_flight: int = Field(256, ge=1)
    inbox_size: int = Field(
        1000, ge=1
    )  # turns waiting (per stream shard with the Redis inbox) before users are told to retry
    drain_timeout: float = Field(30.0, ge=0)  # seconds shutdown waits for in-flight turns
    inbox: str = Field(
        "auto", pattern=r"^(auto|memory|redis)$"
    )  # auto: a Redis Stream when Redis is there, else in-process
    stream_shards: int = Field(8, ge=1, le=1024)  # Redis Streams the inbox is spread over (by conversation)
    visibility_timeout: float = Field(30.0, gt=0)  # seconds a dead worker's turn stays pending before another takes it
    consumer: str | None = None  # this worker's name in the consumer group; unset: host name and process id


class OpsSettings(BaseSettings):
    """The operations endpoint of `parley serve`: /healthz, /readyz and /metrics."""

    model_config = _section("PARLEY_OPS_")

    host: str = (
        "127.0.0.1"  # where /healthz, /readyz and /metrics listen (0.0.0.0 in a container, for probes and scrapers)
    )
    port: int = Field(9464, ge=0, le=65535)  # 0: any free port


class EngineSettings(BaseSettings):
    """The local vLLM engine that `parley engine` / `parley chat` start when no URL is set."""

    model_config = _section("PARLEY_ENGINE_")

    home: Path = Path.home() / ".cache" / "parley"  # engine venv, demo model, vLLM cache
    # A model path or name; "parley-demo": the locally built random-weight demo model; unset: a
    # real instruct model chosen for this machine (`bot/engine/launcher.py`, `choose_model`),
    # downloaded once into PARLEY_ENGINE_HOME, and the demo model only when none can be fetched.
    model: str | None = None
    host: str = "127.0.0.1"  # where the local engine listens
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port
    vllm_version: str = "0.32.0"  # the vLLM release installed into the engine venv
    max_num_seqs: int = Field(64, ge=1)  # vLLM --max-num-seqs: sequences decoded in one batch
    max_model_len: int = Field(4096, ge=256)  # vLLM --max-model-len: longest prompt plus answer
    block_size: int = Field(32, ge=1)  # 32 beats the CPU default of 128 for prefix reuse
    kv_cache_bytes: int = Field(512 * 1024**2, ge=16 * 1024**2)  # vLLM --kv-cache-memory-bytes on CPU
    startup_timeout: float = Field(600.0, gt=0)  # seconds the engine may take to become healthy
    # vLLM --tool-call-parser for the served model's family (hermes: Qwen 2.5/3 and Hermes;
    # llama3_json: Llama 3.1-3.3; mistral: Mistral); "": no tool calling (README, "Actions").
    tool_call_parser: str = "hermes"
    extra_args: list[str] = Field(default_factory=list)  # JSON list of further vLLM flags
    # The Hugging Face Hub a real model is fetched from on the first start, under the names
    # huggingface_hub itself reads: a mirror, a token for gated models, offline mode.
    hub_endpoint: str = Field("https://huggingface.co", validation_alias="HF_ENDPOINT")
    hub_token: SecretStr | None = Field(None, validation_alias="HF_TOKEN")
    hub_offline: bool = Field(False, validation_alias="HF_HUB_OFFLINE")


# The bot scopes Parley uses (as deploy/slack/manifest.json asks for them).
SLACK_BOT_SCOPES = (
    "app_mentions:read",
    "assistant:write",
    "channels:history",
    "channels:read",
    "chat:write",
    "commands",
    "groups:history",
    "groups:read",
    "im:history",
    "reactions:read",
    "usergroups:read",
    "users:read",
)


class SlackSettings(BaseSettings):
    model_config = _section("SLACK_")

    bot_token: SecretStr | None = None  # xoxb-...
    app_token: SecretStr | None = None  # xapp-...: Socket Mode; unset: Events API over HTTP
    signing_secret: SecretStr | None = None  # verifies Events API requests
    api_base_url: str = "https://slack.com/api/"  # GovSlack or a proxy use another host
    http_host: str = "127.0.0.1"  # where the Events API endpoint listens (HTTP mode; 0.0.0.0 behind a load balancer)
    http_port: int = Field(3000, ge=0, le=65535)  # its port; the Request URL is http(s)://HOST:PORT/slack/events
    edit_interval: float = Field(1.0, ge=0)  # seconds between edits of a streaming message
    message_limit: int = Field(
        3000, ge=100, le=40000
    )  # characters per message before the answer continues in a new one
    native_streaming: bool = True  # chat.startStream/appendStream/stopStream where offered; else edits
    rate_limit_retries: int = Field(3, ge=0)  # retries of a call Slack answered 429, after its Retry-After
    request_timeout: float = Field(30.0, gt=0)  # seconds one Web API call may take
    thread_ttl: int = Field(7 * 24 * 3600, gt=0)  # seconds Parley keeps following a quiet thread
    feedback_buttons: bool = True  # 👍/👎 buttons under every answer (Block Kit feedback_buttons)
    # JSON list of up to 4 prompts the assistant pane and App Home suggest (a tenant's `suggested_prompts`
    # replace them); empty: Parley's own
    suggested_prompts: list[str] = Field(default_factory=list, max_length=4)
    # "Add to Slack" for many workspaces (instead of SLACK_BOT_TOKEN; Events API over HTTP only):
    client_id: str | None = None  # the app's Client ID; set to serve every workspace that installs Parley
    client_secret: SecretStr | None = None  # the app's Client Secret
    # Comma-separated Fernet keys: the first encrypts installed workspaces' tokens in Redis, all decrypt
    install_keys: SecretStr | None = None
    scopes: list[str] = Field(default_factory=lambda: list(SLACK_BOT_SCOPES))  # bot scopes asked for at install
    authorize_url: str = "https://slack.com/oauth/v2/authorize"  # where /slack/install sends the installer
    redirect_uri: str | None = None  # https://HOST/slack/oauth_redirect; unset: the app's only redirect URL

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None or self.client_id is not None

    @property
    def distributed(self) -> bool:
        """Installed by many workspaces through OAuth, not one bot token."""
        return self.client_id is not None


class DiscordSettings(BaseSettings):
    model_config = _section("DISCORD_")

    token: SecretStr | None = None  # the bot token; set to enable the Discord adapter
    api_base_url: str = "https://discord.com/api/v10"  # a shared rate-limit proxy goes here
    gateway_url: str = "wss://gateway.discord.gg/"  # the gateway (a proxy or a test gateway goes here)
    shard_count: int | None = Field(None, ge=1)  # total shards over all replicas; unset: one process, Discord's count
    shard_ids: list[int] | None = None  # this replica's shards, JSON list
    guild_ready_timeout: float = Field(2.0, ge=0)  # seconds to wait for guilds at connect before ready
    test_guild: int | None = None  # register slash commands here only (instant, for testing)
    allowed_guilds: list[int] = Field(default_factory=list)  # empty: every guild
    allowed_channels: list[int] = Field(default_factory=list)  # empty: every channel
    allow_dms: bool | None = (
        None  # answer direct messages; unset: yes, unless DISCORD_ALLOWED_GUILDS or _CHANNELS is set
    )
    open_threads: bool = False  # start a thread for each new conversation
    thread_channels: list[int] = Field(default_factory=list)  # channels where each question opens a thread (JSON list)
    user_install: bool = False  # slash commands also usable where users install Parley (their DMs, group DMs)
    edit_interval: float = Field(1.0, ge=0)  # seconds between edits of a streaming message
    message_limit: int = Field(2000, ge=100, le=2000)  # characters per message before the answer continues in a new one
    sync_commands: bool = True  # register slash commands at start-up; off on all but one replica
    sync_retry: float = Field(
        30.0, gt=0
    )  # seconds before a failed slash-command registration is tried again (doubling, up to 10 minutes)
    thread_archive_minutes: int = 1440  # an opened thread hides after this quiet time: 60, 1440, 4320 or 10080
    retry_buffer: int = Field(1000, ge=1)  # turns kept while the inbox is unreachable

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

    @property
    def dms_allowed(self) -> bool:
        """An allow-list scopes Parley to some servers or channels; a DM is in none of them, so
        it is refused then unless DISCORD_ALLOW_DMS says otherwise."""
        if self.allow_dms is not None:
            return self.allow_dms
        return not (self.allowed_guilds or self.allowed_channels)


class WebSettings(BaseSettings):
    """The embeddable web chat (`adapters/web`): a widget script and a WebSocket per visitor."""

    model_config = _section("PARLEY_WEB_")

    enabled: bool = False  # serve the web chat from `parley serve`
    host: str = "127.0.0.1"  # where the widget and its WebSocket listen (0.0.0.0 behind a proxy or in a container)
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port
    # Signs visitor tokens (HMAC), at least 32 bytes; unset: a random one per start (visitors
    # lose their history on restart).
    secret: SecretStr | None = None
    token_ttl: int = Field(30 * 24 * 3600, gt=0)  # seconds a visitor's token (and so their conversation) stays valid
    site: str = Field("web", min_length=1, max_length=64)  # the tenant the web chat's conversations belong to
    allowed_origins: list[str] = Field(
        default_factory=list
    )  # JSON list of https://host origins that may embed it; empty: same origin only
    title: str = "Parley"  # the chat panel's title
    colour: str = Field("#3b5bdb", pattern=r"^#[0-9a-fA-F]{6}$")  # the panel's accent colour
    greeting: str = "Hi! How can I help?"  # the first line a new visitor sees
    max_message_chars: int = Field(4000, ge=1)  # longer messages are refused with a clear answer
    visitor_rate: int = Field(20, ge=1)  # frames (messages, votes) a visitor may send per minute
    ip_rate: int = Field(60, ge=1)  # frames (messages, votes, greetings) one IP address may send per minute
    proxy_hops: int = Field(
        0, ge=0, le=5
    )  # proxies in front that append X-Forwarded-For (a load balancer: 1); 0: the peer address is the visitor's
    # Tickets web visitors may open in the support channel per hour (asking for a person, anger,
    # failed answers), so that anonymous visitors cannot flood it; shared through Redis.
    visitor_handoffs: int = Field(3, ge=1)  # handoffs one visitor may start per hour
    ip_handoffs: int = Field(10, ge=1)  # handoffs the visitors of one IP address may start per hour
    site_handoffs: int = Field(100, ge=1)  # handoffs all visitors of the site may start per hour

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, v: SecretStr | None) -> SecretStr | None:
        # Whoever knows it can open any visitor's conversation: as long as the HMAC's own key.
        if v is not None and len(v.get_secret_value().encode()) < MIN_WEB_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_WEB_SECRET_BYTES} bytes (try: openssl rand -hex 32)")
        return v


class HandoffSettings(BaseSettings):
    """Handing a conversation to human agents in a Slack support channel."""

    model_config = _section("PARLEY_HANDOFF_")

    slack_channel: str | None = None  # the Slack channel id agents work in; unset: no handoff
    on_request: bool = True  # hand off when the user asks for a person (the `handoff` intent)
    on_anger: bool = True  # hand off when moderation sees an angry or abusive user
    after_failures: int = Field(2, ge=0)  # hand off after this many failed answers in a row; 0: never
    allow_public_channel: bool = False  # accept a public (or Slack Connect) support channel; else the desk stays off
    # JSON list of Slack user-group ids (S...) whose members may answer; empty: anyone in the
    # channel from Parley's workspace.
    agent_groups: list[str] = Field(default_factory=list)
    agent_refresh: float = Field(
        300.0, gt=0
    )  # seconds Parley keeps an agent's workspace and the groups' members before asking Slack again

    @property
    def enabled(self) -> bool:
        return self.slack_channel is not None


class EmbeddingSettings(BaseSettings):
    """Sentence embeddings for routing and the knowledge base."""

    model_config = _section("PARLEY_EMBED_")

    base_url: str | None = None  # an OpenAI-compatible /v1 serving an embedding model; unset: a local model
    model: str = "all-minilm-l6-v2"  # the model name sent to base_url (ignored by the local models)
    api_key: SecretStr | None = None  # a key for PARLEY_EMBED_BASE_URL, if it needs one
    # multilingual: USE multilingual v3 (16 languages, ~1 ms a message); minilm: English-only
    # all-MiniLM-L6-v2 (ONNX, `parley[minilm]`), minilm-int8 its int8 file (~2x faster, cosine 0.97-0.995)
    local_model: str = Field("multilingual", pattern=r"^(multilingual|minilm|minilm-int8)$")
    threads: int = Field(1, ge=1)  # onnxruntime threads per call for minilm (turns already run concurrently)
    timeout: float = Field(30.0, gt=0)  # seconds an embeddings call may take

    @field_validator("local_model", mode="before")
    @classmethod
    def _old_names(cls, v: Any) -> Any:
        # fp32 and int8 named the MiniLM files before the multilingual model became the default.
        return {"fp32": "minilm", "int8": "minilm-int8"}.get(v, v) if isinstance(v, str) else v

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v and (not v.startswith(("http://", "https://")) or "," in v):
            raise ValueError("must be one http:// or https:// URL")
        return v.rstrip("/") if v else None


class RoutingSettings(BaseSettings):
    model_config = _section("PARLEY_ROUTING_")

    # The routing model is trained at start-up on both files: the labelled JSONL set and the
    # example phrases per intent (TOML), so an added example counts at the next start.
    training_file: Path | None = None  # JSONL {"text", "intent", "lang"}; unset: bot/data/routing-train.jsonl
    examples_file: Path | None = None  # example phrases per intent (TOML); unset: bot/data/intents.toml
    margin: float = Field(0.15, ge=0, le=1)  # top two probabilities closer than this: the LLM decides
    llm_fallback: bool = True  # ask the LLM when the top two are close; off: take the top one
    handoff_threshold: float = Field(0.4, ge=0, le=1)  # a person is asked for at this probability or more
    handoff_weight: float = Field(2.0, gt=0)  # how much more a missed request for a person costs in training
    # The plain-chat answer's engine request starts beside routing; it is kept when the turn goes
    # to chat (or to a handler answering as chat) and dropped, so vLLM aborts it, otherwise.
    speculate: bool = True  # start the chat answer while routing decides (per tenant, while it mostly pays)


class KBSettings(BaseSettings):
    model_config = _section("PARLEY_KB_")

    chunk_chars: int = Field(900, ge=100)  # a chunk's target size
    overlap_chars: int = Field(150, ge=0)  # text repeated from the end of the previous chunk
    top_k: int = Field(3, ge=1)  # passages put in the answer prompt
    # Whether the passages answer the question is judged from evidence (bot/knowledge/evidence.py):
    # a score from 0 to 1 mixing the question's distinctive terms found in the passages with the
    # best passage's cosine. Below refuse_below: "I don't know", no LLM call; from there up to
    # check_below the LLM is asked whether the passages answer (llm_check); at or above, answered.
    refuse_below: float = Field(0.35, ge=0, le=1)  # evidence below this: "I don't know", no LLM call
    check_below: float = Field(0.75, ge=0, le=1)  # evidence below this (and not refused): the LLM confirms first
    llm_check: bool = True  # ask the LLM about borderline evidence; off: answer it
    # The cosines depend on the embedding model: these suit USE multilingual (the default).
    dense_none: float = Field(0.10, ge=-1, le=1)  # a best-passage cosine at or below this is no evidence
    dense_full: float = Field(0.40, ge=-1, le=1)  # at or above this: full evidence from the dense side
    fetch_timeout: float = Field(
        20.0, gt=0
    )  # seconds to fetch one URL from a URL-list file, redirects and body included
    fetch_max_bytes: int = Field(5_000_000, ge=1024)  # a fetched page larger than this is skipped (never cut short)
    # Non-public addresses (private, loopback, link-local, ...) are fetched only inside these
    # ranges; cloud metadata addresses never are. Comma-separated CIDR, e.g. 10.20.0.0/16,fd12::/48.
    fetch_allow: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list
    )  # non-public ranges a URL list may fetch from
    max_chunks: int = Field(200_000, ge=1)  # refuse to load more into the in-process index
    recheck: float = Field(
        2.0, ge=0
    )  # seconds a KB's version from Redis is trusted: another replica's ingest shows within this

    @field_validator("fetch_allow", mode="before")
    @classmethod
    def _cidrs(cls, v: Any) -> Any:
        return [part.strip() for part in v.split(",") if part.strip()] if isinstance(v, str) else v

    @field_validator("check_below")
    @classmethod
    def _band(cls, v: float, info: ValidationInfo) -> float:
        if v < info.data.get("refuse_below", 0.0):
            raise ValueError("must be at least PARLEY_KB_REFUSE_BELOW")
        return v

    @field_validator("dense_full")
    @classmethod
    def _dense_range(cls, v: float, info: ValidationInfo) -> float:
        if v <= info.data.get("dense_none", -1.0):
            raise ValueError("must be above PARLEY_KB_DENSE_NONE")
        return v


class ActionsSettings(BaseSettings):
    """Actions (bot/actions): what every call is bounded by; the actions themselves are
    defined per tenant in the tenants file."""

    model_config = _section("PARLEY_ACTIONS_")

    # Values for `{secret:NAME}` in an HTTP action's headers and an MCP server's env and headers,
    # as JSON: {"orders_token": "..."}.
    # They go in the request only: never to the model, the logs or the audit stream.
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # Non-public addresses (private, loopback, ...) an action may call, comma-separated CIDR;
    # empty: public addresses only. Cloud metadata addresses never are.
    fetch_allow: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    max_calls: int = Field(4, ge=1, le=32)  # action calls the model may make in one turn
    decision_tokens: int = Field(1024, ge=64)  # tokens for one decision (the calls and their arguments, as JSON)
    # How the model calls actions: "structured" (JSON under vLLM's structured outputs: any model)
    # or "native" (vLLM's tool calling: the engine needs the model family's --tool-call-parser).
    calling: Literal["structured", "native"] = "structured"
    turn_timeout: float = Field(60.0, gt=0)  # seconds for all of a turn's calls together
    result_chars: int = Field(4000, ge=200)  # an action's result is cut to this before the model reads it
    confirm_ttl: int = Field(600, ge=10)  # seconds a write action waits for the user's yes
    audit_days: int = Field(30, ge=1)  # days the audit stream keeps a call

    @field_validator("fetch_allow", mode="before")
    @classmethod
    def _cidrs(cls, v: Any) -> Any:
        return [part.strip() for part in v.split(",") if part.strip()] if isinstance(v, str) else v


class QuotaSettings(BaseSettings):
    """Usage metering and quotas (`bot.dialogue.quota`): token buckets per user, channel and
    tenant, shared by replicas through Redis. Every limit is off (0) unless set; a tenant's
    `[tenants."ID".quota]` table in the tenants file overrides these for its conversations.
    Tokens are prompt plus completion tokens as the engine counted them."""

    model_config = _section("PARLEY_QUOTA_")

    LIMITS: ClassVar[tuple[str, ...]] = tuple(
        f"{scope}_{rate}" for scope in ("user", "channel", "tenant") for rate in RATES
    )

    user_tokens_per_hour: int = Field(0, ge=0)  # tokens one user may use per hour; 0: no limit
    user_tokens_per_day: int = Field(0, ge=0)  # tokens one user may use per day; 0: no limit
    user_turns_per_minute: int = Field(0, ge=0)  # messages one user may send per minute; 0: no limit
    channel_tokens_per_hour: int = Field(0, ge=0)  # tokens one channel may use per hour; 0: no limit
    channel_tokens_per_day: int = Field(0, ge=0)  # tokens one channel may use per day; 0: no limit
    channel_turns_per_minute: int = Field(0, ge=0)  # messages one channel may send per minute; 0: no limit
    tenant_tokens_per_hour: int = Field(0, ge=0)  # tokens one tenant may use per hour; 0: no limit
    tenant_tokens_per_day: int = Field(0, ge=0)  # tokens one tenant may use per day; 0: no limit
    tenant_turns_per_minute: int = Field(0, ge=0)  # messages one tenant may send per minute; 0: no limit
    # User ids (comma-separated) no quota applies to: admins, the team's own testers.
    exempt_users: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Days the usage meter keeps its per-user, per-channel and per-tenant rows (`parley report --by`).
    meter_days: int = Field(35, ge=1, le=400)

    @field_validator("exempt_users", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        return [part.strip() for part in v.split(",") if part.strip()] if isinstance(v, str) else v


class TenantsSettings(BaseSettings):
    model_config = _section("PARLEY_TENANTS_")

    file: Path | None = None  # per-tenant settings (TOML); unset: bot/data/tenants.toml
    # Seconds between two looks for profiles changed at run time (`parley profile set`): one GET per
    # look, whatever the traffic; a change reaches every replica within this.
    refresh: float = Field(2.0, gt=0, le=300)


class Settings(BaseModel):
    """All sections together, as handed to every part of Parley."""

    log: LogSettings = Field(default_factory=LogSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    dialogue: DialogueSettings = Field(default_factory=DialogueSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    embed: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    kb: KBSettings = Field(default_factory=KBSettings)
    tenants: TenantsSettings = Field(default_factory=TenantsSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    handoff: HandoffSettings = Field(default_factory=HandoffSettings)
    actions: ActionsSettings = Field(default_factory=ActionsSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)

    SECTIONS: ClassVar[tuple[str, ...]] = (
        "log",
        "redis",
        "llm",
        "context",
        "dialogue",
        "ops",
        "engine",
        "slack",
        "discord",
        "embed",
        "routing",
        "kb",
        "tenants",
        "web",
        "handoff",
        "actions",
        "quota",
    )


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read every section, turning the first invalid value into one clear `ConfigError`."""
    sections: dict[str, BaseSettings] = {}
    for name in Settings.SECTIONS:
        cls = cast("type[BaseSettings]", Settings.model_fields[name].default_factory)
        try:
            sections[name] = cls(_env_file=env_file)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            var = (cls.model_config.get("env_prefix", "") + field).upper()
            # The message never echoes the value: it may be a secret.
            raise ConfigError(var, err["msg"]) from None
    return Settings(**sections)
