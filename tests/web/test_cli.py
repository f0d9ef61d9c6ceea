"""`parley chat --web` as a user runs it: a real process, its printed URL, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid

import aiohttp

from tests.web.conftest import DEAD_LLM, SECRET


async def test_chat_web_prints_the_url_serves_the_chat_and_stops_on_ctrl_c(redis_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "SLACK_", "DISCORD_"))}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.update(
        {
            "PARLEY_REDIS_URL": redis_server.url,
            "PARLEY_REDIS_PREFIX": f"t{uuid.uuid4().hex[:8]}",
            "PARLEY_LLM_BASE_URL": DEAD_LLM,
            "PARLEY_WEB_PORT": "0",
            "PARLEY_WEB_SECRET": SECRET,
            "PARLEY_WEB_TITLE": "Local chat",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.tools.cli",
        "--env-file",
        str(tmp_path / "none.env"),
        "chat",
        "--web",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        async with asyncio.timeout(120):
            while not (
                match := re.search(r"web chat at (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops it\)", "".join(lines))
            ):
                line = (await proc.stderr.readline()).decode()
                assert line, f"parley exited before serving: {''.join(lines)}"
                lines.append(line)
        url = match.group(1)
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as page:
                assert page.status == 200 and "<title>Local chat</title>" in await page.text()
            async with session.ws_connect(url + "ws") as ws:
                await ws.send_json({"type": "hello", "token": None})
                assert (await ws.receive_json())["type"] == "welcome"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
