"""Every task fnbundle serves or trains, in one registry: ``REGISTRY``.

A task is a folder here (``classify/``, ``embed/``, ...) declaring a
:class:`~fnbundle.tasks.base.ServingTask` or :class:`~fnbundle.tasks.base.TrainingTask`.
The gateway's routes, the models routes, readiness, loading, deploy and the endpoint
declarations read this registry instead of naming tasks.

Key rule: importing the registry imports no onnxruntime, torch or transformers; a task
imports them inside ``load`` / ``train``. Adding a task is one line below, plus its folder,
its ``functions/<slug>.py`` and ``handlers/<slug>.py``, its entry in deploy/endpoints.toml
and a contract fixture (tests/unit/test_registry.py fails until all exist).
"""

from __future__ import annotations

from fnbundle.tasks.base import Registry, ServingTask, TrainingTask
from fnbundle.tasks.classify.serve import ClassifyTask
from fnbundle.tasks.embed.serve import EmbedTask
from fnbundle.tasks.finetune_lora import FinetuneLoraTask
from fnbundle.tasks.generate.serve import GenerateTask
from fnbundle.tasks.predict.serve import PredictTask
from fnbundle.tasks.train_classifier import TrainClassifierTask
from fnbundle.tasks.train_tabular import TrainTabularTask

REGISTRY = Registry()
REGISTRY.add(ClassifyTask())
REGISTRY.add(EmbedTask())
REGISTRY.add(GenerateTask())
REGISTRY.add(PredictTask())
REGISTRY.add(TrainClassifierTask())
REGISTRY.add(TrainTabularTask())
REGISTRY.add(FinetuneLoraTask())

__all__ = ["REGISTRY", "Registry", "ServingTask", "TrainingTask"]
