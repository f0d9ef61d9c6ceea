"""`parley chat` with the shipped sample actions, as a user runs it: the real CLI in a
subprocess, the sample service, real Redis, and the scripted stand-in engine in place of a
model (the demo model's random weights never decide on a call). The stand-in decides what a
model would and writes a fixed answer; everything between is Parley's: the checks, the HTTP
calls, the confirmation in the terminal, the audit. `pytest -s` prints the transcript the
README quotes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web

from bot.engine.launcher import free_port
from bot.tools.sample_service import DESK, make_app
from tests.standin import ScriptedEngine

SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-actions.toml"
TYPED = [
    "Where is my order A1002?",
    "The mouse in A1002 is broken, can you open a ticket for it?",
    "y",
    "/quit",
]


async def test_parley_chat_looks_up_an_order_and_opens_a_ticket_once_confirmed(redis_server, tmp_path):
    port = free_port()
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(SAMPLE.read_text().replace("127.0.0.1:8765", f"127.0.0.1:{port}"))
    service = make_app()
    runner = web.AppRunner(service, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    engine = ScriptedEngine(
        "(the model's answer, written from the results above)",
        decisions=[
            {"calls": [{"action": "order_status", "arguments": {"order_id": "A1002"}}]},
            {"calls": []},  # the result is in: answer
            {"calls": [{"action": "open_ticket", "arguments": {"subject": "Broken mouse", "body": "MS-220 broken"}}]},
        ],
    )
    try:
        async with engine.serving() as url:
            env = {
                **os.environ,
                "PARLEY_LLM_BASE_URL": url,
                "PARLEY_REDIS_URL": redis_server.url,
                "PARLEY_REDIS_PREFIX": "transcript",
                "PARLEY_TENANTS_FILE": str(tenants),
                "PARLEY_ACTIONS_FETCH_ALLOW": "127.0.0.1/32",
            }
            chat = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bot.tools.cli", "--env-file", str(tmp_path / "none.env"), "chat"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            out, err = await asyncio.wait_for(chat.communicate("\n".join(TYPED).encode() + b"\n"), 120)
    finally:
        await runner.cleanup()
    transcript = out.decode()
    print(transcript)
    assert chat.returncode == 0, err.decode()
    assert service[DESK].tickets == {
        "T-1": {"ticket_id": "T-1", "status": "open", "subject": "Broken mouse", "body": "MS-220 broken"}
    }
    # The order's status went back to the model (as data) before it answered.
    assert any('"status": "shipped"' in str(m["content"]) for r in engine.requests for m in r["messages"])
    answers = transcript.split("parley> ")[1:]
    assert answers[1].startswith('I\'m about to open a support ticket titled "Broken mouse".')
    assert answers[2].startswith("Done: open_ticket.") and '"ticket_id": "T-1"' in answers[2]
