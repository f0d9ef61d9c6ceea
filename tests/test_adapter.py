"""The adapter extension point: a platform's libraries are imported only once that platform is
configured, and a configured platform whose extra is not installed stops the start with one line
that says what to install."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bot.adapter import needs_extra

# `parley serve`'s choice of adapters, in a process where slack_bolt cannot be imported (a `None`
# in `sys.modules` makes Python's import fail, as an install without the `slack` extra would).
WITHOUT_SLACK = """
import sys
sys.modules["slack_bolt"] = None

from bot.adapter import AdapterContext, configured_adapters
from bot.config import load_settings
from bot.errors import ConfigError
from bot.handoff.store import MemoryHandoffStore
from bot.ops.health import Degraded
from bot.ops.metrics import Metrics
from bot.ops.stats import MemoryAnswerIndex
from bot.profiles import Profiles
from bot.store.context import MemoryContextStore
from bot.store.dedupe import MemoryDeduper
from bot.tenants import load_tenants

settings = load_settings(None)
context = AdapterContext(
    settings=settings, redis=None, metrics=Metrics(),
    store=MemoryContextStore(redis_settings=settings.redis, settings=settings.context),
    deduper=MemoryDeduper(settings.redis), answers=MemoryAnswerIndex(), tickets=MemoryHandoffStore(),
    degraded=Degraded(), profiles=Profiles(load_tenants(None), None, refresh=2.0),
)
try:
    print(sorted(adapter.platform for adapter in configured_adapters(context)), "adapters.slack.app" in sys.modules)
except ConfigError as exc:
    print(f"{exc.setting}: {exc.reason}")
"""


def serve_without_slack(**env: str) -> str:
    platforms = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PARLEY_WEB_"))}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SLACK], env={**platforms, **env}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_an_unconfigured_platform_needs_none_of_its_libraries():
    assert serve_without_slack(PARLEY_WEB_ENABLED="true") == "['web'] False"


def test_a_configured_platform_without_its_extra_says_what_to_install():
    assert serve_without_slack(SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1") == (
        "SLACK_BOT_TOKEN: the slack adapter needs slack_bolt, which is not installed: pip install 'parley[slack]'"
    )


def test_a_missing_module_of_parleys_own_stays_a_bug():
    with pytest.raises(ModuleNotFoundError), needs_extra("slack", setting="SLACK_BOT_TOKEN"):
        import adapters.slack.no_such_module  # noqa: F401 - imported only to fail
