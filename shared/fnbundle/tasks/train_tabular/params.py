"""The options of a ``train_tabular`` job, which are also ``fnbundle train tabular``'s
options and the documented job params: one flat schema, every surface generated from it.

Each model reads the hyperparameters it has and ignores the others; the defaults work on
the tables people bring (a few hundred to a few hundred thousand rows).

Key rule: this module imports nothing heavy (pydantic and the schema's names), so the
registry, the gateway and a submit check read it without scikit-learn or torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from fnbundle.store import NAME_RE
from fnbundle.tabular.schema import Kind, Task

ModelName = Literal[
    "linear_regression",
    "ridge",
    "lasso",
    "elastic_net",
    "polynomial_regression",
    "logistic_regression",
    "decision_tree",
    "random_forest",
    "gradient_boosting",
    "svm",
    "naive_bayes",
    "mlp_classifier",
    "mlp_regressor",
]
# What each model does; the MLPs are PyTorch (the GPU path), the others scikit-learn.
TASKS_OF: dict[str, tuple[Task, ...]] = {
    "linear_regression": ("regression",),
    "ridge": ("regression",),
    "lasso": ("regression",),
    "elastic_net": ("regression",),
    "polynomial_regression": ("regression",),
    "logistic_regression": ("classification",),
    "naive_bayes": ("classification",),
    "decision_tree": ("classification", "regression"),
    "random_forest": ("classification", "regression"),
    "gradient_boosting": ("classification", "regression"),
    "svm": ("classification", "regression"),
    "mlp_classifier": ("classification",),
    "mlp_regressor": ("regression",),
}
NEURAL = frozenset({"mlp_classifier", "mlp_regressor"})


class TrainTabularParams(BaseModel):
    """The options of ``fnbundle train tabular`` (and of a ``train_tabular`` job)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        min_length=1,
        max_length=1024,
        description="A dataset id (ds-...) or a CSV/TSV/JSONL/Parquet path in the data roots.",
    )
    name: str = Field(
        max_length=80, pattern=NAME_RE.pattern, description="Store name of the trained model."
    )
    target: str | None = Field(
        None, max_length=200, description="The column to predict (default: the proposed one)."
    )
    task: Task | None = Field(None, description="The problem (default: from the target).")
    columns: dict[str, Kind] = Field(
        default_factory=dict,
        description="Column kinds to override, e.g. zip=categorical,notes=text.",
    )
    exclude: list[str] = Field(default_factory=list, description="Columns not to use.")
    model: ModelName | Literal["compare"] = Field(
        "compare", description="One model, or compare: train every one that fits and rank them."
    )
    models: list[ModelName] | None = Field(
        None, description="With compare: only these models (default: all that fit the task)."
    )
    test_split: float = Field(0.2, ge=0.05, le=0.5, description="Share of rows held out.")
    cv_folds: int = Field(
        5, ge=2, le=10, description="Cross-validation folds on small tables (<= 5000 rows)."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the split and the models.")
    # --- the classic models ---
    alpha: float = Field(
        1.0, gt=0, le=1e6, description="Regularisation of ridge, lasso, elastic net."
    )
    l1_ratio: float = Field(0.5, ge=0, le=1, description="Elastic net's share of L1.")
    degree: int = Field(2, ge=2, le=4, description="Polynomial regression's degree.")
    c: float = Field(
        1.0, gt=0, le=1e6, description="Inverse regularisation of logistic regression and SVM."
    )
    kernel: Literal["rbf", "linear", "poly"] = Field("rbf", description="The SVM's kernel.")
    max_depth: int | None = Field(
        None, ge=1, le=64, description="Trees' depth (default: grow fully; boosting: 3)."
    )
    n_estimators: int = Field(200, ge=1, le=2000, description="Trees of a forest or boosting.")
    learning_rate: float = Field(0.1, gt=0, le=1, description="Gradient boosting's step.")
    min_samples_leaf: int = Field(1, ge=1, le=1000, description="Trees' smallest leaf.")
    # --- the MLPs (PyTorch) ---
    hidden_layers: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [128, 64],
        min_length=1,
        max_length=6,
        description="Units per hidden layer of the MLPs, e.g. 128,64.",
    )
    dropout: float = Field(0.1, ge=0, lt=0.9, description="MLP dropout after each hidden layer.")
    epochs: int = Field(100, ge=1, le=2000, description="MLP epochs at most (early stopping).")
    batch_size: int = Field(256, ge=8, le=65536, description="MLP rows per step.")
    mlp_learning_rate: float = Field(1e-3, gt=0, le=1, description="MLP AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="MLP AdamW weight decay.")
    patience: int = Field(
        10, ge=1, le=1000, description="MLP epochs without a better validation loss."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where the MLPs train (cuda: a GPU worker on Modal and RunPod); the "
        "scikit-learn models always run on CPU cores.",
    )
