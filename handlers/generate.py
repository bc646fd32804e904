"""RunPod worker for ``generate``: chat and text completions from a base model on vLLM,
with LoRA adapters served hot.

A job's input is either the ``/v1/chat/completions`` body, or RunPod's OpenAI-route shape
``{"openai_route": "/v1/chat/completions" | "/v1/completions" | "/v1/models",
"openai_input": {...}}``, which is what RunPod sends when a client uses the endpoint's
OpenAI-compatible URL::

    from openai import OpenAI
    client = OpenAI(base_url="https://api.runpod.ai/v2/<endpoint-id>/openai/v1",
                    api_key="<RUNPOD_API_KEY>")
    client.chat.completions.create(model="qwen2.5-7b", messages=[...], stream=True)

Both are answered by the gateway app in process (:class:`fnbundle.runpod_openai.OpenAIWorker`):
the same fields, limits and OpenAI error bodies as the local gateway and Modal. The engine
(vLLM on the GPU, per ``FNB_GENERATE_BACKEND``) loads before the first job. Importing this
file loads nothing.

    python handlers/generate.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8011
"""

from fnbundle.runpod_openai import OpenAIWorker

worker = OpenAIWorker("generate")
setup, handler = worker.setup, worker.handler

if __name__ == "__main__":
    worker.start()
