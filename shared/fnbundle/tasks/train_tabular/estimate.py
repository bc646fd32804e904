"""What a ``train_tabular`` job will take, before it runs: its time and cost, and the
hardware it should get.

The table is read and its schema resolved as training will (so a bad dataset or target is
refused at submit), then each model's fit time is modelled from the training rows and the
encoded width (numbers, date parts and one-hot columns): linear in rows x width for most
models, quadratic in rows for a kernel SVM (sampled to its cap), times the folds of a
cross-validation on small tables. The per-model rates were measured on this project's
2-core benchmark machine (``loadtests/bench_tabular_compare.py``) and are scaled by the
cores a run gets for the models that use them all.

Hardware: CPU for the classic models; an MLP on ``device=cuda`` is priced on the GPU it
would get. The assumptions say when a GPU would pay off (an MLP on a large table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from fnbundle.platforms.catalogue import GIB, Platform, check_platform, cpu_usd_per_s
from fnbundle.settings import Settings
from fnbundle.tasks.base import Hardware
from fnbundle.tasks.train_tabular.params import NEURAL, TrainTabularParams

if TYPE_CHECKING:
    from fnbundle.platforms.estimates import Estimate

# Seconds per (training row x encoded column) on one core of the benchmark machine, per
# model (the MLPs: per epoch); ``svm`` per (row^2 x column), its prediction included.
# Measured by loadtests/bench_tabular_compare.py at 80k training rows x ~28 columns (2
# cores); gradient boosting below 10k rows is the classic variant, measured on the demo
# table. Good to within about 2x: an estimate, said as such.
SECONDS_PER_CELL = {
    "linear_regression": 1.5e-7,
    "ridge": 1e-7,
    "lasso": 1e-7,
    "elastic_net": 1e-7,
    "polynomial_regression": 6e-7,  # degree 2
    "logistic_regression": 3.3e-7,
    "naive_bayes": 1.1e-7,
    "decision_tree": 5e-7,
    "random_forest": 1.2e-5,  # 200 trees, classification; regression trees grow ~4x more
    "gradient_boosting": 2.7e-6,  # histogram-based, 200 iterations
    "mlp_classifier": 3.3e-7,  # per epoch
    "mlp_regressor": 3.3e-7,
}
MLP_EPOCH_OVERHEAD_S = 0.3  # an epoch's evaluation and checkpoint, whatever the rows
CLASSIC_BOOSTING_PER_CELL = 2e-5  # GradientBoosting, 200 trees of depth 3 (<= 10k rows)
REGRESSION_FOREST_FACTOR = 4.0
SVM_SECONDS_PER_CELL2 = 6e-9
MULTI_CORE = frozenset({"random_forest", "gradient_boosting"})  # n_jobs=-1 / OpenMP
GPU_SPEEDUP = 10.0  # an MLP's epochs on a GPU against this CPU (a guess, stated)
GPU_PAYS_OFF_S = 300.0  # CPU seconds of MLP training above which a GPU is suggested
OVERHEAD_S = 20.0  # read, schema, split, importances, ONNX export with parity, publish
CPU_CORES = 8  # a Modal / RunPod CPU training worker (deploy/endpoints.toml)
CPU_MEMORY_GIB = 16


def model_seconds(
    name: str, task: str, rows: int, width: int, cores: int, p: TrainTabularParams
) -> float:
    """One model's fit (and cross-validation on small tables), in seconds."""
    from fnbundle.training.tabular import CV_MAX_ROWS, SVM_MAX_ROWS
    from fnbundle.training.tabular_models import HIST_BOOSTING_ROWS

    cells = rows * width
    if name == "svm":
        kept = min(rows, SVM_MAX_ROWS)
        seconds = SVM_SECONDS_PER_CELL2 * kept * kept * width
    elif name in NEURAL:
        epochs = min(p.epochs, 3 * p.patience)  # early stopping ends most runs by then
        seconds = (SECONDS_PER_CELL[name] * cells + MLP_EPOCH_OVERHEAD_S) * epochs
    elif name == "gradient_boosting" and rows <= HIST_BOOSTING_ROWS:
        seconds = CLASSIC_BOOSTING_PER_CELL * cells * p.n_estimators / 200
    else:
        seconds = SECONDS_PER_CELL[name] * cells
        if name in {"random_forest", "gradient_boosting"}:
            seconds *= p.n_estimators / 200
        if name == "random_forest" and task == "regression":
            seconds *= REGRESSION_FOREST_FACTOR
    if name in MULTI_CORE:
        seconds /= max(cores, 1)
    if rows <= CV_MAX_ROWS and name not in NEURAL:
        seconds *= 1 + p.cv_folds * (1 - 1 / p.cv_folds)  # each fold fits (k-1)/k of the rows
    return seconds


def estimate_tabular(
    p: TrainTabularParams,
    settings: Settings,
    *,
    platform: str,
    gpu: str | None,
    hardware: Hardware,
) -> Estimate:
    from fnbundle.datasets import resolve_data
    from fnbundle.platforms.catalogue import get_gpu, recommend_gpu
    from fnbundle.platforms.estimates import Estimate, local_cores
    from fnbundle.tabular.features import FeatureSpec
    from fnbundle.tabular.read import read_table
    from fnbundle.tabular.schema import check_trainable, detect, resolve
    from fnbundle.training.tabular_models import models_for

    check_platform(platform)
    frame = read_table(resolve_data(p.data, settings))
    schema = resolve(detect(frame), target=p.target, task=p.task,
                     kinds=p.columns or None, exclude=p.exclude or None)  # fmt: skip
    check_trainable(frame, schema)
    assert schema.target is not None
    task = schema.target.task
    names = models_for(task, p)
    spec = FeatureSpec.from_schema(schema)
    distinct = {c.name: c.distinct or 1 for c in schema.columns}
    width = sum(  # one-hot: a column per category (plus one for missing), else per input
        min(distinct.get(f.name, 1), 1000) + 1 if f.kind == "categorical" else len(f.inputs)
        for f in spec.features
    )
    rows = round(schema.rows * (1 - p.test_split))
    cores = local_cores(settings) if platform == "local" else CPU_CORES
    per_model = {n: model_seconds(n, task, rows, width, cores, p) for n in names}
    mlp_cpu_s = sum(s for n, s in per_model.items() if n in NEURAL)
    assumptions = [
        f"{rows} training rows x {width} encoded columns; {len(names)} model(s): "
        + ", ".join(f"{n} ~{s:.0f} s" for n, s in per_model.items()),
        "fit rates measured on a 2-core x86 machine (loadtests/bench_tabular_compare.py), "
        "good to about 2x; an MLP counted at min(epochs, 3 x patience) epochs",
    ]
    if hardware == "gpu":
        chosen = get_gpu(platform, gpu) if gpu else recommend_gpu(platform, 2 * GIB)
        seconds = sum(s / GPU_SPEEDUP if n in NEURAL else s for n, s in per_model.items())
        device, usd_per_s = chosen.name, chosen.usd_per_s
        assumptions.append(
            f"the MLP on {chosen.label}, ~{GPU_SPEEDUP:g}x its CPU speed (a guess); "
            "the other models on the worker's CPU"
        )
    else:
        seconds = sum(per_model.values())
        device = "cpu"
        memory = CPU_MEMORY_GIB if platform != "local" else 4
        usd_per_s = cpu_usd_per_s(cores, memory)
        assumptions.append(f"priced as {cores} CPU cores and {memory} GiB at Modal's rates")
        if mlp_cpu_s > GPU_PAYS_OFF_S:
            assumptions.append(
                f"a GPU pays off here: the MLP needs ~{mlp_cpu_s / 60:.0f} min on CPU; "
                "submit it alone with device=cuda for a GPU worker"
            )
        else:
            assumptions.append("no GPU: these models train on CPU cores, where they cost least")
    seconds += OVERHEAD_S
    assumptions.append(f"{OVERHEAD_S:g} s to read, export with its parity check and publish")
    return Estimate(
        task="train_tabular",
        platform=cast(Platform, platform),
        gpu=device,
        usd_per_s=usd_per_s,
        memory=None,
        examples=schema.rows,
        steps=len(names),
        tokens=None,
        flops_per_token=None,
        seconds=round(seconds, 1),
        usd=round(seconds * usd_per_s, 6),
        assumptions=assumptions,
    )


__all__ = ["estimate_tabular", "model_seconds"]
