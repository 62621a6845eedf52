"""ubench: declarative deployment of benchmark services on HPC clusters."""

__version__ = "0.1.0"
