"""Kubernetes support: manifests, status mapping and API calls."""
