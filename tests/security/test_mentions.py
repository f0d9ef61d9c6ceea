"""Special mentions and hidden links in every path out: Parley never pings a channel, nor posts a
link whose target it hides, whatever the user or the model wrote.

Slack: through `parley serve`'s real path (slack-bolt against the fake Slack, Redis, the dialogue
manager) with a scripted engine stand-in, so that the "model" writes exactly the hostile answer
a steered model could. What the fake Slack received is checked: answers, edits, continuations,
native-stream `markdown_text`, desk messages, a person's reply relayed to a customer, errors.
Discord: every post and edit carries `allowed_mentions` that pings nobody (the client is built
with `AllowedMentions.none()`); a message's own `@everyone` would otherwise ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from aiohttp import web

from bot import messages
from bot.config import HandoffSettings
from tests.discord.conftest import alice, channel, discord_settings, fake, serving  # noqa: F401 - fixtures
from tests.discord.fake import FakeDiscord, Json
from tests.handoff.conftest import SUPPORT
from tests.slack.conftest import DEAD_LLM, fake_slack, slack_settings, stack_for  # noqa: F401 - fixtures
from tests.slack.conftest import serving as serving_slack
from tests.slack.fake import FakeSlack, mention, message
from tests.standin import ScriptedEngine

PAUSE = 0.05  # seconds before each streamed piece: the answer arrives over time (never asserted)

# A user asks for a translation of text with special mentions, a person's mention (UBOB) and a
# channel's; the "model" copies the placeholders back and adds its own pings and a disguised link.
ASKED = "translate to French: <!channel> <!everyone> <@UBOB> <#CGENERAL|general> hello"
STEERED = "⟦0⟧ ⟦1⟧ ⟦2⟧ ⟦3⟧ bonjour <!here> <https://evil.example/login|Log in> <@UMALLORY> <#CSECRET> & <!subteam^S1>"
# What Slack must receive: all of it as text, except the mentions the user made themselves.
SHOWN = (
    "&lt;!channel&gt; &lt;!everyone&gt; <@UBOB> <#CGENERAL> bonjour &lt;!here&gt; "
    "&lt;https://evil.example/login|Log in&gt; &lt;@UMALLORY&gt; &lt;#CSECRET&gt; &amp; &lt;!subteam^S1&gt;"
)


class PacedEngine(ScriptedEngine):
    """The stand-in, pausing before each piece of a streamed answer, so that the answer is posted
    and then edited (or appended to) as it grows, as a real engine's is."""

    def app(self) -> web.Application:
        app = super().app()

        async def paced(request: web.Request, response: web.StreamResponse) -> None:
            if isinstance(response, web.Response):
                return  # a whole answer (health, models, a constrained choice)
            write = response.write

            async def slowly(data: bytes) -> None:
                await asyncio.sleep(PAUSE)
                with contextlib.suppress(ConnectionResetError):  # Parley stopped reading: fine
                    await write(data)

            response.write = slowly  # type: ignore[method-assign]

        app.on_response_prepare.append(paced)
        return app


def markup_in(blocks: Any) -> list[str]:
    """The texts of Block Kit that Slack reads as markup (`mrkdwn` text objects), and a marker for
    each rich text element that notifies or links. Rich text `text` elements are literal."""
    found: list[str] = []
    if isinstance(blocks, dict):
        if blocks.get("type") == "mrkdwn":
            found.append(str(blocks.get("text", "")))
        elif blocks.get("type") in ("broadcast", "user", "usergroup", "link"):
            found.append(f"<!{blocks['type']} element>")
        blocks = list(blocks.values())
    if isinstance(blocks, list):
        for item in blocks:
            found += markup_in(item)
    return found


def sent_to_slack(fake: FakeSlack) -> list[str]:
    """Every text the fake Slack received, in a Web API call or at a response_url, that Slack
    reads as markup."""
    texts = []
    for call in fake.calls:
        texts += [call.args[key] for key in ("text", "markdown_text") if call.args.get(key)]
        blocks = call.args.get("blocks")
        texts += markup_in(json.loads(blocks) if isinstance(blocks, str) else blocks)
    texts += [str(r.get("text", "")) for r in fake.responses]
    return texts


def assert_no_pings(fake: FakeSlack) -> None:
    sent = sent_to_slack(fake)
    assert sent
    for text in sent:
        assert "<!" not in text, text  # <!channel>, <!here>, <!everyone>, <!subteam^...>
        assert "<https://evil" not in text, text
        assert "<@UMALLORY>" not in text, text


@pytest.mark.parametrize("native", [False, True], ids=["edits", "native-stream"])
async def test_slack_answers_never_ping_nor_hide_links(stack_for, fake_slack, native):
    engine = PacedEngine(STEERED)
    fake_slack.streaming = native
    async with engine.serving() as url, stack_for(url, native_streaming=native) as stack:
        event = mention("C0001", ASKED)
        await stack.deliver(event)
        context = await stack.answered("C0001", event["ts"])
        [posted] = fake_slack.in_thread("C0001", event["ts"])
        assert posted.text == SHOWN
        if native:
            assert posted.streamed and len(fake_slack.calls_to("chat.appendStream")) > 1
        else:
            assert fake_slack.calls_to("chat.update")  # the growing answer was edited
    assert context.messages[-1].content.startswith("<!channel> <!everyone> <@UBOB>")  # saved as written
    assert_no_pings(fake_slack)


async def test_slack_continuations_and_lost_spans_are_escaped(stack_for, fake_slack):
    # The model drops the placeholders: the translation lists the lost spans after it, and a
    # long answer continues in further messages (message_limit is 100 characters here).
    words = [f"mot{n}" for n in range(60)]
    engine = PacedEngine(" ".join(words[:30]) + " <!channel> " + " ".join(words[30:]) + " <https://evil.example|ok>")
    async with engine.serving() as url, stack_for(url, message_limit=100) as stack:
        event = mention("C0001", ASKED)
        await stack.deliver(event)
        await stack.answered("C0001", event["ts"])
        posted = [m.text for m in fake_slack.in_thread("C0001", event["ts"])]
    assert len(posted) >= 3
    shown = "".join(posted)  # (pages are cut at spaces or line breaks)
    assert "mot29 &lt;!channel&gt; mot30" in shown and "mot59 &lt;https://evil.example|ok&gt;" in shown
    # The user's own mentions of a person and a channel stay live (the channel's label is Slack's to show).
    assert shown.endswith("unchanged: &lt;!channel&gt; &lt;!everyone&gt; <@UBOB> <#CGENERAL>)_")
    assert_no_pings(fake_slack)


async def test_a_person_relayed_to_a_slack_customer_and_the_desk_never_ping(make_settings, fake_slack):
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann")
    fake_slack.add_channel(SUPPORT, "support", private=True)
    sections: dict[str, Any] = {
        "slack": slack_settings(fake_slack),
        "handoff": HandoffSettings(_env_file=None, slack_channel=SUPPORT),
    }
    async with serving_slack(make_settings(llm_url=DEAD_LLM, **sections), fake_slack) as s:
        asked = mention("C0001", "I want to talk to a person <!channel> <@UBOB>")
        await s.deliver(asked)
        head = await fake_slack.wait_for(lambda: next(iter(fake_slack.in_thread(SUPPORT, None)), None))
        await fake_slack.wait_for(lambda: fake_slack.in_thread(SUPPORT, head.ts))  # the transcript
        await s.deliver(message("C0001", "also <!here> and <https://evil.example|click>", thread_ts=asked["ts"]))
        await fake_slack.wait_for(lambda: len(fake_slack.in_thread(SUPPORT, head.ts)) == 2)
        # The person's reply may name anyone in their workspace; in the customer's channel it pings nobody.
        await s.deliver(
            message(
                SUPPORT,
                "<!channel> <@UBOB> <@UMALLORY> refund approved, <https://evil.example|log in>",
                user="UAGENT",
                thread_ts=head.ts,
            )
        )
        relayed = await fake_slack.wait_for(
            lambda: [m for m in fake_slack.in_thread("C0001", asked["ts"]) if "refund approved" in m.text]
        )
    assert relayed[0].text == messages.agent_reply(
        "Ann", "&lt;!channel&gt; &lt;@UBOB&gt; &lt;@UMALLORY&gt; refund approved, &lt;https://evil.example|log in&gt;"
    )
    assert_no_pings(fake_slack)


# -- Discord ---------------------------------------------------------------------------------------

MESSAGES = r"/channels/\d+/messages"
EDITS = r"/channels/\d+/messages/\d+"


async def test_discord_posts_and_edits_ping_nobody(fake: FakeDiscord, make_settings, channel: Json, alice: Json):
    engine = PacedEngine(
        "@everyone @here <@&1234> <@5678> bonjour " + "encore-et-toujours-encore " * 90
    )  # > 2,000 characters
    async with engine.serving() as url:
        settings = make_settings(llm_url=url, discord=discord_settings(fake))
        async with serving(fake, settings) as stack:
            question = await fake.say(channel, alice, "translate to French: @everyone <@&1234> hello", mention_bot=True)
            await stack.answered_in(channel, question["id"])
    posts, edits = fake.calls_to("POST", MESSAGES), fake.calls_to("PATCH", EDITS)
    assert len(posts) >= 2 and edits  # a continuation, and edits as the answer grew
    for call in posts + edits:
        mentions = call.body["allowed_mentions"]
        assert mentions["parse"] == [] and not mentions.get("users") and not mentions.get("roles"), call.body
