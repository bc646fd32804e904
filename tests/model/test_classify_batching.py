"""Served classification in length groups: each request's answers in order and equal to a
one-by-one run, whatever the batch its texts shared (FNB_BATCH_SPLIT_TOKENS)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fnbundle.loading import load_model
from fnbundle.runtime.batching import DynamicBatcher
from fnbundle.tasks.classify.schema import ClassifyRequest
from fnbundle.tasks.classify.serve import ClassifyTask

pytestmark = pytest.mark.model

SHORT = ["ok", "Great food!", "Rude staff, cold soup.", "Would come back."]
LONG = [
    " ".join(["The delivery was late again and the box arrived crushed, but support"] * 6),
    " ".join(["Lovely quiet hotel with friendly staff and a breakfast worth the price"] * 7),
]


def served(tiny_trained, split_tokens: int, backend: str = "onnx-fp32"):
    settings, _ = tiny_trained
    settings = settings.model_copy(update={"batch_split_tokens": split_tokens})
    return settings, load_model("tiny", settings, backend, task="classify")


@pytest.mark.parametrize("backend", ["onnx-fp32", "onnx-int8"])
def test_a_mixed_batch_in_length_groups_equals_one_text_at_a_time(tiny_trained, backend):
    _, model = served(tiny_trained, 16, backend)
    texts = [SHORT[0], LONG[0], SHORT[1], SHORT[2], LONG[1], SHORT[3]]
    ids = model.tokenize(texts)
    lengths = sorted(len(row) for row in ids)
    assert lengths[0] < 10 and lengths[-1] > 80  # padding would dominate one batch
    # fp32 rows do not depend on their batch; dynamic int8 scales activations per batch
    atol = 1e-5 if backend == "onnx-fp32" else 0.02
    grouped = model.predict_tokens(ids)
    one_by_one = np.concatenate([model.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(grouped, one_by_one, atol=atol)
    assert (grouped.argmax(1) == one_by_one.argmax(1)).all()
    # and equal to the whole batch padded to its longest (splitting off)
    _, whole = served(tiny_trained, 0, backend)
    np.testing.assert_allclose(whole.predict_proba(texts), one_by_one, atol=atol)


def test_concurrent_requests_get_their_own_answers_in_order(tiny_trained):
    settings, model = served(tiny_trained, 16)
    task = ClassifyTask()
    requests = [
        ClassifyRequest(model="tiny", texts=[SHORT[i % 4], LONG[i % 2], SHORT[(i + 1) % 4]])
        for i in range(12)
    ]

    async def main():
        batcher = DynamicBatcher(task.batch_fn(model), max_size=64, max_wait_s=0.005)
        answers = await asyncio.gather(*(task.run(model, r, batcher, settings) for r in requests))
        await batcher.close()
        return batcher, answers

    batcher, answers = asyncio.run(main())
    assert batcher.batches < len(requests)  # they shared forward passes
    for request, answer in zip(requests, answers, strict=True):
        alone = task.run_sync(model, request, settings)
        assert [p.label for p in answer.predictions] == [p.label for p in alone.predictions]
        np.testing.assert_allclose(
            [p.score for p in answer.predictions], [p.score for p in alone.predictions], atol=1e-5
        )  # fp32: a row does not depend on its batch
