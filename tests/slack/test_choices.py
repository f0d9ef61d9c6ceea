"""A write action's Confirm / Cancel as Block Kit buttons, through slack-bolt and the fake Slack.

Parley serves Slack (signed Events API requests, real Redis, the real runtime) with the shipped
sample actions pointed at the sample service on loopback; the engine is the scripted stand-in,
whose structured-output answers are the model's decisions (a write call to open a ticket).
The asker's press runs the call once and the buttons give way to who decided; a stranger's
press changes nothing; a second press, a press after expiry and a press with a value Parley
never made are each told apart.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import web

from adapters.slack import normalize
from bot import messages
from bot.config import ActionsSettings, Settings, TenantsSettings
from bot.tools.sample_service import DESK, Desk, make_app
from tests.slack.conftest import SlackStack, serving, slack_settings
from tests.slack.fake import TEAM, FakeSlack, Posted, block_action, mention
from tests.standin import ScriptedEngine

CHANNEL = "C0SHOP"
TICKET = {"calls": [{"action": "open_ticket", "arguments": {"subject": "Broken <!channel> keyboard", "body": "Dead."}}]}
ASK = "The keyboard from order A1001 arrived broken"  # routed to qa: an action may answer it


@pytest_asyncio.fixture
async def service() -> AsyncIterator[tuple[Desk, int]]:
    """The sample service on a free loopback port: its ticket desk, and the port."""
    app = make_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield app[DESK], site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


@pytest_asyncio.fixture
async def slack_with_actions(
    tmp_path: Path, service: tuple[Desk, int], fake_slack: FakeSlack, make_settings: Callable[..., Settings]
) -> Callable[..., Any]:
    """`async with slack_with_actions(engine) as stack:` Parley serving Slack, its tenants
    allowed the sample actions."""
    text = (Path(__file__).parents[2] / "deploy" / "sample-actions.toml").read_text()
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(text.replace("http://127.0.0.1:8765", f"http://127.0.0.1:{service[1]}"))

    @asynccontextmanager
    async def make(engine: ScriptedEngine) -> AsyncIterator[SlackStack]:
        async with engine.serving() as url:
            settings = make_settings(
                llm_url=url,
                slack=slack_settings(fake_slack),
                tenants=TenantsSettings(_env_file=None, file=tenants),
                actions=ActionsSettings(_env_file=None, fetch_allow=["127.0.0.0/8"]),
            )
            async with serving(settings, fake_slack) as stack:
                yield stack

    return make


async def ask_for_a_ticket(stack: SlackStack) -> tuple[str, Posted]:
    """Mention Parley with a request the scripted model answers with a write call; returns the
    thread and the message with the buttons."""
    event = mention(CHANNEL, ASK)
    await stack.deliver(event)
    thread = event["ts"]

    def buttons() -> Posted | None:  # (the question above it carries the feedback buttons)
        return next(
            (m for m in stack.fake.in_thread(CHANNEL, thread) if any(b["type"] == "actions" for b in m.blocks or [])),
            None,
        )

    return thread, await stack.fake.wait_for(buttons)


async def press(stack: SlackStack, offer: Posted, action_id: str, user: str, value: str | None = None) -> int:
    """Press a button of `offer` as `user` (a signed interactivity request); Parley's HTTP status."""
    [block] = [b for b in offer.blocks or [] if b["type"] == "actions"]
    value = value if value is not None else block["elements"][0]["value"]
    payload = block_action(offer, action_id=action_id, user=user, value=value, block_id=block["block_id"])
    return (await stack.send({"payload": json.dumps(payload)}, form=True)).status


def said(stack: SlackStack, thread: str, text: str) -> Callable[[], bool]:
    return lambda: any(m.text.startswith(text) for m in stack.fake.in_thread(CHANNEL, thread))


async def test_the_askers_confirm_runs_the_call_once_and_settles_the_buttons(slack_with_actions, service):
    desk, _ = service
    async with slack_with_actions(ScriptedEngine(decisions=[TICKET])) as stack:
        thread, offer = await ask_for_a_ticket(stack)
        # The question, then the buttons: the call in words, escaped (no channel ping), two buttons.
        assert said(stack, thread, "I'm about to open a support ticket")()
        section, actions = offer.blocks or []
        assert "&lt;!channel&gt;" in section["text"]["text"] and "<!channel>" not in section["text"]["text"]
        assert [(e["action_id"], e["text"]["text"]) for e in actions["elements"]] == [
            ("parley_confirm", messages.CONFIRM_BUTTON),
            ("parley_cancel", messages.CANCEL_BUTTON),
        ]
        call = actions["elements"][0]["value"].partition(":")[0]
        assert {e["value"] for e in actions["elements"]} == {normalize.choice_value(call, thread)}

        # Someone else presses Confirm: told privately, nothing runs, the buttons stay.
        assert await press(stack, offer, "parley_confirm", "UMALLORY") == 200
        [private] = await stack.fake.wait_for(lambda: [m for m in stack.fake.ephemeral if m.user == "UMALLORY"])
        assert (private.text, private.thread_ts) == (messages.ACTION_NOT_YOURS, thread)
        assert not said(stack, thread, messages.ACTION_NOT_YOURS)()  # nothing in the thread for everyone
        assert desk.tickets == {} and [b["type"] for b in offer.blocks or []] == ["section", "actions"]

        # The asker presses Confirm: the ticket is opened once, the buttons say who confirmed.
        stale = copy.deepcopy(offer)  # the message as another screen may still show it
        assert await press(stack, offer, "parley_confirm", "UALICE") == 200
        await stack.fake.wait_for(said(stack, thread, "Done: open_ticket."))
        assert [t["subject"] for t in desk.tickets.values()] == ["Broken <!channel> keyboard"]
        await stack.fake.wait_for(lambda: offer.text == messages.action_settled("confirmed", "<@UALICE>"))
        assert [b["type"] for b in offer.blocks or []] == ["context"]

        # A second press (a double click, a stale copy of the message): told, not run again.
        assert await press(stack, stale, "parley_cancel", "UALICE") == 200
        await stack.fake.wait_for(said(stack, thread, messages.action_already("confirmed")))
        assert len(desk.tickets) == 1
        context = await stack.context(CHANNEL, thread, TEAM)
        assert any(m.content.startswith("Done: open_ticket.") for m in context.messages)


async def test_cancel_a_forged_value_and_expiry(slack_with_actions, service):
    desk, _ = service
    async with slack_with_actions(ScriptedEngine(decisions=[TICKET, TICKET])) as stack:
        thread, offer = await ask_for_a_ticket(stack)
        # A value Parley never made: acknowledged (Slack would show an error otherwise), nothing else.
        assert await press(stack, offer, "parley_confirm", "UALICE", value="nonsense:1.2") == 200
        assert await press(stack, offer, "parley_cancel", "UALICE") == 200
        await stack.fake.wait_for(said(stack, thread, messages.ACTION_CANCELLED))
        await stack.fake.wait_for(lambda: offer.text == messages.action_settled("cancelled", "<@UALICE>"))

        # A second request whose call expires before the press (its key's time to live cut short).
        second, offer = await ask_for_a_ticket(stack)
        redis = stack.runtime.redis
        assert redis is not None
        [key] = [k async for k in redis.scan_iter(match=f"{stack.runtime.settings.redis.prefix}:action:*:pending:*")]
        await redis.pexpire(key, 1)
        await asyncio.sleep(0.05)
        assert await press(stack, offer, "parley_confirm", "UALICE") == 200
        await stack.fake.wait_for(said(stack, second, messages.ACTION_EXPIRED))
        await stack.fake.wait_for(lambda: offer.text == messages.action_settled("expired", "<@UALICE>"))
        assert desk.tickets == {}
        # Only the two questions and their outcomes were posted: the forged press posted nothing.
        assert not said(stack, thread, messages.ACTION_EXPIRED)()
