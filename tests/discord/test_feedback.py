"""👍/👎 reactions on Parley's Discord answers: the real discord.py client receives
MESSAGE_REACTION_ADD from the fake gateway, and the vote is stored with the answer it is on.
The engine is unreachable: the answer voted on is the one Parley gives without it (no
person can be reached, as no support desk is configured)."""

from __future__ import annotations

import logging

from adapters.discord.app import INTENTS
from bot import messages
from tests.discord.conftest import DEAD_LLM, discord_settings, poll, serving
from tests.discord.fake import FakeDiscord, Json


def test_reactions_are_asked_for_and_are_not_privileged() -> None:
    assert INTENTS.guild_reactions and INTENTS.dm_reactions
    assert not INTENTS.members and not INTENTS.presences


async def test_a_thumbs_up_or_down_on_an_answer_is_stored(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, caplog
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        question = await fake.say(channel, alice, "Can I speak to a real person?", mention_bot=True)
        [answer] = await poll(lambda: fake.replies_to(question))
        assert answer["content"] == messages.NO_AGENT
        bob = fake.make_user("bob")
        await fake.react(answer, alice, "👍🏽")
        await fake.react(answer, bob, "👎")
        await fake.react(answer, alice, "🎉")  # not a vote
        await fake.react(question, bob, "👍")  # alice's message, not Parley's
        stranger = await fake.say(channel, alice, "unrelated")
        stranger["author"] = fake.bot  # a message of Parley's it never recorded (say, before a restart)
        await fake.react(stranger, alice, "👎")

        async def counted():
            days = await stack.runtime.stats.days(days=1, tenant=channel["guild_id"])
            return days and (days[0].up, days[0].down) == (1, 1)

        await poll(counted)
        await poll(lambda: any("which is no answer Parley remembers" in r.getMessage() for r in caplog.records))
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert log.count("feedback up on") == 1 and log.count("feedback down on") == 1
