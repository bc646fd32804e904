"""Training jobs: one vocabulary (:mod:`.schema`) for every runtime, and the local runtime
(:mod:`.manager` schedules, :mod:`.worker` trains in its own process, :mod:`.db` keeps the
state in SQLite).

Key rule: importing this package imports neither torch nor the trainer; a gateway that
never trains pays nothing for it. ``from fnbundle.jobs.manager import JobManager``.
"""

from fnbundle.jobs.schema import (
    RETRYABLE,
    TERMINAL,
    TRANSITIONS,
    Job,
    JobEvent,
    JobStatus,
    JobSubmit,
    Progress,
)

__all__ = [
    "RETRYABLE",
    "TERMINAL",
    "TRANSITIONS",
    "Job",
    "JobEvent",
    "JobStatus",
    "JobSubmit",
    "Progress",
]
