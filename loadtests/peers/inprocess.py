"""The benchmark's side of an in-process peer: a worker process (``inprocess_embed.py``
in the peer's own virtualenv) started once and driven over its stdin and stdout.

Key rule: the worker is a separate process only because the peer's packages cannot live
in the project's virtualenv; what it measures is the library called in its own process,
with no HTTP. It is always stopped (``close``), and a worker that dies or stays silent
past a deadline is reported with its log rather than waited for.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from loadgen import _stop

READY_TIMEOUT_S = 300.0  # seconds to import the library and load the model on a busy machine
RUN_GRACE_S = 120.0  # seconds past a run's warm-up and duration before it is declared hung


class InProcessPeer:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log_file: Path):
        self.name, self.log_file = name, log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_file.open("ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        ready = self._answer(READY_TIMEOUT_S)
        self.cold_start_s = time.perf_counter() - t0
        self.version: str = ready["version"]
        self.probe: list[float] = ready["probe"]

    def _answer(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            raise RuntimeError(
                f"{self.name} gave no answer in {timeout_s:.0f} s; see {self.log_file}"
            )
        return dict(json.loads(line))

    def run(self, texts: list[str], batch: int, duration_s: float, warmup_s: float) -> dict:
        """``batch`` texts a call for ``duration_s``: texts/s and the p50 of one call."""
        assert self.proc.stdin is not None
        command = {"texts": texts, "batch": batch, "duration": duration_s, "warmup": warmup_s}
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        return self._answer(warmup_s + duration_s + RUN_GRACE_S)

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the worker's loop ends at end of input
        _stop(self.proc)
        self._log.close()

    def __enter__(self) -> InProcessPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
