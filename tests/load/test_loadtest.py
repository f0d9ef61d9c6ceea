"""`parley loadtest` end to end on a small load: `parley serve` as its own process with the web
chat, visitors over the real WebSocket, the stand-in engine, and every figure printed.
(The figures are measurements, read by people; these tests check they exist and add up.)"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from bot.tools.cli import build_parser, main
from bot.tools.loadtest import LoadTestFailed, run_loadtest
from bot.tools.standin import ScriptedEngine
from tests.conftest import RedisServer

NUMBER = r"([\d.]+)"


def _ms(out: str, label: str) -> tuple[float, float]:
    found = re.search(rf"{re.escape(label)}\s+p50 {NUMBER} ms\s+p99 {NUMBER} ms", out)
    assert found, f"no {label!r} line in:\n{out}"
    p50, p99 = float(found.group(1)), float(found.group(2))
    assert 0 <= p50 <= p99
    return p50, p99


async def test_loadtest_drives_visitors_through_parley_serve_and_prints_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    args = build_parser().parse_args(
        [
            *("--env-file", str(tmp_path / "none.env"), "loadtest", "--standin", "-k", "3", "-t", "2"),
            *("--history", "1", "--redis", redis_server.url),
        ]
    )
    said: list[str] = []
    status = await run_loadtest(make_settings_free(), args, said.append)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "3 visitors x 2 turns (history 1) over the web chat's WebSocket" in out
    found = re.search(rf"turns\s+(\d+) answered, (\d+) errors, {NUMBER} turns/s", out)
    assert found and found.groups()[:2] == ("6", "0") and float(found.group(3)) > 0, out
    _ms(out, "ack")
    _ms(out, "first delta after sending")
    _, in_p99 = _ms(out, "Parley in  (sent -> engine)")
    _, out_p99 = _ms(out, "Parley out (first token -> delta)")
    _, added_p99 = _ms(out, "Parley added (in + out)")
    # Each turn's sum is at least each of its parts, so its quantiles are too (the printed figures
    # are rounded to 0.01 ms). (Not "at most in + out": quantiles of a sum are not subadditive.)
    assert added_p99 >= max(in_p99, out_p99) - 0.011
    cpu = re.search(rf"Parley CPU per turn\s+{NUMBER} ms \({NUMBER} s of CPU\): event loop {NUMBER} ms", out)
    assert cpu and float(cpu.group(1)) > 0 and float(cpu.group(3)) <= float(cpu.group(1)), out
    assert re.search(r"inbox depth\s+max \d+, mean [\d.]+", out)
    assert any("starting parley serve" in line for line in said)


async def test_against_an_engine_url_rounds_alternate_with_the_engine_straight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    # The stand-in served apart and named by URL is an engine like any other to the load test:
    # no stamps, so the comparison rounds give the figures (the real engine's run is in the README).
    engine = ScriptedEngine("one two three four", keep_requests=False)
    async with engine.serving() as url:
        args = build_parser().parse_args(
            [
                *("--env-file", str(tmp_path / "none.env"), "loadtest", "--engine-url", url),
                *("-k", "2", "-t", "2", "--rounds", "2", "--redis", redis_server.url),
            ]
        )
        assert await run_loadtest(make_settings_free(), args, lambda line: None) == 0
    out = capsys.readouterr().out
    ratio = re.search(rf"throughput ratio\s+median {NUMBER} \(Parley / direct turns/s in each round: ([\d. ]+)\)", out)
    assert ratio and len(ratio.group(2).split()) == 2 and float(ratio.group(1)) > 0, out
    _ms(out, "first token, direct")
    # The stand-in counts prompt tokens as prefix-cache queries and never hits, and answers
    # every turn with its four words: the same each way.
    for path in ("direct", "through Parley"):
        line = rf"engine, {path}\s+prefix-cache hits 0\.0% of prompt tokens, 4\.0 tokens generated a turn"
        assert re.search(line, out), out
    # Two rounds of 2 x 2 turns each way; through Parley also the warm-up's 6 and the measured 4.
    direct = [s for s in engine.streamed if re.match(r"zq[a-z]{6}\d{4} ", s.last)]
    through = [s for s in engine.streamed if re.match(r"zq[a-z]{10} ", s.last)]
    assert (len(direct), len(through), len(engine.streamed)) == (8, 18, 26)


async def test_an_engine_that_does_not_answer_is_said_at_once(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--env-file", str(tmp_path / "none.env"), "loadtest", "--engine-url", "http://127.0.0.1:9/v1"]
    )
    with pytest.raises(LoadTestFailed, match=r"the engine at http://127\.0\.0\.1:9/v1 does not answer /models"):
        await asyncio.wait_for(run_loadtest(make_settings_free(), args, lambda line: None), 30)


async def test_the_sweep_prints_a_row_per_setting_and_rate_and_the_capacity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    args = build_parser().parse_args(
        [
            *("--env-file", str(tmp_path / "none.env"), "loadtest", "--standin", "-k", "2", "-t", "1", "--sweep"),
            *("--rates", "4,8", "--step-seconds", "0.5", "--redis", redis_server.url),
            *("--plot", str(tmp_path / "plots" / "sweep.png")),
        ]
    )
    assert await run_loadtest(make_settings_free(), args, lambda line: None) == 0
    out = capsys.readouterr().out
    png = (tmp_path / "plots" / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and 10_000 < len(png) < 2_000_000, len(png)
    rows = re.findall(
        r"^(base|history 20|routing off|moderation off|redis inbox)\s+(\d+)\s+(\d+)\s+([\d.]+)", out, re.M
    )
    assert {name for name, *_ in rows} == {"base", "history 20", "routing off", "moderation off", "redis inbox"}
    assert all(history == ("20" if name == "history 20" else "0") for name, history, *_ in rows)
    assert {rate for _, _, rate, _ in rows} <= {"4", "8"}
    assert "capacity: the highest offered rate with Parley's added p99 under 10 ms" in out
    for name in ("base", "history 20", "routing off", "moderation off", "redis inbox"):
        assert re.search(rf"^  {name}\s+(\d+ turns/s|none of the rates tried)$", out, re.M), out


def test_the_sweep_needs_the_standin_and_rates_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadtest", "--rates", "10,-1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadtest", "--standin", "--engine-url", "http://x/v1"])
    env = tmp_path / "none.env"
    assert (
        main(
            [
                "--env-file",
                str(env),
                "loadtest",
                "--engine-url",
                "http://127.0.0.1:1/v1",
                "--sweep",
                "-k",
                "1",
                "-t",
                "1",
            ]
        )
        != 0
    )


def test_plot_without_matplotlib_says_which_extra_before_any_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules is how Python itself marks a module as not importable: matplotlib is
    # absent, our code runs as it is.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    env = str(tmp_path / "none.env")
    argv = ["--env-file", env, "loadtest", "--standin", "--sweep", "--plot", str(tmp_path / "p.png")]
    assert main(argv) == 2
    assert "invalid setting --plot: needs matplotlib: pip install 'parley[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
    assert main(["--env-file", env, "loadtest", "--standin", "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot: draws the sweep: add --sweep" in capsys.readouterr().err


async def test_parleys_redis_client_makes_commands_past_its_pool_wait_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    """The sweep's closed sockets: redis-py's pool failed the 101st command in flight at once
    ("Too many connections"), and the web chat closed a visitor at `hello` for it."""
    from bot.config import RedisSettings, Settings
    from bot.runtime import REDIS_MAX_CONNECTIONS, connect_redis

    redis = await connect_redis(Settings(redis=RedisSettings(_env_file=None, url=redis_server.url)))
    assert redis is not None
    try:
        # BLPOP on an empty list holds its connection for the whole timeout.
        burst = [redis.blpop([f"lt-pool-{n}"], timeout=0.3) for n in range(REDIS_MAX_CONNECTIONS + 50)]
        assert await asyncio.gather(*burst) == [None] * (REDIS_MAX_CONNECTIONS + 50)
    finally:
        await redis.aclose()


async def test_the_standin_stamps_each_streamed_answer() -> None:
    import aiohttp

    engine = ScriptedEngine("one two", keep_requests=False)
    async with engine.serving() as url, aiohttp.ClientSession() as http:
        body = {"model": "standin", "stream": True, "messages": [{"role": "user", "content": "zqabcdefghij hi"}]}
        async with http.post(f"{url}/chat/completions", json=body) as response:
            await response.read()
    assert engine.requests == []
    [stamp] = engine.streamed
    assert stamp.last == "zqabcdefghij hi" and stamp.received <= stamp.first_token


def make_settings_free():
    """Settings as `parley loadtest` reads them, without this machine's .env or environment."""
    from bot.config import LLMSettings, RedisSettings, Settings

    return Settings(llm=LLMSettings(_env_file=None), redis=RedisSettings(_env_file=None))
