"""Dynamic batching: concurrent requests to one model share a forward pass.

Key rule: a lone request never waits. A batch is dispatched as soon as the model is free;
only while requests are arriving concurrently (the previous batch held more than one
request) and none queued during the last pass does a small batch wait up to
``max_wait_s`` for company. Under load the queue fills while the model is busy, so batches
form by themselves and the next pass starts the moment the last one ends, before the event
loop answers the last batch (the loop's work then overlaps a pass instead of leaving a core
idle); at one client the latency is one forward pass.

An item is whatever the model's batch function takes (a text, a token array); a request
is a sequence of items and gets one row per item back.

Failures stay with their request: when a shared forward pass raises, the batch is split in
halves and each half runs again (down to single requests), so only the request that
cannot be computed gets the error and every other request in the batch gets its rows.

A retired batcher (its model was evicted) finishes what is queued, then stops; a request
that still holds it runs alone, unbatched, so nothing waits on a stopped worker.

For operators: each request's time waiting in the queue and running its batch is added to
the current request's context (the ``Server-Timing`` header), and ``on_batch``, when set,
is told each forward pass's size (the metrics): a few clock reads per request, no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fnbundle.logs import current_request

BatchFn = Callable[[list[Any]], np.ndarray]


@dataclass
class _Pending:
    texts: Sequence[Any]  # the request's items
    future: asyncio.Future[np.ndarray] = field(repr=False)
    queued_at: float = 0.0  # perf_counter seconds
    started_at: float = 0.0  # its (last) forward pass began
    ended_at: float = 0.0


_RETIRE: Any = object()  # queued by retire(): the worker stops once it reaches it


class DynamicBatcher:
    """Runs ``fn(items) -> rows`` on gathered batches in one worker thread."""

    def __init__(self, fn: BatchFn, *, max_size: int = 64, max_wait_s: float = 0.001):
        self._fn = fn
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fnb-batch")
        self._worker: asyncio.Task[None] | None = None
        self._busy = False  # did the last batch hold more than one request?
        self.batches = 0  # forward passes run (for tests and metrics)
        self.largest_batch = 0
        self.isolations = 0  # failed shared passes that were split to find their culprit
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self.retired = False
        self.on_batch: Callable[[int], None] | None = None  # told each forward pass's size

    async def submit(self, texts: Sequence[Any]) -> np.ndarray:
        if self.retired:  # its model was evicted while this request held it
            return await asyncio.to_thread(self._fn, list(texts))
        self._loop_ref = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._loop())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        pending = _Pending(texts, future, time.perf_counter())
        await self._queue.put(pending)
        rows = await future
        context = current_request()
        if context is not None:
            queue_s = pending.started_at - pending.queued_at
            context.add_batch_timing(queue_s, pending.ended_at - pending.started_at)
        return rows

    def retire(self) -> None:
        """Stop after what is queued (callable from any thread); later submits run alone."""
        self.retired = True
        loop = self._loop_ref
        if self._worker is None or loop is None or loop.is_closed():
            self._executor.shutdown(wait=False)
            return
        loop.call_soon_threadsafe(self._queue.put_nowait, _RETIRE)

    async def _gather(self) -> list[_Pending]:
        # Requests that queued while the last pass ran go at once: waiting for company
        # would let the loop answer the last batch first, with a core idle meanwhile.
        piled_up = not self._queue.empty()
        batch = [await self._queue.get()]
        if batch[0] is _RETIRE:
            return batch
        size = len(batch[0].texts)
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while size < self._max_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if not self._busy or piled_up or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _RETIRE:  # run what came before it, then stop
                self._queue.put_nowait(item)
                break
            batch.append(item)
            size += len(item.texts)
        return batch

    async def _loop(self) -> None:
        while True:
            gathered = await self._gather()
            if gathered[0] is _RETIRE:
                self._executor.shutdown(wait=False)
                return
            batch = [p for p in gathered if not p.future.done()]
            if not batch:
                continue
            self._busy = len(batch) > 1
            await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        """One forward pass for ``batch``; if it raises, bisect until the culprit is alone."""
        batch = [p for p in batch if not p.future.done()]  # a client that left needs no rows
        if not batch:
            return
        texts = [t for p in batch for t in p.texts]
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(texts))
        if self.on_batch is not None:
            self.on_batch(len(texts))
        started = time.perf_counter()
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._executor, self._fn, texts)
        except Exception as exc:
            if len(batch) == 1:  # the culprit: its error is its own
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            self.isolations += 1
            half = len(batch) // 2
            await self._run(batch[:half])
            await self._run(batch[half:])
            return
        ended = time.perf_counter()
        start = 0
        for p in batch:
            end = start + len(p.texts)
            p.started_at, p.ended_at = started, ended
            if not p.future.done():
                p.future.set_result(rows[start:end])
            start = end

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- length groups: a gathered batch split where padding would cost more than a pass ----


def length_groups(lengths: Sequence[int], pass_tokens: int) -> list[list[int]]:
    """Item indices in groups of similar token length, one forward pass per group.

    A forward pass costs about ``pass_tokens`` (its fixed cost, in padded tokens) plus
    its items times its longest item's length. The groups minimise that total over the
    items sorted by length (exact, by dynamic programming over the distinct lengths), so
    a batch is split only where the padding saved pays for another pass. ``pass_tokens``
    0, or a batch whose whole padding is under one pass: a single group, in order.
    """
    n = len(lengths)
    if pass_tokens <= 0 or n < 2 or n * max(lengths) - sum(lengths) <= pass_tokens:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: lengths[i])
    distinct, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    upto = np.concatenate([[0], np.cumsum(counts)])  # items shorter than distinct[j]
    # best[j]: cheapest cost of the items in the first j distinct lengths; a group of the
    # items from distinct length i to j-1 costs pass_tokens + (upto[j] - upto[i]) * distinct[j-1]
    best = np.zeros(len(distinct) + 1)
    cut = np.zeros(len(distinct) + 1, dtype=np.int64)
    for j in range(1, len(distinct) + 1):
        costs = best[:j] + (upto[j] - upto[:j]) * float(distinct[j - 1]) + pass_tokens
        cut[j] = int(costs.argmin())
        best[j] = costs[cut[j]]
    bounds = []
    j = len(distinct)
    while j > 0:
        bounds.append((int(upto[cut[j]]), int(upto[j])))
        j = int(cut[j])
    return [order[start:end] for start, end in reversed(bounds)]


def run_by_length(
    items: Sequence[Any],
    lengths: Sequence[int],
    run: Callable[[list[Any]], np.ndarray],
    pass_tokens: int,
) -> np.ndarray:
    """``run`` over ``items`` in :func:`length_groups`, the rows back in the items' order.
    A model whose rows do not depend on their batch (an fp32 encoder with an attention
    mask) gives each row exactly as a one-group run would."""
    groups = length_groups(lengths, pass_tokens)
    if len(groups) == 1:
        return run(list(items))
    out: np.ndarray | None = None
    for group in groups:
        rows = np.asarray(run([items[i] for i in group]))
        if out is None:
            out = np.empty((len(items), *rows.shape[1:]), dtype=rows.dtype)
        out[group] = rows
    assert out is not None
    return out
