"""The ``embed`` serving task as the registry lists it: ``POST /v1/embeddings`` in OpenAI's shape.

Key rules: a request is checked against the server's and the model's limits (inputs,
characters, tokens, vocabulary, dimensions) before any inference; texts are tokenized off
the event loop, and concurrent requests share forward passes in the host's batcher, which
runs token arrays (texts' and clients' alike) in length groups, each padded to its longest;
errors leave in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape (``error_style``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from fnbundle.runtime.artifacts import pick_onnx_task_backend
from fnbundle.settings import Settings
from fnbundle.store import Artifact
from fnbundle.tasks.base import Batch, ServingTask
from fnbundle.tasks.embed import TASK
from fnbundle.tasks.embed.model import TextEmbedder
from fnbundle.tasks.embed.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    build_response,
    check_request,
    truncate,
)

# Requests of at most this many texts and characters are tokenized on the event loop: one
# short text takes about 60 us there (4 about 160 us), less than the hop to a worker thread
# and back (1 client, short reviews through the gateway: p50 7.2 -> 6.6 ms with the alias
# cache). Anything larger (many tiny texts too: 2048 take 17 ms) goes to a thread, so the
# loop never stalls.
INLINE_TOKENIZE_TEXTS = 4
INLINE_TOKENIZE_CHARS = 1024


class EmbedTask(ServingTask[EmbeddingRequest, EmbeddingResponse, TextEmbedder]):
    slug: ClassVar[str] = TASK
    route: ClassVar[str] = "/v1/embeddings"
    summary: ClassVar[str] = "Embed texts or token arrays (OpenAI's embeddings API)."
    noun: ClassVar[str] = "an embedding model"
    error_style = "openai"
    request_model = EmbeddingRequest
    response_model = EmbeddingResponse
    example: ClassVar[dict[str, Any]] = {"model": "minilm", "input": ["A short sentence."]}

    def import_base(self, ref: str, name: str, settings: Settings) -> Artifact:
        from fnbundle.tasks.embed.export import import_embedder  # torch, onnx: only here

        return import_embedder(ref, name, settings)

    def pick_backend(self, artifact: Artifact, requested: str) -> str:
        return pick_onnx_task_backend(artifact, requested)

    def files(self, artifact: Artifact, backend: str) -> list[str]:
        return TextEmbedder.files_for(artifact, backend)

    def load(self, artifact: Artifact, backend: str, settings: Settings) -> TextEmbedder:
        return TextEmbedder.load(artifact, backend, settings)

    def batch_fn(self, model: TextEmbedder) -> Callable[[list[Any]], np.ndarray]:
        return model.embed_tokens

    async def run(
        self,
        model: TextEmbedder,
        request: EmbeddingRequest,
        batch: Batch | None,
        settings: Settings,
    ) -> EmbeddingResponse:
        checked = check_request(request, model.limits(settings))
        token_ids = checked.token_ids
        if token_ids is None:
            texts = checked.texts or []
            small = len(texts) <= INLINE_TOKENIZE_TEXTS
            if small and sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
                token_ids = model.tokenize(texts)
            else:
                token_ids = await asyncio.to_thread(model.tokenize, texts)
        if batch is None:
            vectors = await asyncio.to_thread(model.embed_tokens, token_ids)
        else:
            vectors = await batch.submit(token_ids)
        return build_response(
            truncate(np.asarray(vectors), checked.dimensions),
            model=model.model_id,
            prompt_tokens=sum(len(ids) for ids in token_ids),
            encoding_format=request.encoding_format,
        )

    def run_sync(
        self, model: TextEmbedder, request: EmbeddingRequest, settings: Settings
    ) -> EmbeddingResponse:
        return model.create(request, settings)
