"""Batch-script rendering: golden files, argument order and shell quoting."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_golden
from ubench_iac.loader import load_stack
from ubench_iac.models import TargetConfig
from ubench_iac.render import ScriptPaths, render_batch_script
from ubench_iac.resolve import DesiredResource, Resolver

GOLDEN = Path(__file__).parent / "golden"
TOKEN = "ubench:00000000-0000-0000-0000-000000000000:service.x[0]:0123456789ab"
RUN_ROOT = Path("/scratch/ubench/golden")

GOLDEN_STACK = """\
name: golden
target:
  kind: slurm
  account: p200000
  partition: cpu
  gpu_partition: gpu
  qos: default
  modules: [env/release/2024.1, Apptainer]
  image_cache: /project/scratch/p200000/cache
services:
  host-argv:
    command: [/usr/bin/python3, -m, http.server, "{{ port }}"]
    ports: {http: 8000}
    environment: {MODE: "fast run", PLAIN: "1"}
    resources: {cpus: 2, mem_gb: 4, time_limit: "1:30:00"}
  host-script:
    command: |
      echo "starting on $(hostname)"
      exec sleep infinity
    resources: {time_limit: 90}
  llm:
    image: docker://vllm/vllm-openai:v0.6.3.post1
    command: [vllm, serve, facebook/opt-125m, --port, "{{ port }}"]
    ports: {http: 8001}
    binds: [/project/scratch/hf:/hf, "/etc/ssl/certs:/etc/ssl/certs:ro"]
    environment:
      HF_HOME: /hf
      NCCL_IB_HCA: "mlx5_0,mlx5_1"
      HF_TOKEN: {value: not-a-real-token, secret: true}
    resources: {gpus: 4, gpu_type: a100, mem_gb: 120, time_limit: "2-00:00:00"}
  packaged:
    image: /project/images/redis.sif
    ports: {redis: 6379}
  busybox:
    runtime: charliecloud
    image: /scratch/images/busybox
    command: [/bin/busybox, httpd, -f, -p, "{{ port }}"]
    ports: {http: 8080}
    binds: [/scratch/www:/www]
  ray:
    command: |
      if [ "$SLURM_PROCID" = 0 ]; then exec ray start --head --block; fi
      exec ray start --address "$HEAD:6379" --block
    resources: {nodes: 3, tasks_per_node: 1, cpus: 8}
"""


@pytest.fixture(scope="module")
def resources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DesiredResource]:
    path = tmp_path_factory.mktemp("golden") / "golden.yaml"
    path.write_text(GOLDEN_STACK)
    loaded = load_stack(path)
    resolver = Resolver(loaded, RUN_ROOT, secret_key="golden")
    return {name: resolver.resolve(name, 0, {}) for name in loaded.order}


def _render(resource: DesiredResource, config: TargetConfig) -> str:
    paths = ScriptPaths(
        script=resource.run_dir / "job.sh",
        log=resource.run_dir / "service.log",
        env_file=resource.run_dir / "secrets.env",
    )
    return render_batch_script(resource, config, TOKEN, paths)


def _config() -> TargetConfig:
    return TargetConfig(
        kind="slurm",
        account="p200000",
        partition="cpu",
        gpu_partition="gpu",
        qos="default",
        modules=["env/release/2024.1", "Apptainer"],
        image_cache="/project/scratch/p200000/cache",
    )


@pytest.mark.parametrize(
    "service", ["host-argv", "host-script", "llm", "packaged", "busybox", "ray"]
)
def test_render_matches_golden(
    service: str, resources: dict[str, DesiredResource]
) -> None:
    assert_golden(f"{service}.sh", _render(resources[service], _config()))


def test_render_is_pure(resources: dict[str, DesiredResource]) -> None:
    first = _render(resources["llm"], _config())
    second = _render(resources["llm"], _config())
    assert first == second


def _apptainer_words(script: str) -> list[str]:
    line = script[script.index("exec apptainer") :]
    words = shlex.split(line.replace("\\\n", " ").splitlines()[0])
    return words[1:]


def test_apptainer_options_come_before_image(
    resources: dict[str, DesiredResource],
) -> None:
    words = _apptainer_words(_render(resources["llm"], _config()))
    image = "/project/scratch/p200000/cache/vllm_vllm-openai_v0.6.3.post1.sif"
    position = words.index(image)
    options = words[2:position]
    assert words[:2] == ["apptainer", "exec"]
    assert all(word.startswith("--") or words[i + 1] for i, word in enumerate(options))
    assert words[position + 1 :] == [
        "vllm",
        "serve",
        "facebook/opt-125m",
        "--port",
        "8001",
    ]
    assert "--nv" in options
    assert "--cleanenv" in options
    assert options[options.index("--bind") + 1] == "/project/scratch/hf:/hf"
    assert "/etc/ssl/certs:/etc/ssl/certs:ro" in options
    assert "HF_HOME=/hf" in options
    assert "--env-file" in options


def test_apptainer_without_gpus_has_no_nv(
    resources: dict[str, DesiredResource],
) -> None:
    script = _render(resources["packaged"], _config())
    words = _apptainer_words(script)
    assert words[:2] == ["apptainer", "run"]
    assert "--nv" not in words
    assert "apptainer pull" not in script
    assert "--partition=cpu" in script


def test_gpu_service_goes_to_gpu_partition(
    resources: dict[str, DesiredResource],
) -> None:
    script = _render(resources["llm"], _config())
    assert "#SBATCH --partition=gpu\n" in script
    assert "#SBATCH --gres=gpu:a100:4\n" in script
    assert "#SBATCH --time=2880\n" in script


def test_secret_and_comma_values_go_to_env_file(
    resources: dict[str, DesiredResource],
) -> None:
    script = _render(resources["llm"], _config())
    assert "not-a-real-token" not in script
    assert "mlx5_0,mlx5_1" not in script
    assert "--env-file /scratch/ubench/golden/llm-0/secrets.env" in script


def test_unset_values_get_no_directive(
    resources: dict[str, DesiredResource],
) -> None:
    script = _render(resources["host-script"], TargetConfig(kind="slurm"))
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    flags = {line.split()[1].split("=")[0] for line in directives}
    assert flags == {
        "--job-name",
        "--comment",
        "--output",
        "--open-mode",
        "--nodes",
        "--ntasks-per-node",
        "--cpus-per-task",
        "--time",
    }
    assert all(not line.endswith("=") for line in directives)


HOSTILE = [
    "spaces in value",
    "quote ' and \" both",
    "semicolon; echo pwned",
    "$(echo pwned) `echo pwned` ${HOME}",
    "new\nline",
    "unicode ✓ ünïcödé",
    "-dash-leading",
    "back\\slash",
]


def _run_hostile(tmp_path: Path, command: list[str]) -> bytes:
    """Render a host service with hostile values, run the script, return stdout."""
    import yaml

    stack = tmp_path / "hostile.yaml"
    stack.write_text(
        yaml.safe_dump(
            {
                "name": "hostile",
                "services": {
                    "echo": {
                        "command": command,
                        "environment": {f"V{i}": v for i, v in enumerate(HOSTILE)},
                        "workdir": str(tmp_path / "dir with space"),
                    }
                },
            }
        )
    )
    loaded = load_stack(stack)
    resource = Resolver(loaded, tmp_path / "run root", "k").resolve("echo", 0, {})
    script = _render(resource, TargetConfig(kind="local"))
    (tmp_path / "dir with space").mkdir(exist_ok=True)
    (tmp_path / "job.sh").write_text(script)
    result = subprocess.run(
        ["/bin/bash", str(tmp_path / "job.sh")], capture_output=True, check=True
    )
    assert b"pwned" not in result.stderr
    return result.stdout


def test_hostile_argv_never_escapes_quoting(tmp_path: Path) -> None:
    output = _run_hostile(tmp_path, ["/usr/bin/printf", "%s\\0", *HOSTILE])
    assert output.decode().split("\0")[:-1] == HOSTILE


def test_hostile_environment_never_escapes_quoting(tmp_path: Path) -> None:
    output = _run_hostile(tmp_path, ["/usr/bin/env", "-0"])
    environment = dict(
        item.split("=", 1) for item in output.decode().split("\0") if "=" in item
    )
    for i, value in enumerate(HOSTILE):
        assert environment[f"V{i}"] == value


def test_multi_node_apptainer_passes_task_variables(tmp_path: Path) -> None:
    """Each srun task hands its own SLURM_NODEID to the container."""
    import re

    stack = tmp_path / "wide.yaml"
    stack.write_text(
        "name: wide\nservices:\n  ray:\n    image: docker://rayproject/ray:2.9.0\n"
        "    command: [ray, start, --block]\n    resources: {nodes: 2}\n"
    )
    loaded = load_stack(stack)
    resource = Resolver(loaded, tmp_path / "run", "k").resolve("ray", 0, {})
    script = _render(resource, _config())
    wrapper = re.search(r"/bin/bash -c ('.*?') ubench-task", script)
    assert wrapper is not None
    assert "srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=1" in script

    result = subprocess.run(
        f"/bin/bash -c {wrapper.group(1)} ubench-task /usr/bin/env",
        shell=True,
        env={"SLURM_NODEID": "1", "SLURM_PROCID": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "APPTAINERENV_SLURM_NODEID=1\n" in result.stdout
    assert "APPTAINERENV_SLURM_PROCID=1\n" in result.stdout
