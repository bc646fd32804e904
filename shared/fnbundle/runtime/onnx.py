"""An ONNX Runtime session with the gateway's thread settings, and the load-failure rule.

Key rules: onnxruntime is imported when a session is built, never at import; a backend's
own exception while loading or warming up a model becomes
:class:`~fnbundle.errors.ArtifactCorrupt` naming the model and what failed (the first line
of the backend's message, without the artifact folder), never a 500 per request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fnbundle.errors import ArtifactCorrupt, FnbError
from fnbundle.settings import Settings
from fnbundle.store import Artifact

log = logging.getLogger(__name__)

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis; the row maximum is subtracted first, so large
    logits do not overflow ``exp``. The one definition: serving and the export's parity
    gate must score alike."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def session_options(settings: Settings) -> Any:
    """The gateway's ``SessionOptions``: ``FNB_THREADS`` intra-op threads, one inter-op
    thread (a request's graph is a chain: more threads only contend with the intra-op
    ones; parallel execution measured 0.68x), every graph optimization, and the spinning
    ``FNB_ONNX_SPINNING`` asks for: by default (``run``) the threads busy-wait between the
    operators of a forward pass and stop the moment it returns (``force_spinning_stop``),
    so a pass loses no time waking sleeping threads and the event loop gets the cores back
    between passes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.thread_count
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spinning = "0" if settings.onnx_spinning == "off" else "1"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    stop = "1" if settings.onnx_spinning == "run" else "0"
    options.add_session_config_entry("session.force_spinning_stop", stop)
    return options


def onnx_runner(path: str, settings: Settings) -> tuple[RunFn, set[str]]:
    """A function running the graph at ``path`` on named inputs (those the graph does not
    take are dropped), and the graph's input names, in a session of
    :func:`session_options`."""
    import onnxruntime as ort

    options = session_options(settings)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in inputs.items() if k in names}
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    return run, names


@contextmanager
def corrupt_on_error(artifact: Artifact | str, what: str) -> Iterator[None]:
    """Turn a backend's own exception into ArtifactCorrupt naming the model and ``what``.

    The backend's message is kept (its first line, without the artifact folder) because it
    says what is wrong (``INVALID_PROTOBUF``); the traceback stays in the log.
    """
    model_id = artifact if isinstance(artifact, str) else artifact.id
    try:
        yield
    except FnbError:
        raise
    except Exception as exc:
        log.warning("model %s: %s failed", model_id, what, exc_info=True)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(artifact, Artifact):
            detail = detail.replace(f"{artifact.path}{os.sep}", "").replace(str(artifact.path), "")
        reason = f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__
        raise ArtifactCorrupt(f"Model {model_id}: {what} failed ({reason}).") from None
