"""Time and memory of planning a stack of N services, without a cluster.

Measures the whole offline pipeline that `ubench plan` runs before any target
query: load and validate the stack, resolve every replica, diff, and render
every batch script. Run: .venv/bin/python benchmarks/bench_plan.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import yaml

from ubench_iac.plan import make_plan
from ubench_iac.workspace import Workspace

SIZES = (10, 100, 500)
REPEATS = 5


def write_stack(directory: Path, services: int) -> Path:
    body = {
        "name": "bench",
        "target": {"kind": "slurm", "profile": "meluxina", "account": "p200000"},
        "services": {
            f"svc{i}": {
                "image": "docker://redis:7.2.4",
                "command": ["redis-server", "--port", "{{ port }}"],
                "ports": {"redis": "auto"},
                "environment": {"MODE": "bench", "INDEX": str(i)},
                "resources": {"cpus": 2, "mem_gb": 4, "time_limit": "1:00:00"},
                "health": {"type": "tcp"},
                "depends_on": [f"svc{i - 1}"] if i else [],
                "outputs": {"url": "redis://{{ host }}:{{ port }}"},
            }
            for i in range(services)
        },
    }
    path = directory / f"bench-{services}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def plan_once(path: Path, state: Path) -> int:
    workspace = Workspace.open(path, state)
    plan = make_plan(workspace.loaded, None, workspace.target)
    return len(plan.changes)


def main() -> None:
    print(f"{'services':>8} {'median s':>9} {'min s':>7} {'peak MiB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for size in SIZES:
            path = write_stack(directory, size)
            timings = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                assert plan_once(path, directory / "state.json") == size
                timings.append(time.perf_counter() - started)
            tracemalloc.start()
            plan_once(path, directory / "state.json")
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(
                f"{size:>8} {statistics.median(timings):>9.3f} "
                f"{min(timings):>7.3f} {peak / 2**20:>9.1f}"
            )


if __name__ == "__main__":
    main()
