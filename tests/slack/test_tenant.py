"""Whose turn it is (`normalize.tenant_of`) in each payload Slack sends: the workspace, or the
Enterprise Grid org when Parley is installed org-wide there. The end-to-end proof (the org's
token answering, uninstalls) is in `test_install.py`; these pin the payload shapes, which differ
per kind (events name the install in `authorizations`, slash commands send the flag as a string,
interactivity payloads carry an `enterprise` object)."""

from __future__ import annotations

from adapters.slack.normalize import Identity, from_command, from_event, tenant_of
from tests.slack.fake import event_callback, message

ME = Identity(user_id="UBOTEGRID", bot_id="BBOTEGRID", team_id="")


def test_an_event_for_an_org_wide_install_is_the_orgs():
    event = message("DT1", "hi", channel_type="im", team="T1")
    body = event_callback(event, team="T1", enterprise="EGRID", org_wide=True)
    incoming = from_event(body, ME)
    assert incoming is not None
    assert incoming.turn.tenant == "EGRID"
    assert incoming.turn.address["user_team"] == "T1"  # the person's own workspace, for streaming


def test_an_event_for_a_grid_workspaces_own_install_stays_the_workspaces():
    body = event_callback(message("DTW", "hi", channel_type="im", team="TW"), team="TW", enterprise="EGRID")
    assert tenant_of(body, "TW") == "TW"


def test_a_plain_workspace_event_is_unchanged():
    body = event_callback(message("DTA", "hi", channel_type="im", team="TA"), team="TA")
    assert tenant_of(body, "TA") == "TA"


def test_a_slash_command_says_org_wide_as_a_string():
    command = {"team_id": "T2", "enterprise_id": "EGRID", "is_enterprise_install": "true", "channel_id": "C1"}
    assert from_command(command).tenant == "EGRID"
    assert from_command({**command, "is_enterprise_install": "false"}).tenant == "T2"


def test_an_interactivity_payload_names_the_org_in_its_enterprise_object():
    press = {"type": "block_actions", "team": {"id": "T1"}, "enterprise": {"id": "EGRID", "name": "Grid"}}
    assert tenant_of({**press, "is_enterprise_install": True}, "T1") == "EGRID"
    assert tenant_of({**press, "is_enterprise_install": False}, "T1") == "T1"
