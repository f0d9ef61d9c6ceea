"""Parley's one error tree. Every error carries the data a caller needs to act on it.

User-facing wording for these errors is made in one place, `bot.messages`.
"""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""


class ConfigError(ParleyError):
    """A setting is missing or invalid; `setting` names the environment variable."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


class DeskRefused(ConfigError):
    """A support desk's channel is not fit for tickets (public, shared with another organisation,
    or not shown to Parley): no ticket goes there. `channel` names it; `setting` where it was set
    (the deployment's PARLEY_HANDOFF_SLACK_CHANNEL, or a profile's `handoff_channel`); `reason`
    says why, with the fix."""

    def __init__(self, setting: str, reason: str, *, channel: str) -> None:
        super().__init__(setting, reason)
        self.channel = channel


class InputRejected(ParleyError):
    """A turn's text cannot be handled as it is (`reason`: empty, too_long, invalid_utf8)."""

    def __init__(self, reason: str, *, length: int = 0, limit: int = 0) -> None:
        super().__init__(f"input rejected: {reason} (length={length}, limit={limit})")
        self.reason = reason
        self.length = length
        self.limit = limit


class StoreUnavailable(ParleyError):
    """Redis (or another store) could not be reached."""


class InboxFull(ParleyError):
    """The inbox is at its bound; the caller tells the user to try again shortly."""


class InboxClosed(ParleyError):
    """The inbox was closed for shutdown and has nothing left."""


class InboxUnavailable(ParleyError):
    """The durable inbox (Redis) cannot take a turn right now. The turn is not lost as long as
    the caller keeps it: Slack gets an error status and redelivers, Discord buffers and retries."""


class LLMError(ParleyError):
    """Base for failures talking to the LLM engine. `url` is the engine's base URL."""

    retryable = False

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class EngineUnavailable(LLMError):
    """The engine refused or dropped the connection (down, restarting, wrong URL)."""

    retryable = True


class EngineTimeout(LLMError):
    """The engine did not answer in time; `phase` is connect, read or total."""

    def __init__(self, message: str, *, url: str = "", phase: str, timeout: float) -> None:
        super().__init__(message, url=url)
        self.phase = phase
        self.timeout = timeout


class EngineOverloaded(LLMError):
    """The engine answered 429 or 503; `retry_after` is in seconds when it said."""

    retryable = True

    def __init__(self, message: str, *, url: str = "", status: int, retry_after: float | None) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.retry_after = retry_after


class EngineRejected(LLMError):
    """The engine refused the request as invalid (4xx): retrying cannot help."""

    def __init__(self, message: str, *, url: str = "", status: int, detail: str) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.detail = detail


class EngineFailed(LLMError):
    """The engine failed (5xx other than 503) or answered something we cannot use."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None, detail: str = "") -> None:
        super().__init__(message, url=url)
        self.status = status
        self.detail = detail


class PlatformError(ParleyError):
    """A chat platform refused a call. `permanent` errors (channel gone, no access) are not retried."""

    def __init__(
        self,
        message: str,
        *,
        platform: str,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.platform = platform
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.permanent = permanent


class EmbedderError(ParleyError):
    """The embedding model is missing or its endpoint failed."""


class TenantConfigError(ParleyError):
    """The tenants file is invalid: `path`, `tenant` and `field` say where."""

    def __init__(self, path: str, tenant: str, field: str, reason: str) -> None:
        super().__init__(f"{path}: tenant {tenant!r}, field {field!r}: {reason}")
        self.path = path
        self.tenant = tenant
        self.field = field
        self.reason = reason


class KnowledgeBaseError(ParleyError):
    """Ingesting or reading a knowledge base failed (a missing path, an unreadable source)."""


class FetchError(ParleyError):
    """A URL was not fetched. `url` is the URL asked for (without credentials); `reason` is one
    line saying why; `kind` names the rule or failure: scheme, address (a refused host or
    address, at any redirect), redirects, size, deadline, status or network."""

    def __init__(self, url: str, reason: str, *, kind: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.kind = kind


class ActionError(ParleyError):
    """An action call did not produce a result. `action` names it; `kind` says what went
    wrong: invalid (arguments against the schema), refused (an address or a host the rules
    refuse), timeout, status (the service answered an error; `status` holds it), size (the
    answer is over its cap), unavailable (the service or MCP server cannot be reached or died),
    or protocol (an answer that is not what the action's runner expects). `reason` is one
    line, safe to log and to show the model: it never holds a secret."""

    def __init__(self, action: str, reason: str, *, kind: str, status: int | None = None) -> None:
        super().__init__(f"action {action}: {reason}")
        self.action = action
        self.reason = reason
        self.kind = kind
        self.status = status
