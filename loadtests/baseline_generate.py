"""Baseline G1: the naive generation endpoint, one ``model.generate`` call per request.

What a first FastAPI deployment of a causal LM usually looks like: transformers on PyTorch
(fp32 on CPU, bf16 with ``--device cuda``), the model's own folder, the tokenizer's chat template, and per request one
``generate`` call streaming through a ``TextIteratorStreamer``; no batching across requests
(concurrent requests make concurrent ``generate`` calls in threads, the naive pattern). It
answers ``POST /v1/chat/completions`` in OpenAI's shape, streamed or not, with ``usage``
(and a usage chunk when ``stream_options.include_usage``), so one client drives it and the
gateway.

Key rules: the model loads before the server listens; intra-op threads match the gateway's
(``--threads``); greedy when ``temperature`` is 0, so both systems produce the same tokens
from the same model and do the same work.

Run: ``python loadtests/baseline_generate.py --model-dir <HF model folder> --port 8003``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

from pydantic import BaseModel


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, str]]
    max_tokens: int = 64
    temperature: float = 1.0
    stream: bool = False
    stream_options: dict[str, Any] | None = None


def build_app(model_dir: str, threads: int, device: str = "cpu"):  # -> FastAPI (lazily)
    import torch
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    app = FastAPI(title="baseline: model.generate per request")

    def prompt_ids(body: ChatRequest) -> Any:
        encoded = tokenizer.apply_chat_template(
            body.messages, add_generation_prompt=True, tokenize=True, return_tensors="pt"
        )
        return encoded["input_ids"].to(device)

    def kwargs(body: ChatRequest, ids: Any) -> dict[str, Any]:
        greedy = body.temperature == 0
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": body.max_tokens,
            "do_sample": not greedy,
            **({} if greedy else {"temperature": body.temperature}),
            "pad_token_id": tokenizer.pad_token_id,
        }

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: ChatRequest) -> Any:
        ids = prompt_ids(body)
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if not body.stream:
            with torch.inference_mode():
                out = model.generate(**kwargs(body, ids))
            new = out[0, ids.shape[1] :]
            text = tokenizer.decode(new, skip_special_tokens=True)
            return {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if len(new) >= body.max_tokens else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": ids.shape[1],
                    "completion_tokens": len(new),
                    "total_tokens": ids.shape[1] + len(new),
                },
            }
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        counted: dict[str, int] = {}

        def run() -> None:
            with torch.inference_mode():
                out = model.generate(**kwargs(body, ids), streamer=streamer)
            counted["completion"] = int(out.shape[1] - ids.shape[1])

        worker = threading.Thread(target=run, daemon=True)
        worker.start()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            payload = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n"

        def events():  # a sync generator: Starlette iterates it in its thread pool
            yield chunk({"role": "assistant", "content": ""})
            for piece in streamer:
                if piece:
                    yield chunk({"content": piece})
            worker.join()
            done = counted.get("completion", 0)
            yield chunk({}, "length" if done >= body.max_tokens else "stop")
            if body.stream_options and body.stream_options.get("include_usage"):
                usage = {
                    "prompt_tokens": ids.shape[1],
                    "completion_tokens": done,
                    "total_tokens": ids.shape[1] + done,
                }
                payload = {"id": rid, "object": "chat.completion.chunk", "created": created,
                           "model": body.model, "choices": [], "usage": usage}  # fmt: skip
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="Hugging Face model folder")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (bf16 on CUDA)")
    args = parser.parse_args()

    import uvicorn

    app = build_app(args.model_dir, args.threads, args.device)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
