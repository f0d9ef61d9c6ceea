"""Secure defaults (issue 12, item 12): what Parley does when an operator sets nothing, and what
it refuses to start with. The deployment files' side (Redis password, NetworkPolicy, the hosts
the manifests set) is checked in tests/test_deploy.py.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

import pytest

from bot.config import OpsSettings, RedisSettings, load_settings
from bot.engine.launcher import free_port
from bot.errors import ConfigError
from bot.ops.endpoint import ops_server
from bot.runtime import connect_redis, open_runtime
from tests.unit.test_env_example import setting_variables

DEAD_LLM = "http://127.0.0.1:9/v1"
MIN_SECRET = 32  # bytes: as long as the HMAC-SHA256 key it is


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port`, as the kernel lists them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


async def test_the_ops_endpoint_listens_on_loopback_unless_told_otherwise(make_settings):
    assert OpsSettings(_env_file=None).host == "127.0.0.1"
    settings = make_settings(llm_url=DEAD_LLM, ops=OpsSettings(_env_file=None, port=0))
    async with open_runtime(settings) as runtime, ops_server(runtime.watched(), []) as port:
        # /metrics and /readyz say what the bot runs and whether it is up: not for every network.
        assert listening_addresses(port) == {"127.0.0.1"}


def test_every_server_parley_starts_binds_to_loopback_unless_told_otherwise(clean_env):
    # The web chat and the Slack Events API endpoint too: the container image and the manifests
    # say 0.0.0.0 where a proxy or load balancer needs it, a laptop's `parley serve` does not.
    settings = load_settings(env_file=None)
    hosts = {
        "ops": settings.ops.host,
        "web": settings.web.host,
        "slack": settings.slack.http_host,
        "engine": settings.engine.host,
    }
    assert hosts == dict.fromkeys(hosts, "127.0.0.1")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in setting_variables():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("secret", ["s" * (MIN_SECRET - 1), "hunter2", "é" * 15])
def test_a_web_secret_shorter_than_32_bytes_is_refused_at_start_up(clean_env, secret):
    clean_env.setenv("PARLEY_WEB_SECRET", secret)
    with pytest.raises(ConfigError) as refused:
        load_settings(env_file=None)
    assert refused.value.setting == "PARLEY_WEB_SECRET"
    assert "at least 32 bytes" in str(refused.value) and secret not in str(refused.value)


@pytest.mark.parametrize("secret", ["s" * MIN_SECRET, "é" * 16, "0123456789abcdef" * 4])
def test_a_web_secret_of_32_bytes_or_more_is_taken(clean_env, secret):
    clean_env.setenv("PARLEY_WEB_SECRET", secret)
    assert load_settings(env_file=None).web.secret.get_secret_value() == secret


async def test_parley_logs_in_to_a_redis_with_a_password(tmp_path, make_settings):
    """PARLEY_REDIS_PASSWORD reaches Redis (read as a secret, kept out of the URL)."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "-"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdin is not None
    server.stdin.write("requirepass 0123456789abcdef0123456789abcdef\n")
    server.stdin.close()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while (
            "NOAUTH"
            not in subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout
        ):
            assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
            time.sleep(0.05)
        without = make_settings(redis=RedisSettings(_env_file=None, url=url))
        with pytest.raises(ConfigError) as refused:
            await connect_redis(without)
        assert refused.value.setting == "PARLEY_REDIS_URL"
        with_password = make_settings(
            redis=RedisSettings(_env_file=None, url=url, password="0123456789abcdef0123456789abcdef")
        )
        redis = await connect_redis(with_password)
        try:
            assert await redis.set("parley-test", "1") and await redis.get("parley-test") == b"1"
        finally:
            await redis.aclose()
    finally:
        server.terminate()
        server.wait(10)
