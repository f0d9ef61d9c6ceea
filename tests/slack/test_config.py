"""`/parley config`: a workspace admin changes the channel's profile from a modal, through
slack-bolt against the fake Slack (signed slash commands and `view_submission` payloads, real
Redis, the real runtime and its `Profiles`). Admins only, asked of users.info every time; the
modal's metadata is signed for the admin and the channel it was opened in."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from adapters.slack.admin import CALLBACK_ID, FIELD_BLOCK, VALUE_BLOCK
from bot import messages
from bot.tenants import FIELD_NAMES
from tests.slack.conftest import SlackStack
from tests.slack.fake import TEAM, Delivery, FakeSlack, command, view_submission

CHANNEL = "C0SUPPORT"
ADMIN, OTHER_ADMIN, MEMBER = "UADMIN", "UADMIN2", "UMEMBER"


@pytest.fixture(autouse=True)
def people(fake_slack: FakeSlack) -> None:
    fake_slack.add_user(ADMIN, "ada", admin=True)
    fake_slack.add_user(OTHER_ADMIN, "grace", admin=True)
    fake_slack.add_user(MEMBER, "bob")


async def run_command(stack: SlackStack, text: str, *, user: str = ADMIN, channel: str = CHANNEL) -> Delivery:
    payload = command(text, channel=channel, response_url=stack.fake.response_url(), user=user)
    return await stack.send(payload, form=True)


async def submit(stack: SlackStack, view: dict[str, Any], field: str, value: str, *, user: str = ADMIN) -> Delivery:
    values = {
        FIELD_BLOCK: {"field": {"type": "static_select", "selected_option": {"value": field}}},
        VALUE_BLOCK: {"value": {"type": "plain_text_input", "value": value}},
    }
    payload = view_submission(view, values, user=user)
    return await stack.send({"payload": json.dumps(payload)}, form=True)


def said(delivery: Delivery) -> dict[str, Any]:
    assert delivery.status == 200
    return json.loads(delivery.text) if delivery.text else {}


async def opened(stack: SlackStack) -> dict[str, Any]:
    assert said(await run_command(stack, "config")) == {}  # acknowledged without words: the modal says it
    [view] = stack.fake.views
    return view


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


async def test_an_admin_changes_the_channels_language_from_the_modal(stack_for, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    async with stack_for() as stack:
        view = await opened(stack)
        assert view["callback_id"] == CALLBACK_ID
        summary = view["blocks"][0]["text"]["text"]
        assert '`language` = "en"  _(file)_' in summary and '`mention_rule` = "mention"  _(built-in)_' in summary
        [select] = [b["element"] for b in view["blocks"] if b.get("block_id") == FIELD_BLOCK]
        assert [o["value"] for o in select["options"]] == list(FIELD_NAMES)
        assert json.loads(view["private_metadata"])["channel"] == CHANNEL

        assert said(await submit(stack, view, "language", " de ")) == {}  # closes the modal
        profiles = stack.runtime.profiles
        assert profiles.profile(TEAM, CHANNEL).language == "de"
        [change] = await profiles.history()
        assert (change.tenant, change.channel, change.field, change.old, change.new, change.by) == (
            TEAM,
            CHANNEL,
            "language",
            None,
            "de",
            f"slack:{ADMIN}",
        )
        [told] = await fake_slack.wait_for(lambda: fake_slack.ephemeral)
        assert (told.channel, told.user) == (CHANNEL, ADMIN)
        assert told.text == messages.slack_config_saved("language", '"de"')
        assert "within seconds" in told.text

        # The same value again changes nothing, and says so; a second form shows the change in force.
        assert said(await submit(stack, view, "language", "de")) == {}
        await fake_slack.wait_for(lambda: len(fake_slack.ephemeral) == 2)
        assert fake_slack.ephemeral[1].text == messages.slack_config_unchanged("language")
        assert len(await profiles.history()) == 1
        await run_command(stack, "config")
        assert '`language` = "de"  _(run-time)_' in fake_slack.views[1]["blocks"][0]["text"]["text"]

        # `/parley config clear FIELD` puts the file's value back.
        assert said(await run_command(stack, "config clear language"))["text"] == messages.slack_config_cleared(
            "language", True
        )
        assert profiles.profile(TEAM, CHANNEL).language == "en"
        cleared = said(await run_command(stack, "config clear language"))["text"]
        assert cleared == messages.slack_config_cleared("language", False)
        usage = said(await run_command(stack, "config clear colour"))["text"]
        assert usage.startswith(messages.SLACK_CONFIG_CLEAR_USAGE)
    assert f"{ADMIN} opened the profile of {TEAM}/{CHANNEL}" in logged(caplog)


async def test_an_invalid_value_keeps_the_modal_open_with_the_reason(stack_for, fake_slack):
    async with stack_for() as stack:
        view = await opened(stack)
        response = said(await submit(stack, view, "handlers", '["chat", "weather"]'))
        assert response["response_action"] == "errors"
        assert "unknown handler 'weather'" in response["errors"][VALUE_BLOCK]
        response = said(await submit(stack, view, "mention_rule", "sometimes"))
        assert list(response["errors"]) == [VALUE_BLOCK]
        assert stack.runtime.profiles.profile(TEAM, CHANNEL).mention_rule == "mention"
        assert await stack.runtime.profiles.history() == []
        assert not fake_slack.ephemeral


async def test_a_member_who_is_no_admin_is_refused_and_nothing_opens(stack_for, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    async with stack_for() as stack:
        response = said(await run_command(stack, "config", user=MEMBER))
        assert response == {"text": messages.SLACK_CONFIG_ADMINS_ONLY, "response_type": "ephemeral"}
        response = said(await run_command(stack, "config clear language", user=MEMBER))
        assert response["text"] == messages.SLACK_CONFIG_ADMINS_ONLY
        # Someone users.info does not know, and a users.info that fails: refused, saying so.
        assert said(await run_command(stack, "config", user="UNOBODY"))["text"] == messages.SLACK_CONFIG_UNCHECKED
        fake_slack.server_errors["users.info"] = [500, 500]  # retried once, then given up
        assert said(await run_command(stack, "config"))["text"] == messages.SLACK_CONFIG_UNCHECKED
        assert not fake_slack.calls_to("views.open")
        # `/parley help` is still the intake's.
        assert said(await run_command(stack, "help", user=MEMBER)) == {}
    log = logged(caplog)
    assert f"profile change by {MEMBER} refused: not an admin of workspace {TEAM}" in log
    assert "users.info failed" in log


async def test_forged_submissions_are_refused(stack_for, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    async with stack_for() as stack:
        view = await opened(stack)
        # A member submits a copy of the admin's form (its metadata copied): still no admin.
        response = said(await submit(stack, view, "language", "de", user=MEMBER))
        assert response == {"response_action": "errors", "errors": {VALUE_BLOCK: messages.SLACK_CONFIG_STALE}}
        # Another admin with the first one's form, and the admin with it pointed at another channel.
        assert said(await submit(stack, view, "language", "de", user=OTHER_ADMIN))["response_action"] == "errors"
        meta = json.loads(view["private_metadata"])
        elsewhere = {**view, "private_metadata": json.dumps({**meta, "channel": "C0OTHER"})}
        assert said(await submit(stack, elsewhere, "language", "de"))["response_action"] == "errors"
        # A member whose metadata is signed for them (were the secret known) is still no admin.
        signed = {**view, "private_metadata": json.dumps({**meta, "sig": stack_signature(stack, MEMBER)})}
        response = said(await submit(stack, signed, "language", "de", user=MEMBER))
        assert response["errors"][VALUE_BLOCK] == messages.SLACK_CONFIG_ADMINS_ONLY
        # A field Parley does not offer.
        assert said(await submit(stack, view, "channel_actions", "[]"))["response_action"] == "errors"
        assert stack.runtime.profiles.profile(TEAM, CHANNEL).language == "en"
        assert stack.runtime.profiles.profile(TEAM, "C0OTHER").language == "en"
        assert await stack.runtime.profiles.history() == []
        assert not fake_slack.ephemeral
    log = logged(caplog)
    assert f"profile form from {MEMBER} in {TEAM} with metadata not signed for them: refused" in log
    assert f"profile change by {MEMBER} refused: not an admin" in log


def stack_signature(stack: SlackStack, user: str) -> str:
    """The signature a form opened in CHANNEL for `user` would carry (the app's secret known)."""
    import hashlib
    import hmac

    secret = stack.runtime.settings.slack.signing_secret
    assert secret is not None
    message = json.dumps(["parley:config", TEAM, CHANNEL, user]).encode()
    return hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()
