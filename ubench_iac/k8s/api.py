"""The Kubernetes API calls the target makes, through the kubernetes client."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from ubench_iac.errors import TargetError
from ubench_iac.k8s.manifest import API_TIMEOUT_S, CONTAINER_NAME, INSTALL_HINT
from ubench_iac.k8s.observe import newest_pods


def _api_error_message(exc: Any) -> str:
    """Return 'STATUS REASON: message' of an ApiException, message from its body."""
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            message = str(body)[:500]
    text = f"{exc.status} {exc.reason}"
    return f"{text}: {message}" if message else text


class KubernetesApi:
    """The Kubernetes API calls the target makes, with JSON in and out.

    Responses are read as the JSON the server sent (``_preload_content=False``),
    so the code works on the documented wire format whichever version of the
    ``kubernetes`` package built the client. Every failure raises TargetError
    with the HTTP status and reason; ``delete`` alone treats 404 as done.
    """

    def __init__(self, api_client: Any) -> None:
        client = _import_kubernetes().client
        self.api_client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    @classmethod
    def from_environment(cls) -> KubernetesApi:
        """Connect with the kubeconfig (``KUBECONFIG`` or ~/.kube/config).

        Inside a pod without a kubeconfig, the pod's service account is used.
        """
        kubernetes = _import_kubernetes()
        config = kubernetes.config
        try:
            # The package reads KUBECONFIG only when imported, so read it here.
            return cls(
                config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
            )
        except config.ConfigException as kubeconfig_error:
            configuration = kubernetes.client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException as incluster_error:
                raise TargetError(
                    "cannot configure the Kubernetes client: no usable kubeconfig "
                    f"({kubeconfig_error}) and not inside a pod "
                    f"({incluster_error}); set KUBECONFIG or create ~/.kube/config"
                ) from None
            return cls(kubernetes.client.ApiClient(configuration))

    def _call(
        self, verb: str, what: str, method: Callable[..., Any], *args: Any, **kw: Any
    ) -> Any:
        """Call one API method; raise TargetError on any failure."""
        kubernetes = _import_kubernetes()
        import urllib3

        logger.debug("kubernetes {} {}", verb, what)
        try:
            response = method(
                *args, _preload_content=False, _request_timeout=API_TIMEOUT_S, **kw
            )
            data = response.data
        except kubernetes.client.exceptions.ApiException as exc:
            raise ApiError(verb, what, exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TargetError(
                f"kubernetes {verb} {what}: cannot reach the API server: {exc}"
            ) from None
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise TargetError(
                f"kubernetes {verb} {what}: the API server sent invalid JSON: {exc}"
            ) from None

    def read_log(self, namespace: str, pod: str, lines: int) -> str:
        """Return the last ``lines`` lines of the service container's log."""
        kubernetes = _import_kubernetes()
        import urllib3

        what = f"{namespace}/{pod}"
        logger.debug("kubernetes read log {}", what)
        try:
            response = self._core.read_namespaced_pod_log(
                pod,
                namespace,
                container=CONTAINER_NAME,
                tail_lines=lines,
                _preload_content=False,
                _request_timeout=API_TIMEOUT_S,
            )
        except kubernetes.client.exceptions.ApiException as exc:
            raise ApiError("read log", what, exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TargetError(
                f"kubernetes read log {what}: cannot reach the API server: {exc}"
            ) from None
        return bytes(response.data).decode("utf-8", errors="replace")

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call(
            "list jobs",
            f"{namespace} -l {selector}",
            self._batch.list_namespaced_job,
            namespace,
            label_selector=selector,
        )
        return list(result.get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call(
            "list pods",
            f"{namespace} -l {selector}",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=selector,
        )
        return list(result.get("items") or [])

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Return a Job or Service, or None if there is none (HTTP 404)."""
        methods = {
            "Job": self._batch.read_namespaced_job,
            "Service": self._core.read_namespaced_service,
        }
        try:
            found: dict[str, Any] = self._call(
                f"read {kind.lower()}",
                f"{namespace}/{name}",
                methods[kind],
                name,
                namespace,
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def create(
        self, kind: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> None:
        """Create a Job, Service or Secret, or with ``dry_run`` only validate it."""
        methods = {
            "Job": self._batch.create_namespaced_job,
            "Service": self._core.create_namespaced_service,
            "Secret": self._core.create_namespaced_secret,
        }
        metadata = body["metadata"]
        extra = {"dry_run": "All"} if dry_run else {}
        self._call(
            f"create {kind.lower()}" + (" (dry run)" if dry_run else ""),
            f"{metadata['namespace']}/{metadata['name']}",
            methods[kind],
            metadata["namespace"],
            dict(body),
            **extra,
        )

    def replace_secret(self, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        self._call(
            "replace secret",
            f"{metadata['namespace']}/{metadata['name']}",
            self._core.replace_namespaced_secret,
            metadata["name"],
            metadata["namespace"],
            dict(body),
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an object; return False if there was none (HTTP 404)."""
        methods = {
            "Job": self._batch.delete_namespaced_job,
            "Service": self._core.delete_namespaced_service,
            "Secret": self._core.delete_namespaced_secret,
        }
        # Foreground: the Job stays, marked as being deleted, until its pod is
        # gone, so a refresh reports it as stopping rather than gone too soon.
        extra = {"propagation_policy": "Foreground"} if kind == "Job" else {}
        try:
            self._call(
                f"delete {kind.lower()}",
                f"{namespace}/{name}",
                methods[kind],
                name,
                namespace,
                **extra,
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


class ApiError(TargetError):
    """An API call that the server rejected with an HTTP error status."""

    def __init__(self, verb: str, what: str, exc: Any) -> None:
        self.status = int(exc.status or 0)
        self.reason = str(exc.reason or "")
        self.detail = _api_error_message(exc)
        super().__init__(f"kubernetes {verb} {what} failed: {self.detail}")


def _import_kubernetes() -> Any:
    try:
        import kubernetes
        import kubernetes.client
        import kubernetes.client.exceptions
        import kubernetes.config
    except ImportError as exc:
        raise TargetError(
            f"the kubernetes target needs the kubernetes package ({exc}): "
            f"{INSTALL_HINT}"
        ) from None
    return kubernetes


# The target -----------------------------------------------------------------------


class Listings:
    """Job and pod listings of one refresh, cached by namespace and selector."""

    def __init__(self, api: KubernetesApi) -> None:
        self.api = api
        self._jobs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._pods: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}

    def jobs(self, namespace: str, selector: str) -> dict[str, dict[str, Any]]:
        key = (namespace, selector)
        if key not in self._jobs:
            items = self.api.list_jobs(namespace, selector)
            self._jobs[key] = {str(job["metadata"]["name"]): job for job in items}
        return self._jobs[key]

    def pod(self, namespace: str, selector: str, job: str) -> Mapping[str, Any] | None:
        key = (namespace, selector)
        if key not in self._pods:
            self._pods[key] = newest_pods(self.api.list_pods(namespace, selector))
        return self._pods[key].get(job)
