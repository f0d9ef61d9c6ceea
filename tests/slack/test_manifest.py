"""deploy/slack/manifest.json: parses, and asks for exactly what the adapter uses."""

from __future__ import annotations

import json
from pathlib import Path

from adapters.slack.shortcuts import ASK, SUMMARISE
from bot.config import SLACK_BOT_SCOPES

MANIFEST = Path(__file__).parents[2] / "deploy" / "slack" / "manifest.json"

# Each event Parley listens to, and the scope Slack requires for it.
EVENT_SCOPES = {
    "app_mention": "app_mentions:read",  # @Parley in a channel
    "message.channels": "channels:history",  # thread follow-ups in public channels
    "message.groups": "groups:history",  # ... and in private channels
    "message.im": "im:history",  # DMs
    "reaction_added": "reactions:read",  # 👍/👎 on answers
    "assistant_thread_started": "assistant:write",  # the assistant pane opened: greet, suggest prompts
    "assistant_thread_context_changed": "assistant:write",  # ... and the channel its user looks at
}
# Events that need no scope: the Home tab opened (views.publish needs none either).
UNSCOPED_EVENTS = {"app_home_opened"}
# chat.postMessage/update/*Stream/postEphemeral; /parley; users.info (the names and workspaces of people
# answering handed-off customers; who is an admin, for /parley config); conversations.info (that the support
# channel is private: channels:read for a public one, groups:read for a private one); usergroups.users.list
# (PARLEY_HANDOFF_AGENT_GROUPS)
CALL_SCOPES = {"chat:write", "commands", "users:read", "channels:read", "groups:read", "usergroups:read"}


def test_manifest_asks_for_exactly_what_parley_uses():
    manifest = json.loads(MANIFEST.read_text())
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert sorted(events) == sorted([*EVENT_SCOPES, *UNSCOPED_EVENTS])
    assert sorted(scopes) == sorted(set(EVENT_SCOPES.values()) | CALL_SCOPES)
    assert "user" not in manifest["oauth_config"]["scopes"]  # no user token
    assert manifest["settings"]["socket_mode_enabled"] is True
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/parley" and "url" not in command  # Socket Mode needs no URL
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True  # so people can DM it
    assert manifest["features"]["bot_user"]["display_name"]
    assert manifest["_metadata"]["major_version"] == 1
    # The Resolve button on handoff tickets; in Socket Mode its presses come over the socket (no URL).
    assert manifest["settings"]["interactivity"] == {"is_enabled": True}


def test_the_manifest_turns_on_the_assistant_pane_and_the_home_tab():
    """The pane (assistant_view: its events and assistant.threads.* need assistant:write) and the
    Home tab (`views.publish` on app_home_opened); the feedback buttons need interactivity only."""
    for path in (MANIFEST, MANIFEST.parent / "manifest-distributed.json"):
        manifest = json.loads(path.read_text())
        features = manifest["features"]
        assert features["app_home"]["home_tab_enabled"] is True
        assert 0 < len(features["assistant_view"]["assistant_description"]) <= 200
        # Parley sets the prompts per tenant in each new thread; none fixed in the app.
        assert features["assistant_view"]["suggested_prompts"] == []
        assert "assistant:write" in manifest["oauth_config"]["scopes"]["bot"]
        assert manifest["settings"]["interactivity"]["is_enabled"] is True


def test_an_install_asks_for_the_manifests_scopes():
    manifest = json.loads(MANIFEST.read_text())
    assert sorted(SLACK_BOT_SCOPES) == sorted(manifest["oauth_config"]["scopes"]["bot"])


ORG_EVENTS = ["team_access_granted", "team_access_revoked"]


def test_the_distributed_manifest_is_the_same_app_over_http_with_installs():
    """deploy/slack/manifest-distributed.json: "Add to Slack" for many workspaces (SLACK_CLIENT_ID)."""
    one = json.loads(MANIFEST.read_text())
    many = json.loads((MANIFEST.parent / "manifest-distributed.json").read_text())
    assert many["oauth_config"]["scopes"] == one["oauth_config"]["scopes"]
    events = many["settings"]["event_subscriptions"]
    # An uninstall or a revoked token ends the workspace's installation (`Installations.uninstalled`);
    # an org admin takes workspaces out of an org-wide install and back (`Installations.access_changed`).
    assert sorted(events["bot_events"]) == sorted(
        [*EVENT_SCOPES, *UNSCOPED_EVENTS, "app_uninstalled", "tokens_revoked", *ORG_EVENTS]
    )
    host = "https://parley.example.com"
    assert events["request_url"] == many["settings"]["interactivity"]["request_url"] == f"{host}/slack/events"
    assert many["features"]["slash_commands"][0]["url"] == f"{host}/slack/events"
    assert many["oauth_config"]["redirect_urls"] == [f"{host}/slack/oauth_redirect"]
    assert many["settings"]["socket_mode_enabled"] is False  # the Events API: one Request URL, any replica
    assert many["settings"]["token_rotation_enabled"] is True  # refreshed by `Installations.bot`


def test_the_manifests_offer_the_message_shortcuts_parley_listens_to():
    """ "Ask Parley about this" and "Summarise this thread" in a message's ⋯ menu; they need the
    `commands` scope and interactivity, and conversations.replies the *:history scopes asked above."""
    for path in (MANIFEST, MANIFEST.parent / "manifest-distributed.json"):
        manifest = json.loads(path.read_text())
        shortcuts = manifest["features"]["shortcuts"]
        assert sorted(s["callback_id"] for s in shortcuts) == sorted((ASK, SUMMARISE))
        assert all(s["type"] == "message" and s["name"] and s["description"] for s in shortcuts)
        assert {"commands", "channels:history", "groups:history", "im:history"} <= set(
            manifest["oauth_config"]["scopes"]["bot"]
        )
