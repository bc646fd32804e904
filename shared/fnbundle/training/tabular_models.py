"""The 13 tabular models and the pipeline that holds each with its preprocessing.

Key rules: each model reads the hyperparameters of the params it has (defaults that work);
preprocessing (median imputation and scaling, one-hot categories with unseen ones ignored)
is the pipeline's first step, so it is fitted on the training split only and exported with
the model. Nothing here trains: :mod:`fnbundle.training.tabular` does.
"""

from __future__ import annotations

from typing import Any

from fnbundle.errors import FnbError
from fnbundle.tabular.features import FeatureSpec
from fnbundle.tabular.schema import Task
from fnbundle.tasks.train_tabular.params import NEURAL, TASKS_OF, TrainTabularParams

# Above this many training rows, gradient boosting is scikit-learn's histogram-based
# variant (multi-threaded, minutes faster at 100k rows; n_estimators -> max_iter).
HIST_BOOSTING_ROWS = 10_000


def estimator(name: str, task: Task, p: TrainTabularParams, rows: int, *, n_jobs: int) -> Any:
    """Model ``name`` with the hyperparameters of ``p`` it has, for ``rows`` training rows."""
    from sklearn import ensemble, linear_model, naive_bayes, svm, tree
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    classify = task == "classification"
    seed = p.seed
    if name in NEURAL:
        from fnbundle.training.tabular_mlp import MLPEstimator

        return MLPEstimator(
            classify=classify,
            hidden_layers=tuple(p.hidden_layers),
            dropout=p.dropout,
            epochs=p.epochs,
            batch_size=p.batch_size,
            learning_rate=p.mlp_learning_rate,
            weight_decay=p.weight_decay,
            patience=p.patience,
            device=p.device,
            seed=seed,
        )
    if name == "linear_regression":
        return linear_model.LinearRegression()
    if name == "ridge":
        return linear_model.Ridge(alpha=p.alpha)
    if name == "lasso":
        return linear_model.Lasso(alpha=p.alpha, max_iter=20000, random_state=seed)
    if name == "elastic_net":
        return linear_model.ElasticNet(
            alpha=p.alpha, l1_ratio=p.l1_ratio, max_iter=20000, random_state=seed
        )
    if name == "polynomial_regression":
        return make_pipeline(
            PolynomialFeatures(p.degree, include_bias=False), linear_model.Ridge(alpha=p.alpha)
        )
    if name == "logistic_regression":
        return linear_model.LogisticRegression(C=p.c, max_iter=5000)
    if name == "naive_bayes":
        return naive_bayes.GaussianNB()
    if name == "decision_tree":
        cls = tree.DecisionTreeClassifier if classify else tree.DecisionTreeRegressor
        return cls(max_depth=p.max_depth, min_samples_leaf=p.min_samples_leaf, random_state=seed)
    if name == "random_forest":
        cls = ensemble.RandomForestClassifier if classify else ensemble.RandomForestRegressor
        return cls(
            n_estimators=p.n_estimators,
            max_depth=p.max_depth,
            min_samples_leaf=p.min_samples_leaf,
            n_jobs=n_jobs,
            random_state=seed,
        )
    if name == "gradient_boosting" and rows > HIST_BOOSTING_ROWS:
        cls = (
            ensemble.HistGradientBoostingClassifier
            if classify
            else ensemble.HistGradientBoostingRegressor
        )
        return cls(
            max_iter=p.n_estimators,
            learning_rate=p.learning_rate,
            max_depth=p.max_depth,
            min_samples_leaf=max(p.min_samples_leaf, 20),
            early_stopping=False,
            random_state=seed,
        )
    if name == "gradient_boosting":
        cls = (
            ensemble.GradientBoostingClassifier if classify else ensemble.GradientBoostingRegressor
        )
        return cls(
            n_estimators=p.n_estimators,
            learning_rate=p.learning_rate,
            max_depth=p.max_depth or 3,
            min_samples_leaf=p.min_samples_leaf,
            random_state=seed,
        )
    if name == "svm":
        if classify:  # probabilities by calibration (SVC's own probability= is deprecated)
            from sklearn.calibration import CalibratedClassifierCV

            return CalibratedClassifierCV(svm.SVC(C=p.c, kernel=p.kernel), ensemble=False, cv=3)
        from fnbundle.training.tabular_export import ScaledTarget

        return ScaledTarget(svm.SVR(C=p.c, kernel=p.kernel))  # an SVR assumes a unit-scale target
    raise ValueError(name)


def pipeline(spec: FeatureSpec, model: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if spec.numeric_inputs:
        numbers = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        parts.append(("numbers", numbers, spec.numeric_inputs))
    if spec.categorical_inputs:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        parts.append(("categories", onehot, spec.categorical_inputs))
    return Pipeline([("pre", ColumnTransformer(parts)), ("model", model)])


def models_for(task: Task, p: TrainTabularParams) -> list[str]:
    if p.model != "compare":
        if task not in TASKS_OF[p.model]:
            raise FnbError(
                f"{p.model} does not do {task}; models that do: "
                f"{', '.join(n for n, t in TASKS_OF.items() if task in t)}.",
                field="params.model",
            )
        return [p.model]
    chosen: list[str] = [*p.models] if p.models else [n for n, ts in TASKS_OF.items() if task in ts]
    fitting = [n for n in chosen if task in TASKS_OF[n]]
    if not fitting:
        raise FnbError(f"None of {chosen} does {task}.", field="params.models")
    return fitting
