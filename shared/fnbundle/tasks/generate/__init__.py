"""The ``generate`` task: OpenAI-compatible text generation (``POST /v1/chat/completions``,
``POST /v1/completions``) from a causal LM, with LoRA adapters served hot on top of it.

``engine`` declares what an engine does (prompt token ids and sampling settings in, text
deltas out, cancellable); ``cpu_engine`` is the transformers engine (KV cache, sequences
joining and leaving a running batch between steps, PEFT adapters); ``vllm_engine`` wraps
vLLM's async engine on a GPU (imported lazily: vLLM exists only in the GPU images).

Key rule: importing this package (or ``engine`` / ``schema``) imports no torch,
transformers or vLLM; those load inside the engines.
"""

TASK = "generate"
