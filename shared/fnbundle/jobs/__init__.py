"""Training jobs: one vocabulary (:mod:`.schema`) and one state machine (:mod:`.state`) for
every runtime; one job service (:mod:`.service`) over a store (:mod:`.stores`: SQLite, a
Modal Dict, the gateway's RunPod ledger) and a launcher per runtime (:mod:`.manager`'s
local worker processes, :mod:`.modal_backend`, :mod:`.runpod_backend`).

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
