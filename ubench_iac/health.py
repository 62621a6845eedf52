"""Readiness probes run from where ubench runs: HTTP, TCP or a command."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
from typing import Any

from loguru import logger


def probe(health: dict[str, Any] | None, host: str) -> tuple[bool, str]:
    """Run one probe of a resolved health check; return (healthy, detail)."""
    if health is None:
        return True, "no health check"
    kind = health["type"]
    port = health.get("port")
    timeout_s = float(health["timeout_s"])
    if kind == "tcp":
        return _tcp(host, int(port or 0), timeout_s)
    if kind == "http":
        return _http(host, int(port or 0), health["path"], timeout_s)
    return _command(health["command"], host, port, timeout_s)


def _tcp(host: str, port: int, timeout_s: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, f"tcp {host}:{port} accepts connections"
    except OSError as exc:
        return False, f"tcp {host}:{port}: {exc.strerror or exc}"


def _http(host: str, port: int, path: str, timeout_s: float) -> tuple[bool, str]:
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"GET http://{host}:{port}{path}: {exc}"
    finally:
        connection.close()
    healthy = 200 <= response.status < 400
    return healthy, f"GET http://{host}:{port}{path}: {response.status}"


def _command(
    command: str, host: str, port: int | None, timeout_s: float
) -> tuple[bool, str]:
    env = {**os.environ, "HOST": host, "PORT": "" if port is None else str(port)}
    argv = ["/bin/bash", "-c", command]
    logger.debug("health check {}", argv)
    try:
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return False, f"health command timed out after {timeout_s:g} s"
    detail = (result.stdout + result.stderr).strip().splitlines()[-1:] or [""]
    return (
        result.returncode == 0,
        f"health command exit {result.returncode} {detail[0]}",
    )
