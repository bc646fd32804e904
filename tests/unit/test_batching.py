import asyncio

import numpy as np
import pytest
from fnbundle.runtime.batching import DynamicBatcher

pytestmark = pytest.mark.unit


def lengths(texts):
    """A stand-in model: one row per text holding its length."""
    return np.array([[len(t)] for t in texts], dtype=np.float32)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    async def main():
        batcher = DynamicBatcher(lengths, max_size=64, max_wait_s=0.005)
        requests = [["x" * (i + 1), "y" * (i + 100)] for i in range(40)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return batcher, results

    batcher, results = asyncio.run(main())
    for i, rows in enumerate(results):
        assert rows[:, 0].tolist() == [i + 1, i + 100]
    assert batcher.batches < 40  # gathered, not one pass per request
    assert batcher.largest_batch <= 64 + 2


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_serving():
    calls = []

    def flaky(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise ValueError("boom")
        return lengths(texts)

    async def main():
        batcher = DynamicBatcher(flaky, max_size=8, max_wait_s=0)
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit(["a"])
        rows = await batcher.submit(["abc"])
        await batcher.close()
        return rows

    assert asyncio.run(main())[:, 0].tolist() == [3]


def test_a_lone_request_is_dispatched_alone():
    async def main():
        batcher = DynamicBatcher(lengths, max_size=64, max_wait_s=10)
        rows = await asyncio.wait_for(batcher.submit(["solo"]), timeout=5)
        await batcher.close()
        return rows, batcher.batches

    rows, batches = asyncio.run(main())
    assert rows[:, 0].tolist() == [4] and batches == 1


def picky(texts):
    """A stand-in model that cannot compute any text containing "bad"."""
    if any("bad" in t for t in texts):
        raise ValueError("cannot encode a bad text")
    return lengths(texts)


def test_a_failing_request_never_fails_the_others_in_its_batch():
    async def main():
        batcher = DynamicBatcher(picky, max_size=64, max_wait_s=0.005)
        requests = [["bad"] if i % 7 == 3 else ["x" * (i + 1), "y" * i] for i in range(60)]
        results = await asyncio.gather(
            *(batcher.submit(r) for r in requests), return_exceptions=True
        )
        await batcher.close()
        return batcher, requests, results

    batcher, requests, results = asyncio.run(main())
    for i, (request, result) in enumerate(zip(requests, results, strict=True)):
        if request == ["bad"]:
            assert isinstance(result, ValueError), i
        else:
            assert not isinstance(result, BaseException), (i, result)
            assert result[:, 0].tolist() == [i + 1, i]
    assert batcher.isolations > 0  # culprits did share passes with valid requests
    assert batcher.batches < 2 * len(requests)  # bisected, not every request retried alone
