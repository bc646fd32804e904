"""Baseline E1: the naive embeddings endpoint, ``SentenceTransformer.encode`` per request.

What a first FastAPI deployment of a sentence encoder usually looks like: PyTorch fp32,
the base model's own folder (``builtin:minilm``), one ``encode`` call per request, no
batching across requests, no ONNX. It answers ``POST /v1/embeddings`` in OpenAI's shape
(``data[].embedding``) so the same client drives it and the gateway.

Key rules: the model loads before the server listens; intra-op threads match the
gateway's (``--threads``, default 2); texts are truncated where the model stops, as
sentence-transformers and the gateway both do, so both systems do the same work.

Run: ``python loadtests/baseline_st.py --model-dir <sentence-transformers folder> --port 8002``
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]


def build_app(model_dir: str, threads: int):  # -> FastAPI (imported lazily for cold start)
    import torch
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    encoder = SentenceTransformer(model_dir, device="cpu")

    app = FastAPI(title="baseline: SentenceTransformer.encode per request")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingRequest) -> dict:
        # A sync route: FastAPI runs it in its thread pool, so concurrent requests make
        # concurrent encode calls (no lock: the naive pattern).
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = encoder.encode(texts, convert_to_numpy=True)
        return {
            "object": "list",
            "model": body.model,
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="sentence-transformers folder")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    import uvicorn

    app = build_app(args.model_dir, args.threads)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
