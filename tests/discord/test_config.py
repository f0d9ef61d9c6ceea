"""`/config show|set|clear`: a server admin changes the current channel's profile, or its
category's, while Parley runs.

The real discord.py client against the fake Discord, the real profiles in Redis and the real
dialogue manager; the engine is the scripted stand-in, which records what it was asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from adapters.discord.admin import FIELD_CHOICES, fitted, shown
from adapters.discord.app import DiscordAdapter
from adapters.discord.chains import MemoryChains
from bot import messages
from bot.ops.health import Degraded
from bot.store.inbox import MemoryInbox
from bot.tenants import FIELD_NAMES
from tests.discord.conftest import DEAD_LLM, discord_settings, on_own_redis, poll, serving
from tests.discord.fake import ALL_PERMISSIONS, FakeDiscord, Json
from tests.standin import ScriptedEngine

MANAGE_GUILD, ADMINISTRATOR = 1 << 5, 1 << 3
MEMBER = int(ALL_PERMISSIONS) & ~MANAGE_GUILD & ~ADMINISTRATOR  # everything but running a server


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine("Roses are red.")
    async with engine.serving() as url:
        yield engine, url


async def response(fake: FakeDiscord, interaction: Json) -> Json:
    """What the caller was shown, once final: an answer at once (type 4), or a deferred one edited."""
    body = await poll(lambda: interaction.get("response"))
    if body["type"] == 4:
        return {"content": body["data"]["content"], "flags": body["data"].get("flags", 0)}
    shown = await poll(lambda: (m := fake.messages.get(int(interaction["original"]))) and not m["flags"] & 128 and m)
    return {"content": shown["content"], "flags": shown["flags"]}


def registered(fake: FakeDiscord) -> dict[str, Json]:
    return {c["name"]: c for c in fake.commands.get("global", [])}


def test_every_field_is_one_of_the_25_choices_discord_allows() -> None:
    assert [c.value for c in FIELD_CHOICES] == list(FIELD_NAMES)
    assert len(FIELD_CHOICES) <= 25, "past 25 fields, /config needs autocomplete instead of choices"


def test_what_config_shows_fits_one_message_and_carries_no_markup() -> None:
    lines = "\n".join(f"`quota.{i}`: {'x' * 90}" for i in range(40))
    assert len(fitted(lines)) <= 2000 and fitted(lines).endswith("x\n…")
    assert len(fitted("y" * 5000)) == 2000
    assert shown("@everyone *hi*") == '"@\u200beveryone \\*hi\\*"' and shown(None) == "not set"
    assert len(shown("z" * 1000)) == 150 and shown(("chat", "qa")) == '["chat", "qa"]'


async def test_config_is_registered_for_server_admins_in_servers_only(fake: FakeDiscord, make_settings) -> None:
    # Even where users may install Parley's commands (user_install), /config stays a server's.
    settings = make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake, user_install=True))
    async with serving(fake, settings):
        config = (await poll(lambda: registered(fake).get("config") and registered(fake)))["config"]
    assert config["default_member_permissions"] == str(MANAGE_GUILD) == "32"
    assert config["dm_permission"] is False and config["contexts"] == [0]  # guild only
    assert config["integration_types"] == [0] and registered(fake)["ask"]["integration_types"] == [0, 1]
    subcommands = {o["name"]: o for o in config["options"]}
    assert sorted(subcommands) == ["clear", "set", "show"] and all(o["type"] == 1 for o in subcommands.values())
    field, value, scope = subcommands["set"]["options"]
    assert [c["value"] for c in field["choices"]] == list(FIELD_NAMES) and field["required"] and value["required"]
    assert not subcommands["clear"]["options"][0].get("required")
    # Each may be about the channel's category instead (a choice; the channel by default).
    for options in (subcommands["show"]["options"], subcommands["clear"]["options"][1:], [scope]):
        [option] = options
        assert option["name"] == "scope" and not option.get("required") and len(option["description"]) <= 100
        assert [c["value"] for c in option["choices"]] == ["channel", "category"]


async def test_without_run_time_profiles_there_is_no_config_command(fake: FakeDiscord, channel: Json) -> None:
    adapter = DiscordAdapter(settings=discord_settings(fake), chains=MemoryChains(), degraded=Degraded())
    inbox = MemoryInbox(maxsize=10)
    listening = asyncio.create_task(adapter.run(inbox))
    try:
        names = await poll(lambda: set(registered(fake)), timeout=60)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await inbox.close()
        await adapter.aclose()
    assert "ask" in names and "config" not in names


async def test_an_admin_changes_a_channel_at_run_time_in_force_at_once_and_audited(
    fake: FakeDiscord, make_settings, standin
) -> None:
    engine, url = standin
    guild = fake.add_guild("acme")
    channel = guild["channels"][0]
    forum = fake.add_forum(guild)
    admin, alice = fake.make_user("admin"), fake.make_user("alice")
    tenant = guild["id"]
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))) as stack:
        profiles = stack.runtime.profiles
        before = await response(fake, await fake.slash(channel, admin, "config", subcommand="show"))
        changed = await response(
            fake, await fake.slash(channel, admin, "config", subcommand="set", field="language", value="de")
        )
        language = profiles.profile(tenant, channel["id"]).language
        after = await response(fake, await fake.slash(channel, admin, "config", subcommand="show"))
        again = await response(
            fake, await fake.slash(channel, admin, "config", subcommand="set", field="language", value="de")
        )

        # In a thread (a forum post), the profile changed is its parent's: every conversation there.
        post = await fake.post(forum, alice, "Hello", "Are you there?")
        await stack.answered_in(post, post["id"])
        prompt = "You answer in rhymes, *always*."
        rhymes = await response(
            fake, await fake.slash(post, admin, "config", subcommand="set", field="system_prompt", value=prompt)
        )
        question = await fake.post(forum, alice, "Opening hours", "When are you open?")
        await stack.answered_in(question, question["id"])
        system = [c for c in engine.requests if c.get("stream")][-1]["messages"][0]["content"]

        cleared = await response(fake, await fake.slash(channel, admin, "config", subcommand="clear", field="language"))
        nothing = await response(fake, await fake.slash(channel, admin, "config", subcommand="clear"))
        history = await profiles.history()
    assert all(r["flags"] & 64 for r in (before, changed, after, again, rhymes, cleared, nothing)), "ephemeral"
    assert language == "de" and profiles.profile(tenant, channel["id"]).language == "en"
    assert changed["content"] == messages.discord_config_set("language", '"de"', seconds=2, scope="channel")
    assert "within 2 s" in changed["content"]
    assert again["content"] == messages.discord_config_unchanged("language", '"de"')
    assert '`language`: "en" (file)' in before["content"] and '`language`: "de" (run-time)' in after["content"]
    assert all(f"`{name}`: " in after["content"] for name in FIELD_NAMES) and len(after["content"]) <= 2000
    assert "`model`: not set (built-in)" in after["content"]
    assert prompt in system and profiles.profile(tenant, forum["id"]).system_prompt == prompt
    assert r"rhymes, \*always\*" in rhymes["content"], "the value shown escaped for Discord's markdown"
    assert "Cleared `language`" in cleared["content"]
    assert nothing["content"] == messages.discord_config_nothing_to_clear("channel")
    by = f"discord:{admin['id']}"
    assert [(c.channel, c.field, c.old, c.new, c.by) for c in history] == [
        (channel["id"], "language", "de", None, by),
        (forum["id"], "system_prompt", None, prompt, by),
        (channel["id"], "language", None, "de", by),
    ]
    assert all(c.tenant == tenant for c in history)


async def test_a_member_without_manage_server_is_refused_and_nothing_changes(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, caplog: pytest.LogCaptureFixture
) -> None:
    """Discord hides /config from them by default, but a server's admins can grant it to anyone
    (Server Settings, Integrations): Parley checks the member's permissions itself."""
    caplog.set_level(logging.INFO)
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        tries = [
            await fake.slash(
                channel, alice, "config", subcommand="set", permissions=MEMBER, field="language", value="de"
            ),
            await fake.slash(channel, alice, "config", subcommand="clear", permissions=MEMBER),
            await fake.slash(channel, alice, "config", subcommand="show", permissions=MEMBER),
        ]
        refusals = [await response(fake, t) for t in tries]
        # An administrator has every permission, Manage Server among them.
        owner = await fake.slash(
            channel, alice, "config", subcommand="set", permissions=ADMINISTRATOR, field="language", value="fr"
        )
        allowed = await response(fake, owner)
        history = await stack.runtime.profiles.history()
    assert all(r == {"content": messages.DISCORD_CONFIG_ADMINS_ONLY, "flags": 64} for r in refusals)
    assert [(c.field, c.new) for c in history] == [("language", "fr")], "the refused change never reached Redis"
    assert "is now" in allowed["content"]
    logged = [r for r in caplog.records if "lacks Manage Server: refused" in r.getMessage()]
    assert len(logged) == 3 and all(r.levelno == logging.WARNING for r in logged)


async def test_an_invalid_value_is_refused_with_the_reason_and_nothing_changes(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json
) -> None:
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        wrong = await response(
            fake, await fake.slash(channel, alice, "config", subcommand="set", field="language", value="Deutsch")
        )
        unknown = await response(
            fake,
            await fake.slash(channel, alice, "config", subcommand="set", field="handlers", value='["chat", "weather"]'),
        )
        profile = stack.runtime.profiles.profile(channel["guild_id"], channel["id"])
        history = await stack.runtime.profiles.history()
    assert wrong["flags"] & 64 and wrong["content"].startswith("Not changed: `language`: ")
    assert "should match pattern" in wrong["content"]
    assert (
        unknown["content"].startswith("Not changed: `handlers`: ") and "unknown handler 'weather'" in unknown["content"]
    )
    assert profile.language == "en" and profile.handlers == ("chat", "qa", "translate") and history == []


async def test_redis_down_is_a_clear_line_and_the_profile_in_force_stays(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, redis_to_stop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(fake, on_own_redis(make_settings, redis_to_stop, fake)) as stack:
        await asyncio.to_thread(redis_to_stop.stop)
        down = await response(
            fake, await fake.slash(channel, alice, "config", subcommand="set", field="language", value="de")
        )
        shown = await response(fake, await fake.slash(channel, alice, "config", subcommand="show"))
        language = stack.runtime.profiles.profile(channel["guild_id"], channel["id"]).language
    assert down == {"content": messages.DISCORD_CONFIG_STORE_DOWN, "flags": 64}
    assert '`language`: "en" (file)' in shown["content"], "show reads the profiles in memory"
    assert language == "en"
    assert any("/config set language" in r.getMessage() and "told the admin" in r.getMessage() for r in caplog.records)


async def test_a_channel_outside_the_allow_lists_has_no_settings_to_change(
    fake: FakeDiscord, make_settings, alice: Json
) -> None:
    served, other = fake.add_guild("acme")["channels"]
    settings = make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake, allowed_channels=[int(served["id"])]))
    async with serving(fake, settings) as stack:
        refused = await response(
            fake, await fake.slash(other, alice, "config", subcommand="set", field="language", value="de")
        )
        history = await stack.runtime.profiles.history()
    assert refused == {"content": messages.DISCORD_CONFIG_NOT_HERE, "flags": 64} and history == []


async def test_an_admin_sets_a_categorys_profile_which_its_channels_take_until_they_have_their_own(
    fake: FakeDiscord, make_settings, standin
) -> None:
    engine, url = standin
    guild = fake.add_guild("acme")
    filed, loose = guild["channels"]
    category = fake.add_category(guild, filed)
    admin, alice = fake.make_user("admin"), fake.make_user("alice")
    prompt = "You are Acme's support desk."

    def system(question: str) -> str:
        """The system prompt the question was answered with."""
        chats = [r["messages"] for r in engine.requests if r.get("stream")]
        return next(chat for chat in reversed(chats) if chat[-1]["content"] == question)[0]["content"]

    async def config(channel: Json, subcommand: str, **options: str) -> str:
        shown = await response(fake, await fake.slash(channel, admin, "config", subcommand=subcommand, **options))
        return shown["content"]

    async def asked(text: str) -> str:
        question = await fake.say(filed, alice, text, mention_bot=True)
        await stack.answered_in(filed, question["id"])
        return system(text)

    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))) as stack:
        profiles = stack.runtime.profiles
        before = await config(filed, "show")
        changed = await config(filed, "set", field="system_prompt", value=prompt, scope="category")
        inherited = await asked("Where is my order?")
        shown_here = await config(filed, "show")
        shown_category = await config(filed, "show", scope="category")
        own = await config(filed, "set", field="language", value="de")  # the channel gets its own
        after_own = await asked("Do you ship abroad?")
        cleared = await config(filed, "clear")
        again = await asked("Can I pay later?")
        nowhere = await config(loose, "set", field="language", value="de", scope="category")
        history = await profiles.history()
    assert "from the server's settings (no profile of its own, nor has its category)" in before
    assert changed == messages.discord_config_set("system_prompt", shown(prompt), seconds=2, scope="category")
    assert "this channel's category (for each channel in it without settings of its own)" in changed
    assert prompt in inherited, "the channel takes its category's profile"
    assert "in this channel, from its category's profile" in shown_here
    assert f"`system_prompt`: {shown(prompt)} (run-time)" in shown_here
    assert "in this channel's category, from its own profile" in shown_category
    assert own == messages.discord_config_set("language", '"de"', seconds=2, shadows=True)
    assert "its category's no longer apply here" in own
    assert prompt not in after_own, "profiles do not stack: the channel's own applies whole"
    assert cleared == messages.discord_config_cleared(["language"], seconds=2, category=True)
    assert prompt in again, "cleared: the category's settings apply again"
    assert nowhere == messages.DISCORD_CONFIG_NO_CATEGORY
    assert [(c.channel, c.field, c.new) for c in reversed(history)] == [
        (category["id"], "system_prompt", prompt),
        (filed["id"], "language", "de"),
        (filed["id"], "language", None),
    ]
