"""The built-in recipe library and the MeluXina example stacks.

Every recipe is rendered under the MeluXina profile and compared with a golden
file in tests/golden/recipes/, then checked for the properties a cluster run
depends on (argument order, GPU flags, pinned images, no secret in the script).
Redis, PostgreSQL, Chroma and Prometheus also run for real on the local target
with runtime: host; those tests skip when the program is not installed, unless
UBENCH_REQUIRE_SERVICES=1 (CI) makes that a failure. The ollama and
vllm-replicas scripts run on the local target too, around small stand-ins for
the ollama and vllm programs.
"""

from __future__ import annotations

import dataclasses
import glob
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PYTHON, Result, assert_golden, free_port
from ubench_iac.loader import LoadedStack, builtin_recipes, load_stack
from ubench_iac.models import Recipe
from ubench_iac.paths import data_dir
from ubench_iac.render import (
    ScriptPaths,
    image_file,
    render_batch_script,
    split_environment,
)
from ubench_iac.resolve import DependencyView, DesiredResource, Resolver

REPOSITORY = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "recipes"
RUN_ROOT = Path("/project/scratch/p200000/ubench/state/recipes")
TOKEN = "ubench:00000000-0000-0000-0000-000000000000:golden"

RECIPES = builtin_recipes()
GPU_RECIPES = {"vllm", "vllm-ray", "vllm-replicas", "ollama", "dcgm-exporter"}
STACKS = ["meluxina-vllm-rag", "meluxina-ollama", "meluxina-databases"]

SECRETS = {
    "HF_TOKEN": "hf_golden-token-7f3a",
    "POSTGRES_PASSWORD": "pg-golden-password-91c2",
    "MINIO_ROOT_USER": "minio-golden-user-5d1e",
    "MINIO_ROOT_PASSWORD": "minio-golden-password-a8b0",
    "GF_SECURITY_ADMIN_PASSWORD": "grafana-golden-password-3e64",
}
"""Values for every from_env secret of the library. None may reach a script."""

PROMETHEUS_VIEW = DependencyView(
    host="mel2001",
    port=29090,
    ports={"http": 29090},
    outputs={"url": "http://mel2001:29090"},
)
"""The prometheus dependency that grafana is rendered against in golden files."""

APPTAINER_FLAGS = {"--cleanenv", "--nv"}
APPTAINER_OPTIONS_WITH_VALUE = {"--bind", "--env", "--env-file"}


# Rendering under the MeluXina profile ----------------------------------------


MELUXINA = "{kind: slurm, profile: meluxina, account: p200000}"


def _recipe_stack(recipe: str, target: str = MELUXINA) -> str:
    """Return a stack with one service named after ``recipe``."""
    lines = [
        "name: recipes",
        f"target: {target}",
        "services:",
        f"  {recipe}:",
        f"    recipe: {recipe}",
    ]
    if recipe == "grafana":
        # grafana reads services.prometheus.outputs.url.
        lines += ["  prometheus:", "    recipe: prometheus"]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One recipe rendered as the batch script of its first replica."""

    recipe: str
    loaded: LoadedStack
    resource: DesiredResource
    script: str


def _render_recipe(recipe: str, directory: Path) -> Rendered:
    path = directory / f"{recipe}.yaml"
    path.write_text(_recipe_stack(recipe))
    loaded = load_stack(path)
    resolver = Resolver(loaded, RUN_ROOT, secret_key="golden", environ=SECRETS)
    dependencies: dict[str, DependencyView | None] = {
        name: PROMETHEUS_VIEW
        for name in loaded.services[recipe].service.depends_on or []
    }
    resource = resolver.resolve(recipe, 0, dependencies)
    paths = ScriptPaths(
        script=resource.run_dir / "job.sh",
        log=resource.run_dir / "service.log",
        env_file=resource.run_dir / "secrets.env",
    )
    script = render_batch_script(resource, loaded.stack.target, TOKEN, paths)
    return Rendered(recipe, loaded, resource, script)


@pytest.fixture(scope="module")
def rendered(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Rendered]]:
    """Render every built-in recipe once, as the user 'ubench'."""
    with pytest.MonkeyPatch.context() as patch:
        # The profile's image cache path contains the user name, and
        # getpass.getuser reads LOGNAME before USER.
        for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
            patch.setenv(name, "ubench")
        directory = tmp_path_factory.mktemp("recipes")
        yield {recipe: _render_recipe(recipe, directory) for recipe in RECIPES}


def _apptainer_words(script: str) -> list[str]:
    """Return the words of the apptainer command, from 'apptainer' on."""
    start = script.index("\nexec ") + 1
    # shlex reads a backslash-newline outside quotes as a word holding just the
    # newline: that is a line continuation, so drop it. Quoted scripts stay
    # whole, newlines and all.
    words = [word for word in shlex.split(script[start:]) if word != "\n"]
    return words[words.index("apptainer") :]


def _split_apptainer(words: list[str]) -> tuple[list[str], str, list[str]]:
    """Split an apptainer command into its options, the image and the rest."""
    assert words[1] in ("exec", "run"), words[:2]
    options: list[str] = []
    position = 2
    while words[position].startswith("-"):
        option = words[position]
        options.append(option)
        if option in APPTAINER_OPTIONS_WITH_VALUE:
            options.append(words[position + 1])
            position += 1
        else:
            assert option in APPTAINER_FLAGS, f"unknown apptainer option {option}"
        position += 1
    return options, words[position], words[position + 1 :]


def test_recipe_library_has_every_recipe() -> None:
    assert set(RECIPES) == {
        "chroma",
        "dcgm-exporter",
        "grafana",
        "minio",
        "node-exporter",
        "ollama",
        "postgres",
        "prometheus",
        "qdrant",
        "redis",
        "vllm",
        "vllm-ray",
        "vllm-replicas",
    }


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_validates_in_a_stack(
    recipe: str,
    workdir: Path,
    ubench: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = workdir / "stack.yaml"
    path.write_text(_recipe_stack(recipe, target="{kind: local}"))
    result = ubench("validate", str(path))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_header_documents_it(recipe: str) -> None:
    text = (data_dir("recipes") / f"{recipe}.yaml").read_text()
    header = text[: text.index("\ndescription:")]
    for heading in ("Runs:", "Ports:", "GPU:", "Health:", "Pitfalls:"):
        assert f"# {heading}" in header, f"{recipe}.yaml has no '{heading}'"
    params = Recipe.model_validate(yaml.safe_load(text)).params or {}
    for name in params:
        assert f" {name} (" in header, (
            f"{recipe}.yaml does not document param '{name}' and its default"
        )


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_matches_golden(recipe: str, rendered: dict[str, Rendered]) -> None:
    assert_golden(f"recipes/{recipe}.sh", rendered[recipe].script)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_apptainer_options_precede_image(
    recipe: str, rendered: dict[str, Rendered]
) -> None:
    item = rendered[recipe]
    spec = item.resource.spec
    options, image, command = _split_apptainer(_apptainer_words(item.script))
    cache = item.loaded.stack.target.image_cache
    assert cache is not None
    assert image == image_file(spec["image"], cache)
    inline, from_file = split_environment(item.resource)
    assert "--cleanenv" in options
    assert options.count("--bind") == len(spec["binds"])
    assert options.count("--env") == len(inline)
    assert options.count("--env-file") == (1 if from_file else 0)
    expected_command = spec["command"].get("argv") or [
        "/bin/bash",
        "-c",
        spec["command"]["script"],
    ]
    assert command == expected_command


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_gpu_flags_only_for_gpu_recipes(
    recipe: str, rendered: dict[str, Rendered]
) -> None:
    item = rendered[recipe]
    options, _, _ = _split_apptainer(_apptainer_words(item.script))
    uses_gpu = recipe in GPU_RECIPES
    assert (item.resource.spec["resources"]["gpus"] > 0) == uses_gpu
    assert ("--nv" in options) == uses_gpu
    assert ("#SBATCH --partition=gpu\n" in item.script) == uses_gpu
    assert ("#SBATCH --partition=cpu\n" in item.script) == (not uses_gpu)
    assert ("#SBATCH --gres=gpu:" in item.script) == uses_gpu


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_image_is_pinned(recipe: str, rendered: dict[str, Rendered]) -> None:
    image = rendered[recipe].resource.spec["image"]
    name = image.rsplit("/", 1)[-1]
    assert image.startswith("docker://")
    assert ":" in name, f"{image} has no tag"
    assert not name.endswith(":latest")
    assert ":latest" not in rendered[recipe].script


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_secrets_stay_out_of_script(
    recipe: str, rendered: dict[str, Rendered]
) -> None:
    item = rendered[recipe]
    for name, value in SECRETS.items():
        assert value not in item.script, f"{name} appears in the {recipe} script"
    for name in item.resource.secrets:
        assert f"--env {name}=" not in item.script


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_outputs_have_url(recipe: str, rendered: dict[str, Rendered]) -> None:
    outputs = rendered[recipe].resource.spec["outputs"]
    assert "url" in outputs
    assert re.match(
        r"^[a-z]+://\{\{ host \}\}:\{\{ (port|ports\.\w+) \}\}", outputs["url"]
    )


def _shell_of(argv: list[str]) -> tuple[str, str] | None:
    """Return (shell, script) when a command is ``SHELL -c SCRIPT``."""
    if len(argv) == 3 and argv[1] == "-c" and argv[0] in ("/bin/sh", "/bin/bash"):
        return argv[0], argv[2]
    return None


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_scripts_parse(recipe: str, rendered: dict[str, Rendered]) -> None:
    spec = rendered[recipe].resource.spec
    scripts: list[tuple[str, str]] = []
    if "script" in spec["command"]:
        scripts.append(("/bin/bash", spec["command"]["script"]))
    elif (shell_script := _shell_of(spec["command"]["argv"])) is not None:
        scripts.append(shell_script)
    if spec["health"] and spec["health"]["command"]:
        scripts.append(("/bin/bash", spec["health"]["command"]))
    # /bin/sh is dash on Debian, so sh scripts are checked as POSIX sh.
    for shell, script in scripts:
        checked = subprocess.run(
            [shell, "-n", "-c", script], capture_output=True, text=True
        )
        assert checked.returncode == 0, f"{shell} -n: {checked.stderr}"


# The example stacks -----------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_stack_plans_only_creates(
    stack: str,
    workdir: Path,
    ubench: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = REPOSITORY / "stacks" / f"{stack}.yaml"
    planned = ubench("plan", str(path), "--json")
    assert planned.exit_code == 0, planned.output
    changes = json.loads(planned.stdout)["resource_changes"]
    assert changes
    assert {tuple(c["change"]["actions"]) for c in changes} == {("create",)}

    rendered_dir = workdir / "rendered"
    result = ubench("render", str(path), str(rendered_dir))
    assert result.exit_code == 0, result.output
    scripts = sorted(rendered_dir.glob("*.sh"))
    assert len(scripts) == len(changes)
    for script in scripts:
        text = script.read_text()
        for name, value in SECRETS.items():
            assert value not in text, f"{name} appears in {script.name}"
        assert "#SBATCH --account=p200000\n" in text


# Real services on the local target ------------------------------------------


def _require(program: str, package: str) -> str:
    """Return the path of ``program``, or skip (fail in CI) when it is missing."""
    path = shutil.which(program)
    if path is not None:
        return path
    reason = f"{program} is not installed (Debian package: {package})"
    if os.environ.get("UBENCH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; UBENCH_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def _postgres_bin_dir() -> Path:
    """Return the directory of initdb and postgres, or skip (fail in CI)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    if candidates:
        return Path(candidates[-1]).parent
    return Path(_require("postgres", "postgresql")).resolve().parent


def _apply(ubench: Callable[..., Result], stack: Path) -> Result:
    result = ubench("apply", str(stack), "--auto-approve")
    assert result.exit_code == 0, result.output
    return result


def _wait_until(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``check`` until it returns a true value, failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.5)


def _http_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _redis_cli(redis_cli: str, port: int, *words: str) -> str:
    """Run one command through redis-cli and return its output."""
    result = subprocess.run(
        [redis_cli, "-h", "127.0.0.1", "-p", str(port), *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def test_redis_recipe_answers_ping(
    workdir: Path, ubench: Callable[..., Result], cleanup_stacks: list[str]
) -> None:
    _require("redis-server", "redis-server")
    # Debian's redis-server depends on redis-tools, which has redis-cli.
    redis_cli = _require("redis-cli", "redis-tools")
    port = free_port()
    stack = workdir / "redis.yaml"
    stack.write_text(
        f"""\
name: redis-test
services:
  cache:
    recipe: redis
    runtime: host
    params: {{bind_address: 127.0.0.1, maxmemory: 64mb}}
    ports: {{redis: {port}}}
"""
    )
    cleanup_stacks.append(str(stack))
    applied = _apply(ubench, stack)

    assert "service.cache[0]: healthy" in applied.stderr
    assert _redis_cli(redis_cli, port, "PING") == "PONG"
    assert _redis_cli(redis_cli, port, "SET", "bench", "42") == "OK"
    assert _redis_cli(redis_cli, port, "GET", "bench") == "42"
    # No RDB snapshots, no append-only file, and the memory limit from params.
    assert _redis_cli(redis_cli, port, "CONFIG", "GET", "save") == "save"
    assert _redis_cli(redis_cli, port, "CONFIG", "GET", "appendonly") == (
        "appendonly\nno"
    )
    assert _redis_cli(redis_cli, port, "CONFIG", "GET", "maxmemory") == (
        f"maxmemory\n{64 * 1024 * 1024}"
    )
    url = ubench("output", "cache.url", "-s", str(stack))
    assert url.stdout.strip() == f"redis://127.0.0.1:{port}"


@pytest.fixture
def postgres_base() -> Iterator[Path]:
    """A directory for the cluster that the postgres user can reach.

    pytest's tmp_path sits under a directory only its owner may enter, and
    postgres refuses to run as root, so the cluster lives under a fresh
    directory in /tmp with mode 0755. Request this fixture before
    cleanup_stacks, so that the stack is destroyed before the directory goes.
    """
    base = Path(tempfile.mkdtemp(prefix="ubench-postgres-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _psql(
    bin_dir: Path, port: int, password: str, sql: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(bin_dir / "psql"),
            "--no-psqlrc",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ],
        env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_postgres_recipe_keeps_data_across_restarts(
    postgres_base: Path,
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = _postgres_bin_dir()
    run_as = "postgres" if os.geteuid() == 0 else ""
    password = "pg-test-password-6c1d"
    monkeypatch.setenv("POSTGRES_PASSWORD", password)
    port = free_port()
    stack = workdir / "postgres.yaml"
    stack.write_text(
        f"""\
name: postgres-test
services:
  db:
    recipe: postgres
    runtime: host
    params:
      bind_address: 127.0.0.1
      bin_dir: {bin_dir}
      run_as: "{run_as}"
      data_dir: {postgres_base / "cluster"}
      extra_args: "-c shared_buffers=32MB -c max_connections=20"
    ports: {{postgres: {port}}}
"""
    )
    cleanup_stacks.append(str(stack))
    _apply(ubench, stack)

    selected = _psql(bin_dir, port, password, "SELECT 1")
    assert selected.returncode == 0, selected.stderr
    assert selected.stdout.strip() == "1"
    shown = _psql(bin_dir, port, password, "SHOW shared_buffers")
    assert shown.stdout.strip() == "32MB"
    wrong = _psql(bin_dir, port, "not-the-password", "SELECT 1")
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr
    created = _psql(bin_dir, port, password, "CREATE TABLE kept (n int)")
    assert created.returncode == 0, created.stderr

    destroyed = ubench("destroy", str(stack), "--auto-approve")
    assert destroyed.exit_code == 0, destroyed.output
    _apply(ubench, stack)

    log = (workdir / "state" / "postgres-test" / "db-0" / "service.log").read_text()
    assert log.count("Success. You can now start the database server") == 1
    kept = _psql(bin_dir, port, password, "SELECT count(*) FROM kept")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.strip() == "0"
    script = (workdir / "state" / "postgres-test" / "db-0" / "job.sh").read_text()
    assert password not in script


@pytest.mark.slow
def test_chroma_recipe_answers_heartbeat(
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The chroma command comes with the chromadb package in this interpreter's
    # environment, which is not always on PATH.
    scripts = str(Path(PYTHON).parent)
    monkeypatch.setenv("PATH", f"{scripts}{os.pathsep}{os.environ['PATH']}")
    _require("chroma", "none: pip install chromadb")
    port = free_port()
    stack = workdir / "chroma.yaml"
    stack.write_text(
        f"""\
name: chroma-test
services:
  vectors:
    recipe: chroma
    runtime: host
    params: {{bind_address: 127.0.0.1}}
    ports: {{http: {port}}}
"""
    )
    cleanup_stacks.append(str(stack))
    _apply(ubench, stack)

    status, body = _http_get(port, "/api/v2/heartbeat")
    assert status == 200
    assert "nanosecond heartbeat" in json.loads(body)
    assert (workdir / "state" / "chroma-test" / "vectors-0" / "chroma").is_dir()


PROMETHEUS_STACK = """\
name: prometheus-test
services:
  prometheus:
    recipe: prometheus
    runtime: host
    params: {{bind_address: 127.0.0.1, scrape_interval: 1s}}
    ports: {{http: {prometheus_port}}}
{exporter}"""

EXPORTER = """\
  exporter:
    command: |
      mkdir -p public
      printf '# TYPE ubench_test_value gauge\\nubench_test_value 42\\n' > public/metrics
      exec "{python}" -m http.server {{{{ port }}}} --bind 127.0.0.1 --directory public
    ports: {{http: {exporter_port}}}
    health: {{type: http, path: /metrics, interval_s: 0.2}}
    metrics: {{path: /metrics, labels: {{team: bench}}}}
"""


def _targets(port: int) -> list[dict[str, Any]]:
    status, body = _http_get(port, "/api/v1/targets?state=active")
    assert status == 200
    targets: list[dict[str, Any]] = json.loads(body)["data"]["activeTargets"]
    return targets


def _query(port: int, expression: str) -> list[dict[str, Any]]:
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    status, body = _http_get(port, path)
    assert status == 200
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def test_prometheus_recipe_follows_file_sd(
    workdir: Path, ubench: Callable[..., Result], cleanup_stacks: list[str]
) -> None:
    _require("prometheus", "prometheus")
    prometheus_port = free_port()
    exporter_port = free_port()
    stack = workdir / "prometheus.yaml"

    def write_stack(with_exporter: bool) -> None:
        exporter = (
            EXPORTER.format(python=PYTHON, exporter_port=exporter_port)
            if with_exporter
            else ""
        )
        stack.write_text(
            PROMETHEUS_STACK.format(prometheus_port=prometheus_port, exporter=exporter)
        )

    write_stack(with_exporter=True)
    cleanup_stacks.append(str(stack))
    _apply(ubench, stack)
    file_sd = workdir / "state" / "prometheus-test" / "file_sd" / "exporter-0.json"
    assert file_sd.is_file()

    def exporter_up() -> dict[str, Any] | None:
        for target in _targets(prometheus_port):
            if target["labels"].get("job") == "exporter" and target["health"] == "up":
                return target
        return None

    target = _wait_until(exporter_up, "Prometheus to scrape the exporter")
    assert target["scrapeUrl"] == f"http://127.0.0.1:{exporter_port}/metrics"
    assert target["labels"]["team"] == "bench"
    assert target["labels"]["ubench_address"] == "service.exporter[0]"
    samples = _wait_until(
        lambda: _query(prometheus_port, 'ubench_test_value{job="exporter"}'),
        "the exporter's sample",
    )
    assert samples[0]["value"][1] == "42"
    jobs = {t["labels"]["job"] for t in _targets(prometheus_port)}
    assert "prometheus" in jobs

    write_stack(with_exporter=False)
    _apply(ubench, stack)
    assert not file_sd.exists()
    _wait_until(
        lambda: all(
            t["labels"].get("job") != "exporter" for t in _targets(prometheus_port)
        ),
        "Prometheus to drop the destroyed exporter",
    )
    remaining = {t["labels"]["job"] for t in _targets(prometheus_port)}
    assert remaining == {"prometheus"}


# Recipe scripts with stand-in programs ----------------------------------------
#
# ollama and vllm need a GPU and a model download, which neither this machine
# nor CI has. Small Python stand-ins with the same command line take their
# place, so the recipes' scripts run for real on the local target. That tests
# the logic around the programs: pull once, replica ports and GPU groups, and
# the trap that stops every replica. It does not test the programs.

OLLAMA_STUB = """\
#!{python}
# Stand-in for ollama: serve, list and pull, each logged to OLLAMA_STUB_LOG.
import http.server
import json
import os
import socket
import sys
from pathlib import Path

host, _, port = os.environ["OLLAMA_HOST"].rpartition(":")
with open(os.environ["OLLAMA_STUB_LOG"], "a") as log:
    log.write(" ".join([*sys.argv[1:], os.environ["OLLAMA_HOST"]]) + "\\n")


class Tags(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"models": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if sys.argv[1] == "serve":
    http.server.HTTPServer((host, int(port)), Tags).serve_forever()
elif sys.argv[1] == "list":
    socket.create_connection((host, int(port)), timeout=1).close()
elif sys.argv[1] == "pull":
    name, _, tag = sys.argv[2].partition(":")
    models = Path(os.environ["OLLAMA_MODELS"], "manifests", "registry.ollama.ai")
    manifest = models / "library" / name / (tag or "latest")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("{{}}")
"""

VLLM_STUB = """\
#!{python}
# Stand-in for `vllm serve`: serves GET /health, logs its pid, port and GPUs.
import http.server
import os
import sys

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
host = args[args.index("--host") + 1]
with open(os.environ["VLLM_STUB_LOG"], "a") as log:
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    log.write(f"{{os.getpid()}} {{port}} {{devices}} {{' '.join(args)}}\\n")


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()


http.server.HTTPServer((host, port), Health).serve_forever()
"""


def _install_stub(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text.format(python=PYTHON))
    path.chmod(0o755)


def _free_port_range(count: int) -> int:
    """Return the first of ``count`` consecutive free ports on 127.0.0.1."""
    while True:
        base = free_port()
        sockets: list[socket.socket] = []
        try:
            for offset in range(1, count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_ollama_recipe_pulls_model_once(
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stubs = workdir / "stubs"
    _install_stub(stubs, "ollama", OLLAMA_STUB)
    log = workdir / "ollama.log"
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OLLAMA_STUB_LOG", str(log))
    port, pull_port = free_port(), free_port()
    stack = workdir / "ollama.yaml"
    stack.write_text(
        f"""\
name: ollama-test
services:
  llm:
    recipe: ollama
    runtime: host
    params: {{bind_address: 127.0.0.1, model: "qwen2.5:0.5b"}}
    ports: {{http: {port}, pull: {pull_port}}}
    health: {{interval_s: 0.2}}
"""
    )
    cleanup_stacks.append(str(stack))
    _apply(ubench, stack)

    # The private server and the polling `ollama list` log in either order.
    first = log.read_text().splitlines()
    assert f"serve 127.0.0.1:{pull_port}" in first
    assert f"pull qwen2.5:0.5b 127.0.0.1:{pull_port}" in first
    assert first[-1] == f"serve 127.0.0.1:{port}"
    models = workdir / "state" / "ollama-test" / "llm-0" / "models"
    assert (models / "manifests/registry.ollama.ai/library/qwen2.5/0.5b").is_file()
    status, _ = _http_get(port, "/api/tags")
    assert status == 200

    destroyed = ubench("destroy", str(stack), "--auto-approve")
    assert destroyed.exit_code == 0, destroyed.output
    log.write_text("")
    _apply(ubench, stack)

    assert log.read_text().splitlines() == [f"serve 127.0.0.1:{port}"]


def test_vllm_replicas_recipe_stops_all_when_one_exits(
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stubs = workdir / "stubs"
    _install_stub(stubs, "vllm", VLLM_STUB)
    log = workdir / "vllm.log"
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VLLM_STUB_LOG", str(log))
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    base = _free_port_range(3)
    stack = workdir / "replicas.yaml"
    stack.write_text(
        f"""\
name: replicas-test
services:
  llm:
    recipe: vllm-replicas
    runtime: host
    params:
      bind_address: 127.0.0.1
      model: facebook/opt-125m
      replicas_per_node: 3
      gpus_per_replica: 2
    resources: {{gpus: 6}}
    ports: {{http: {base}}}
    health: {{initial_delay_s: 0, interval_s: 0.2}}
"""
    )
    cleanup_stacks.append(str(stack))
    _apply(ubench, stack)

    # The replicas start at once and log in any order.
    replicas = sorted(
        (line.split(" ", 3) for line in log.read_text().splitlines()),
        key=lambda fields: int(fields[1]),
    )
    assert [(port, devices) for _, port, devices, _ in replicas] == [
        (str(base), "0,1"),
        (str(base + 1), "2,3"),
        (str(base + 2), "4,5"),
    ]
    assert all("--tensor-parallel-size 2" in args for *_, args in replicas)
    assert all(_answers(base + offset) for offset in range(3))

    os.kill(int(replicas[1][0]), signal.SIGKILL)
    _wait_until(
        lambda: not any(_answers(base + offset) for offset in range(3)),
        "the other replicas to stop",
    )
    planned = _wait_until(
        lambda: (
            (result := ubench("plan", str(stack))).exit_code == 0
            and "will be recreated" in result.stdout
            and result
        ),
        "the plan to notice the ended job",
    )
    assert "service.llm[0] will be recreated" in planned.stdout
