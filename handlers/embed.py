"""RunPod worker for ``embed``: a job's ``input`` in, the ``/v1/embeddings`` body out.

The worker (models loaded once before the first job, errors in OpenAI's shape as
``{"error": "<JSON>"}``, concurrent jobs batched together) is
:class:`fnbundle.runpod_serving.ServingWorker`. Importing this file loads nothing.

    python handlers/embed.py --test_input '{"input": {"model": "minilm", "input": "hello"}}'
    python handlers/embed.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8011
"""

from fnbundle.runpod_serving import ServingWorker

worker = ServingWorker("embed")
setup, handler = worker.setup, worker.handler

if __name__ == "__main__":
    worker.start()
