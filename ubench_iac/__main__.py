"""Run the CLI as ``python -m ubench_iac``."""

from ubench_iac.cli import main

main()
