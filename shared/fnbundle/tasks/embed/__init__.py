"""The ``embed`` task: texts (or token arrays) in, sentence embeddings out, in OpenAI's shape.

``schema`` holds the request and response of ``POST /v1/embeddings`` and the limits check,
``model`` the :class:`~fnbundle.tasks.embed.model.TextEmbedder` a runtime loads once and
runs per request, ``export`` the import of a base encoder (``builtin:minilm``, ``hf:``, a
folder) into a parity-checked ONNX artifact in the store.

Key rule: importing this package (or ``schema`` / ``model``) never imports torch,
transformers or onnx; only ``export`` needs them, inside its functions.
"""

TASK = "embed"
