"""Loading stack files: every kind of bad input exits 1 with file, line and fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Result
from ubench_iac.errors import StackError, StackErrors, UbenchError
from ubench_iac.loader import load_stack

MALFORMED = Path(__file__).parent / "malformed"

# (file in tests/malformed, line of the error, words of the message, words of the fix)
CASES = [
    ("duplicate_key.yaml", 6, "duplicate key 'command'", "remove one"),
    ("sexagesimal.yaml", 6, "base-60 number 5400", "quote it: '1:30:00'"),
    ("yes_no.yaml", 7, "reads 'yes' as a boolean", "quote it ('yes')"),
    ("octal.yaml", 7, "reads 0755 as the number 493", "'0755'"),
    ("float_version.yaml", 7, "reads 1.10 as the number 1.1", "'1.10'"),
    ("unknown_field.yaml", 5, "unknown field 'comand'", "did you mean 'command'?"),
    ("unknown_nested_field.yaml", 7, "unknown field 'interval'", "'interval_s'"),
    ("cycle.yaml", 5, "dependency cycle", "remove one of these"),
    ("self_dependency.yaml", 5, "depends on itself", "remove it"),
    ("unknown_recipe.yaml", 5, "unknown recipe 'vlm'", "define it under 'recipes:'"),
    ("unknown_dependency.yaml", 5, "unknown service 'dbb'", "did you mean 'db'?"),
    ("missing_variable.yaml", 6, "'model' is undefined in var", "--var model="),
    ("undeclared_dependency.yaml", 7, "'api' is undefined", "to depends_on"),
    ("wrong_type.yaml", 7, "expected integer", None),
    ("bad_yaml.yaml", 5, "invalid YAML", "indentation"),
    ("no_command.yaml", 3, "has no command", "set 'command'"),
    ("hostile_name.yaml", 3, "invalid name 'web; rm -rf /'", "[A-Za-z]"),
    ("hostile_env_name.yaml", 7, "invalid name 'A=$(reboot)'", "[A-Za-z_]"),
    ("port_out_of_range.yaml", 6, "greater than the maximum of 65535", "1-65535"),
    ("port_collision.yaml", 9, "port 8000 is also fixed", "'auto'"),
    ("time_limit_float.yaml", 6, "got number 1.5", "1:30:00"),
    ("not_a_mapping.yaml", 1, "must contain a YAML mapping", None),
    ("apptainer_without_image.yaml", 5, "needs an image", "runtime: host"),
    ("bad_template.yaml", 5, "invalid template", "fix the syntax"),
    ("unknown_health_port.yaml", 8, "unknown port name 'grpc'", "http"),
    ("unknown_profile.yaml", 2, "unknown cluster profile", "meluxina"),
    ("endpoint_node_out_of_range.yaml", 6, "not a node of a 2-node job", "0 to 1"),
    ("unknown_health_type.yaml", 7, "invalid value 'grpc'", "http, tcp, command"),
    ("replicas_zero.yaml", 5, "less than the minimum of 1", "at least 1"),
    ("unknown_output.yaml", 8, "'nope' is undefined in services.api", "outputs"),
    ("bash_length_syntax.yaml", 4, "comment", "{% raw %}"),
    ("boolean_in_argv.yaml", 4, "expected string", "'false'"),
    ("hostile_partition.yaml", 6, "invalid value 'gpu\\n#SBATCH", "matching"),
    ("hostile_directive.yaml", 5, "invalid value '--reservation=x; rm", "matching"),
]


def _errors(path: Path) -> list[StackError]:
    try:
        load_and_resolve(path)
    except StackErrors as exc:
        return exc.errors
    except StackError as exc:
        return [exc]
    raise AssertionError(f"{path.name} loaded without error")


def load_and_resolve(path: Path) -> None:
    """Load a stack and resolve every replica, as plan does."""
    from ubench_iac.workspace import Workspace

    workspace = Workspace.open(path, path.parent / "state.json")
    from ubench_iac.plan import make_plan

    make_plan(workspace.loaded, None, workspace.target)


@pytest.mark.parametrize(("name", "line", "message", "fix"), CASES)
def test_malformed_stack_error(
    name: str, line: int, message: str, fix: str | None
) -> None:
    errors = _errors(MALFORMED / name)
    first = errors[0]
    assert first.file is not None
    assert first.file.endswith(name)
    assert first.line == line, first.render()
    assert message in first.message, first.render()
    if fix is not None:
        assert first.fix is not None, first.render()
        assert fix in first.fix, first.render()


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_malformed_stack_cli_exit(
    name: str, ubench: Callable[..., Result], workdir: Path
) -> None:
    result = ubench("validate", str(MALFORMED / name))
    assert result.exit_code == 1
    assert f"{name}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_malformed_stack_verbose_shows_traceback(
    ubench: Callable[..., Result], workdir: Path
) -> None:
    result = ubench("-v", "validate", str(MALFORMED / "cycle.yaml"))
    assert result.exit_code == 1
    assert "Traceback" in result.stderr


def test_every_malformed_file_has_a_case() -> None:
    listed = {case[0] for case in CASES}
    present = {path.name for path in MALFORMED.glob("*.yaml")}
    assert present == listed


def test_several_errors_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "name: many\nservices:\n  a:\n    command: [x]\n    ports: {http: on}\n"
        "    resources: {time_limit: 1:00}\n"
    )
    errors = _errors(path)
    assert [e.line for e in errors] == [5, 6]


def test_missing_stack_file(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="file not found"):
        load_stack(tmp_path / "absent.yaml")


def test_recipe_file_relative_to_stack(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "web.yaml").write_text(
        "command: [python3, -m, http.server, '{{ port }}']\n"
        "ports: {http: 8000}\nenvironment: {A: '1', B: '2'}\n"
    )
    (tmp_path / "stack.yaml").write_text(
        "name: withrecipe\nrecipes:\n  web: recipes/web.yaml\nservices:\n"
        "  site:\n    recipe: web\n    environment: {B: '3'}\n"
    )
    loaded = load_stack(tmp_path / "stack.yaml")
    service = loaded.services["site"].service
    assert service.command == ["python3", "-m", "http.server", "{{ port }}"]
    assert service.environment == {"A": "1", "B": "3"}


def test_recipe_file_error_names_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("command: [x]\nportz: {}\n")
    (tmp_path / "stack.yaml").write_text(
        "name: s\nrecipes:\n  r: bad.yaml\nservices:\n  a: {recipe: r}\n"
    )
    with pytest.raises(StackErrors) as caught:
        load_stack(tmp_path / "stack.yaml")
    error = caught.value.errors[0]
    assert error.file is not None
    assert error.file.endswith("bad.yaml")
    assert error.line == 2


def test_var_override_must_be_declared(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nvariables: {model: a}\nservices:\n  a: {command: [x]}\n")
    assert load_stack(path, {"model": "b"}).stack.variables["model"] == "b"
    with pytest.raises(UbenchError, match="--var modle is not a variable"):
        load_stack(path, {"modle": "b"})


@pytest.mark.parametrize(
    ("image", "warned"),
    [
        ("docker://redis:latest", True),
        ("docker://redis", True),
        ("docker://registry:5000/team/redis", True),
        ("docker://redis:7.2.4", False),
        ("docker://registry:5000/team/redis:7.2.4", False),
        ("docker://redis@sha256:" + "0" * 64, False),
        ("/project/images/redis.sif", False),
    ],
)
def test_floating_image_tag_warns(
    image: str, warned: bool, tmp_path: Path, ubench: Callable[..., Result]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nservices:\n  db:\n    image: {image}\n")
    result = ubench("validate", str(path))
    assert result.exit_code == 0, result.output
    assert ("has no pinned tag" in result.stderr) is warned
    if warned:
        assert f"{path}:4: image {image}" in result.stderr
