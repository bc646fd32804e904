"""``train_tabular``: train one of 13 models on a table, or compare them, and publish the
best for ``predict``. The declaration the job service, the submit check, the CLI and the
platforms read: params schema, estimate, train, hardware class.

Hardware: the scikit-learn models run on CPU cores, so the task's class is ``cpu`` (a CPU
worker on Modal and RunPod); a job that asks for ``device=cuda`` (its MLPs train there,
a compare run's other models on the GPU worker's cores) goes to the GPU class instead
(:meth:`TrainTabularTask.hardware_for`), which is where a GPU pays off: an MLP on a large
table. The estimate says which at submit.

Key rule: declaring the task imports no pandas, scikit-learn or torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from fnbundle.tasks.base import Hardware, TrainingTask
from fnbundle.tasks.train_tabular.params import TrainTabularParams

if TYPE_CHECKING:
    from fnbundle.platforms.estimates import Estimate
    from fnbundle.settings import Settings
    from fnbundle.training.control import TrainControl
    from fnbundle.training.tabular import TabularResult

SLUG = "train_tabular"


class TrainTabularTask(TrainingTask[TrainTabularParams]):
    slug: ClassVar[str] = SLUG
    serves: ClassVar[str] = "predict"
    summary: ClassVar[str] = (
        "Train one of 13 models on a table (or compare them) and publish the best."
    )
    example: ClassVar[dict[str, Any]] = {"data": "churn.csv", "name": "churn"}
    params_model = TrainTabularParams
    hardware: ClassVar[Hardware] = "cpu"

    def hardware_for(self, params: dict[str, Any]) -> Hardware:
        """``gpu`` for a job asking for CUDA (a CPU worker could not honour it), ``cpu``
        otherwise."""
        if params.get("device") == "cuda":
            return "gpu"
        return self.hardware

    def estimate(
        self, params: TrainTabularParams, settings: Settings, *, platform: str, gpu: str | None
    ) -> Estimate:
        from fnbundle.tasks.train_tabular.estimate import estimate_tabular

        return estimate_tabular(
            params,
            settings,
            platform=platform,
            gpu=gpu,
            hardware=self.hardware_for(params.model_dump(mode="json")),
        )

    def train(
        self,
        params: TrainTabularParams,
        settings: Settings,
        on_event: Callable[[Any], None],
        control: TrainControl,
    ) -> TabularResult:
        from fnbundle.training.tabular import train_tabular

        return train_tabular(params, settings, on_event, control)


__all__ = ["SLUG", "TrainTabularParams", "TrainTabularTask"]
