"""The tabular MLPs (``mlp_classifier``, ``mlp_regressor``): PyTorch behind scikit-learn's
estimator interface, so they sit in the same pipeline as the classic models (the
preprocessing in front of them fitted on the training split only), and are scored,
compared and explained the same way.

Training runs through the shared :class:`~fnbundle.training.loop.TrainLoop`: seeded
batches, AdamW, early stopping on a validation share of the training rows (the best
weights kept), checkpoints every epoch into ``control.checkpoint_dir`` and resume, a
stop request honoured within one step, on CUDA when asked for and available. A regressor
learns the standardised target and answers on the target's own scale.

Key rule: the hooks (events, control, checkpoint fingerprint) are attributes set with
:meth:`MLPEstimator.attach`, not estimator params, so a scikit-learn ``clone`` (cross-
validation) trains a plain copy without checkpoints or events.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fnbundle.training.control import TrainControl

VALIDATION_SHARE = 0.1  # of the training rows, for early stopping
MIN_VALIDATION_ROWS = 20
# A small table still gets this many steps per epoch: batch_size is lowered to fit (to 16
# rows at the least), so early stopping sees learning, not two steps an epoch.
MIN_STEPS_PER_EPOCH = 20
MIN_BATCH = 16


def _network(n_in: int, hidden: list[int], n_out: int, dropout: float) -> Any:
    import torch

    layers: list[Any] = []
    width = n_in
    for units in hidden:
        layers += [torch.nn.Linear(width, units), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = units
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


class _Rows:
    """The loop's :class:`~fnbundle.training.loop.Batches` over in-memory float rows."""

    def __init__(
        self,
        x: Any,
        y: Any,
        x_val: Any,
        y_val: Any,
        *,
        batch_size: int,
        seed: int,
        classify: bool,
        y_scale: float,
    ):
        self.x, self.y, self.x_val, self.y_val = x, y, x_val, y_val
        self.batch_size, self.seed, self.classify, self.y_scale = (
            batch_size,
            seed,
            classify,
            y_scale,
        )
        self.steps_per_epoch = max(1, math.ceil(len(x) / batch_size))

    def train(self, epoch: int, start: int) -> Iterator[Any]:
        import torch

        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.x))
        index = torch.as_tensor(order, device=self.x.device)
        for i in range(start, self.steps_per_epoch):
            rows = index[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.x[rows], self.y[rows]

    def _loss(self, out: Any, y: Any) -> Any:
        import torch

        if self.classify:
            return torch.nn.functional.cross_entropy(out, y)
        return torch.nn.functional.mse_loss(out.squeeze(-1), y)

    def loss(self, model: Any, batch: Any) -> Any:
        model.train()
        x, y = batch
        return self._loss(model(x), y)

    def evaluate(self, model: Any) -> tuple[float, dict[str, float]]:
        import torch

        model.eval()
        with torch.no_grad():
            out = model(self.x_val)
            loss = float(self._loss(out, self.y_val))
        if self.classify:
            from sklearn.metrics import f1_score

            truth = self.y_val.cpu().numpy()
            pred = out.argmax(-1).cpu().numpy()
            return loss, {
                "accuracy": round(float((pred == truth).mean()), 4),
                "macro_f1": round(float(f1_score(truth, pred, average="macro")), 4),
            }
        from sklearn.metrics import r2_score

        truth = self.y_val.cpu().numpy()
        pred = out.squeeze(-1).cpu().numpy()
        return loss, {
            "r2": round(float(r2_score(truth, pred)), 4),
            "rmse": round(math.sqrt(loss) * self.y_scale, 4),
        }


class MLPEstimator:
    """A scikit-learn estimator (fit / predict / predict_proba) training a PyTorch MLP."""

    _estimator_type: str

    def __init__(
        self,
        classify: bool = True,
        hidden_layers: tuple[int, ...] = (128, 64),
        dropout: float = 0.1,
        epochs: int = 100,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 10,
        device: str = "auto",
        seed: int = 0,
    ):
        self.classify = classify
        self.hidden_layers = hidden_layers
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.device = device
        self.seed = seed
        self._estimator_type = "classifier" if classify else "regressor"
        self._hooks: tuple[Any, TrainControl, str, Path] | None = None

    # scikit-learn's estimator protocol: clone() rebuilds from these params.
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = ("classify", "hidden_layers", "dropout", "epochs", "batch_size",
                 "learning_rate", "weight_decay", "patience", "device", "seed")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> MLPEstimator:
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        tags = Tags(estimator_type=self._estimator_type, target_tags=TargetTags(required=True))
        if self.classify:
            tags.classifier_tags = ClassifierTags()
        else:
            tags.regressor_tags = RegressorTags()
        return tags

    def attach(self, on_event: Any, control: TrainControl, params_json: str, data: Path) -> None:
        """Events, stop control and checkpoints for the next ``fit`` (see the module rule)."""
        self._hooks = (on_event, control, params_json, data)

    def fit(self, x: Any, y: Any) -> MLPEstimator:
        import torch

        from fnbundle.training.loop import TrainLoop, pick_device, seed_everything

        seed_everything(self.seed)
        device = pick_device(self.device)
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        train_rows, val_rows = self._split(y)
        if self.classify:
            self.classes_ = np.unique(y)
            y_t = torch.as_tensor(np.searchsorted(self.classes_, y), dtype=torch.long)
            self.y_mean_, self.y_std_ = 0.0, 1.0
        else:
            self.y_mean_ = float(y[train_rows].mean())
            self.y_std_ = float(y[train_rows].std()) or 1.0
            y_t = torch.as_tensor((y - self.y_mean_) / self.y_std_, dtype=torch.float32)
        x_t = torch.as_tensor(x)
        n_out = len(self.classes_) if self.classify else 1
        model = _network(x.shape[1], list(self.hidden_layers), n_out, self.dropout).to(device)
        rows = _Rows(
            x_t[train_rows].to(device),
            y_t[train_rows].to(device),
            x_t[val_rows].to(device),
            y_t[val_rows].to(device),
            batch_size=min(self.batch_size, max(MIN_BATCH, len(train_rows) // MIN_STEPS_PER_EPOCH)),
            seed=self.seed,
            classify=self.classify,
            y_scale=self.y_std_,
        )
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
        on_event, control, params_json, data = self._hooks or (
            lambda _event: None,
            TrainControl(),
            "{}",
            Path(),
        )
        loop = TrainLoop(on_event, control, epochs=self.epochs, patience=self.patience)
        resume = loop.find_checkpoint(params_json, data) if self._hooks else None
        labels = [str(c) for c in self.classes_] if self.classify else []
        result = loop.run(
            model,
            optimizer,
            scheduler,
            rows,
            resume_from=resume,
            start={
                "labels": labels,
                "train_examples": len(train_rows),
                "eval_examples": len(val_rows),
                "device": str(device),
            },
        )
        self.epochs_run_, self.steps_ = result.epochs_run, result.steps
        self.best_val_loss_ = None if math.isinf(loop.pos.best_loss) else loop.pos.best_loss
        self.network_ = model.to("cpu").eval()
        self.n_features_in_ = x.shape[1]
        return self

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation row indices (stratified for a classifier when it can)."""
        from sklearn.model_selection import train_test_split

        rows = np.arange(len(y))
        n_val = max(MIN_VALIDATION_ROWS, round(len(y) * VALIDATION_SHARE))
        if n_val >= len(y) // 2:  # too few rows: validate on the training rows themselves
            return rows, rows
        stratify = y if self.classify and np.unique(y, return_counts=True)[1].min() >= 2 else None
        train, val = train_test_split(rows, test_size=n_val, random_state=self.seed,
                                      stratify=stratify)  # fmt: skip
        return np.sort(train), np.sort(val)

    def _forward(self, x: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.network_(torch.as_tensor(np.asarray(x, dtype=np.float32)))
        return out.numpy()

    def predict_proba(self, x: Any) -> np.ndarray:
        import torch

        return torch.softmax(torch.as_tensor(self._forward(x)), -1).numpy()

    def predict(self, x: Any) -> np.ndarray:
        out = self._forward(x)
        if self.classify:
            return self.classes_[out.argmax(-1)]
        return out[:, 0] * self.y_std_ + self.y_mean_

    def summary(self) -> dict[str, Any]:
        """How the training went, for the manifest."""
        return {
            "epochs_run": self.epochs_run_,
            "steps": self.steps_,
            "best_val_loss": None if self.best_val_loss_ is None else round(self.best_val_loss_, 5),
            "hidden_layers": list(self.hidden_layers),
        }


def export_module(estimator: MLPEstimator) -> Any:
    """The trained network with its output head as the served graph expects it: a
    classifier's ``label`` (class index) and ``probabilities``; a regressor's ``variable``
    on the target's scale."""
    import torch

    network = estimator.network_

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.classify = estimator.classify
            self.mean, self.std = estimator.y_mean_, estimator.y_std_

        def forward(self, features: Any) -> Any:
            out = self.network(features)
            if self.classify:
                probabilities = torch.softmax(out, -1)
                return probabilities.argmax(-1), probabilities
            return out * self.std + self.mean

    return Head().eval()


def params_json(params: dict[str, Any]) -> str:
    """The params a checkpoint must match, in a stable order."""
    return json.dumps(params, sort_keys=True)
