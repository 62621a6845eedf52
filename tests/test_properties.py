"""Property-based tests: any input fails only with ubench's own errors, and no
rendered value escapes its shell quoting."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ubench_iac.errors import UbenchError
from ubench_iac.loader import load_stack
from ubench_iac.models import TargetConfig
from ubench_iac.plan import make_plan
from ubench_iac.render import ScriptPaths, env_file_text, render_batch_script
from ubench_iac.resolve import Resolver
from ubench_iac.workspace import Workspace

FIELDS = [
    "name",
    "services",
    "recipes",
    "variables",
    "target",
    "command",
    "args",
    "environment",
    "ports",
    "binds",
    "resources",
    "health",
    "depends_on",
    "replicas",
    "outputs",
    "image",
    "runtime",
    "time_limit",
    "nodes",
    "gpus",
    "secret",
    "value",
    "from_env",
    "kind",
    "web",
    "db",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["{{ port }}", "{{ var.x }}", "{{", "1:30:00", "auto", "host"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _load_and_plan(path: Path) -> None:
    workspace = Workspace.open(path, path.parent / "state.json")
    make_plan(workspace.loaded, None, workspace.target)


@SETTINGS
@given(document=documents)
def test_any_document_fails_only_with_ubench_errors(
    document: Any, tmp_path: Path
) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "services": document}))
    with contextlib.suppress(UbenchError):
        _load_and_plan(path)


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_fails_only_with_ubench_errors(text: str, tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    with contextlib.suppress(UbenchError):
        _load_and_plan(path)


# Values a program can receive: any text without NUL.
argument = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(words=st.lists(argument, min_size=1, max_size=5), value=argument)
def test_rendered_values_never_escape_quoting(
    words: list[str], value: str, tmp_path: Path
) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "quoting",
                "services": {
                    "echo": {
                        "command": [
                            "/bin/bash",
                            "-c",
                            'printf "%s\\0" "$@"; printf "%s" "$VALUE" >&2',
                            "argv0",
                            *words,
                        ],
                        "environment": {"VALUE": value},
                    }
                },
            }
        )
    )
    try:
        loaded = load_stack(path)
        resource = Resolver(loaded, tmp_path / "run", "key").resolve("echo", 0, {})
    except UbenchError:
        # Template syntax in generated text is rejected cleanly; nothing to run.
        return

    paths = ScriptPaths(
        script=tmp_path / "job.sh",
        log=tmp_path / "log",
        env_file=tmp_path / "secrets.env",
    )
    script = render_batch_script(resource, TargetConfig(), "token", paths)
    (tmp_path / "job.sh").write_text(script)
    # Values with commas go to the env file, which submit writes beside it.
    paths.env_file.write_text(env_file_text(resource))
    result = subprocess.run(
        ["/bin/bash", str(tmp_path / "job.sh")], capture_output=True, check=True
    )
    expected = resource.spec["command"]["argv"][4:]
    assert result.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1] == expected
    assert (
        result.stderr.decode("utf-8", "surrogateescape")
        == (resource.spec["environment"]["VALUE"])
    )
