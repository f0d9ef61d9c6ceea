"""Many workspaces from one Parley: the "Add to Slack" installs, kept in Redis.

`Installations` is slack_sdk's `AsyncInstallationStore` for bolt's OAuth flow (bot tokens only:
Parley asks for no user token). Each workspace's bot is one Redis string, encrypted with
`SLACK_INSTALL_KEYS` (Fernet: AES-128-CBC with HMAC-SHA256): a copy of Redis, or a backup of it,
holds no usable token. The first key encrypts; every key decrypts, so a key is rotated by
putting the new one first and keeping the old one until every installation has been saved
again (a token refresh or a reinstall saves it).

An installation is a workspace's (`{prefix}:slack:install:team:{team_id}`) or, installed
org-wide on Enterprise Grid, an organisation's (`...:org:{enterprise_id}`): one bot token that
serves every workspace of the org. Either way the installation is the tenant (`normalize.tenant_of`):
a turn from a workspace of an org-wide install belongs to the org, so the org's settings, quotas
and knowledge apply in all its workspaces, one uninstall ends it everywhere, and the tenant alone
finds the token that answers it. Which installation an event is for is Slack's to say
(`authorizations[0].is_enterprise_install`), never guessed: a workspace installed on its own
inside an org that also has Parley org-wide keeps its own token, and each is removed alone.

`bot_token(tenant)` is the way back for answers: the tenant's bot token, read when an answer starts
(an uninstall is in force for every replica at once: the next turn finds no token), refreshed
first when Slack's token rotation says it is about to expire. `forget` removes an installation
whose token Slack refused as revoked: an `app_uninstalled` or `tokens_revoked` event, or a
call answered `token_revoked`, `invalid_auth`, `account_inactive` or HTTP 401.

`OAuthStates` keeps the `state` of each install in flight (one use, ten minutes), so a redirect
that carries a state Parley did not issue, or one used before, is refused.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from logging import Logger
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from redis.asyncio import Redis
from redis.exceptions import RedisError
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError, SlackTokenRotationError
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack.normalize import tenant_of
from bot.config import SlackSettings
from bot.errors import ConfigError, PlatformError, StoreUnavailable

log = logging.getLogger(__name__)

# What Slack answers a call made with a token it no longer honours.
REVOKED = frozenset({"token_revoked", "invalid_auth", "account_inactive", "not_authed", "token_expired"})
ROTATE_BEFORE = 120  # minutes before a rotating token expires that it is refreshed (bolt's default)


def fernet(keys: str) -> MultiFernet:
    """The cipher for `SLACK_INSTALL_KEYS` (comma-separated, newest first)."""
    try:
        return MultiFernet([Fernet(k.strip().encode()) for k in keys.split(",") if k.strip()])
    except ValueError:
        raise ConfigError(
            "SLACK_INSTALL_KEYS",
            "each key must be 32 url-safe base64-encoded bytes "
            '(python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")',
        ) from None


def _plain(name: str, value: Any) -> Any:
    """A Bot field as JSON: times as unix time (an expiry in whole seconds, as slack_sdk reads it back)."""
    if isinstance(value, datetime):
        value = value.timestamp()
        return int(value) if name.endswith("expires_at") else value
    return value


class Installations(AsyncInstallationStore):
    """The workspaces and Grid organisations Parley is installed in, one encrypted bot record each."""

    def __init__(self, redis: Redis, *, prefix: str, cipher: MultiFernet) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:slack:install"
        self._cipher = cipher
        self._rotator: AsyncTokenRotator | None = None

    def rotate_with(self, rotator: AsyncTokenRotator) -> None:
        """Refresh expiring tokens (Slack's token rotation) with this app's credentials."""
        self._rotator = rotator

    @property
    def logger(self) -> Logger:
        return log

    def _key(self, enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None) -> str:
        # An org-wide install (Enterprise Grid) is the organisation's; a workspace install, the team's.
        if is_enterprise_install:
            return f"{self._prefix}:org:{enterprise_id}"
        return f"{self._prefix}:team:{team_id}"

    async def async_save(self, installation: Installation) -> None:
        await self.async_save_bot(installation.to_bot())

    async def async_save_bot(self, bot: Bot) -> None:
        record = json.dumps({k: _plain(k, v) for k, v in bot.to_dict_for_copying().items()})
        key = self._key(bot.enterprise_id, bot.team_id, bot.is_enterprise_install)
        try:
            await self._redis.set(key, self._cipher.encrypt(record.encode()))
        except RedisError as exc:
            raise StoreUnavailable(f"cannot save the Slack installation: {exc!r}") from exc
        if bot.is_enterprise_install:
            log.info("slack: installed org-wide in enterprise %s", bot.enterprise_id)
        else:
            log.info("slack: installed in team %s (enterprise %s)", bot.team_id, bot.enterprise_id or "-")

    async def async_find_bot(
        self, *, enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None = False
    ) -> Bot | None:
        try:
            blob = await self._redis.get(self._key(enterprise_id, team_id, is_enterprise_install))
        except RedisError as exc:
            raise StoreUnavailable(f"cannot read the Slack installation: {exc!r}") from exc
        if blob is None:
            return None
        try:
            record = json.loads(self._cipher.decrypt(blob))
        except InvalidToken:
            log.error(
                "slack: the installation of %s cannot be decrypted with SLACK_INSTALL_KEYS "
                "(a key was removed too soon?); it must install Parley again",
                enterprise_id if is_enterprise_install else team_id,
            )
            return None
        return Bot(**record)

    async def async_find_installation(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None = None,
        is_enterprise_install: bool | None = False,
    ) -> Installation | None:
        bot = await self.async_find_bot(
            enterprise_id=enterprise_id, team_id=team_id, is_enterprise_install=is_enterprise_install
        )
        if bot is None:
            return None
        fields = {k: v for k, v in bot.to_dict_for_copying().items() if k != "custom_values"}
        return Installation(user_id="", **fields)

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        # slack_sdk names an org-wide installation by its enterprise alone.
        await self.forget(enterprise_id, team_id, is_enterprise_install=not team_id)

    async def async_delete_installation(
        self, *, enterprise_id: str | None, team_id: str | None, user_id: str | None = None
    ) -> None:
        await self.forget(enterprise_id, team_id, is_enterprise_install=not team_id)

    async def forget(
        self, enterprise_id: str | None, team_id: str | None, *, is_enterprise_install: bool | None = False
    ) -> None:
        """Parley is no longer installed there (uninstalled, or its token revoked): that one
        installation goes, never its neighbour (a workspace's own install inside an org that also
        has Parley org-wide, or the other way round: each has its own token)."""
        where = enterprise_id if is_enterprise_install else team_id
        keys = [self._key(enterprise_id, team_id, is_enterprise_install)]
        if is_enterprise_install and enterprise_id:
            keys.append(self._revoked_key(enterprise_id))  # a new org-wide install starts with every workspace
        await self._delete(str(where), *keys)

    async def forget_tenant(self, tenant: str) -> None:
        """The tenant's installation goes (its token was refused as revoked)."""
        await self._delete(
            tenant, self._key(None, tenant, False), self._key(tenant, None, True), self._revoked_key(tenant)
        )

    async def _delete(self, where: str, *keys: str) -> None:
        try:
            removed = await self._redis.delete(*keys)
        except RedisError as exc:
            raise StoreUnavailable(f"cannot remove the Slack installation: {exc!r}") from exc
        if removed:
            log.warning("slack: Parley is no longer installed in %s; its token is deleted", where)

    async def uninstalled(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        """Bolt's listener for `app_uninstalled` and `tokens_revoked` (of the bot's token): the
        workspace's installation goes, so no replica answers there with it again."""
        event = body.get("event") or {}
        if event.get("type") == "tokens_revoked" and not (event.get("tokens") or {}).get("bot"):
            return  # only user tokens, which Parley never holds
        org_wide = bool(context.is_enterprise_install)
        log.warning("slack: %s in %s", event.get("type"), context.enterprise_id if org_wide else context.team_id)
        await self.forget(context.enterprise_id, context.team_id, is_enterprise_install=org_wide)

    async def access_changed(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        """Bolt's listener for `team_access_revoked` / `team_access_granted`: an org admin took
        workspaces of the org out of (or back into) the reach of its org-wide install. Their events
        are refused from now on (`authorize`), on every replica; the org's other workspaces and
        its conversations stay."""
        event = body.get("event") or {}
        enterprise = body.get("enterprise_id") or event.get("enterprise_id") or context.enterprise_id
        teams = [t for t in event.get("team_ids") or [] if isinstance(t, str) and t]
        if not isinstance(enterprise, str) or not enterprise or not teams:
            log.warning("slack: %s without an org or workspaces: ignored", event.get("type"))
            return
        key = self._revoked_key(enterprise)
        try:
            if event.get("type") == "team_access_revoked":
                await self._redis.sadd(key, *teams)
            else:
                await self._redis.srem(key, *teams)
        except RedisError as exc:
            raise StoreUnavailable(f"cannot record the org's workspaces: {exc!r}") from exc
        log.warning("slack: %s in org %s for %s", event.get("type"), enterprise, ", ".join(teams))

    async def screen(self, body: dict[str, Any], next_: Callable[[], Awaitable[None]]) -> BoltResponse | None:
        """Bolt middleware: what comes from a workspace taken out of its org's org-wide install
        (`team_access_revoked`) is acknowledged and dropped with a log line. (Bolt's authorisation
        sees only the org, which is still installed; the workspace is in the payload.)"""
        team = _workspace_of(body)
        org = tenant_of(body, team) if team else ""
        if org and org != team and await self._revoked(org, team):
            log.info("slack: a %s from workspace %s, out of org %s's install: dropped", body.get("type"), team, org)
            return BoltResponse(status=200, body="")
        await next_()
        return None

    def _revoked_key(self, enterprise_id: str) -> str:
        return f"{self._prefix}:revoked:{enterprise_id}"

    async def bot_token(self, tenant: str) -> str:
        """The tenant's bot token now (a workspace's, or an org-wide install's: the tenant is the
        installation, `normalize.tenant_of`); a `PlatformError` when Parley is not installed there (any more)."""
        bot = await self.async_find_bot(enterprise_id=None, team_id=tenant)
        if bot is None:
            bot = await self.async_find_bot(enterprise_id=tenant, team_id=None, is_enterprise_install=True)
        if bot is None:
            raise PlatformError(
                f"Parley is not installed in {tenant}", platform="slack", code="not_installed", permanent=True
            )
        return (await self._fresh(bot)).bot_token

    async def authorize(
        self, enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None = False
    ) -> AuthorizeResult | None:
        """Bolt's authorisation of an event from the installation alone: bolt's own would call
        auth.test for every event (a round trip to Slack before each ack). The installation is the
        one Slack names (`is_enterprise_install`), the one the turn's tenant names too, so the
        answer goes out with the token the event came for."""
        if is_enterprise_install:
            bot = await self.bot(None, enterprise_id, is_enterprise_install=True) if enterprise_id else None
        else:
            bot = await self.bot(team_id, enterprise_id) if team_id else None
        if bot is None:
            return None
        return AuthorizeResult(
            enterprise_id=bot.enterprise_id,
            team_id=bot.team_id or team_id,
            bot_user_id=bot.bot_user_id,
            bot_id=bot.bot_id,
            bot_token=bot.bot_token,
            bot_scopes=bot.bot_scopes,
        )

    async def _revoked(self, enterprise_id: str, team_id: str) -> bool:
        try:
            return bool(await self._redis.sismember(self._revoked_key(enterprise_id), team_id))
        except RedisError as exc:
            raise StoreUnavailable(f"cannot read the org's workspaces: {exc!r}") from exc

    async def bot(
        self, team_id: str | None, enterprise_id: str | None = None, *, is_enterprise_install: bool = False
    ) -> Bot | None:
        """The workspace's bot (or, `is_enterprise_install`, the org-wide install's), its token
        refreshed first if it is about to expire; None when Parley is not installed there."""
        bot = await self.async_find_bot(
            enterprise_id=enterprise_id, team_id=team_id, is_enterprise_install=is_enterprise_install
        )
        return None if bot is None else await self._fresh(bot)

    async def _fresh(self, bot: Bot) -> Bot:
        """`bot`, its token refreshed first (and the new one kept) if it is about to expire."""
        where = bot.enterprise_id if bot.is_enterprise_install else bot.team_id
        if self._rotator is not None:
            try:
                fresh = await self._rotator.perform_bot_token_rotation(bot=bot, minutes_before_expiration=ROTATE_BEFORE)
            except SlackTokenRotationError as exc:
                error = exc.api_error.response.get("error", "") if exc.api_error is not None else ""
                if error in REVOKED or error == "invalid_refresh_token":
                    await self.forget(bot.enterprise_id, bot.team_id, is_enterprise_install=bot.is_enterprise_install)
                raise PlatformError(
                    f"the token of {where} could not be refreshed ({error or 'error'})",
                    platform="slack",
                    code=error or "rotation_failed",
                    permanent=True,
                ) from None
            if fresh is not None:
                await self.async_save_bot(fresh)
                log.info("slack: refreshed the bot token of %s", where)
                bot = fresh
        return bot


def _workspace_of(body: dict[str, Any]) -> str:
    """The workspace a payload comes from: an event's or a command's `team_id`, a press's user's."""
    user, team = body.get("user"), body.get("team")
    found = (
        body.get("team_id")
        or (user.get("team_id") if isinstance(user, dict) else None)
        or (team.get("id") if isinstance(team, dict) else None)
    )
    return found if isinstance(found, str) else ""


class OAuthStates(AsyncOAuthStateStore):
    """One-use `state` values of installs in flight, shared by every replica."""

    def __init__(self, redis: Redis, *, prefix: str, ttl: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:slack:oauth-state"
        self._ttl = ttl

    @property
    def logger(self) -> Logger:
        return log

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        state = secrets.token_urlsafe(24)
        await self._redis.set(f"{self._prefix}:{state}", b"1", ex=self._ttl)
        return state

    async def async_consume(self, state: str) -> bool:
        if not state or len(state) > 128:
            return False
        return await self._redis.getdel(f"{self._prefix}:{state}") is not None


def oauth_flow(
    settings: SlackSettings, installations: Installations, states: OAuthStates, client: AsyncWebClient
) -> AsyncOAuthFlow:
    """Bolt's OAuth flow ("Add to Slack") over the installations and states in Redis; `client`
    exchanges the code (`oauth.v2.access`)."""
    assert settings.client_id is not None and settings.client_secret is not None
    return AsyncOAuthFlow(
        client=client,
        settings=AsyncOAuthSettings(
            client_id=settings.client_id,
            client_secret=settings.client_secret.get_secret_value(),
            scopes=settings.scopes,
            redirect_uri=settings.redirect_uri,
            authorization_url=settings.authorize_url,
            installation_store=installations,
            installation_store_bot_only=True,  # no user tokens: Parley acts as its bot only
            token_rotation_expiration_minutes=ROTATE_BEFORE,
            state_store=states,
            logger=logging.getLogger("slack_bolt.oauth"),
        ),
    )


class InstalledClient(AsyncWebClient):
    """A Web API client for one tenant's answer (a workspace's, or an org-wide install's): its
    token is read from the installations at the first call (a revoked token is forgotten at once,
    so no replica uses it again)."""

    def __init__(self, installations: Installations, tenant: str, **kwargs: Any) -> None:
        super().__init__(token=None, **kwargs)
        self._installations = installations
        self._tenant = tenant

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        if self.token is None:
            self.token = await self._installations.bot_token(self._tenant)
        try:
            return await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            if exc.response.status_code == 401 or exc.response.get("error") in REVOKED:
                log.warning("slack: %s refused the token of %s as revoked", api_method, self._tenant)
                await self._installations.forget_tenant(self._tenant)
                self.token = None  # a later call of this answer finds no installation, and makes none
            raise
