"""``finetune_lora``: fine-tune a causal LM with LoRA adapters on chats or prompt /
completion pairs, and publish the adapter for ``generate`` (served hot on its base). The
declaration the job service, the submit check, the CLI and the platforms read instead of
naming the task: params schema, estimate, train, hardware class.

Hardware: ``gpu`` (a GPU worker on Modal and RunPod; the estimate suggests the cheapest GPU
the job fits on, and says so). The local gateway trains on what it has: CUDA when there
is one, else the CPU in fp32.

Key rule: declaring the task imports no torch, transformers or PEFT (the estimate and the
trainer are imported inside :meth:`FinetuneLoraTask.estimate` / :meth:`FinetuneLoraTask.train`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from fnbundle.tasks.base import Hardware, TrainingTask
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams

if TYPE_CHECKING:
    from fnbundle.platforms.estimates import Estimate
    from fnbundle.settings import Settings
    from fnbundle.training.control import TrainControl
    from fnbundle.training.lora import LoraResult

SLUG = "finetune_lora"


class FinetuneLoraTask(TrainingTask[FinetuneLoraParams]):
    slug: ClassVar[str] = SLUG
    serves: ClassVar[str] = "generate"
    summary: ClassVar[str] = (
        "Fine-tune a causal LM with LoRA on chats or prompt/completion pairs; publish the adapter."
    )
    example: ClassVar[dict[str, Any]] = {
        "data": "support_chat.jsonl",
        "name": "support-bot",
        "base": "hf:HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    params_model = FinetuneLoraParams
    hardware: ClassVar[Hardware] = "gpu"

    def estimate(
        self, params: FinetuneLoraParams, settings: Settings, *, platform: str, gpu: str | None
    ) -> Estimate:
        from fnbundle.tasks.finetune_lora.estimate import estimate_lora

        return estimate_lora(params, settings, platform=platform, gpu=gpu)

    def train(
        self,
        params: FinetuneLoraParams,
        settings: Settings,
        on_event: Callable[[Any], None],
        control: TrainControl,
    ) -> LoraResult:
        from fnbundle.training.lora import finetune_lora

        return finetune_lora(params, settings, on_event, control)


__all__ = ["SLUG", "FinetuneLoraParams", "FinetuneLoraTask"]
