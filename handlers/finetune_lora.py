"""RunPod worker for ``finetune_lora``: one job fine-tunes a causal LM with LoRA on chats
or prompt / completion pairs, publishes the adapter for ``generate`` and streams its
progress (a GPU endpoint: bf16, or 4-bit QLoRA with bitsandbytes).

It is a :class:`~fnbundle.runpod_training.TrainingWorker` (the input, the events it
streams, cancel, resume and the GPU check are described there); this file names its
endpoint in deploy/endpoints.toml and the packages it imports before its first job.

    python handlers/finetune_lora.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8013

Key rule: importing this file loads nothing heavy; ``setup()`` under ``__main__`` imports
the stack once per worker.
"""

from __future__ import annotations

from fnbundle.runpod_training import TrainingWorker

worker = TrainingWorker("finetune_lora", ("torch", "transformers", "peft"))
setup = worker.setup
handler = worker.handler

if __name__ == "__main__":
    worker.start()
