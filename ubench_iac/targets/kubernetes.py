"""Kubernetes target: each service is a batch/v1 Job of one pod, plus a Service.

``render`` writes the Job and, when the service has ports, a ClusterIP Service
from ``templates/k8s/*.yaml.j2``. ``submit`` creates exactly those objects, plus
a Secret that contains the secret environment values, so that these never
appear in the rendered manifest. The Job runs once (``backoffLimit: 0``) and its
``activeDeadlineSeconds`` enforces the time limit the way Slurm's walltime does.

Every object carries the label ``ubench.io/lineage``, so one list call covers
a refresh of the whole stack. The idempotency token is too long for a label
value and has characters that label values forbid, so it is the annotation
``ubench.io/token``.

NOTE: no Kubernetes API server runs where ubench is developed. The manifests
are pinned by golden files and the API calls are tested against a fake server
on loopback, never against a real cluster.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ubench_iac.errors import TargetError
from ubench_iac.k8s.api import ApiError, KubernetesApi, Listings
from ubench_iac.k8s.manifest import (
    DEFAULT_NAMESPACE,
    TOKEN_ANNOTATION,
    lineage_of,
    lineage_of_prefix,
    lineage_selector,
    object_name,
    render_manifest,
    secret_manifest,
    service_host,
)
from ubench_iac.k8s.observe import observe_job
from ubench_iac.models import TargetConfig
from ubench_iac.resolve import DesiredResource
from ubench_iac.status import Observation
from ubench_iac.targets.base import Handle, Scan, Submission, Target


class KubernetesTarget(Target):
    """Run each service as a Kubernetes Job of one pod, reached by a Service."""

    kind = "kubernetes"

    def __init__(
        self,
        config: TargetConfig,
        stack: str,
        workdir: Path,
        api: KubernetesApi | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        super().__init__(config, stack, workdir)
        self._api = api
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))

    @property
    def api(self) -> KubernetesApi:
        """The API client, made on first use so that rendering needs no cluster."""
        if self._api is None:
            self._api = KubernetesApi.from_environment()
        return self._api

    @property
    def namespace(self) -> str:
        return self.config.namespace or DEFAULT_NAMESPACE

    def predict_host(self, resource: DesiredResource | None = None) -> str | None:
        # A service with ports is reached through its Service's DNS name, known
        # before it runs; without ports only the pod IP exists, once it runs.
        if resource is None or not resource.ports:
            return None
        name = object_name(self.stack, resource.service, resource.index)
        return service_host(name, self.namespace)

    def script_path(self, resource: DesiredResource) -> Path:
        return resource.run_dir / "manifest.yaml"

    def render(self, resource: DesiredResource, token: str) -> str:
        return render_manifest(resource, self.config, self.stack, token)

    def submit(self, submission: Submission) -> Handle:
        resource = submission.resource
        token = submission.token
        documents = [doc for doc in yaml.safe_load_all(submission.script) if doc]
        job = next(doc for doc in documents if doc.get("kind") == "Job")
        namespace = str(job["metadata"]["namespace"])
        name = str(job["metadata"]["name"])
        handle: Handle = {
            "namespace": namespace,
            "job": name,
            "lineage": lineage_of(token),
        }
        # Kept for review and for kubectl. It contains no secret values.
        submission.script_path.parent.mkdir(parents=True, exist_ok=True)
        submission.script_path.write_text(submission.script, encoding="utf-8")

        secret = secret_manifest(resource, self.config, self.stack, token)
        if secret is not None:
            self._create_secret(secret)
        self._create_job(job, token)
        for document in documents:
            if document.get("kind") == "Service":
                self._create_service(document, token)
        return handle

    def _create_secret(self, secret: Mapping[str, Any]) -> None:
        try:
            self.api.create("Secret", secret)
        except ApiError as exc:
            if exc.status != 409:
                raise
            # An earlier run whose cleanup failed left it, so replace it.
            self.api.replace_secret(secret)

    def _create_job(self, job: Mapping[str, Any], token: str) -> None:
        """Create the Job, unless the very same Job (same token) exists already."""
        try:
            self.api.create("Job", job)
        except ApiError as exc:
            if exc.status != 409:
                raise
            namespace = job["metadata"]["namespace"]
            name = job["metadata"]["name"]
            other = _token_of(self.api.read("Job", namespace, name))
            if other == token:
                # An earlier submit of this spec created it and then failed.
                return
            raise TargetError(
                f"a Job named {name} already exists in namespace {namespace} "
                f"({other or 'without a ubench token'}): it may still be being "
                "deleted, or another service maps to the same name; wait, or "
                f"remove it with 'kubectl delete job -n {namespace} {name}'"
            ) from None

    def _create_service(self, service: Mapping[str, Any], token: str) -> None:
        try:
            self.api.create("Service", service)
        except ApiError as exc:
            if exc.status != 409:
                raise
            metadata = service["metadata"]
            namespace, name = metadata["namespace"], metadata["name"]
            if _token_of(self.api.read("Service", namespace, name)) == token:
                return
            # An earlier run left it, perhaps with other ports, so recreate it.
            self.api.delete("Service", namespace, name)
            self.api.create("Service", service)

    def test_submit(self, submission: Submission) -> str | None:
        """Ask the API server to validate and admit the objects without storing.

        A rejection (4xx: invalid field, quota, permission) is the objection;
        an unreachable or failing server raises TargetError. A name already
        taken (409) is no objection, because a replacement's old Job keeps the
        name until apply deletes it, and submit reports a real conflict.
        """
        for document in yaml.safe_load_all(submission.script):
            if not document:
                continue
            try:
                self.api.create(document["kind"], document, dry_run=True)
            except ApiError as exc:
                if exc.status == 409:
                    continue
                if 400 <= exc.status < 500:
                    return (
                        f"the API server rejects the {document['kind']}: {exc.detail}"
                    )
                raise
        return None

    def refresh(self, handles: Sequence[Handle]) -> list[Observation]:
        listings = Listings(self.api)
        return [self._observe(handle, listings) for handle in handles]

    def scan(self, handles: Sequence[Handle], prefix: str) -> Scan:
        """Observe ``handles`` and find the stack's Jobs from one Job listing."""
        listings = Listings(self.api)
        observations = [self._observe(handle, listings) for handle in handles]
        found = {
            token: (handle, self._observe(handle, listings))
            for token, handle in self._find(prefix, listings).items()
        }
        return Scan(observations=observations, found=found)

    def _observe(self, handle: Handle, listings: Listings) -> Observation:
        namespace, name = _handle_target(handle)
        selector = lineage_selector(handle.get("lineage"))
        job = listings.jobs(namespace, selector).get(name)
        pod = None
        if job is not None and not job["metadata"].get("deletionTimestamp"):
            pod = listings.pod(namespace, selector, name)
        return observe_job(job, pod, self._clock(), name, namespace)

    def cancel(self, handles: Sequence[Handle]) -> None:
        for handle in handles:
            namespace, name = _handle_target(handle)
            for kind in ("Job", "Service", "Secret"):
                self.api.delete(kind, namespace, name)

    def logs(self, handle: Handle, lines: int) -> str | None:
        """Return the tail of the log of the Job's newest pod, from the API."""
        namespace, job = _handle_target(handle)
        selector = lineage_selector(handle.get("lineage"))
        pod = Listings(self.api).pod(namespace, selector, job)
        if pod is None:
            raise TargetError(f"job {namespace}/{job} has no pod yet, so no log")
        return self.api.read_log(namespace, str(pod["metadata"]["name"]), lines)

    def find(self, prefix: str) -> Mapping[str, Handle]:
        return self._find(prefix, Listings(self.api))

    def _find(self, prefix: str, listings: Listings) -> dict[str, Handle]:
        """Return the Jobs whose token starts with ``prefix`` and are not deleted."""
        found: dict[str, Handle] = {}
        lineage = lineage_of_prefix(prefix)
        for job in listings.jobs(self.namespace, lineage_selector(lineage)).values():
            metadata = job["metadata"]
            token = _token_of(job)
            if not token or not token.startswith(prefix):
                continue
            if metadata.get("deletionTimestamp"):
                continue
            found[token] = {
                "namespace": str(metadata.get("namespace") or self.namespace),
                "job": str(metadata["name"]),
                "lineage": lineage_of_prefix(token),
            }
        return found


def _token_of(obj: Mapping[str, Any] | None) -> str | None:
    annotations = (obj or {}).get("metadata", {}).get("annotations") or {}
    token = annotations.get(TOKEN_ANNOTATION)
    return str(token) if token else None


def _handle_target(handle: Handle) -> tuple[str, str]:
    namespace = handle.get("namespace")
    name = handle.get("job")
    if not namespace or not name:
        raise TargetError(f"a Kubernetes handle without namespace or job: {handle}")
    return str(namespace), str(name)
