""" "Add to Slack": one Parley serving many workspaces, through slack-bolt's OAuth flow against
the fake Slack (`oauth.v2.access`, per-workspace tokens, revocation, token rotation, Enterprise
Grid org-wide installs), with the installations encrypted in a real Redis. The engine is the
scripted stand-in: what is checked is whose token each answer went out with, never the words."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet
from redis.asyncio import Redis
from slack_sdk.oauth.installation_store.models.bot import Bot

import adapters.slack
from adapters.slack.installs import Installations, fernet
from bot.config import HandoffSettings, Settings, SlackSettings
from bot.errors import ConfigError
from bot.runtime import open_runtime
from bot.tools.standin import ScriptedEngine
from tests.slack.conftest import DEAD_LLM, SlackStack, serving, slack_settings
from tests.slack.fake import CLIENT_ID, CLIENT_SECRET, Call, Delivery, FakeSlack, event_callback, message

KEY = Fernet.generate_key().decode()
ANSWER = "Here is what I found."


def install_settings(fake: FakeSlack, **overrides: Any) -> SlackSettings:
    """The fake's app, installable (SLACK_CLIENT_ID), with no single workspace's bot token."""
    installable = {
        "bot_token": None,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "install_keys": KEY,
        "authorize_url": fake.url + "/oauth/v2/authorize",
    }
    return slack_settings(fake, **{**installable, **overrides})


@pytest.fixture
def distributed(fake_slack: FakeSlack, make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """`async with distributed() as stack:` Parley serving every workspace that installs it."""

    @asynccontextmanager
    async def make(**slack: Any) -> AsyncIterator[SlackStack]:
        async with ScriptedEngine(ANSWER).serving() as url:
            settings = make_settings(llm_url=url, slack=install_settings(fake_slack, **slack))
            async with serving(settings, fake_slack) as stack:
                yield stack

    return make


def base(stack: SlackStack) -> str:
    return f"http://127.0.0.1:{stack.adapter.port}"


async def start_install(stack: SlackStack) -> tuple[str, str]:
    """/slack/install as a browser opens it: the state in the "Add to Slack" link, and the
    cookie bolt set for it (Secure: a browser sends it back over HTTPS; given by hand here)."""
    async with stack.session.get(base(stack) + "/slack/install", allow_redirects=False) as response:
        assert response.status == 200, await response.text()
        page = await response.text()
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    link = html.unescape(re.search(r'href="([^"]*/oauth/v2/authorize[^"]*)"', page).group(1))  # type: ignore[union-attr]
    assert link.startswith(stack.fake.url + "/oauth/v2/authorize?")
    query = parse_qs(urlsplit(link).query)
    assert query["client_id"] == [CLIENT_ID] and "chat:write" in query["scope"][0].split(",")
    return query["state"][0], cookie


async def redirect(stack: SlackStack, code: str, state: str, cookie: str) -> tuple[int, str]:
    url = base(stack) + "/slack/oauth_redirect"
    async with stack.session.get(url, params={"code": code, "state": state}, headers={"Cookie": cookie}) as response:
        return response.status, await response.text()


async def add_to_slack(stack: SlackStack, team: str, *, rotating_for: int | None = None) -> None:
    """A person installs Parley in workspace `team`, all the way."""
    state, cookie = await start_install(stack)
    status, page = await redirect(stack, stack.fake.install(team, rotating_for=rotating_for), state, cookie)
    assert status == 200, page


def dm(team: str, text: str, user: str = "UALICE") -> dict[str, Any]:
    return message(f"D{team}", text, user=user, channel_type="im", team=team)


async def answered_in(stack: SlackStack, team: str, turns: int = 1) -> None:
    await stack.fake.wait_for(
        lambda: len([c for c in stack.fake.calls_to("chat.postMessage", ok=True) if c.team == team]) >= turns,
        timeout=30,
    )
    # ... and finished: the answer is saved once its last call (the feedback buttons) is made.
    await stack.answered(f"D{team}", team=team, turns=turns, timeout=30)


def installations(stack: SlackStack) -> Installations:
    assert stack.runtime.redis is not None
    return Installations(stack.runtime.redis, prefix=stack.runtime.settings.redis.prefix, cipher=fernet(KEY))


async def test_three_workspaces_install_and_each_is_answered_with_its_own_token(distributed):
    async with distributed() as stack:
        for team in ("TA", "TB", "TC"):
            await add_to_slack(stack, team)
        for team in ("TA", "TB", "TC"):
            _, delivered = await stack.deliver(dm(team, f"What are your opening hours in {team}?"), team=team)
            assert delivered.status == 200
        for team in ("TA", "TB", "TC"):
            await answered_in(stack, team)
            context = await stack.answered(f"D{team}", team=team)
            assert [m.content for m in context.messages] == [f"What are your opening hours in {team}?", ANSWER]
        posts = stack.fake.calls_to("chat.postMessage", ok=True)
        assert {c.args["channel"]: c.team for c in posts} == {"DTA": "TA", "DTB": "TB", "DTC": "TC"}
        exchanges = stack.fake.calls_to("oauth.v2.access", ok=True)
        assert len(exchanges) == 3

        # At rest, the tokens are encrypted: Redis holds none of them in the clear.
        redis = stack.runtime.redis
        assert redis is not None
        stored = [await redis.get(k) async for k in redis.scan_iter(match="*:slack:install:*")]
        assert len(stored) == 3
        for team in ("TA", "TB", "TC"):
            token = stack.fake.bot_of(team).token  # type: ignore[union-attr]
            assert all(token.encode() not in blob for blob in stored)
            assert await installations(stack).bot_token(team) == token


async def test_an_uninstall_mid_conversation_stops_that_workspace_only(distributed):
    async with distributed() as stack:
        for team in ("TA", "TB"):
            await add_to_slack(stack, team)
        await stack.deliver(dm("TB", "first question"), team="TB")
        await answered_in(stack, "TB")
        gone = stack.fake.bot_of("TB").token  # type: ignore[union-attr]

        # Someone removes Parley from workspace TB: Slack revokes its token and says so.
        stack.fake.revoke("TB")
        _, delivered = await stack.deliver({"type": "app_uninstalled", "event_ts": "1.2"}, team="TB")
        assert delivered.status == 200
        assert await installations(stack).async_find_bot(enterprise_id=None, team_id="TB") is None
        calls_before = len(stack.fake.calls)

        await stack.deliver(dm("TB", "are you still there?"), team="TB")
        await stack.deliver(dm("TA", "a question in the other workspace"), team="TA")
        await answered_in(stack, "TA")
        later = stack.fake.calls[calls_before:]
        assert not [c for c in later if c.team == "TB" or c.token == gone], "a call for the uninstalled workspace"
        assert gone in stack.fake.revoked
        context = await stack.context("DTB", team="TB")
        assert [m.content for m in context.messages] == ["first question", ANSWER]  # the follow-up taken by nobody


async def test_a_token_slack_refuses_as_revoked_is_handled_as_an_uninstall(distributed):
    async with distributed() as stack:
        for team in ("TA", "TC"):
            await add_to_slack(stack, team)
        stack.fake.revoke("TC")  # no event came (lost, or revoked from the API)
        await stack.deliver(dm("TC", "Where is my parcel?"), team="TC")
        await stack.fake.wait_for(lambda: [c for c in stack.fake.calls if c.status == 401 and c.team == "TC"])
        async with asyncio.timeout(10):  # forgotten right after the refusal
            while await installations(stack).async_find_bot(enterprise_id=None, team_id="TC") is not None:
                await asyncio.sleep(0.02)
        _, delivered = await stack.deliver(dm("TC", "Hello again?"), team="TC")
        assert delivered.status == 200  # acknowledged, not taken: Slack must not retry it
        # The other workspace is served as before; by the time its answer is out, anything of
        # TC's would have been tried too.
        await stack.deliver(dm("TA", "What are your opening hours?"), team="TA")
        await answered_in(stack, "TA")
        refused = [c for c in stack.fake.calls if c.status == 401]
        assert len(refused) == 1  # the first refusal ends it: no notice, no later turn, with that token


async def test_a_tampered_or_replayed_state_is_refused(distributed):
    async with distributed() as stack:
        state, cookie = await start_install(stack)
        code = stack.fake.install("TX")
        status, page = await redirect(stack, code, state + "x", cookie)  # altered
        assert status == 400 and "Something Went Wrong" in page and "invalid_browser" in page
        status, page = await redirect(stack, code, state, "slack-app-oauth-state=someone-elses")  # not this browser's
        assert status == 400 and "invalid_browser" in page
        forged = "a" * 32  # a state (and cookie) Parley never issued
        status, page = await redirect(stack, code, forged, f"slack-app-oauth-state={forged}")
        assert status == 401 and "invalid_state" in page
        assert not stack.fake.calls_to("oauth.v2.access")  # no code was exchanged
        status, _ = await redirect(stack, code, state, cookie)
        assert status == 200
        status, page = await redirect(stack, stack.fake.install("TX"), state, cookie)  # the same state again
        assert status == 401 and "invalid_state" in page
        assert len(stack.fake.calls_to("oauth.v2.access")) == 1


async def test_an_expiring_token_is_refreshed_and_the_new_one_kept(distributed):
    async with distributed() as stack:
        await add_to_slack(stack, "TR", rotating_for=60)  # expires in a minute: refreshed before use
        first = stack.fake.bot_of("TR").token  # type: ignore[union-attr]
        await stack.deliver(dm("TR", "hi"), team="TR")
        await answered_in(stack, "TR")
        refreshes = [c for c in stack.fake.calls_to("oauth.v2.access") if c.args.get("grant_type") == "refresh_token"]
        assert refreshes
        [post] = [c for c in stack.fake.calls_to("chat.postMessage", ok=True) if c.team == "TR"]
        kept = await installations(stack).async_find_bot(enterprise_id=None, team_id="TR")
        assert kept is not None and kept.bot_token != first and kept.bot_refresh_token
        assert post.token == kept.bot_token  # the answer went out with the refreshed token


async def test_an_old_key_still_decrypts_after_a_new_one_is_put_first(redis: Redis):
    old = Installations(redis, prefix="rot", cipher=fernet(KEY))
    await old.async_save_bot(Bot(team_id="TK", bot_token="xoxb-TK-1", bot_id="B1", bot_user_id="U1", installed_at=1.0))
    newer = Installations(redis, prefix="rot", cipher=fernet(f"{Fernet.generate_key().decode()},{KEY}"))
    assert await newer.bot_token("TK") == "xoxb-TK-1"
    without = Installations(redis, prefix="rot", cipher=fernet(Fernet.generate_key().decode()))
    assert await without.async_find_bot(enterprise_id=None, team_id="TK") is None  # logged: install again


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"install_keys": None}, "SLACK_INSTALL_KEYS"),
        ({"client_secret": None}, "SLACK_CLIENT_SECRET"),
        ({"install_keys": "not-a-fernet-key"}, "SLACK_INSTALL_KEYS"),
        ({"bot_token": "xoxb-1"}, "SLACK_BOT_TOKEN"),
        ({"app_token": "xapp-1"}, "SLACK_APP_TOKEN"),
        ({"handoff": True}, "PARLEY_HANDOFF_SLACK_CHANNEL"),
    ],
)
async def test_what_many_workspaces_need_is_named_at_start(fake_slack, make_settings, change, setting):
    handoff = change.pop("handoff", False)
    sections: dict[str, Any] = {"slack": install_settings(fake_slack, **change)}
    if handoff:
        sections["handoff"] = HandoffSettings(_env_file=None, slack_channel="CSUPPORT")
    async with open_runtime(make_settings(llm_url=DEAD_LLM, **sections)) as runtime:
        with pytest.raises(ConfigError) as refused:
            adapters.slack.create(runtime.adapter_context())
    assert refused.value.setting == setting


# -- Enterprise Grid: one install for every workspace of an org ------------------------------------

ORG = "EGRID"


async def add_org_wide(stack: SlackStack, *, rotating_for: int | None = None) -> None:
    """An admin of the Grid org installs Parley for the whole org, all the way."""
    state, cookie = await start_install(stack)
    code = stack.fake.install(ORG, org_wide=True, rotating_for=rotating_for)
    status, page = await redirect(stack, code, state, cookie)
    assert status == 200, page


async def in_org(stack: SlackStack, event: dict[str, Any], team: str, *, org_wide: bool = True) -> Delivery:
    """`event` from workspace `team` of the org, sent for the org-wide install (or, not
    `org_wide`, for the workspace's own)."""
    return await stack.send(event_callback(event, team=team, enterprise=ORG, org_wide=org_wide))


async def org_install(stack: SlackStack) -> Bot | None:
    return await installations(stack).async_find_bot(enterprise_id=ORG, team_id=None, is_enterprise_install=True)


async def first_said(stack: SlackStack, channel: str, tenant: str) -> str:
    """What the person first said in `channel`, once it is answered, as kept under `tenant`."""
    return (await stack.answered(channel, team=tenant, timeout=30)).messages[0].content


def posts_to(stack: SlackStack, channel: str) -> list[Call]:
    return [c for c in stack.fake.calls_to("chat.postMessage", ok=True) if c.args["channel"] == channel]


async def test_an_org_wide_install_answers_every_workspace_of_the_org_with_the_org_token(distributed):
    async with distributed() as stack:
        await add_org_wide(stack, rotating_for=60)  # its token expires soon: refreshed, as a workspace's is
        kept = await org_install(stack)
        assert kept is not None and kept.is_enterprise_install and kept.team_id is None
        redis = stack.runtime.redis
        assert redis is not None
        prefix = f"{stack.runtime.settings.redis.prefix}:slack:install"
        assert [k async for k in redis.scan_iter(match=f"{prefix}:*")] == [f"{prefix}:org:{ORG}".encode()]

        for team in ("T1", "T2"):
            delivered = await in_org(stack, dm(team, f"Opening hours in {team}?"), team)
            assert delivered.status == 200
        for team in ("T1", "T2"):
            # One tenant, the org: the conversation is kept under it (Grid channel ids are unique in the org).
            context = await stack.answered(f"D{team}", team=ORG, timeout=30)
            assert [m.content for m in context.messages] == [f"Opening hours in {team}?", ANSWER]
        for team in ("T1", "T2"):
            posts = posts_to(stack, f"D{team}")
            # The org's token, refreshed before use (never the one first issued, now expiring).
            assert posts and all(stack.fake.bots[c.token].org_wide and c.token != kept.bot_token for c in posts)
        newest = await org_install(stack)
        assert newest is not None and newest.bot_token == stack.fake.bot_of(ORG).token  # type: ignore[union-attr]
        assert not [c for c in stack.fake.calls if c.team in ("T1", "T2")]  # no workspace token exists
        assert not (await stack.context("DT1", team="T1")).messages  # nothing under the workspace


@pytest.mark.parametrize("kind", ["app_uninstalled", "tokens_revoked"])
async def test_removing_the_org_wide_install_ends_it_in_every_workspace_of_the_org(distributed, kind):
    async with distributed() as stack:
        await add_org_wide(stack)
        await add_to_slack(stack, "TA")  # a workspace outside the org
        await in_org(stack, dm("T1", "first question"), "T1")
        await stack.answered("DT1", team=ORG, timeout=30)
        gone = stack.fake.bot_of(ORG).token  # type: ignore[union-attr]

        stack.fake.revoke(ORG)
        event: dict[str, Any] = {"type": kind, "event_ts": "1.2"}
        if kind == "tokens_revoked":
            event["tokens"] = {"bot": [f"UBOT{ORG}"]}
        delivered = await in_org(stack, event, "T1")
        assert delivered.status == 200
        assert await org_install(stack) is None
        calls_before = len(stack.fake.calls)

        for team in ("T1", "T2"):
            assert (await in_org(stack, dm(team, "are you still there?"), team)).status == 200
        await stack.deliver(dm("TA", "a question outside the org"), team="TA")
        await answered_in(stack, "TA")
        later = stack.fake.calls[calls_before:]
        assert not [c for c in later if c.team == ORG or c.token == gone], "a call for the removed org install"
        context = await stack.context("DT1", team=ORG)
        assert [m.content for m in context.messages] == ["first question", ANSWER]


async def test_a_workspace_install_and_the_org_wide_install_beside_it_keep_their_own_tokens(distributed):
    async with distributed() as stack:
        # Workspace TW of the org installed Parley on its own; the org then installed it org-wide.
        state, cookie = await start_install(stack)
        status, page = await redirect(stack, stack.fake.install("TW", enterprise=ORG), state, cookie)
        assert status == 200, page
        await add_org_wide(stack)
        own, org = stack.fake.bot_of("TW"), stack.fake.bot_of(ORG)
        assert own is not None and org is not None

        await in_org(stack, dm("TW", "for my workspace"), "TW", org_wide=False)
        await in_org(stack, dm("T1", "for the org"), "T1")
        assert await first_said(stack, "DTW", "TW") == "for my workspace"
        assert await first_said(stack, "DT1", ORG) == "for the org"
        assert {c.token for c in posts_to(stack, "DTW")} == {own.token}
        assert {c.token for c in posts_to(stack, "DT1")} == {org.token}

        # The workspace removes its own install: the org's stays, and serves the org.
        stack.fake.revoke("TW")
        assert (await in_org(stack, {"type": "app_uninstalled", "event_ts": "1.3"}, "TW", org_wide=False)).status == 200
        store = installations(stack)
        assert await store.async_find_bot(enterprise_id=ORG, team_id="TW") is None
        assert await store.bot_token(ORG) == org.token
        await in_org(stack, dm("T2", "still here?"), "T2")
        await stack.answered("DT2", team=ORG, timeout=30)
        assert {c.token for c in posts_to(stack, "DT2")} == {org.token}


async def test_a_workspace_taken_out_of_the_org_install_is_not_answered_until_it_is_let_back(distributed, caplog):
    caplog.set_level(logging.INFO)

    async def access(kind: str, *teams: str) -> None:
        body = event_callback({"type": kind, "team_ids": list(teams)}, team="T1", enterprise=ORG, org_wide=True)
        body["team_id"] = None  # as Slack sends it: the event is the org's
        assert (await stack.send(body)).status == 200

    async with distributed() as stack:
        await add_org_wide(stack)
        await access("team_access_revoked", "T2")
        assert (await in_org(stack, dm("T2", "anyone there?"), "T2")).status == 200  # acknowledged, dropped
        assert "a event_callback from workspace T2, out of org EGRID's install: dropped" in caplog.text
        await in_org(stack, dm("T1", "still served?"), "T1")
        assert await first_said(stack, "DT1", ORG) == "still served?"
        assert not posts_to(stack, "DT2") and not (await stack.context("DT2", team=ORG)).messages

        await access("team_access_granted", "T2")
        await in_org(stack, dm("T2", "back again?"), "T2")
        assert await first_said(stack, "DT2", ORG) == "back again?"
