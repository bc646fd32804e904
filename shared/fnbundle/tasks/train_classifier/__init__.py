"""``train_classifier``: fine-tune a text encoder into a classifier and publish it for
``classify``. The declaration the job service, the submit check, the CLI and the platforms
read instead of naming the task: params schema, estimate, train, hardware class.

Key rule: declaring the task imports no torch or transformers (the estimate and the trainer
are imported inside :meth:`TrainClassifierTask.estimate` / :meth:`TrainClassifierTask.train`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from fnbundle.tasks.base import Hardware, TrainingTask
from fnbundle.tasks.train_classifier.params import TrainClassifierParams

if TYPE_CHECKING:
    from fnbundle.platforms.estimates import Estimate
    from fnbundle.settings import Settings
    from fnbundle.training.control import TrainControl
    from fnbundle.training.text_classifier import TrainResult

SLUG = "train_classifier"


class TrainClassifierTask(TrainingTask[TrainClassifierParams]):
    slug: ClassVar[str] = SLUG
    serves: ClassVar[str] = "classify"
    summary: ClassVar[str] = "Fine-tune a text encoder into a classifier and publish it."
    example: ClassVar[dict[str, Any]] = {"data": "reviews.csv", "name": "sentiment"}
    params_model = TrainClassifierParams
    # Routed to GPU workers on Modal and RunPod (the local gateway trains on what it has).
    hardware: ClassVar[Hardware] = "gpu"

    def estimate(
        self,
        params: TrainClassifierParams,
        settings: Settings,
        *,
        platform: str,
        gpu: str | None,
    ) -> Estimate:
        from fnbundle.platforms.estimates import estimate_job

        return estimate_job(
            self.slug, params.model_dump(mode="json"), settings, platform=platform, gpu=gpu
        )

    def train(
        self,
        params: TrainClassifierParams,
        settings: Settings,
        on_event: Callable[[Any], None],
        control: TrainControl,
    ) -> TrainResult:
        from fnbundle.training.text_classifier import train_classifier

        return train_classifier(params, settings, on_event, control)


__all__ = ["SLUG", "TrainClassifierParams", "TrainClassifierTask"]
