"""Named crash points for the crash-safety tests.

When the environment variable UBENCH_FAILPOINT names a point, the process kills
itself with SIGKILL on reaching it, exactly as a user's ``kill -9`` or a lost
login node would. Unset (always, outside tests), a failpoint does nothing.
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "UBENCH_FAILPOINT"

POINTS = frozenset({"before-submit", "after-submit", "health-wait", "destroy"})
"""Names of the steps at which apply and destroy can be killed."""


def failpoint(name: str) -> None:
    """SIGKILL this process if UBENCH_FAILPOINT is ``name``."""
    assert name in POINTS, name
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
