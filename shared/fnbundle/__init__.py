"""fnbundle: train and serve custom ML models as serverless functions.

The importable core shared by every runtime (local gateway, Modal, RunPod). Heavy
libraries (torch, transformers, onnxruntime) are imported lazily by the tasks that need
them, so importing this package, the API or the CLI stays fast.
"""

__version__ = "0.1.0"
