"""deploy/discord/SETUP.md says what the code asks Discord for."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from adapters.discord.app import INTENTS, invite_url, permissions
from bot.config import DiscordSettings

SETUP = Path(__file__).parents[2] / "deploy" / "discord" / "SETUP.md"


@pytest.mark.parametrize("open_threads", [False, True])
def test_the_invite_links_carry_exactly_the_scopes_and_permissions_used(open_threads: bool) -> None:
    ours = parse_qs(urlsplit(invite_url(1, open_threads=open_threads)).query)
    assert ours["scope"] == ["bot applications.commands"]
    links = [
        parse_qs(urlsplit(u).query) for u in re.findall(r"https://discord.com/oauth2/authorize\S+", SETUP.read_text())
    ]
    # A user installation (DISCORD_USER_INSTALL) adds the commands to a user's account: no bot, no permissions.
    users = [link for link in links if link.get("integration_type") == ["1"]]
    assert users and all(link["scope"] == ["applications.commands"] and "permissions" not in link for link in users)
    links = [link for link in links if link not in users]
    documented = {link["permissions"][0] for link in links}
    assert ours["permissions"][0] in documented
    assert all(link["scope"] == ours["scope"] for link in links)
    granted = permissions(open_threads=open_threads)
    assert granted.create_public_threads is open_threads and not granted.administrator
    assert not granted.mention_everyone and str(granted.value) in SETUP.read_text()


def test_only_the_message_content_intent_is_privileged() -> None:
    assert INTENTS.message_content and not INTENTS.members and not INTENTS.presences


def test_every_discord_setting_is_documented() -> None:
    text = SETUP.read_text()
    for name in DiscordSettings.model_fields:
        assert f"`DISCORD_{name.upper()}`" in text, name


def test_shard_ids_need_a_count_and_fit_it() -> None:
    assert DiscordSettings(_env_file=None, shard_count=4, shard_ids=[2, 3]).shard_ids == [2, 3]
    for bad in ({"shard_ids": [0]}, {"shard_count": 2, "shard_ids": [2]}, {"shard_count": 2, "shard_ids": []}):
        with pytest.raises(ValueError):
            DiscordSettings(_env_file=None, **bad)
