"""Per-channel profiles through the real runtime: real Redis, the dialogue manager as `parley
serve` builds it, and the scripted engine stand-in, whose recorded requests show the prompt
and model each turn sent. Two runtimes on one Redis are two replicas."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from bot.config import Settings, TenantsSettings
from bot.errors import TenantConfigError
from bot.runtime import Runtime, open_runtime
from bot.tools.cli import main
from bot.turns import Outcome, Turn
from tests.standin import MODEL, ScriptedEngine

TENANT_PROMPT = "You are Acme's assistant."
SUPPORT_PROMPT = "You answer Acme's customers, briefly and kindly."
TENANTS = f"""
[default]
handlers = ["chat"]

[tenants."T1"]
system_prompt = "{TENANT_PROMPT}"
[tenants."T1".channels."C0SUPPORT"]
system_prompt = "{SUPPORT_PROMPT}"
model = "acme-support"
"""
SETTLE = 15  # seconds within which a change must reach the other replica (a hang bound, not a timing)


class Sink:
    def __init__(self) -> None:
        self.text = ""

    async def send(self, text: str) -> None:
        self.text = text

    async def stream(self, chunks: object) -> str:
        async for chunk in chunks:  # type: ignore[attr-defined]
            self.text += chunk
        return self.text


def turn(channel: str, thread: str, text: str = "Hello there, how are you today?") -> Turn:
    return Turn(
        platform="test", tenant="T1", channel=channel, thread=thread, user="U1", text=text, event_id=uuid.uuid4().hex
    )


async def answer(runtime: Runtime, engine: ScriptedEngine, message: Turn) -> dict[str, object]:
    """Run one turn; the engine's streamed request for it."""
    before = len(engine.requests)
    reply = await runtime.manager.handle(message, Sink())
    assert reply.outcome is Outcome.ANSWERED, reply
    streamed = [body for body in engine.requests[before:] if body.get("stream")]
    assert streamed, "no answer was streamed"
    return streamed[-1]


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    return path


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[tuple[ScriptedEngine, str]]:
    scripted = ScriptedEngine("Happy to help.")
    async with scripted.serving() as url:
        yield scripted, url


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], engine: tuple[ScriptedEngine, str], tenants_file: Path
) -> Settings:
    return make_settings(llm_url=engine[1], tenants=TenantsSettings(_env_file=None, file=tenants_file, refresh=0.2))


async def test_a_channels_profile_is_in_force_and_its_conversations_share_their_stable_prefix(settings, engine):
    scripted, _ = engine
    async with open_runtime(settings) as runtime:
        first = await answer(runtime, scripted, turn("C0SUPPORT", "1700000000.000100"))
        second = await answer(runtime, scripted, turn("C0SUPPORT", "1700000000.000200", "What can you do for me?"))
        general = await answer(runtime, scripted, turn("C0GENERAL", "1700000000.000300"))
    assert first["messages"][0] == second["messages"][0] == {"role": "system", "content": SUPPORT_PROMPT}  # type: ignore[index]
    assert general["messages"][0] == {"role": "system", "content": TENANT_PROMPT}  # type: ignore[index]
    assert (first["model"], second["model"], general["model"]) == ("acme-support", "acme-support", MODEL)


async def test_a_run_time_change_reaches_another_replica_is_validated_and_audited(settings, engine, caplog):
    scripted, _ = engine
    caplog.set_level(logging.INFO, logger="bot.profiles")
    async with open_runtime(settings) as one, open_runtime(settings) as two:
        change = await one.profiles.set("T1", "C0SUPPORT", "system_prompt", "You are Acme's night shift.", by="U0ADMIN")
        assert change is not None and (change.old, change.new, change.by) == (
            None,
            "You are Acme's night shift.",
            "U0ADMIN",
        )
        async with asyncio.timeout(SETTLE):  # the other replica polls the version
            while two.profiles.profile("T1", "C0SUPPORT").system_prompt != "You are Acme's night shift.":
                await asyncio.sleep(0.05)
        sent = await answer(two, scripted, turn("C0SUPPORT", "1700000000.000400"))
        assert sent["messages"][0]["content"] == "You are Acme's night shift."  # type: ignore[index]
        assert sent["model"] == "acme-support"  # the file's, still

        # An invalid value is refused with one line naming the field; the profile in force stays.
        with pytest.raises(TenantConfigError, match=r"tenant 'T1\.channels\.C0SUPPORT', field 'handlers': "):
            await one.profiles.set("T1", "C0SUPPORT", "handlers", ["qa"], by="U0ADMIN")
        with pytest.raises(TenantConfigError, match=r"field 'languag': unknown field"):
            await one.profiles.set("T1", "C0SUPPORT", "languag", "de", by="U0ADMIN")
        await asyncio.sleep(1.0)  # several polls
        for runtime in (one, two):
            profile = runtime.profiles.profile("T1", "C0SUPPORT")
            assert (profile.handlers, profile.system_prompt) == (("chat",), "You are Acme's night shift.")

        # The audit: who, when, which field, old and new, newest first; refused values are not changes.
        history = await two.profiles.history()
        assert [(c.field, c.old, c.new, c.by) for c in history] == [
            ("system_prompt", None, "You are Acme's night shift.", "U0ADMIN")
        ]
        assert history[0].at > 0
        assert any(
            "system_prompt changed from null to" in r.getMessage() and "U0ADMIN" in r.getMessage()
            for r in caplog.records
        )

        # Cleared: the file's prompt again, on both.
        assert len(await one.profiles.clear("T1", "C0SUPPORT", by="U0ADMIN")) == 1
        async with asyncio.timeout(SETTLE):
            while two.profiles.profile("T1", "C0SUPPORT").system_prompt != SUPPORT_PROMPT:
                await asyncio.sleep(0.05)
        assert [(c.field, c.new) for c in await one.profiles.history(1)] == [("system_prompt", None)]


def test_the_profile_commands(make_settings, tenants_file, monkeypatch, capsys, tmp_path):
    settings = make_settings()
    monkeypatch.setenv("PARLEY_REDIS_URL", settings.redis.url or "")
    monkeypatch.setenv("PARLEY_REDIS_PREFIX", settings.redis.prefix)
    monkeypatch.setenv("PARLEY_TENANTS_FILE", str(tenants_file))
    env = ["--env-file", str(tmp_path / "none.env"), "profile"]

    assert main([*env, "set", "T1", "C0SUPPORT", "language", "de"]) == 0
    assert 'T1/C0SUPPORT: language = "de" (was unset) by cli:' in capsys.readouterr().out

    assert main([*env, "set", "T1", "C0SUPPORT", "handlers", '["chat", "weather"]']) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("parley: run-time profile: tenant 'T1.channels.C0SUPPORT', field 'handlers': ")
    assert "\n" not in err

    assert main([*env, "show", "T1", "C0SUPPORT"]) == 0
    shown = capsys.readouterr().out
    assert 'language = "de"  # run-time' in shown
    assert f'system_prompt = "{SUPPORT_PROMPT}"  # file (channel)' in shown
    assert 'handlers = ["chat"]  # file' in shown
    assert "recent changes:" in shown

    assert main([*env, "show", "T1"]) == 0
    assert "channels with a profile: C0SUPPORT" in capsys.readouterr().out

    assert main([*env, "clear", "T1", "C0SUPPORT", "language"]) == 0
    assert 'T1/C0SUPPORT: language cleared (was "de")' in capsys.readouterr().out
