import asyncio

import numpy as np
import pytest
from fnbundle.runtime.batching import DynamicBatcher, length_groups, run_by_length

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


def test_requests_that_queued_during_a_pass_start_the_next_one_at_once():
    import threading

    release, started = threading.Event(), []

    def held(texts):  # the first pass holds its thread until the test lets it go
        started.append(list(texts))
        if len(started) == 1:
            release.wait(timeout=5)
        return lengths(texts)

    async def main():
        # a company wait far longer than the test: only the new rule can dispatch in time
        batcher = DynamicBatcher(held, max_size=64, max_wait_s=30)
        first = [asyncio.ensure_future(batcher.submit([t])) for t in ("a", "bb")]
        while not started:
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.submit([t])) for t in ("ccc", "dddd")]
        await asyncio.sleep(0.01)  # both are queued behind the running pass
        release.set()
        rows = await asyncio.wait_for(asyncio.gather(*first, *queued), timeout=5)
        await batcher.close()
        return rows

    rows = asyncio.run(main())
    assert [r[:, 0].tolist() for r in rows] == [[1], [2], [3], [4]]
    assert started == [["a", "bb"], ["ccc", "dddd"]]  # one pass each, no wait between


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


# --- length groups ----------------------------------------------------------------------


def _cost(lengths, groups, pass_tokens):
    return sum(pass_tokens + len(g) * max(lengths[i] for i in g) for g in groups)


def _cheapest(lengths, pass_tokens):
    """Every way to cut the sorted lengths into runs: the cheapest total (brute force)."""
    ordered = sorted(lengths)
    n = len(ordered)
    best = float("inf")
    for cuts in range(2 ** (n - 1)):
        total, start = 0, 0
        for end in range(1, n + 1):
            if end == n or cuts >> (end - 1) & 1:
                total += pass_tokens + (end - start) * ordered[end - 1]
                start = end
        best = min(best, total)
    return best


def test_length_groups_cover_every_item_once_at_the_lowest_cost():
    rng = np.random.default_rng(7)
    for _ in range(60):
        lengths = rng.integers(3, 129, size=rng.integers(1, 11)).tolist()
        pass_tokens = int(rng.choice([16, 64, 256, 1024]))
        groups = length_groups(lengths, pass_tokens)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert _cost(lengths, groups, pass_tokens) == _cheapest(lengths, pass_tokens)


def test_short_and_long_texts_run_apart_and_alike_lengths_together():
    lengths = [12, 128, 9, 14, 127, 11, 128, 10]
    groups = length_groups(lengths, 256)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[9, 10, 11, 12, 14], [127, 128, 128]]
    # alike lengths, or a padding under one pass's cost: one pass, in the items' order
    assert length_groups([20, 22, 21, 25], 256) == [[0, 1, 2, 3]]
    assert length_groups([9, 128], 256) == [[0, 1]]
    assert length_groups(lengths, 0) == [list(range(8))]  # 0: never split
    assert length_groups([40], 1) == [[0]]


def test_grouped_rows_come_back_in_order_equal_to_one_by_one():
    passes = []

    def model(items):  # a row depends on its item only, like a forward pass's
        passes.append(len(items))
        return np.array([[len(x), sum(x)] for x in items], dtype=np.float32)

    rng = np.random.default_rng(3)
    items = [rng.integers(0, 100, size=n).tolist() for n in [5, 120, 7, 128, 6, 119, 8]]
    rows = run_by_length(items, [len(x) for x in items], model, 64)
    assert len(passes) == 2  # the short ones and the long ones
    one_by_one = np.concatenate([model([x]) for x in items])
    np.testing.assert_array_equal(rows, one_by_one)


def test_requests_batched_in_length_groups_get_their_own_rows():
    def model(items):
        return np.array([[len(x)] for x in items], dtype=np.float32)

    def grouped(items):
        return run_by_length(items, [len(x) for x in items], model, 32)

    async def main():
        batcher = DynamicBatcher(grouped, max_size=64, max_wait_s=0.005)
        requests = [[[1] * (3 + i), [2] * (120 - i)] for i in range(20)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return results

    for i, rows in enumerate(asyncio.run(main())):
        assert rows[:, 0].tolist() == [3 + i, 120 - i]


def test_the_split_cost_setting_is_validated(monkeypatch):
    from fnbundle.settings import Settings
    from pydantic import ValidationError

    assert Settings().batch_split_tokens > 0  # splitting is on by default
    monkeypatch.setenv("FNB_BATCH_SPLIT_TOKENS", "0")
    assert Settings().batch_split_tokens == 0
    for bad in ("-1", "many"):
        monkeypatch.setenv("FNB_BATCH_SPLIT_TOKENS", bad)
        with pytest.raises(ValidationError, match="batch_split_tokens"):
            Settings()


def test_served_embeddings_in_length_groups_equal_one_by_one(tmp_path):
    """The embed task's batch function on a real (tiny) ONNX model: requests of short and
    long texts share a pass, split by length, and each gets its one-by-one vectors."""
    from fnbundle.loading import load_model
    from fnbundle.settings import Settings
    from fnbundle.store import Store
    from fnbundle.tasks.embed.schema import EmbeddingRequest
    from fnbundle.tasks.embed.serve import EmbedTask

    from tests.unit.tiny_onnx import publish_tiny_embedder

    publish_tiny_embedder(Store(tmp_path), "tiny-embed", max_tokens=64)
    settings = Settings(store=tmp_path, batch_split_tokens=4)
    model = load_model("tiny-embed", settings, task="embed")
    task = EmbedTask()
    long = " ".join(["the good film"] * 15)
    requests = [
        EmbeddingRequest(model="tiny-embed", input=["great", long, "bad film"][i % 3 :])
        for i in range(9)
    ]
    passes, shapes = [], []
    forward = model._run  # the ONNX session's run: record each pass's padded shape

    def recorded(feed):
        shapes.append(feed["input_ids"].shape)
        return forward(feed)

    model._run = recorded

    def batch_fn(items):
        passes.append(sorted(len(x) for x in items))
        return task.batch_fn(model)(items)

    async def main():
        batcher = DynamicBatcher(batch_fn, max_size=64, max_wait_s=0.005)
        answers = await asyncio.gather(*(task.run(model, r, batcher, settings) for r in requests))
        await batcher.close()
        return answers

    answers = asyncio.run(main())
    assert len(passes) < len(requests)  # requests shared batches
    shared = [p for p in passes if min(p) < 10 and max(p) > 40]
    assert shared and len(shapes) > len(passes)  # ... which ran as more than one pass
    assert min(width for _, width in shapes) < 10  # the short texts padded to their own length
    for request, answer in zip(requests, answers, strict=True):
        alone = [model.embed([text])[0] for text in request.input]
        np.testing.assert_allclose([d.embedding for d in answer.data], alone, atol=1e-6)


def test_a_few_short_texts_are_tokenized_on_the_loop_and_the_rest_in_a_thread(tmp_path):
    """One short text costs less to tokenize than a hop to a thread; a request of many
    texts, or of long ones, would stall every other request on the loop, so it hops."""
    import threading

    from fnbundle.loading import load_model
    from fnbundle.settings import Settings
    from fnbundle.store import Store
    from fnbundle.tasks.embed import serve
    from fnbundle.tasks.embed.schema import EmbeddingRequest

    from tests.unit.tiny_onnx import publish_tiny_embedder

    publish_tiny_embedder(Store(tmp_path), "tiny-embed", max_tokens=64)
    settings = Settings(store=tmp_path)
    model = load_model("tiny-embed", settings, task="embed")
    tokenize, where = model.tokenize, []

    def recorded(texts):
        where.append(threading.current_thread() is threading.main_thread())
        return tokenize(texts)

    model.tokenize = recorded
    task = serve.EmbedTask()
    many = ["good"] * (serve.INLINE_TOKENIZE_TEXTS + 1)
    long = ["good " * (serve.INLINE_TOKENIZE_CHARS // 5 + 1)]
    for texts in (["a good film"], many, long):
        request = EmbeddingRequest(model="tiny-embed", input=texts)
        answer = asyncio.run(task.run(model, request, None, settings))
        assert len(answer.data) == len(texts)
    assert where == [True, False, False]  # on the loop (the main thread), then in threads
