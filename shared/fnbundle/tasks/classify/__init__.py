"""The ``classify`` task: texts in, labels with probabilities out.

``schema`` holds the request and response of ``POST /v1/classify``, ``model`` the
:class:`~fnbundle.tasks.classify.model.TextClassifier` a runtime loads once, ``serve`` the
:class:`~fnbundle.tasks.classify.serve.ClassifyTask` the registry lists (limits, loading
through the model host, batched runs).

Key rule: importing this package (or ``schema`` / ``serve``) imports no onnxruntime, torch
or transformers.
"""

TASK = "classify"
