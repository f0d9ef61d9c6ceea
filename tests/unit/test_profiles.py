"""Per-channel profiles in the tenants file, and run-time overrides merged over them: what each
field inherits, and the one-line error that names file, profile and field."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from bot.errors import TenantConfigError
from bot.profiles import SOURCE, Profiles, open_profiles, parse_value
from bot.tenants import load_tenants

FILE = """
[default]
handlers = ["chat", "qa", "translate"]
language = "en"
[default.moderation]
profanity = "refuse"
personal_data = "redact"

[tenants."T1"]
system_prompt = "You are Acme's assistant."
knowledge_base = "acme"
actions = ["order_status", "open_ticket"]
[tenants."T1".moderation]
profanity = "flag"
[tenants."T1".channel_actions]
"C0SALES" = ["order_status", "not_the_tenants"]
[tenants."T1".channels."C0SUPPORT"]
system_prompt = "You answer Acme's customers."
handlers = ["chat", "qa"]
mention_rule = "always"
model = "acme-support-lora"
[tenants."T1".channels."C0SUPPORT".moderation]
personal_data = "flag"

[actions.order_status]
description = "Look up an order"
http = { url = "https://orders.example/api/orders" }
[actions.open_ticket]
description = "Open a ticket"
mode = "write"
http = { url = "https://desk.example/api/tickets", method = "POST" }
[actions.not_the_tenants]
description = "Another tenant's"
http = { url = "https://other.example/" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


def test_a_channel_profile_inherits_what_it_does_not_set(tmp_path):
    tenants = load_tenants(write(tmp_path, FILE))
    support = tenants.profile("T1", "C0SUPPORT")
    assert support.system_prompt == "You answer Acme's customers."
    assert support.handlers == ("chat", "qa")
    assert support.mention_rule == "always"
    assert support.model == "acme-support-lora"
    assert support.knowledge_base == "acme"  # the tenant's
    assert support.language == "en"  # [default]'s, through the tenant
    # Tables key by key: the channel's own, the tenant's, then [default]'s.
    assert (support.moderation.personal_data, support.moderation.profanity) == ("flag", "flag")
    assert support.allowed_actions("C0SUPPORT") == ("order_status", "open_ticket")
    # A channel with no profile is its tenant; a tenant not listed is [default].
    assert tenants.profile("T1", "C0OTHER") == tenants.get("T1")
    assert tenants.profile("T9", "C0SUPPORT") == tenants.default
    assert tenants.default.mention_rule == "mention" and tenants.default.model is None


def test_channel_actions_stays_a_shorthand_for_a_channels_actions(tmp_path):
    tenants = load_tenants(write(tmp_path, FILE))
    # As before: the channel's list, narrowed to the tenant's own actions.
    assert tenants.get("T1").allowed_actions("C0SALES") == ("order_status",)
    profiles = Profiles(tenants, None, refresh=2.0)
    sales = tenants.resolve("T1", "C0SALES", {"language": "de"}, source=SOURCE)
    assert (sales.actions, sales.allowed_actions("C0SALES"), sales.language) == (("order_status",),) * 2 + ("de",)
    assert profiles.profile("T1", "C0SALES").allowed_actions("C0SALES") == ("order_status",)
    # An operator's run-time list replaces the shorthand's.
    assert tenants.resolve("T1", "C0SALES", {"actions": ["open_ticket"]}, source=SOURCE).actions == ("open_ticket",)
    both = FILE.replace(
        '[tenants."T1".channels."C0SUPPORT"]',
        '[tenants."T1".channels."C0SALES"]\nactions = []\n' + '[tenants."T1".channels."C0SUPPORT"]',
    )
    with pytest.raises(TenantConfigError, match=r"'T1\.channels\.C0SALES', field 'actions': also in channel_actions"):
        load_tenants(write(tmp_path, both))


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ('language = "english"', "language", "should match pattern"),
        ('handlers = ["qa"]', "handlers", "must include 'chat'"),
        ('mention_rule = "sometimes"', "mention_rule", "'mention', 'always' or 'threads'"),
        ('model = ""', "model", "at least 1 character"),
        ('actions = ["nowhere"]', "actions", "no action named 'nowhere'"),
        ('knowlege_base = "typo"', "knowlege_base", "Extra inputs are not permitted"),
        ("channel_actions = { C1 = [] }", "channel_actions", "cannot name channels"),
    ],
)
def test_an_invalid_channel_profile_names_file_profile_and_field(tmp_path, line, field, reason):
    head, profile = FILE.split('[tenants."T1".channels."C0SUPPORT"]\n')
    key = line.split(" =")[0]
    own = next((old for old in profile.splitlines() if old.startswith(key + " =")), 'mention_rule = "always"')
    path = write(tmp_path, head + '[tenants."T1".channels."C0SUPPORT"]\n' + profile.replace(own, line, 1))
    with pytest.raises(TenantConfigError) as err:
        load_tenants(path)
    assert str(err.value).startswith(f"{path}: tenant 'T1.channels.C0SUPPORT', field '{field}': ")
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_channels_must_be_tables_of_a_listed_tenant(tmp_path):
    with pytest.raises(TenantConfigError, match=r"tenant 'default', field 'channels'"):
        load_tenants(write(tmp_path, FILE + '\n[default.channels."C1"]\nlanguage = "de"\n'))
    with pytest.raises(TenantConfigError, match=r"tenant 'T2', field 'channels': must be tables"):
        load_tenants(write(tmp_path, FILE + '\n[tenants."T2"]\nchannels = { C1 = "de" }\n'))


def test_run_time_overrides_are_validated_as_the_file_is(tmp_path):
    tenants = load_tenants(write(tmp_path, FILE))
    merged = tenants.resolve(
        "T1",
        "C0SUPPORT",
        {"language": "de", "moderation.profanity": "off", "quota.user_turns_per_minute": 5},
        source=SOURCE,
    )
    assert (merged.language, merged.moderation.profanity, merged.moderation.personal_data) == ("de", "off", "flag")
    assert merged.quota.user_turns_per_minute == 5 and merged.system_prompt == "You answer Acme's customers."
    # A tenant that is not listed gets [default]'s settings under its channel's overrides.
    assert tenants.resolve("T9", "C1", {"language": "fr"}, source=SOURCE).handlers == ("chat", "qa", "translate")
    refused = [
        ({"language": "deutsch"}, "language"),
        ({"handlers": ["chat", "weather"]}, "handlers"),
        ({"moderation.profanity": "maybe"}, "moderation.profanity"),
        ({"quota.user_turns_per_minute": -1}, "quota.user_turns_per_minute"),
        ({"actions": ["nowhere"]}, "actions"),
        ({"channel_actions": {}}, "channel_actions"),
        ({"moderation": {"profanity": "off"}}, "moderation"),
    ]
    for overrides, field in refused:
        with pytest.raises(TenantConfigError) as err:
            tenants.resolve("T1", "C0SUPPORT", overrides, source=SOURCE)
        assert str(err.value).startswith(f"{SOURCE}: tenant 'T1.channels.C0SUPPORT', field '{field}': "), err.value


def test_profiles_without_redis_are_the_files_and_say_where_each_value_comes_from(tmp_path):
    profiles = Profiles(load_tenants(write(tmp_path, FILE)), None, refresh=2.0)
    shown = {name: (value, source) for name, value, source in profiles.show("T1", "C0SUPPORT")}
    assert shown["system_prompt"] == ("You answer Acme's customers.", "file (channel)")
    assert shown["knowledge_base"] == ("acme", "file")
    assert shown["moderation.personal_data"] == ("flag", "file (channel)")
    assert shown["moderation.profanity"] == ("flag", "file")
    assert shown["moderation.llm_check"] == (False, "built-in")
    assert profiles.channels("T1") == ["C0SUPPORT"]
    assert profiles.tenants.knowledge_bases() == {"default", "acme"}


def test_a_web_page_takes_the_profile_of_its_path_or_nearest_folder(tmp_path):
    pages = """
[tenants."shop".channels."/pricing"]
language = "de"
[tenants."shop".channels."/pricing/teams/"]
language = "fr"
[tenants."shop".channels."C0PRICING"]
language = "it"
"""
    profiles = Profiles(load_tenants(write(tmp_path, pages)), None, refresh=2.0)
    chosen = {
        path: profiles.page_profile("shop", path)
        for path in ("/pricing", "/pricing/", "/pricing/x", "/pricing/teams", "/pricing/teams/a", "/pricingx", "/")
    }
    assert chosen == {
        "/pricing": "/pricing",
        "/pricing/": "/pricing",
        "/pricing/x": "/pricing",
        "/pricing/teams": "/pricing/teams/",
        "/pricing/teams/a": "/pricing/teams/",
        "/pricingx": "",  # not a folder of /pricing
        "/": "",
    }
    assert profiles.page_profile("other", "/pricing") == ""  # another site's pages are its own
    assert profiles.profile("shop", chosen["/pricing/x"]).language == "de"


async def test_the_first_key_with_a_profile_is_the_most_specific_in_force(tmp_path, redis):
    """A Discord thread, its channel, the channel's category: the first that has a profile, in the
    file or set at run time (one the file no longer allows is none); "" when none has one."""
    places = """
[tenants."G1".channels."CAT1"]
system_prompt = "You are the support desk."
[tenants."G1".channels."CH1"]
language = "de"
"""
    profiles = open_profiles(load_tenants(write(tmp_path, places)), redis, prefix=f"p{uuid.uuid4().hex[:8]}", refresh=2)
    assert profiles.first_profile("G1", ("TH1", "CH1", "CAT1")) == "CH1", "the channel's own beats its category's"
    assert profiles.first_profile("G1", ("TH2", "CH2", "CAT1")) == "CAT1"
    assert profiles.first_profile("G1", ("CH3",)) == "" and profiles.first_profile("G2", ("CH1", "CAT1")) == ""
    assert profiles.first_profile("G1", ("", "CAT1")) == "CAT1", "a key not known (a DM's none) is skipped"
    # Profiles do not stack: the channel's own applies whole, over the tenant's settings alone.
    assert profiles.profile("G1", "CH1").system_prompt == profiles.tenants.get("G1").system_prompt

    await profiles.set("G1", "TH2", "language", "fr", by="test")  # a thread's own, set at run time
    assert profiles.first_profile("G1", ("TH2", "CH2", "CAT1")) == "TH2"
    await profiles.clear("G1", "TH2", by="test")
    assert profiles.first_profile("G1", ("TH2", "CH2", "CAT1")) == "CAT1", "cleared: the category's again"


@pytest.mark.parametrize(
    ("typed", "value"),
    [
        ("de", "de"),
        ('["chat", "qa"]', ["chat", "qa"]),
        ("true", True),
        ("5", 5),
        ('"quoted"', "quoted"),
        ("You are Acme's helper. Be brief.", "You are Acme's helper. Be brief."),
    ],
)
def test_a_typed_value_is_toml_or_else_text(typed, value):
    assert parse_value(typed) == value


def test_the_shipped_file_loads_and_so_does_its_commented_example(tmp_path):
    shipped = Path(__file__).parents[2] / "bot" / "data" / "tenants.toml"
    load_tenants(shipped)
    example = re.sub(r"(?m)^# (\[tenants|[a-z_]+ = )", r"\1", shipped.read_text())
    profile = load_tenants(write(tmp_path, example)).profile("T0123ABCD", "C0SUPPORT")
    assert (profile.knowledge_base, profile.mention_rule, profile.model) == ("acme", "always", "acme-support-lora")
