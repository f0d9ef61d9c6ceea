"""A support desk per profile and per workspace, through slack-bolt against the fake Slack: a
channel's profile sends its tickets to a desk channel of its own (`handoff_channel`), others to
the default; with many workspaces ("Add to Slack") each workspace's tickets open in its own desk
channel with its own token, and its agents' replies reach its customers only; a profile naming a
public channel gets no ticket there. The engine is unreachable: nothing here needs the model."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

import adapters.slack
from adapters.slack.desk import SlackDesk
from bot import messages
from bot.config import HandoffSettings, TenantsSettings
from bot.errors import ConfigError, TenantConfigError
from bot.handoff.desk import NamedChannels
from bot.handoff.flow import Handoffs
from bot.moderation.moderator import Verdict
from bot.runtime import open_runtime
from bot.tenants import FIELD_NAMES, load_tenants
from bot.turns import ConversationKey, Turn
from tests.handoff.conftest import SUPPORT, Recording, quoted
from tests.slack.conftest import BOT_TOKEN, DEAD_LLM, SlackStack, serving, slack_settings
from tests.slack.fake import TEAM, FakeSlack, Posted, block_action, command, mention, message, view_submission
from tests.slack.test_config import FIELD_BLOCK, VALUE_BLOCK
from tests.slack.test_install import add_to_slack, install_settings, installations

SHOP, SHOP_DESK, LOBBY = "C0SHOP", "C0SHOPDESK", "C0LOBBY"


def tenants_file(tmp_path: Path, text: str) -> TenantsSettings:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return TenantsSettings(_env_file=None, file=path)


def texts(fake: FakeSlack, channel: str, ts: str | None) -> list[str]:
    return [m.text for m in fake.in_thread(channel, ts)]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


async def ticket_in(fake: FakeSlack, channel: str, count: int = 1) -> Posted:
    """The `count`-th ticket's head in `channel`, once its transcript is there (a ticket by then)."""
    heads = await fake.wait_for(lambda: len(fake.in_thread(channel, None)) >= count and fake.in_thread(channel, None))
    head = heads[count - 1]
    await fake.wait_for(lambda: fake.in_thread(channel, head.ts))
    return head


def test_handoff_channel_is_a_profile_field_checked_as_a_slack_channel_id(tmp_path):
    assert "handoff_channel" in FIELD_NAMES  # offered by `parley profile set`, /parley config and /config
    settings = tenants_file(tmp_path, f'[tenants."{TEAM}".channels."{SHOP}"]\nhandoff_channel = "#support"\n')
    with pytest.raises(TenantConfigError) as refused:
        load_tenants(settings.file)
    assert (refused.value.path, refused.value.tenant, refused.value.field) == (
        str(settings.file),
        f"{TEAM}.channels.{SHOP}",
        "handoff_channel",
    )
    assert "Slack channel id" in str(refused.value) and "\n" not in str(refused.value)
    good = load_tenants(tenants_file(tmp_path, f'[tenants."{TEAM}"]\nhandoff_channel = "{SHOP_DESK}"\n').file)
    assert good.get(TEAM).handoff_channel == SHOP_DESK and good.default.handoff_channel == ""
    assert good.profile(TEAM, SHOP).handoff_channel == SHOP_DESK  # a channel inherits its tenant's desk
    with pytest.raises(TenantConfigError) as refused:  # a run-time override (`parley profile set`, /parley config)
        good.resolve(TEAM, SHOP, {"handoff_channel": "<#C0SHOPDESK|shop-desk>"}, source="run-time profile")
    assert (refused.value.tenant, refused.value.field) == (f"{TEAM}.channels.{SHOP}", "handoff_channel")


async def test_many_workspaces_refuse_the_settings_of_one_workspaces_desk(make_settings, fake_slack):
    for handoff, setting in (
        ({"slack_channel": SUPPORT}, "PARLEY_HANDOFF_SLACK_CHANNEL"),
        ({"agent_groups": ["SAGENTS"]}, "PARLEY_HANDOFF_AGENT_GROUPS"),
    ):
        sections = {"slack": install_settings(fake_slack), "handoff": HandoffSettings(_env_file=None, **handoff)}
        async with open_runtime(make_settings(llm_url=DEAD_LLM, **sections)) as runtime:
            with pytest.raises(ConfigError) as refused:
                adapters.slack.create(runtime.adapter_context())
        assert refused.value.setting == setting and "each workspace" in refused.value.reason


# -- (a) one workspace: a channel's own desk beside the default --------------------------------------


async def test_a_channels_profile_sends_its_tickets_to_its_own_desk_and_others_go_to_the_default(
    make_settings, fake_slack, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    fake_slack.add_channel(SUPPORT, "support", private=True)
    fake_slack.add_channel(SHOP_DESK, "shop-desk", private=True)
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann")
    fake_slack.add_user("USHOPPER", "sam", display_name="Sam")
    tenants = tenants_file(tmp_path, f'[tenants."{TEAM}".channels."{SHOP}"]\nhandoff_channel = "{SHOP_DESK}"\n')
    settings = make_settings(
        llm_url=DEAD_LLM,
        slack=slack_settings(fake_slack),
        handoff=HandoffSettings(_env_file=None, slack_channel=SUPPORT),
        tenants=tenants,
    )
    async with serving(settings, fake_slack) as s:
        in_shop = mention(SHOP, "I want to talk to a person")
        await s.deliver(in_shop)
        shop_head = await ticket_in(fake_slack, SHOP_DESK)
        in_lobby = mention(LOBBY, "I want to talk to a person")
        await s.deliver(in_lobby)
        lobby_head = await ticket_in(fake_slack, SUPPORT)
        assert f"app.slack.com/client/{TEAM}/{SHOP}/thread/{SHOP}-{in_shop['ts']}" in shop_head.text
        assert f"app.slack.com/client/{TEAM}/{LOBBY}/thread/{LOBBY}-{in_lobby['ts']}" in lobby_head.text
        assert len(fake_slack.in_thread(SHOP_DESK, None)) == len(fake_slack.in_thread(SUPPORT, None)) == 1

        # Each desk's people answer their own customer; the customers' follow-ups reach their desk.
        await s.deliver(message(SHOP_DESK, "Sam from the shop here.", user="USHOPPER", thread_ts=shop_head.ts))
        await s.deliver(message(SUPPORT, "Ann from support here.", user="UAGENT", thread_ts=lobby_head.ts))
        shop_reply = messages.agent_reply("Sam", "Sam from the shop here.")
        lobby_reply = messages.agent_reply("Ann", "Ann from support here.")
        await fake_slack.wait_for(lambda: shop_reply in texts(fake_slack, SHOP, in_shop["ts"]))
        await fake_slack.wait_for(lambda: lobby_reply in texts(fake_slack, LOBBY, in_lobby["ts"]))
        await s.deliver(message(SHOP, "the blue one", thread_ts=in_shop["ts"]))
        await fake_slack.wait_for(
            lambda: quoted("Customer", "the blue one") in texts(fake_slack, SHOP_DESK, shop_head.ts)
        )
        assert lobby_reply not in texts(fake_slack, SHOP, in_shop["ts"])
        assert shop_reply not in texts(fake_slack, LOBBY, in_lobby["ts"])

        # Resolve with the button of the shop's own desk.
        pressed = await s.send({"payload": json.dumps(block_action(shop_head, action_id="parley_resolve"))}, form=True)
        assert pressed.status == 200
        await fake_slack.wait_for(lambda: messages.HANDED_BACK in texts(fake_slack, SHOP, in_shop["ts"]))

        # A second ticket from the shop: its desk was checked once, before the first.
        again = mention(SHOP, "get me a human please", thread_ts=in_shop["ts"])
        await s.deliver(again)
        await ticket_in(fake_slack, SHOP_DESK, count=2)
    checked = [c.args["channel"] for c in fake_slack.calls_to("conversations.info")]
    assert checked.count(SHOP_DESK) == 1 and checked.count(SUPPORT) == 1  # the default at start, as ever


# -- (b) many workspaces, each with its own desk ---------------------------------------------------------


def in_workspace(event: dict[str, Any], team: str) -> dict[str, Any]:
    """`event` as it happens in workspace `team` (its people are of that workspace)."""
    return {**event, "team": team, **({"user_team": team} if "user" in event else {})}


@asynccontextmanager
async def installed(s: SlackStack, *teams: str) -> AsyncIterator[None]:
    """Parley installed in `teams` ("Add to Slack") for the block, and uninstalled after it: the
    install tests count every installation in this Redis, whatever its prefix."""
    for team in teams:
        await add_to_slack(s, team)
    try:
        yield
    finally:
        for team in teams:
            await installations(s).forget(None, team)


async def configure(s: SlackStack, team: str, channel: str, field: str, value: str, *, admin: str) -> None:
    """A workspace admin sets `field` of `channel`'s profile with /parley config and its modal."""
    slash = dict(command("config", channel=channel, response_url=s.fake.response_url(), user=admin), team_id=team)
    opened = await s.send(slash, form=True)
    assert opened.status == 200 and not opened.text, opened.text
    view = s.fake.views[-1]
    values = {
        FIELD_BLOCK: {"field": {"type": "static_select", "selected_option": {"value": field}}},
        VALUE_BLOCK: {"value": {"type": "plain_text_input", "value": value}},
    }
    submitted = await s.send({"payload": json.dumps(view_submission(view, values, user=admin))}, form=True)
    assert submitted.status == 200 and not submitted.text, submitted.text


async def test_each_workspace_has_its_own_desk_its_own_token_and_its_own_agents(
    make_settings, fake_slack, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    fake_slack.add_channel("CDESKA", "desk-a", private=True)
    fake_slack.add_channel("CDESKB", "desk-b", private=True)
    fake_slack.add_user("UAGENTA", "ann", display_name="Ann", team="TA")
    fake_slack.add_user("UAGENTB", "bo", display_name="Bo", team="TB")
    fake_slack.add_user("UADMINB", "ada", admin=True, team="TB")
    # Workspace TA names its desk in the tenants file; TB with /parley config, for its shop channel.
    tenants = tenants_file(tmp_path, '[tenants."TA"]\nhandoff_channel = "CDESKA"\n')
    settings = make_settings(llm_url=DEAD_LLM, slack=install_settings(fake_slack), tenants=tenants)
    async with serving(settings, fake_slack) as s, installed(s, "TA", "TB", "TC"):
        token = {team: fake_slack.bot_of(team).token for team in ("TA", "TB")}  # type: ignore[union-attr]
        await configure(s, "TB", "CSHOPB", "handoff_channel", "CDESKB", admin="UADMINB")
        assert s.runtime.profiles.profile("TB", "CSHOPB").handoff_channel == "CDESKB"

        asked_a = message("DTA", "I want to talk to a person", user="UCUSTA", channel_type="im", team="TA")
        await s.deliver(asked_a, team="TA")
        asked_b = in_workspace(
            message("CSHOPB", "<@UBOTTB> I want to talk to a person", user="UCUSTB", type="app_mention"), "TB"
        )
        await s.deliver(asked_b, team="TB")
        head_a = await ticket_in(fake_slack, "CDESKA")
        head_b = await ticket_in(fake_slack, "CDESKB")
        await fake_slack.wait_for(lambda: messages.HANDED_OFF in texts(fake_slack, "DTA", None))
        await fake_slack.wait_for(lambda: messages.HANDED_OFF in texts(fake_slack, "CSHOPB", asked_b["ts"]))
        desk_posts = [
            c for c in fake_slack.calls_to("chat.postMessage", ok=True) if c.args["channel"] in ("CDESKA", "CDESKB")
        ]
        assert {(c.args["channel"], c.token) for c in desk_posts} == {("CDESKA", token["TA"]), ("CDESKB", token["TB"])}
        checks = {(c.args["channel"], c.token) for c in fake_slack.calls_to("conversations.info")}
        assert checks == {("CDESKA", token["TA"]), ("CDESKB", token["TB"])}  # each checked with its own token

        # Each workspace's agent answers its own customer, with that workspace's token.
        await s.deliver(
            in_workspace(message("CDESKA", "Ann here.", user="UAGENTA", thread_ts=head_a.ts), "TA"), team="TA"
        )
        await s.deliver(
            in_workspace(message("CDESKB", "Bo here.", user="UAGENTB", thread_ts=head_b.ts), "TB"), team="TB"
        )
        reply_a, reply_b = messages.agent_reply("Ann", "Ann here."), messages.agent_reply("Bo", "Bo here.")
        await fake_slack.wait_for(lambda: reply_a in texts(fake_slack, "DTA", None))
        await fake_slack.wait_for(lambda: reply_b in texts(fake_slack, "CSHOPB", asked_b["ts"]))
        to_customers = [c for c in fake_slack.calls if c.method.startswith("chat.") and c.args.get("channel")]
        assert {c.token for c in to_customers if c.args["channel"] == "DTA"} == {token["TA"]}
        assert {c.token for c in to_customers if c.args["channel"] == "CSHOPB"} == {token["TB"]}

        # Only from that workspace: the same thread named in an event of the other workspace is no
        # ticket's there (TA has no desk channel CDESKB), and reaches no customer.
        await s.deliver(
            in_workspace(message("CDESKB", "not yours", user="UAGENTA", thread_ts=head_b.ts), "TA"), team="TA"
        )
        # TB's customer writes on; it reaches TB's desk only.
        await s.deliver(
            in_workspace(message("CSHOPB", "order 42", user="UCUSTB", thread_ts=asked_b["ts"]), "TB"), team="TB"
        )
        await fake_slack.wait_for(lambda: quoted("Customer", "order 42") in texts(fake_slack, "CDESKB", head_b.ts))

        # Resolve with TA's button, pressed in TA.
        press = block_action(head_a, action_id="parley_resolve", user="UAGENTA")
        press = {**press, "team": {"id": "TA", "domain": "a"}, "user": {**press["user"], "team_id": "TA"}}
        assert (await s.send({"payload": json.dumps(press)}, form=True)).status == 200
        await fake_slack.wait_for(lambda: messages.HANDED_BACK in texts(fake_slack, "DTA", None))
        await fake_slack.wait_for(lambda: messages.resolved_by("Ann") in texts(fake_slack, "CDESKA", head_a.ts))

        # A workspace that names no desk channel has none: its customer is told no one is reachable.
        asked_c = message("DTC", "I want to talk to a person", user="UCUSTC", channel_type="im", team="TC")
        await s.deliver(asked_c, team="TC")
        await fake_slack.wait_for(lambda: messages.NO_AGENT in texts(fake_slack, "DTC", None))
    assert "not yours" not in "\n".join(texts(fake_slack, "CSHOPB", asked_b["ts"]))
    # Nobody was refused (the stray event was simply not a desk's): the admin's confirmation is all.
    assert [(n.user, n.text) for n in fake_slack.ephemeral] == [
        ("UADMINB", messages.slack_config_saved("handoff_channel", '"CDESKB"'))
    ]
    # A ticket's thread names its workspace, so a reply is looked up (and answered) there only.
    assert f"desk agent from Ann taken (ticket TA:CDESKA:{head_a.ts})" in logged(caplog)
    assert f"desk agent from Bo taken (ticket TB:CDESKB:{head_b.ts})" in logged(caplog)


# -- (c) a profile naming a public channel --------------------------------------------------------------


async def test_a_profile_naming_a_public_channel_gets_no_ticket_there_and_the_user_is_told(
    make_settings, fake_slack, caplog
):
    caplog.set_level(logging.INFO)
    fake_slack.add_channel(SUPPORT, "support", private=True)
    fake_slack.add_channel("C0PUBLIC", "general-help", private=False)
    settings = make_settings(
        llm_url=DEAD_LLM,
        slack=slack_settings(fake_slack),
        handoff=HandoffSettings(_env_file=None, slack_channel=SUPPORT),
    )
    async with serving(settings, fake_slack) as s:
        # Set at run time (as `parley profile set` does): validated, in force at once here.
        await s.runtime.profiles.set(TEAM, SHOP, "handoff_channel", "C0PUBLIC", by="cli:test")
        asked = mention(SHOP, "I want to talk to a person")
        await s.deliver(asked)
        await fake_slack.wait_for(lambda: messages.NO_AGENT in texts(fake_slack, SHOP, asked["ts"]))
        # Nothing lost: the request and what the user was told are in the conversation.
        async with asyncio.timeout(30):
            while not (context := await s.context(SHOP, asked["ts"])).messages:
                await asyncio.sleep(0.05)
        assert [m.content for m in context.messages] == ["I want to talk to a person", messages.NO_AGENT]
        assert await s.runtime.tickets.ticket(ConversationKey("slack", TEAM, SHOP, asked["ts"])) is None

        # Asked again: refused at once, without asking Slack again; another channel still has the default desk.
        again = mention(SHOP, "I want to talk to a person")
        await s.deliver(again)
        await fake_slack.wait_for(lambda: messages.NO_AGENT in texts(fake_slack, SHOP, again["ts"]))
        elsewhere = mention(LOBBY, "I want to talk to a person")
        await s.deliver(elsewhere)
        await ticket_in(fake_slack, SUPPORT)
    assert fake_slack.in_thread("C0PUBLIC", None) == [] and not [
        c for c in fake_slack.calls_to("chat.postMessage") if c.args["channel"] == "C0PUBLIC"
    ]
    assert [c.args["channel"] for c in fake_slack.calls_to("conversations.info")].count("C0PUBLIC") == 1
    [refusal] = [r for r in caplog.records if "refused" in r.getMessage() and "C0PUBLIC" in r.getMessage()]
    assert refusal.levelno == logging.ERROR
    assert (
        "handoff_channel" in refusal.getMessage() and "PARLEY_HANDOFF_ALLOW_PUBLIC_CHANNEL=true" in refusal.getMessage()
    )


# -- without a default desk: only the conversations whose profile names one ------------------------------


def visit(text: str, *, visitor: str, page: str) -> Turn:
    """A web visitor's message from a page of the site (the page's profile applies)."""
    return Turn(
        platform="web",
        tenant="shop",
        channel=visitor,
        user=visitor,
        text=text,
        event_id=uuid.uuid4().hex,
        profile=page,
    )


async def test_without_a_default_only_a_profile_with_a_desk_hands_off(runtime_for, fake_slack, tmp_path):
    fake_slack.add_channel(SHOP_DESK, "shop-desk", private=True)
    tenants = tenants_file(tmp_path, f'[tenants."shop".channels."/help"]\nhandoff_channel = "{SHOP_DESK}"\n')
    async with runtime_for(desk=False, slack_channel=None, after_failures=1, tenants=tenants) as rt:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
        rt.desks["slack"] = SlackDesk(
            client, channel=None, store=rt.tickets, links=rt.links, limit=3000, named=NamedChannels(rt.profiles)
        )
        handoffs = Handoffs(
            settings=rt.settings.handoff, store=rt.tickets, stats=rt.stats, desks=rt.desks, profiles=rt.profiles
        )
        angry = Verdict("this is useless", angry=True)
        on_help, elsewhere = visit("x", visitor="v1", page="/help"), visit("x", visitor="v2", page="/pricing")
        assert handoffs.hands_off_anger(angry, on_help) and not handoffs.hands_off_anger(angry, elsewhere)

        # A failed answer hands off (PARLEY_HANDOFF_AFTER_FAILURES=1) where a desk takes the
        # tickets; elsewhere the user only hears of the failure, as in a deployment without a desk.
        helped, unhelped = Recording(), Recording()
        await rt.manager.handle(visit("where is my order?", visitor="v1", page="/help"), helped)
        await rt.manager.handle(visit("how much is it?", visitor="v2", page="/pricing"), unhelped)
        assert helped.sent[-1] == messages.HANDED_OFF_AFTER_FAILURES
        assert len(unhelped.sent) == 1 and messages.NO_AGENT not in unhelped.sent
        assert await rt.tickets.ticket(elsewhere.key) is None
        [head] = fake_slack.in_thread(SHOP_DESK, None)
        assert "`shop`" in head.text
        ticket = await rt.tickets.ticket(on_help.key)
        assert ticket is not None and ticket.thread == f"{SHOP_DESK}:{head.ts}"  # as ever with one workspace
