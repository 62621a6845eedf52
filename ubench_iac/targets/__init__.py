"""Targets that run services: local processes, Slurm jobs, Kubernetes."""
