"""Replicas of `parley serve` as real processes, for the fault tests: signals reach them as in production.

Each `Replica` runs the installed `parley serve` with its own environment (no `.env`:
it starts in an empty directory), Slack over the Events API against the loopback fake,
the shared Redis and the session's vLLM engine. Its log is kept in a file and shown
when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.engine.launcher import free_port
from tests.slack.conftest import BOT_TOKEN, SIGNING_SECRET, fake_slack  # noqa: F401 (the fixture)
from tests.slack.fake import FakeSlack, event_callback, signed_request

PARLEY = Path(sys.executable).with_name("parley")
# Each wait of a request to a replica (for the connection, for the answer's next bytes).
EACH_WAIT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=5)


class Replica:
    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.slack_port = free_port()
        self.ops_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.env = {
            # The caller's own settings stay out, except where the engine venv and models live.
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("PARLEY_", "SLACK_", "DISCORD_")) or k == "PARLEY_ENGINE_HOME"
            },
            **env,
            "SLACK_HTTP_HOST": "127.0.0.1",
            "SLACK_HTTP_PORT": str(self.slack_port),
            "PARLEY_OPS_HOST": "127.0.0.1",
            "PARLEY_OPS_PORT": str(self.ops_port),
            "PARLEY_DIALOGUE_CONSUMER": name,
        }
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.slack_port}/slack/events"

    async def start(self, timeout: float = 180) -> Replica:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(PARLEY), "serve"], cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        async with aiohttp.ClientSession(timeout=EACH_WAIT) as client, asyncio.timeout(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    async with client.get(f"http://127.0.0.1:{self.ops_port}/readyz") as response:
                        if response.status == 200:
                            return self
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)

    async def metric(self, name: str) -> float:
        """One sample from the replica's /metrics (0 when absent)."""
        async with (
            aiohttp.ClientSession(timeout=EACH_WAIT) as client,
            client.get(f"http://127.0.0.1:{self.ops_port}/metrics") as response,
        ):
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


@pytest.fixture
def replicas(
    tmp_path: Path,
    fake_slack: FakeSlack,
    redis_server: Any,
    engine: str,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Replica]]:
    """`replicas(name, **env)` makes a replica (not started) sharing one Redis prefix, the fake Slack and the engine."""
    made: list[Replica] = []
    prefix = f"r{uuid.uuid4().hex[:8]}"

    def make(name: str, **env: str) -> Replica:
        base = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_BASE_URL": fake_slack.api_url,
            "SLACK_NATIVE_STREAMING": "false",
            "SLACK_EDIT_INTERVAL": "0.2",
            "PARLEY_REDIS_URL": redis_server.url,
            "PARLEY_REDIS_PREFIX": prefix,
            "PARLEY_DIALOGUE_INBOX": "redis",
            "PARLEY_DIALOGUE_VISIBILITY_TIMEOUT": "10",
            "PARLEY_LLM_BASE_URL": engine,
            "PARLEY_LLM_MAX_TOKENS": "8",
            "PARLEY_LLM_EXTRA_BODY": '{"ignore_eos": true}',
            "PARLEY_LOG_LEVEL": "INFO",
        }
        replica = Replica(name, tmp_path, {**base, **env})
        made.append(replica)
        return replica

    yield make
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
    for replica in made:
        replica.stop()
        if failed:
            print(f"--- log of replica {replica.name} ---\n{replica.log()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def deliver(http: aiohttp.ClientSession, replica: Replica, event: dict[str, Any], *, tries: int = 60) -> int:
    """Deliver an event as Slack does: a non-2xx answer or no answer is retried (Slack retries
    three times over minutes; here quicker and more often, as the outage tests need)."""
    body = event_callback(event)
    for attempt in range(tries):
        try:
            delivery = await signed_request(
                http, replica.events_url, body, secret=SIGNING_SECRET, retry_num=attempt or None
            )
            if delivery.status == 200:
                return attempt
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"event {body['event_id']} was never taken")
