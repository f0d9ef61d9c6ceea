"""`/parley config`: a workspace admin changes the current channel's profile from Slack.

- `/parley config` opens a modal (`views.open`): the profile in force, read-only, and a field to
  change with its new value. Submitted (`view_submission`), the value goes through
  `Profiles.set`, which validates it as the tenants file is, stores it in Redis and audits it;
  every replica picks it up within PARLEY_TENANTS_REFRESH seconds. An invalid value is shown on
  the value's input and the modal stays open; a saved one closes it, and the admin is told
  (an ephemeral message in the channel).
- `/parley config clear FIELD` drops a change made at run time (the file's value applies again).

Only admins and owners of the workspace may: `users.info` is asked on every command and every
submission, and nothing of its answer is kept, so a demoted admin loses the right at once. The
modal's `private_metadata` says which workspace and channel it was opened for; it is signed
with the app's secret and bound to the admin who opened it, and its workspace must be the
submission's: a submission can change no other channel than the one the command came from.

This is no turn: nothing goes to the inbox. Its listeners run before bolt's ack (Slack waits up
to 3 seconds), and the confirmation is posted by a task of the adapter's `notices` group.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt.app.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.mrkdwn import escape
from adapters.slack.normalize import tenant_of
from adapters.slack.sink import call
from bot import messages
from bot.config import SlackSettings
from bot.errors import PlatformError, StoreUnavailable, TenantConfigError
from bot.profiles import format_value, parse_value
from bot.tenants import FIELD_NAMES

if TYPE_CHECKING:
    from bot.profiles import Profiles

log = logging.getLogger(__name__)

CALLBACK_ID = "parley_config"  # the modal's: bolt routes its view_submission by it
FIELD_BLOCK, VALUE_BLOCK = "parley_config_field", "parley_config_value"
ANY = re.compile(".*")  # whatever the slash command is called in this app; its text says `config`
ADMIN_FLAGS = ("is_admin", "is_owner", "is_primary_owner")
SUMMARY_CHARS = 2900  # of the read-only summary: a section's text holds 3000
VALUE_CHARS = 80  # of one value in the summary (a system prompt can be long)
ERROR_CHARS = 1900  # of an error shown on an input (Slack's limit is 2000)


class ChannelConfig:
    """The listeners of `/parley config` and its modal, for one run of the adapter."""

    def __init__(
        self,
        *,
        profiles: Profiles,
        client_for: Callable[[str], AsyncWebClient],
        notices: asyncio.TaskGroup,
        settings: SlackSettings,
    ) -> None:
        self._profiles = profiles
        self._client_for = client_for  # the workspace's Web API client
        self._notices = notices
        # Shared by every replica, so a modal opened on one can be submitted to another; the
        # signing secret over HTTP, the app token in Socket Mode (`create` requires one of them).
        # (Without either, which `create` refuses, a random key: forms work on this replica only.)
        secret = settings.signing_secret or settings.app_token
        self._key = secret.get_secret_value().encode() if secret is not None else secrets.token_bytes(32)

    def register(self, app: AsyncApp) -> None:
        """Before the catch-all `/parley` listener: bolt gives a request to the first that matches."""
        app.command(ANY, matchers=[_is_config])(self.command)
        app.view(CALLBACK_ID)(self.submitted)

    # -- /parley config [clear FIELD] ------------------------------------------------------------

    async def command(self, body: dict[str, Any], ack: Any) -> None:
        channel, user = body.get("channel_id") or "", body.get("user_id") or ""
        tenant = tenant_of(body, body.get("team_id") or "")
        words = (body.get("text") or "").split()[1:]
        if not (tenant and channel and user and body.get("trigger_id")):
            log.warning("slack: /parley config without its team, channel, user or trigger: refused")
            await ack(text=escape(messages.SLACK_CONFIG_NOT_OPENED), response_type="ephemeral")
            return
        if (refusal := await self._refusal(tenant, user)) is not None:
            await ack(text=escape(refusal), response_type="ephemeral")
            return
        if words:
            await ack(text=escape(await self._clear(tenant, channel, user, words)), response_type="ephemeral")
            return
        view = self.modal(tenant, channel, user)
        try:
            await call("views.open", self._client_for(tenant).views_open(trigger_id=body["trigger_id"], view=view))
        except PlatformError as exc:
            log.warning("slack: /parley config by %s in %s/%s: views.open failed: %r", user, tenant, channel, exc)
            await ack(text=escape(messages.SLACK_CONFIG_NOT_OPENED), response_type="ephemeral")
            return
        log.info("slack: %s opened the profile of %s/%s", user, tenant, channel)
        await ack()

    async def _clear(self, tenant: str, channel: str, user: str, words: list[str]) -> str:
        if len(words) != 2 or words[0].lower() != "clear" or words[1] not in FIELD_NAMES:
            log.info("slack: /parley config %s by %s: not understood", " ".join(words)[:100], user)
            return f"{messages.SLACK_CONFIG_CLEAR_USAGE}\n{_known()}"
        try:
            changes = await self._profiles.clear(tenant, channel, words[1], by=f"slack:{user}")
        except StoreUnavailable as exc:
            log.error("slack: profile of %s/%s not cleared: %s", tenant, channel, exc)
            return messages.SLACK_CONFIG_UNSAVED
        return messages.slack_config_cleared(words[1], bool(changes))

    def modal(self, tenant: str, channel: str, user: str) -> dict[str, Any]:
        """The profile in force, and one field to change (the metadata signed for `user`)."""
        summary = escape(messages.SLACK_CONFIG_IN_FORCE)
        for name, value, source in self._profiles.show(tenant, channel):
            shown = format_value(value)
            row = escape(f"\n`{name}` = {shown[:VALUE_CHARS]}{'…' if len(shown) > VALUE_CHARS else ''}  _({source})_")
            if len(summary) + len(row) > SUMMARY_CHARS:  # whole rows only: an entity cut in two shows as junk
                break
            summary += row
        options = [{"text": _plain(name), "value": name} for name in FIELD_NAMES[:100]]  # Slack's limit: 100
        return {
            "type": "modal",
            "callback_id": CALLBACK_ID,
            "title": _plain(messages.SLACK_CONFIG_TITLE),
            "submit": _plain(messages.SLACK_CONFIG_SAVE),
            "close": _plain(messages.SLACK_CONFIG_CANCEL),
            "private_metadata": json.dumps(
                {"tenant": tenant, "channel": channel, "sig": self._sign(tenant, channel, user)}
            ),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": escape(messages.SLACK_CONFIG_CLEAR_HOW)}]},
                {
                    "type": "input",
                    "block_id": FIELD_BLOCK,
                    "label": _plain(messages.SLACK_CONFIG_FIELD),
                    "element": {"type": "static_select", "action_id": "field", "options": options},
                },
                {
                    "type": "input",
                    "block_id": VALUE_BLOCK,
                    "label": _plain(messages.SLACK_CONFIG_VALUE),
                    "hint": _plain(messages.SLACK_CONFIG_VALUE_HINT),
                    "element": {"type": "plain_text_input", "action_id": "value", "multiline": True},
                },
            ],
        }

    # -- the modal submitted -------------------------------------------------------------------

    async def submitted(self, body: dict[str, Any], ack: Any) -> None:
        """Checked again from scratch: the user, their workspace, the metadata's signature."""
        user = (body.get("user") or {}).get("id") or ""
        tenant = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
        view = body.get("view") or {}
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
            channel = str(meta["channel"])
            signed = str(meta["tenant"]) == tenant and hmac.compare_digest(
                str(meta["sig"]), self._sign(tenant, channel, user)
            )
        except (ValueError, KeyError, TypeError):
            signed, channel = False, ""
        if not (user and tenant and signed):
            log.warning("slack: a profile form from %s in %s with metadata not signed for them: refused", user, tenant)
            await ack(response_action="errors", errors={VALUE_BLOCK: messages.SLACK_CONFIG_STALE})
            return
        if (refusal := await self._refusal(tenant, user)) is not None:
            await ack(response_action="errors", errors={VALUE_BLOCK: refusal})
            return
        values = (view.get("state") or {}).get("values") or {}
        field = ((values.get(FIELD_BLOCK) or {}).get("field") or {}).get("selected_option") or {}
        name, text = str(field.get("value") or ""), ((values.get(VALUE_BLOCK) or {}).get("value") or {}).get("value")
        if name not in FIELD_NAMES or not isinstance(text, str) or not text.strip():
            log.warning("slack: a profile form from %s without a known field (%r) or a value: refused", user, name[:50])
            await ack(response_action="errors", errors={VALUE_BLOCK: messages.SLACK_CONFIG_STALE})
            return
        try:
            change = await self._profiles.set(tenant, channel, name, parse_value(text.strip()), by=f"slack:{user}")
        except TenantConfigError as exc:  # logged by `Profiles.set`; the modal stays open to correct it
            await ack(response_action="errors", errors={VALUE_BLOCK: str(exc)[:ERROR_CHARS]})
            return
        except StoreUnavailable as exc:
            log.error("slack: profile of %s/%s not changed by %s: %s", tenant, channel, user, exc)
            await ack(response_action="errors", errors={VALUE_BLOCK: messages.SLACK_CONFIG_UNSAVED})
            return
        await ack()  # closes the modal
        said = (
            messages.slack_config_unchanged(name)
            if change is None
            else messages.slack_config_saved(name, format_value(change.new))
        )
        self._notices.create_task(self._tell(tenant, channel, user, said))

    async def _tell(self, tenant: str, channel: str, user: str, text: str) -> None:
        try:
            await call(
                "chat.postEphemeral",
                self._client_for(tenant).chat_postEphemeral(channel=channel, user=user, text=escape(text)),
            )
        except PlatformError as exc:
            log.warning("slack: could not confirm a profile change to %s in %s/%s: %r", user, tenant, channel, exc)

    # -- who may --------------------------------------------------------------------------------

    async def _refusal(self, tenant: str, user: str) -> str | None:
        """None for an admin or owner of workspace `tenant`; else what to tell the user (logged)."""
        try:
            response = await call("users.info", self._client_for(tenant).users_info(user=user))
        except PlatformError as exc:
            log.warning("slack: profile change by %s in %s refused: users.info failed (%r)", user, tenant, exc)
            return messages.SLACK_CONFIG_UNCHECKED
        found = response.get("user") or {}
        teams = [found.get("team_id"), *((found.get("enterprise_user") or {}).get("teams") or ())]
        if found.get("deleted") or found.get("is_bot") or found.get("is_stranger") or tenant not in teams:
            log.warning("slack: profile change by %s refused: not a member of workspace %s", user, tenant)
            return messages.SLACK_CONFIG_ADMINS_ONLY
        if not any(found.get(flag) for flag in ADMIN_FLAGS):
            log.warning("slack: profile change by %s refused: not an admin of workspace %s", user, tenant)
            return messages.SLACK_CONFIG_ADMINS_ONLY
        return None

    def _sign(self, tenant: str, channel: str, user: str) -> str:
        message = json.dumps(["parley:config", tenant, channel, user]).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


async def _is_config(body: dict[str, Any]) -> bool:
    words = (body.get("text") or "").split()
    return bool(words) and words[0].lower() == "config"


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def _known() -> str:
    return "Settings: " + ", ".join(f"`{name}`" for name in FIELD_NAMES)
