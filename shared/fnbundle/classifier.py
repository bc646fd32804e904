"""Old import path of the classifier's pieces, re-exported for one release.

The classifier lives in :mod:`fnbundle.tasks.classify.model`, the generic inference pieces
in :mod:`fnbundle.runtime` (``onnx``, ``tokenizer``). Import from there; this module goes
once the training export and trainer, the fusion test and benchmark import from there too.
"""

from fnbundle.runtime.onnx import corrupt_on_error as _corrupt_on_error
from fnbundle.runtime.onnx import onnx_runner as _onnx_runner
from fnbundle.runtime.tokenizer import TOKENIZER_FILE, encode, load_tokenizer
from fnbundle.tasks.classify.model import BACKEND_FILES, TextClassifier, pick_backend, softmax

__all__ = [
    "BACKEND_FILES",
    "TOKENIZER_FILE",
    "TextClassifier",
    "_corrupt_on_error",
    "_onnx_runner",
    "encode",
    "load_tokenizer",
    "pick_backend",
    "softmax",
]
