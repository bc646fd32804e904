"""Baseline B1: the naive endpoint, ``transformers.pipeline`` called once per request.

What a first FastAPI deployment of a fine-tuned model usually looks like: PyTorch fp32,
the same weights (the artifact's ``model.safetensors``), one pipeline call per request,
no batching, no ONNX. It speaks the gateway's request and response JSON so the same
client drives both.

Key rules: the pipeline loads before the server listens (``/readyz`` answers only once
it is loaded, so cold start is measured to a real prediction); intra-op threads match
the gateway's (``--threads``, default 2); texts are truncated at 128 tokens like the
gateway's, so both systems do the same work.

Run: ``python loadtests/baseline_pipeline.py --model-dir <artifact folder> --port 8001``
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel

MAX_TOKENS = 128  # the gateway's FNB_MAX_TOKENS default


class ClassifyRequest(BaseModel):
    model: str
    texts: list[str]


def build_app(model_dir: str, threads: int):  # -> FastAPI (imported lazily for cold start)
    import torch
    from fastapi import FastAPI
    from transformers import pipeline

    torch.set_num_threads(threads)
    classifier = pipeline("text-classification", model=model_dir, device=-1)

    app = FastAPI(title="baseline: transformers.pipeline per request")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/classify")
    def classify(body: ClassifyRequest) -> dict:
        # A sync route: FastAPI runs it in its thread pool, so concurrent requests make
        # concurrent pipeline calls (no lock: that is the naive pattern, and it measured
        # faster than serialising them).
        results = classifier(body.texts, top_k=None, truncation=True, max_length=MAX_TOKENS)
        predictions = []
        for scores in results:
            best = max(scores, key=lambda s: s["score"])
            predictions.append(
                {
                    "label": best["label"],
                    "score": best["score"],
                    "scores": {s["label"]: s["score"] for s in scores},
                }
            )
        return {"model": body.model, "backend": "torch-pipeline", "predictions": predictions}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="artifact folder (safetensors)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    import uvicorn

    app = build_app(args.model_dir, args.threads)
    # same uvicorn settings as `fnbundle serve`: only the inference path differs
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
