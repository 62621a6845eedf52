"""Slurm helpers: time limits, squeue output and job states."""
