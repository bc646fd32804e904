"""Generic inference pieces every serving task shares.

``onnx`` (an ONNX Runtime session with our thread settings, and the rule that a backend's
own exception becomes ``ArtifactCorrupt``), ``tokenizer`` (the serving tokenizer, padded per
batch), ``batching`` (the dynamic batcher) and ``host`` (the model host: cache, preload,
readiness, failures, LRU eviction).

Key rule: nothing here names a task, and importing it imports no onnxruntime, torch or
transformers (they are imported inside the functions that need them).
"""
