"""Locust load test for a deployed classify endpoint (local gateway, Modal or RunPod proxy).

Each simulated user POSTs ``/v1/classify`` with one random review from the project's
demo data, back to back. The host comes from ``--host``; the bearer key, when the
endpoint needs one, from the ``FNB_API_KEY`` environment variable; the model from
``--model`` (default ``sentiment``).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 32 -r 32 -t 60s --model sentiment

Key rule: importing locust monkey-patches sockets (gevent), so this file is only ever run
by the ``locust`` command, never imported by the test suite or the benchmark harness.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, events, task
from review_texts import short_reviews

REVIEWS = short_reviews()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model", default="sentiment", help="store model name or id")


class ClassifyUser(FastHttpUser):
    def on_start(self) -> None:
        key = os.environ.get("FNB_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.model = self.environment.parsed_options.model

    @task
    def classify(self) -> None:
        body = {"model": self.model, "texts": [random.choice(REVIEWS)]}
        with self.client.post(
            "/v1/classify", json=body, headers=self.headers, catch_response=True
        ) as response:
            predictions = (response.json() or {}).get("predictions") if response.ok else None
            if not predictions or len(predictions) != 1:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
