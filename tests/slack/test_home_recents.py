"""The App Home tab's "your recent conversations", through slack-bolt against the fake Slack,
with the scripted engine; and the two stores they are kept in (Redis, and the in-process twin).

Each conversation a person has with Parley (a channel thread, a DM, a pane thread) is listed on
their own Home tab in that workspace, newest first, titled with its first question (escaped for
mrkdwn), linked with `chat.getPermalink` where Slack gives a link. Nobody else's, and nothing of
another workspace, is listed; `help` is no conversation.
"""

from __future__ import annotations

import uuid
from typing import Any

from adapters.slack.recents import MemoryRecents, RedisRecents
from bot import messages
from bot.turns import Turn
from tests.slack.conftest import SlackStack
from tests.slack.fake import TEAM, app_home_opened, assistant_thread, mention, message, new_ts
from tests.standin import ScriptedEngine

ANSWER = "Here is what I know."
PANE_DM = "D0042"
THREAD = "1699999999.000100"


async def home(stack: SlackStack, user: str) -> dict[str, Any]:
    """`user` opens Parley's Home tab: the view Parley published for them."""
    stack.fake.homes.pop(user, None)
    _, delivery = await stack.deliver(app_home_opened(user))
    assert delivery.status == 200
    view: dict[str, Any] = await stack.fake.wait_for(lambda: stack.fake.homes.get(user), timeout=30)
    return view


def recents_in(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The blocks under the view's "your recent conversations" header."""
    blocks = view["blocks"]
    [at] = [
        i for i, b in enumerate(blocks) if b["type"] == "header" and b["text"]["text"] == messages.HOME_RECENT_TITLE
    ]
    return blocks[at + 1 :]


def link(channel: str, ts: str) -> str:
    return f"https://fake.slack.test/archives/{channel}/p{ts.replace('.', '')}"


async def test_the_home_tab_lists_the_persons_own_recent_conversations(stack_for):
    engine = ScriptedEngine(ANSWER)
    async with engine.serving() as url, stack_for(url) as stack:
        # Alice asks in a channel (Slack escapes what she typed), in a DM, and in the pane.
        asked = mention("C0001", "What do &lt;b&gt;bold&lt;/b&gt; &amp; <!here> do?")
        await stack.deliver(asked)
        await stack.answered("C0001", asked["ts"], timeout=60)
        await stack.deliver(message("D0001", "How do I rotate keys?", channel_type="im"))
        await stack.answered("D0001", timeout=60)
        pane = new_ts()
        await stack.deliver(assistant_thread("started", PANE_DM, pane))
        await stack.fake.wait_for(lambda: stack.fake.calls_to("assistant.threads.setSuggestedPrompts", ok=True))
        await stack.deliver(message(PANE_DM, "A question in the pane", channel_type="im", thread_ts=pane))
        await stack.answered(PANE_DM, pane, timeout=60)
        # A later reply in the channel's thread: that conversation is the newest now, its title unchanged.
        await stack.deliver(message("C0001", "and italics?", thread_ts=asked["ts"]))
        await stack.answered("C0001", asked["ts"], turns=2, timeout=60)
        # `help` is no conversation; Bob's question and Alice's in another workspace are not hers here.
        await stack.deliver(message("D0001", "help", channel_type="im"))
        await stack.fake.wait_for(
            lambda: any(m.text.startswith("I'm Parley") for m in stack.fake.in_thread("D0001", None))
        )
        bob = mention("C0002", "Bob's own question", user="UBOB")
        await stack.deliver(bob)
        await stack.answered("C0002", bob["ts"], timeout=60)
        await stack.deliver(message("D0009", "A question elsewhere", channel_type="im"), team="T0002")
        await stack.answered("D0009", team="T0002", timeout=60)
        stack.fake.gone_channels.add("D0001")  # Slack gives no link to that DM now: listed without one

        alices = await home(stack, "UALICE")
        bobs = await home(stack, "UBOB")
        nobodys = await home(stack, "UNOBODY")

    assert len(alices["blocks"]) <= 100
    texts = [b["text"]["text"] for b in recents_in(alices)]
    assert len(texts) == 3
    channel, in_pane, dm = texts
    title = "What do &lt;b&gt;bold&lt;/b&gt; &amp; &lt;!here&gt; do?"
    assert channel.startswith(f"*<{link('C0001', asked['ts'])}|{title}>*\n_in <#C0001>, <!date^")
    assert "<b>" not in channel and "<!here>" not in channel  # escaped: no markup, no ping
    assert in_pane.startswith(f"*<{link(PANE_DM, pane)}|A question in the pane>*\n_in {messages.HOME_RECENT_PANE}, ")
    assert dm.startswith(f"*How do I rotate keys?*\n_in {messages.HOME_RECENT_DM}, ")
    assert "Bob" not in "".join(texts) and "elsewhere" not in "".join(texts) and "help" not in "".join(texts)
    permalinks = stack.fake.calls_to("chat.getPermalink")
    assert {(c.args["channel"], c.args["message_ts"]) for c in permalinks if c.args["channel"] == "C0001"} == {
        ("C0001", asked["ts"])
    }

    [bobs_only] = [b["text"]["text"] for b in recents_in(bobs)]
    assert bobs_only.startswith(f"*<{link('C0002', bob['ts'])}|Bob's own question>*")
    [none] = recents_in(nobodys)
    assert none == {"type": "context", "elements": [{"type": "mrkdwn", "text": messages.HOME_RECENT_NONE}]}


def turn(channel: str, at: float, *, text: str = "", user: str = "UALICE", tenant: str = TEAM) -> Turn:
    return Turn(
        platform="slack",
        tenant=tenant,
        channel=channel,
        user=user,
        text=text or f"question in {channel}",
        event_id=uuid.uuid4().hex,
        thread=THREAD,
        at=1700000000 + at,
    )


async def test_recents_are_bounded_per_person_and_workspace(redis):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    for store in (RedisRecents(redis, prefix=prefix, ttl=60, keep=3), MemoryRecents(ttl=60, keep=3)):
        for i in range(5):
            await store.add(turn(f"C{i}", i))
        await store.add(turn("C4", 10, text="a later question"))  # moves it up; the title stays the first
        await store.add(turn("C2", 1))  # a redelivered old turn: moves nothing back
        await store.add(turn("C9", 20, user="UBOB"))
        await store.add(turn("C8", 20, tenant="T0002"))
        found = await store.recent(TEAM, "UALICE", 10)
        assert [(r.channel, r.title, r.at) for r in found] == [
            ("C4", "question in C4", 1700000010),
            ("C3", "question in C3", 1700000003),
            ("C2", "question in C2", 1700000002),
        ]
        assert found[0].ts == THREAD and found[0].kind == "channel"
        assert [r.channel for r in await store.recent(TEAM, "UALICE", 2)] == ["C4", "C3"]
        assert [r.channel for r in await store.recent(TEAM, "UBOB", 5)] == ["C9"]
        assert [r.channel for r in await store.recent("T0002", "UALICE", 5)] == ["C8"]
    # In Redis: the titles are trimmed with the list, and both expire.
    key = f"{prefix}:slack:recent:{TEAM}:UALICE"
    assert await redis.zcard(key) == 3 and await redis.hlen(f"{key}:about") == 3
    assert 0 < await redis.ttl(key) <= 60 and 0 < await redis.ttl(f"{key}:about") <= 60


async def test_the_in_process_recents_expire():
    store = MemoryRecents(ttl=0)
    await store.add(turn("C1", 1))
    assert await store.recent(TEAM, "UALICE", 5) == []
