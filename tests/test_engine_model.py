"""Which model a local engine serves when PARLEY_ENGINE_MODEL is unset: the choice by hardware
(a pure function), and the fallback to the demo model over real sockets when the Hub cannot be
reached: a refused port, a server that never answers, a Hub that does not have the model.

The Hub is replaced by loopback servers (HF_ENDPOINT), so nothing here downloads and the
result is the same with or without internet. Waits are bounded (a hang fails the test), never
timed: how fast the fallback was is printed, for people to read."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from bot.config import EngineSettings
from bot.engine.launcher import (
    CPU_MODEL,
    DEMO_MODEL_NAME,
    EnginePaths,
    Hardware,
    Served,
    choose_model,
    fitting_models,
    free_port,
    probe_hub,
    resolve_model,
)

GPU_7B, GPU_SMALL = "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"
CPU = Hardware()


@pytest.mark.parametrize(
    ("hardware", "models"),
    [
        (CPU, (CPU_MODEL,)),
        (Hardware(gpu_memory_gib=80), (GPU_7B, GPU_SMALL, CPU_MODEL)),
        (Hardware(gpu_memory_gib=23.6), (GPU_7B, GPU_SMALL, CPU_MODEL)),  # a 24 GB card as nvidia-smi reports it
        (Hardware(gpu_memory_gib=15.0), (GPU_SMALL, CPU_MODEL)),  # a T4
        (Hardware(gpu_memory_gib=4.0), (CPU_MODEL,)),
        (Hardware(gpu_memory_gib=0.0), (CPU_MODEL,)),  # memory not reported: the smallest
    ],
)
def test_the_models_that_fit_the_hardware_best_first(hardware: Hardware, models: tuple[str, ...]) -> None:
    assert fitting_models(hardware) == models


def test_the_best_fitting_model_when_the_hub_answers_or_it_is_cached() -> None:
    gpu = Hardware(gpu_memory_gib=40)
    assert choose_model(CPU, cached=(), hub_error=None).repo == CPU_MODEL
    assert choose_model(gpu, cached=(), hub_error=None).repo == GPU_7B
    assert choose_model(gpu, cached={GPU_SMALL}, hub_error=None).repo == GPU_7B  # the better one is downloaded
    cached = choose_model(gpu, cached={GPU_7B}, hub_error="unreachable")
    assert cached.repo == GPU_7B and "cached" in cached.reason


def test_offline_a_smaller_cached_model_then_the_demo_model_with_the_reason() -> None:
    gpu = Hardware(gpu_memory_gib=40)
    smaller = choose_model(gpu, cached={GPU_SMALL}, hub_error="the Hub is unreachable")
    assert smaller.repo == GPU_SMALL and GPU_7B in smaller.reason and "unreachable" in smaller.reason
    demo = choose_model(CPU, cached=(), hub_error="the Hub is unreachable (no DNS)")
    assert demo.repo is None
    assert CPU_MODEL in demo.reason and "CPU" in demo.reason and "no DNS" in demo.reason
    # A cached model too large for this machine is never served.
    assert choose_model(Hardware(gpu_memory_gib=8), cached={GPU_7B}, hub_error="x").repo is None


@asynccontextmanager
async def hub(status: int) -> AsyncIterator[str]:
    """A loopback "Hub" answering every request with `status`; yields its URL."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A port that accepts connections and never answers (a proxy or firewall that swallows them)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_the_probe_says_why_the_hub_cannot_be_had(monkeypatch: pytest.MonkeyPatch, silent_hub: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens: refused
    async with asyncio.timeout(30):
        started = time.monotonic()
        refused = await probe_hub(CPU_MODEL, EngineSettings(_env_file=None))
        print(f"refused port: {refused} after {time.monotonic() - started:.2f} s")
        assert refused is not None and "unreachable" in refused
        monkeypatch.setenv("HF_ENDPOINT", silent_hub)
        silent = await probe_hub(CPU_MODEL, EngineSettings(_env_file=None), timeout=1.0)
        assert silent is not None and "did not answer within 1 s" in silent
        async with hub(401) as url:
            monkeypatch.setenv("HF_ENDPOINT", url)
            assert await probe_hub(CPU_MODEL, EngineSettings(_env_file=None)) == f"{url} answered 401 for it"
        async with hub(200) as url:
            monkeypatch.setenv("HF_ENDPOINT", url)
            assert await probe_hub(CPU_MODEL, EngineSettings(_env_file=None)) is None
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
            assert await probe_hub(CPU_MODEL, EngineSettings(_env_file=None)) == "HF_HUB_OFFLINE is set"


def test_the_default_probe_wait_is_seconds_not_minutes() -> None:
    from bot.engine.launcher import PROBE_TIMEOUT

    assert PROBE_TIMEOUT <= 10


@pytest.fixture
def home(tmp_path: Path) -> EnginePaths:
    """An engine home of this test's own that borrows the shared engine venv and demo model
    (installed by `parley engine --install-only`), so that nothing is built or downloaded."""
    shared = EnginePaths(EngineSettings(_env_file=None).home)
    if not (shared.demo_model / "PARLEY_DEMO_MODEL").exists() or not shared.python.exists():
        pytest.skip(f"no engine venv and demo model in {shared.home}: run `parley engine --install-only`")
    paths = EnginePaths(tmp_path / "home")
    paths.demo_model.parent.mkdir(parents=True)
    paths.venv.symlink_to(shared.venv)
    paths.demo_model.symlink_to(shared.demo_model)
    return paths


def _settings(paths: EnginePaths, model: str | None = None) -> EngineSettings:
    return EngineSettings(_env_file=None, home=paths.home, model=model)


async def test_an_unreachable_hub_serves_the_demo_model_and_says_why(
    monkeypatch: pytest.MonkeyPatch, home: EnginePaths
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    said: list[str] = []
    async with asyncio.timeout(60):
        started = time.monotonic()
        served = await resolve_model(_settings(home), home, said.append)
        print(f"fell back in {time.monotonic() - started:.2f} s: {said}")
    assert served == Served(str(home.demo_model), DEMO_MODEL_NAME) and served.local
    assert any("random weights" in line for line in said)
    why = next(line for line in said if "no real model" in line)
    assert CPU_MODEL in why and "unreachable" in why and "PARLEY_ENGINE_MODEL" in why


async def test_a_failed_download_serves_the_demo_model_and_says_why(
    monkeypatch: pytest.MonkeyPatch, home: EnginePaths
) -> None:
    """The Hub answers the probe but the download fails (here: every API call gets 404): the
    engine venv's huggingface_hub really runs, and its failure is the reason given."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    said: list[str] = []
    async with hub(200) as probed, asyncio.timeout(120):
        monkeypatch.setenv("HF_ENDPOINT", probed)
        # The probe's HEAD passes; the download's own requests go to a Hub that has nothing.
        async with hub(404) as empty:
            import bot.engine.launcher as launcher

            real_probe = launcher.probe_hub

            async def probe_then_switch(repo: str, timeout: float = 5.0) -> str | None:
                result = await real_probe(repo, timeout)
                monkeypatch.setenv("HF_ENDPOINT", empty)  # inherited by the download's interpreter
                return result

            monkeypatch.setattr(launcher, "probe_hub", probe_then_switch)
            served = await resolve_model(_settings(home), home, said.append)
    assert served.name == DEMO_MODEL_NAME
    assert any(line.startswith("downloading " + CPU_MODEL) for line in said)
    why = next(line for line in said if "no real model" in line)
    assert f"downloading {CPU_MODEL} failed" in why and "model-download.log" in why
    assert not home.fetched(CPU_MODEL).exists()


async def test_a_cached_model_is_served_without_asking_the_hub(
    monkeypatch: pytest.MonkeyPatch, home: EnginePaths, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    home.fetched(CPU_MODEL).write_text(f"{snapshot}\n")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # would be refused, were it asked
    said: list[str] = []
    served = await resolve_model(_settings(home), home, said.append)
    assert served == Served(str(snapshot), CPU_MODEL) and served.local  # vLLM reads the folder offline
    assert any(f"serving {CPU_MODEL}" in line and "cached" in line for line in said)


async def test_parley_demo_and_a_named_model_are_served_as_asked(home: EnginePaths) -> None:
    said: list[str] = []
    demo = await resolve_model(_settings(home, DEMO_MODEL_NAME), home, said.append)
    assert demo.name == DEMO_MODEL_NAME and not any("no real model" in line for line in said)
    named = await resolve_model(_settings(home, "org/some-model"), home, said.append)
    assert named == Served("org/some-model", "org/some-model") and not named.local
