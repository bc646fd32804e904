"""RunPod worker for ``classify``: a job's ``input`` in, the ``/v1/classify`` body out.

The worker (models loaded once before the first job, errors as ``{"error": "<JSON>"}``,
concurrent jobs batched together) is :class:`fnbundle.runpod_serving.ServingWorker`.
Importing this file loads nothing.

    python handlers/classify.py --test_input '{"input": {"model": "sentiment", "texts": ["great"]}}'
    python handlers/classify.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8010
"""

from fnbundle.runpod_serving import ServingWorker

worker = ServingWorker("classify")
setup, handler = worker.setup, worker.handler

if __name__ == "__main__":
    worker.start()
