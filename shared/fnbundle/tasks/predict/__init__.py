"""The ``predict`` task: rows of a table in, a tabular model's predictions out.

``schema`` holds the request and response of ``POST /v1/predict``, ``model`` the
:class:`~fnbundle.tasks.predict.model.TabularModel` a runtime loads once (an ONNX graph of
the preprocessing and the model, exported by :mod:`fnbundle.training.tabular`).

Key rule: importing this package never imports onnxruntime, pandas or scikit-learn.
"""

TASK = "predict"
