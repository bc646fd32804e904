"""RunPod worker for ``train_tabular``: one job trains one of the 13
tabular models (or compares them), publishes the best for ``predict`` and streams its
progress (a CPU endpoint; MLP jobs on ``device=cuda`` go to the GPU endpoint's worker).

It is a :class:`~fnbundle.runpod_training.TrainingWorker` (the input, the events it
streams, cancel, resume and the GPU check are described there); this file names its
endpoint in deploy/endpoints.toml and the packages it imports before its first job.

    python handlers/train_tabular.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8012

Key rule: importing this file loads nothing heavy; ``setup()`` under ``__main__`` imports
the stack once per worker.
"""

from __future__ import annotations

from fnbundle.runpod_training import TrainingWorker

worker = TrainingWorker("train_tabular", ("sklearn", "skl2onnx", "pandas", "torch"))
setup = worker.setup
handler = worker.handler

if __name__ == "__main__":
    worker.start()
