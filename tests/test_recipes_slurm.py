"""Built-in recipes as jobs on the real local Slurm cluster, with runtime: host.

Redis, PostgreSQL, Chroma and Prometheus are applied with target kind slurm
and must become healthy on one of the nodes node1..node3. Every check goes to
the node that the state records as the service's endpoint host: Redis replies
PONG to PING, psql with the password gets 1 from PostgreSQL for SELECT 1, and
Chroma's heartbeat returns 200. Prometheus, on one node, scrapes a second
service on another node through the stack's file_sd files. Its /api/v1/targets
lists that service as up at its node's address. Once the service is removed
from the stack and the stack is applied again, the list no longer has it.

A test skips when its program is missing, or fails with
UBENCH_REQUIRE_SERVICES=1. All tests skip when the cluster cannot start, or
fail with UBENCH_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, Result, free_port

# postgres_base is a fixture: pytest finds it by its name in this module, so
# importing it lets the postgres test request it.
from tests.test_recipes import (
    _apply,
    _postgres_bin_dir,
    _require,
    _wait_until,
    postgres_base,  # noqa: F401
)
from tests.test_slurm_target import _get, _resource, _state

# slurm_cluster, the session's cluster, is a fixture of this plugin module.
# pytest rewrites the asserts of a module registered before its first import.
pytest_plugins = ["tests.slurm_fixtures"]
pytest.register_assert_rewrite("tests.slurm_fixtures")

from tests.slurm_fixtures import SlurmCluster  # noqa: E402

pytestmark = pytest.mark.slurm

NODES = {"node1", "node2", "node3"}
"""The nodes of the cluster that scripts/local-slurm up 3 starts."""

# The recipes request up to 8 CPUs and 32 GB, more memory than a node of the
# local cluster has (8000 MB), so sbatch would reject their jobs. One CPU and
# 1 GB fit beside the jobs of the other tests.
SMALL = "resources: {cpus: 1, mem_gb: 1}"


def _endpoint(workdir: Path, stack: str, service: str) -> tuple[str, int]:
    """Return the host and port the state records for ``service``'s replica 0."""
    endpoint = _resource(_state(workdir, stack), service)["endpoint"]
    return str(endpoint["host"]), int(endpoint["port"])


def _write(path: Path, text: str, cleanup_stacks: list[str]) -> Path:
    """Write a stack file and register it to be destroyed after the test."""
    path.write_text(text)
    if str(path) not in cleanup_stacks:
        cleanup_stacks.append(str(path))
    return path


# Redis, PostgreSQL and Chroma ---------------------------------------------


def test_redis_slurm_returns_pong(
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    slurm_cluster: SlurmCluster,
) -> None:
    _require("redis-server", "redis-server")
    redis_cli = _require("redis-cli", "redis-tools")
    port = free_port()
    stack = _write(
        workdir / "redis.yaml",
        f"""\
name: redis-slurm
target: {{kind: slurm}}
services:
  cache:
    recipe: redis
    runtime: host
    params: {{maxmemory: 64mb}}
    ports: {{redis: {port}}}
    {SMALL}
""",
        cleanup_stacks,
    )

    applied = _apply(ubench, stack)
    host, recorded_port = _endpoint(workdir, "redis-slurm", "cache")
    pinged = subprocess.run(
        [redis_cli, "-h", host, "-p", str(recorded_port), "PING"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    url = ubench("output", "cache.url", "-s", str(stack)).stdout.strip()

    assert "service.cache[0]: healthy" in applied.stderr
    assert host in NODES
    assert recorded_port == port
    assert pinged.returncode == 0, pinged.stderr
    assert pinged.stdout.strip() == "PONG"
    assert url == f"redis://{host}:{port}"


def _psql(
    bin_dir: Path, host: str, port: int, password: str, sql: str
) -> subprocess.CompletedProcess[str]:
    """Run ``sql`` over TCP as the superuser, with ``password``."""
    return subprocess.run(
        [
            str(bin_dir / "psql"),
            "--no-psqlrc",
            "-h",
            host,
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


def test_postgres_slurm_runs_select(
    postgres_base: Path,  # noqa: F811
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    slurm_cluster: SlurmCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = _postgres_bin_dir()
    # The jobs run as the submitting user, and postgres exits when run as root.
    run_as = "postgres" if os.geteuid() == 0 else ""
    password = "pg-slurm-password-4b7e"
    monkeypatch.setenv("POSTGRES_PASSWORD", password)
    port = free_port()
    stack = _write(
        workdir / "postgres.yaml",
        f"""\
name: postgres-slurm
target: {{kind: slurm}}
services:
  db:
    recipe: postgres
    runtime: host
    params:
      bin_dir: {bin_dir}
      run_as: "{run_as}"
      data_dir: {postgres_base / "cluster"}
      extra_args: "-c shared_buffers=32MB -c max_connections=20"
    ports: {{postgres: {port}}}
    {SMALL}
""",
        cleanup_stacks,
    )

    applied = _apply(ubench, stack)
    host, recorded_port = _endpoint(workdir, "postgres-slurm", "db")
    selected = _psql(bin_dir, host, recorded_port, password, "SELECT 1")
    wrong = _psql(bin_dir, host, recorded_port, "not-the-password", "SELECT 1")

    assert "service.db[0]: healthy" in applied.stderr
    assert host in NODES
    assert recorded_port == port
    assert selected.returncode == 0, selected.stderr
    assert selected.stdout.strip() == "1"
    # Only the node's Unix socket is trusted: TCP needs the password.
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr


@pytest.mark.slow
def test_chroma_slurm_serves_heartbeat(
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    slurm_cluster: SlurmCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # sbatch gives the job the submitting environment, so the chroma command
    # of this interpreter's environment is found through PATH in the job.
    scripts = str(Path(PYTHON).parent)
    monkeypatch.setenv("PATH", f"{scripts}{os.pathsep}{os.environ['PATH']}")
    _require("chroma", "none: pip install chromadb")
    port = free_port()
    stack = _write(
        workdir / "chroma.yaml",
        f"""\
name: chroma-slurm
target: {{kind: slurm}}
services:
  vectors:
    recipe: chroma
    runtime: host
    ports: {{http: {port}}}
    {SMALL}
""",
        cleanup_stacks,
    )

    applied = _apply(ubench, stack)
    host, recorded_port = _endpoint(workdir, "chroma-slurm", "vectors")
    status, body = _get(host, recorded_port, "/api/v2/heartbeat")

    assert "service.vectors[0]: healthy" in applied.stderr
    assert host in NODES
    assert recorded_port == port
    assert status == 200
    assert "nanosecond heartbeat" in json.loads(body)
    assert (workdir / "state" / "chroma-slurm" / "vectors-0" / "chroma").is_dir()


# Prometheus and file_sd ---------------------------------------------------

# Prometheus and the exporter are pinned to different nodes, because Slurm
# usually puts both small jobs on node1. The exporter listens on its node's
# address only, so Prometheus must scrape that address.
PROMETHEUS_STACK = """\
name: prometheus-slurm
target: {{kind: slurm}}
services:
  prometheus:
    recipe: prometheus
    runtime: host
    params: {{scrape_interval: 1s}}
    ports: {{http: {prometheus_port}}}
    slurm: {{extra_directives: [--nodelist=node1]}}
    {small}
{exporter}"""

EXPORTER = """\
  exporter:
    command: |
      mkdir -p public
      printf '# TYPE ubench_slurm_value gauge\\nubench_slurm_value 7\\n' \\
        > public/metrics
      exec "{python}" -m http.server {{{{ port }}}} --bind "$(hostname)" \\
        --directory public
    ports: {{http: {exporter_port}}}
    health: {{type: http, path: /metrics, interval_s: 0.2}}
    metrics: {{path: /metrics, labels: {{team: bench}}}}
    slurm: {{extra_directives: [--nodelist=node2]}}
    {small}
"""


def _targets(host: str, port: int) -> list[dict[str, Any]]:
    """Return the active scrape targets of the Prometheus at ``host``."""
    status, body = _get(host, port, "/api/v1/targets?state=active")
    assert status == 200, body
    targets: list[dict[str, Any]] = json.loads(body)["data"]["activeTargets"]
    return targets


def _query(host: str, port: int, expression: str) -> list[dict[str, Any]]:
    """Return the result of an instant query to the Prometheus at ``host``."""
    query = urllib.parse.urlencode({"query": expression})
    status, body = _get(host, port, f"/api/v1/query?{query}")
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def test_prometheus_slurm_follows_file_sd(
    workdir: Path,
    ubench: Callable[..., Result],
    cleanup_stacks: list[str],
    slurm_cluster: SlurmCluster,
) -> None:
    _require("prometheus", "prometheus")
    prometheus_port = free_port()
    exporter_port = free_port()
    path = workdir / "prometheus.yaml"

    def write_stack(with_exporter: bool) -> Path:
        exporter = (
            EXPORTER.format(python=PYTHON, exporter_port=exporter_port, small=SMALL)
            if with_exporter
            else ""
        )
        text = PROMETHEUS_STACK.format(
            prometheus_port=prometheus_port, small=SMALL, exporter=exporter
        )
        return _write(path, text, cleanup_stacks)

    stack = write_stack(with_exporter=True)
    _apply(ubench, stack)
    host, port = _endpoint(workdir, "prometheus-slurm", "prometheus")
    exporter_host, _ = _endpoint(workdir, "prometheus-slurm", "exporter")
    file_sd = workdir / "state" / "prometheus-slurm" / "file_sd" / "exporter-0.json"

    def exporter_up() -> dict[str, Any] | None:
        for target in _targets(host, port):
            if target["labels"].get("job") == "exporter" and target["health"] == "up":
                return target
        return None

    target = _wait_until(exporter_up, "Prometheus to scrape the exporter")
    samples = _wait_until(
        lambda: _query(host, port, 'ubench_slurm_value{job="exporter"}'),
        "the exporter's sample",
    )

    assert host == "node1"
    assert exporter_host == "node2"
    assert json.loads(file_sd.read_text())[0]["targets"] == [
        f"{exporter_host}:{exporter_port}"
    ]
    assert target["scrapeUrl"] == f"http://{exporter_host}:{exporter_port}/metrics"
    assert target["labels"]["ubench_address"] == "service.exporter[0]"
    assert target["labels"]["team"] == "bench"
    assert samples[0]["value"][1] == "7"

    _apply(ubench, write_stack(with_exporter=False))
    addresses = [r["address"] for r in _state(workdir, "prometheus-slurm")["resources"]]
    _wait_until(
        lambda: all(t["labels"].get("job") != "exporter" for t in _targets(host, port)),
        "Prometheus to drop the removed exporter",
    )
    remaining = {t["labels"]["job"] for t in _targets(host, port)}

    assert addresses == ["service.prometheus[0]"]
    assert not file_sd.exists()
    assert remaining == {"prometheus"}
