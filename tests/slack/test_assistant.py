"""Slack's assistant pane and App Home tab, through slack-bolt (its `AsyncAssistant`) against the fake Slack.

Parley serves Slack (signed Events API requests, real Redis, the real runtime) with the scripted
engine stand-in. Opening the pane greets and suggests the tenant's prompts; the channel the user
looks at is remembered in Redis; the first question titles the thread; a status shows until the
answer starts; `help` and `reset` work in the pane; the Home tab says what Parley does here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.slack.threads import MemoryThreads, Pane, RedisThreads
from bot import messages
from bot.config import Settings, TenantsSettings
from bot.turns import ConversationKey
from tests.slack.conftest import SlackStack, serving, slack_settings
from tests.slack.fake import TEAM, FakeSlack, app_home_opened, assistant_thread, message, new_ts
from tests.standin import ScriptedEngine

DM = "D0042"
ANSWER = "A KV cache keeps the keys & values."
TENANTS = """
[default]
handlers = ["chat", "qa", "translate"]

[tenants."T0001"]
handlers = ["chat", "translate"]
suggested_prompts = ["How do I reset my password?", "Translate <this> into German"]
"""


@pytest.fixture
def slack(tmp_path: Path, fake_slack: FakeSlack, make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """`async with slack(tenants=TOML, **slack_settings) as stack:` Parley serving Slack with the stand-in."""

    @asynccontextmanager
    async def make(*, tenants: str | None = None, **slack: Any) -> AsyncIterator[SlackStack]:
        sections: dict[str, Any] = {"slack": slack_settings(fake_slack, **slack)}
        if tenants is not None:
            path = tmp_path / "tenants.toml"
            path.write_text(tenants)
            sections["tenants"] = TenantsSettings(_env_file=None, file=path)
        async with (
            ScriptedEngine(ANSWER).serving() as url,
            serving(make_settings(llm_url=url, **sections), fake_slack) as stack,
        ):
            yield stack

    return make


async def open_pane(stack: SlackStack, *, viewing: str | None = "C0GENERAL") -> str:
    """The user opens the assistant pane: returns the new thread's ts once Parley has greeted."""
    thread = new_ts()
    _, delivery = await stack.deliver(assistant_thread("started", DM, thread, viewing=viewing))
    assert delivery.status == 200
    await stack.fake.wait_for(lambda: stack.fake.calls_to("assistant.threads.setSuggestedPrompts", ok=True))
    return thread


async def ask(stack: SlackStack, thread: str, text: str, turns: int) -> None:
    await stack.deliver(message(DM, text, channel_type="im", thread_ts=thread))
    await stack.answered(DM, thread, turns=turns, timeout=60)


def viewing(stack: SlackStack, thread: str) -> Any:
    """What Redis holds for the pane thread (read through the adapter's own store)."""
    assert stack.runtime.redis is not None
    threads = RedisThreads(stack.runtime.redis, prefix=stack.runtime.settings.redis.prefix, ttl=60)
    return threads.pane(ConversationKey("slack", TEAM, DM, thread), asking=False)


async def test_the_pane_greets_suggests_titles_and_shows_a_status(slack, fake_slack):
    async with slack(suggested_prompts=["What is Parley?", "Summarise <!here> & more"]) as stack:
        thread = await open_pane(stack)
        [greeting] = await fake_slack.wait_for(lambda: fake_slack.in_thread(DM, thread))
        assert greeting.text == messages.ASSISTANT_GREETING
        [prompts] = fake_slack.calls_to("assistant.threads.setSuggestedPrompts")
        assert prompts.args["channel_id"] == DM and prompts.args["thread_ts"] == thread
        assert prompts.args["title"] == messages.ASSISTANT_PROMPTS_TITLE
        # Beside a channel, the pane's own "Summarise this channel" leads (Slack takes four at most).
        assert [p["message"] for p in prompts.args["prompts"]] == [
            messages.ASSISTANT_SUMMARISE_PROMPT,
            "What is Parley?",
            "Summarise <!here> & more",
        ]
        assert (await viewing(stack, thread)).viewing == "C0GENERAL"

        # The user looks at another channel: remembered beside the thread.
        await stack.deliver(assistant_thread("context_changed", DM, thread, viewing="C0RANDOM"))
        async with asyncio.timeout(10):
            while (await viewing(stack, thread)).viewing != "C0RANDOM":
                await asyncio.sleep(0.05)

        await ask(stack, thread, "What is a KV cache?", 1)
        assert fake_slack.titles == {(DM, thread): "What is a KV cache?"}
        await fake_slack.wait_for(lambda: len(fake_slack.statuses) == 2)
        assert fake_slack.statuses == [(DM, thread, messages.ASSISTANT_STATUS), (DM, thread, "")]
        [loading, cleared] = fake_slack.calls_to("assistant.threads.setStatus")
        assert loading.args["loading_messages"] == list(messages.ASSISTANT_LOADING)
        # Set before the answer's first message, cleared before it (the answer then streams as usual).
        [post] = [c for c in fake_slack.calls_to("chat.postMessage") if c.args.get("text") != greeting.text]
        assert loading.started < post.started and cleared.started < post.started
        answer = fake_slack.in_thread(DM, thread)[-1]
        assert answer.text == "A KV cache keeps the keys &amp; values."

        # A second question: the title stays the first one's; the status shows again.
        await ask(stack, thread, "And a prefix cache?", 2)
        assert len(fake_slack.calls_to("assistant.threads.setTitle")) == 1
        await fake_slack.wait_for(lambda: len(fake_slack.statuses) == 4)


async def test_help_and_reset_work_in_the_pane_and_a_command_is_no_title(slack, fake_slack):
    async with slack() as stack:
        thread = await open_pane(stack, viewing=None)
        assert (await viewing(stack, thread)).viewing == ""
        # Slack redelivers the event (not acknowledged in time): greeted once all the same.
        await stack.deliver(assistant_thread("started", DM, thread), retry_num=1)
        # Parley's own prompts when neither the tenant nor SLACK_SUGGESTED_PROMPTS has any.
        [prompts] = fake_slack.calls_to("assistant.threads.setSuggestedPrompts")
        assert tuple(p["title"] for p in prompts.args["prompts"]) == messages.ASSISTANT_PROMPTS
        await stack.deliver(message(DM, "help", channel_type="im", thread_ts=thread))
        help_text = messages.slack_help(config=True)  # Redis keeps run-time profiles: `/parley config` is offered
        await fake_slack.wait_for(lambda: any(m.text == help_text for m in fake_slack.in_thread(DM, thread)))
        await ask(stack, thread, "What is vLLM?", 1)
        assert fake_slack.titles == {(DM, thread): "What is vLLM?"}
        assert [m.text for m in fake_slack.in_thread(DM, thread)].count(messages.ASSISTANT_GREETING) == 1
        assert len(fake_slack.calls_to("assistant.threads.setSuggestedPrompts")) == 1
        await stack.deliver(message(DM, "reset", channel_type="im", thread_ts=thread))
        await fake_slack.wait_for(lambda: any(m.text == messages.RESET_DONE for m in fake_slack.in_thread(DM, thread)))


async def test_the_tenants_prompts_and_the_home_tab(slack, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    async with slack(tenants=TENANTS, suggested_prompts=["Not these"]) as stack:
        await open_pane(stack)
        [prompts] = fake_slack.calls_to("assistant.threads.setSuggestedPrompts")
        assert [p["message"] for p in prompts.args["prompts"]] == [
            messages.ASSISTANT_SUMMARISE_PROMPT,
            "How do I reset my password?",
            "Translate <this> into German",
        ]

        _, delivery = await stack.deliver(app_home_opened("UALICE"))
        assert delivery.status == 200
        view = await fake_slack.wait_for(lambda: fake_slack.homes.get("UALICE"))
        text = "\n".join(b["text"]["text"] for b in view["blocks"] if b["type"] == "section")
        assert messages.HOME_SKILLS["translate"] in text and messages.HOME_SKILLS["qa"] not in text
        assert "`reset`" in text
        assert "Translate &lt;this&gt; into German" in text and "<this>" not in text  # escaped for mrkdwn

        # The Messages tab is no Home tab; a pane event without its thread is logged and dropped.
        await stack.deliver(app_home_opened("UBOB", tab="messages"))
        broken = assistant_thread("started", DM, new_ts())
        del broken["assistant_thread"]["thread_ts"]
        _, delivery = await stack.deliver(broken)
        assert delivery.status == 200
        await asyncio.sleep(0.3)
        assert "UBOB" not in fake_slack.homes
        assert len(fake_slack.calls_to("assistant.threads.setSuggestedPrompts")) == 1
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "assistant_thread_started without a thread: ignored" in log


async def test_the_in_process_thread_memory_keeps_panes_as_redis_does():
    """The single-process default (no Redis): a pane thread, its channel in view, its first question."""
    threads = MemoryThreads(ttl=60)
    key = ConversationKey("slack", TEAM, DM, "1.2")
    assert await threads.pane(key, asking=True) is None  # no pane opened there
    await threads.open_pane(key, "C0GENERAL")
    assert await threads.pane(key, asking=False) == Pane(viewing="C0GENERAL", first=False)  # `help` is no question
    assert await threads.pane(key, asking=True) == Pane(viewing="C0GENERAL", first=True)
    await threads.open_pane(key, "C0RANDOM")  # the user moved: the first question stays asked
    assert await threads.pane(key, asking=True) == Pane(viewing="C0RANDOM", first=False)
