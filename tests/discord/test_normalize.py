"""Discord payloads (as the fake sends them, which discord.py parses as it does Discord's) to turns."""

from __future__ import annotations

import discord
import pytest

from adapters.discord.app import INTENTS
from adapters.discord.normalize import (
    category_of,
    chain_root_guess,
    channel_ids,
    conversation_link,
    guild_id_of,
    interaction_turn,
    is_from_bot,
    mentions_bot,
    message_turn,
    place_of,
    profile_keys,
    strip_mention,
    thread_name,
)
from bot.config import DiscordSettings
from bot.turns import ConversationKey, Turn
from tests.discord.fake import FakeDiscord, Json


class World:
    """A fake Discord's payloads, parsed by a discord.py state as the gateway would be."""

    def __init__(self, *, categorised: bool = False) -> None:
        self.fake = FakeDiscord()
        self.client = discord.Client(intents=INTENTS)
        self.state = self.client._connection
        self.state.user = discord.ClientUser(state=self.state, data=self.fake.bot)  # type: ignore[arg-type]
        self.bot_id = int(self.fake.bot["id"])
        guild_data = self.fake.add_guild("acme")
        # With `categorised`, the first channel is in a category, the second in none.
        self.category = self.fake.add_category(guild_data, guild_data["channels"][0]) if categorised else None
        self.guild = self.state._add_guild_from_data(guild_data)  # type: ignore[arg-type]
        self.channel = guild_data["channels"][0]
        self.alice = self.fake.make_user("alice")

    def parse(self, payload: Json) -> discord.Message:
        channel, _ = self.state._get_guild_channel(payload)  # type: ignore[arg-type]
        return discord.Message(state=self.state, channel=channel, data=payload)  # type: ignore[arg-type]

    async def say(
        self, content: str, *, channel: Json | None = None, author: Json | None = None, **kw: object
    ) -> discord.Message:
        return self.parse(await self.fake.say(channel or self.channel, author or self.alice, content, **kw))  # type: ignore[arg-type]

    def thread(self, starter: Json) -> Json:
        data = {
            "id": starter["id"],
            "type": 11,
            "guild_id": self.channel["guild_id"],
            "parent_id": self.channel["id"],
            "name": "t",
            "owner_id": self.alice["id"],
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": "2024-01-01T00:00:00+00:00",
                "locked": False,
            },
        }
        self.guild._add_thread(discord.Thread(guild=self.guild, state=self.state, data=data))  # type: ignore[arg-type]
        return data


@pytest.fixture
def world() -> World:
    return World()


async def test_a_mention_in_a_channel_starts_a_conversation_named_by_its_message(world: World) -> None:
    message = await world.say("what is vLLM?", mention_bot=True)
    assert mentions_bot(message, bot_id=world.bot_id)
    turn = message_turn(message, bot_id=world.bot_id, conversation=None)
    assert (turn.platform, turn.tenant, turn.channel, turn.thread) == (
        "discord",
        world.channel["guild_id"],
        world.channel["id"],
        str(message.id),
    )
    assert turn.text == "what is vLLM?" and turn.event_id == str(message.id)
    assert turn.reply_to == str(message.id) and turn.user == world.alice["id"]
    assert turn.address == {"post_channel": world.channel["id"]} and turn.handle == {} and turn.command is None


async def test_a_new_conversation_asks_for_a_thread_when_configured(world: World) -> None:
    message = await world.say("hi", mention_bot=True)
    assert message_turn(message, bot_id=world.bot_id, conversation=None, open_thread=True).handle["open_thread"] == "1"
    follow_up = message_turn(message, bot_id=world.bot_id, conversation="123", open_thread=True)
    assert "open_thread" not in follow_up.handle and follow_up.thread == "123"


async def test_the_bots_role_mention_counts_and_is_stripped(world: World) -> None:
    message = await world.say("hello", mention_role=True)
    roles = frozenset({world.guild.self_role.id})  # type: ignore[union-attr]
    assert not mentions_bot(message, bot_id=world.bot_id)
    assert mentions_bot(message, bot_id=world.bot_id, bot_role_ids=roles)
    assert message_turn(message, bot_id=world.bot_id, bot_role_ids=roles, conversation=None).text == "hello"


def test_strip_mention_only_removes_parleys() -> None:
    assert strip_mention("<@!42> hi <@7>", bot_id=42) == "hi <@7>"
    assert strip_mention("hi <@&9>", bot_id=42, bot_role_ids=frozenset({9})) == "hi"


async def test_a_message_in_a_thread_belongs_to_the_thread(world: World) -> None:
    starter = await world.fake.say(world.channel, world.alice, "start")
    thread = world.thread(starter)
    message = await world.say("inside", channel=thread)
    assert place_of(message.channel, guild_id_of(message)).thread_id == thread["id"]
    turn = message_turn(message, bot_id=world.bot_id, conversation=None)
    assert (turn.channel, turn.thread, turn.address["post_channel"]) == (
        world.channel["id"],
        thread["id"],
        thread["id"],
    )
    assert channel_ids(message.channel) == (int(thread["id"]), int(world.channel["id"]))


async def test_settings_come_from_a_thread_its_channel_or_the_channels_category() -> None:
    world = World(categorised=True)
    assert world.category is not None
    category, plain = world.category["id"], world.guild.text_channels[1]
    starter = await world.fake.say(world.channel, world.alice, "start")
    thread = world.thread(starter)
    in_thread = await world.say("inside", channel=thread)
    in_channel = await world.say("outside")
    assert profile_keys(in_thread.channel) == (thread["id"], world.channel["id"], category)
    assert profile_keys(in_channel.channel) == (world.channel["id"], category)
    assert category_of(in_thread.channel) == category_of(in_channel.channel) == category
    assert profile_keys(plain) == (str(plain.id),) and category_of(plain) is None
    # A thread whose channel discord.py does not have cached: its category is unknown, not an error.
    orphan = discord.Thread(guild=world.guild, state=world.state, data=dict(thread, id="77", parent_id="88"))  # type: ignore[arg-type]
    assert profile_keys(orphan) == ("77", "88")
    # The key found is the turn's `profile`; the conversation stays the thread's, in its channel.
    turn = message_turn(in_thread, bot_id=world.bot_id, conversation=None, profile=category)
    assert (turn.profile, turn.channel, turn.thread) == (category, world.channel["id"], thread["id"])
    dm = world.fake.dm_channel(world.alice)
    assert profile_keys((await world.say("private", channel=dm)).channel) == (dm["id"],)


async def test_a_dm_is_its_own_tenant_and_conversation(world: World) -> None:
    dm = world.fake.dm_channel(world.alice)
    message = await world.say("private", channel=dm)
    turn = message_turn(message, bot_id=world.bot_id, conversation=None)
    assert (turn.tenant, turn.channel, turn.thread, turn.reply_to) == ("dm", dm["id"], dm["id"], None)


async def test_bots_webhooks_and_system_messages_are_not_users(world: World) -> None:
    assert not is_from_bot(await world.say("a person"))
    assert is_from_bot(await world.say("a bot", author=world.fake.make_user("robot", bot=True)))
    assert is_from_bot(await world.say("Parley itself", author=world.fake.bot))
    joined = await world.fake.say(world.channel, world.alice, "")
    assert is_from_bot(world.parse(dict(joined, type=7)))  # "alice joined the server"


async def test_the_chain_root_is_guessed_from_parleys_reply_when_not_remembered(world: World) -> None:
    question = await world.fake.say(world.channel, world.alice, "q", mention_bot=True)
    answer = world.fake._message(world.channel, world.fake.bot, "a", reply_to=question)
    follow_up = await world.say("more", reply_to=answer)
    assert chain_root_guess(follow_up, bot_id=world.bot_id) == question["id"]
    other = await world.fake.say(world.channel, world.fake.make_user("bob"), "bob's")
    assert chain_root_guess(await world.say("re bob", reply_to=other), bot_id=world.bot_id) is None


async def test_allowed_guilds_and_channels(world: World) -> None:
    message = await world.say("x", mention_bot=True)
    place = place_of(message.channel, guild_id_of(message))
    gid, ids = int(world.channel["guild_id"]), channel_ids(message.channel)
    settings = DiscordSettings(_env_file=None)
    assert place.allowed(settings, guild_id=gid, channel_ids=ids)
    assert not place.allowed(DiscordSettings(_env_file=None, allowed_guilds=[1]), guild_id=gid, channel_ids=ids)
    assert not place.allowed(DiscordSettings(_env_file=None, allowed_channels=[1]), guild_id=gid, channel_ids=ids)
    assert place.allowed(DiscordSettings(_env_file=None, allowed_channels=[ids[0]]), guild_id=gid, channel_ids=ids)


async def test_dms_are_off_when_an_allow_list_is_set_unless_allowed_explicitly(world: World) -> None:
    message = await world.say("private", channel=world.fake.dm_channel(world.alice))
    dm = place_of(message.channel, guild_id_of(message))
    assert dm.dm

    def allows_dms(**values: object) -> bool:
        settings = DiscordSettings(_env_file=None, **values)
        assert settings.dms_allowed == dm.allowed(settings, guild_id=None, channel_ids=channel_ids(message.channel))
        return settings.dms_allowed

    assert allows_dms(), "no allow-list: DMs are on"
    assert not allows_dms(allowed_guilds=[1]), "an allow-list scopes Parley: DMs are off"
    assert not allows_dms(allowed_channels=[1])
    assert allows_dms(allowed_guilds=[1], allow_dms=True), "an explicit value wins"
    assert not allows_dms(allow_dms=False)


async def test_a_slash_command_carries_its_reply_token_never_the_bot_token(world: World) -> None:
    payload = await world.fake.slash(world.channel, world.alice, "translate", text="hello", to="German")
    interaction = discord.Interaction(data=payload, state=world.state)  # type: ignore[arg-type]
    turn = interaction_turn(
        interaction, command="translate", text="hello", target_language=" German ", original_message_id=77
    )
    assert (turn.tenant, turn.channel, turn.thread) == (world.channel["guild_id"], world.channel["id"], "")
    assert turn.command == "translate" and turn.text == "hello" and turn.event_id == payload["id"]
    # `to:` is the turn's typed target language (which the translate handler reads), not a handle entry.
    assert turn.target_language == "German"
    assert turn.handle == {
        "application_id": str(world.fake.app_id),
        "interaction_token": payload["token"],
        "original": "77",
    }
    assert turn.address == {"post_channel": world.channel["id"]}
    assert Turn.from_dict(turn.to_dict()).target_language == "German", "it survives the Redis inbox"
    assert world.fake.token not in str(turn.to_dict())
    ask = interaction_turn(interaction, command="ask", text="hello")
    assert ask.target_language == ""


async def test_a_slash_command_in_a_dm(world: World) -> None:
    dm = world.fake.dm_channel(world.alice)
    payload = await world.fake.slash(dm, world.alice, "reset")
    turn = interaction_turn(discord.Interaction(data=payload, state=world.state), command="reset")  # type: ignore[arg-type]
    assert (turn.tenant, turn.channel, turn.thread) == ("dm", dm["id"], dm["id"])
    assert turn.handle["original"] == "@original"


def test_thread_names_come_from_the_first_line() -> None:
    assert thread_name("How do I deploy?\nDetails follow") == "How do I deploy?"
    assert len(thread_name("x" * 300)) == 100 and thread_name("x" * 300).endswith("…")
    assert thread_name("   ") == "Parley"


def test_a_ticket_links_to_the_conversation_in_its_guild_or_dm() -> None:
    assert conversation_link(ConversationKey("discord", "42", "7", "99")) == "https://discord.com/channels/42/7/99"
    assert conversation_link(ConversationKey("discord", "42", "7")) == "https://discord.com/channels/42/7"
    assert conversation_link(ConversationKey("discord", "dm", "5", "5")) == "https://discord.com/channels/@me/5"
