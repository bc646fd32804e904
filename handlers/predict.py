"""RunPod worker for ``predict``: a job's ``input`` in, the ``/v1/predict`` body out.

The worker (models loaded once before the first job, errors as ``{"error": "<JSON>"}``,
concurrent jobs batched together) is :class:`fnbundle.runpod_serving.ServingWorker`.
Importing this file loads nothing.

    python handlers/predict.py --test_input '{"input": {"model": "churn", "rows": [{...}]}}'
    python handlers/predict.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8012
"""

from fnbundle.runpod_serving import ServingWorker

worker = ServingWorker("predict")
setup, handler = worker.setup, worker.handler

if __name__ == "__main__":
    worker.start()
