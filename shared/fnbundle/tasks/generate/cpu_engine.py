"""The transformers engine: continuous batching on CPU over one shared KV cache.

One worker thread runs a step loop over a *running batch*. Between steps, sequences that
finished or whose consumer went away leave (their rows are dropped from the cache), and
waiting ones join: their prompts are prefilled together (left-padded), and their keys and
values are merged into the batch's cache, the shorter side padded on the left. Rows are
right-aligned, so the causal mask in cache index space is right for every row; an
attention mask hides the padding and explicit ``position_ids`` give each row its own RoPE
positions. One decode step then feeds every row its last token. Up to ``max_batch`` rows
run at once; the rest wait in a queue. With nothing to do the worker sleeps on a condition.

LoRA adapters ride in the same batch (``cpu_adapters``: PEFT's mixed-adapter forward,
``"__base__"`` for rows of the base model, at most ``max_adapters`` resident, the least
recently used one that no queued or running sequence holds deleted).

Each sequence (``cpu_sequence``) samples its own row with its own generator (``sampling``)
and turns its tokens into text deltas through a ``detok.TextStream`` (exact across split
characters, stop strings held back until settled). Deltas cross from the worker thread to
the consumer's event loop through a ``cpu_sequence.DeltaBridge``; a consumer that stops
iterating marks its sequence cancelled, and its row leaves at the next step.

Key rules: the model is touched only under ``_model_lock`` (the worker holds it for a step,
``add_adapter`` for a load), so a load never races a step; a failure ends only the
sequences it touched (a prefill: the newcomers; a decode step: the batch), and the worker
keeps serving. The cache layout (right-aligned rows, left padding) is ``cpu_batch``'s.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from fnbundle.errors import ArtifactCorrupt, InvalidRequest, ModelNotReady
from fnbundle.tasks.generate.cpu_adapters import Adapters
from fnbundle.tasks.generate.cpu_batch import KVBatch, prefill_inputs
from fnbundle.tasks.generate.cpu_sequence import DeltaBridge, GenSequence, check_prompt
from fnbundle.tasks.generate.detok import TextStream
from fnbundle.tasks.generate.engine import Delta, Sampling
from fnbundle.tasks.generate.sampling import new_generator, sample_token

log = logging.getLogger(__name__)


class TransformersEngine:
    """A causal LM with continuous batching and hot LoRA adapters; see the module docstring."""

    backend = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        context_length: int,
        max_batch: int = 16,
        max_adapters: int = 8,
    ):
        self.model_id = model_id
        self.tokenizer = tokenizer
        # The worker decodes with its own copy: a fast tokenizer used from two threads at
        # once can fail with "Already borrowed" while one call changes its settings.
        self._decoder = copy.deepcopy(tokenizer)
        self.context_length = context_length
        self.max_batch = max_batch
        self.max_adapters = max_adapters
        self._adapters = Adapters(model, model_id=model_id, max_resident=max_adapters)
        self._pad_id = _pad_id(model, tokenizer)
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        # Counters for metrics and benchmarks.
        self.steps = 0  # forward passes (prefills and decode steps)
        self.largest_batch = 0
        self.tokens_generated = 0
        # Shared with the event loop: guarded by _state.
        self._state = threading.Condition()
        self._queue: deque[GenSequence] = deque()
        self._closed = False
        # The model (in _adapters) and the running batch: guarded by _model_lock.
        self._model_lock = threading.Lock()
        self._rows: list[GenSequence] = []  # the running batch, in cache row order
        self._batch = KVBatch()
        self._worker = threading.Thread(target=self._run, name="generate-engine", daemon=True)
        self._worker.start()

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        model_id: str,
        context_length: int | None = None,
        max_batch: int = 16,
        max_adapters: int = 8,
        threads: int | None = None,
    ) -> TransformersEngine:
        """Load a model folder (config.json, safetensors, tokenizer) in float32 on CPU;
        ``context_length`` None: the config's ``max_position_embeddings``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads is not None:
            torch.set_num_threads(threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, use_safetensors=True
            )
        except Exception as exc:  # any load failure means an unusable artifact
            raise ArtifactCorrupt(f"Model {model_id} cannot be loaded: {exc}") from exc
        model.eval()
        limit = context_length or getattr(model.config, "max_position_embeddings", None)
        if not limit:
            raise ArtifactCorrupt(f"Model {model_id} states no max_position_embeddings.")
        return cls(
            model,
            tokenizer,
            model_id=model_id,
            context_length=int(limit),
            max_batch=max_batch,
            max_adapters=max_adapters,
        )

    # ---- prompts -------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        from jinja2 import TemplateError

        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest(
                f"Model {self.model_id} has no chat template; use /v1/completions.",
                field="messages",
            )
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
        except TemplateError as exc:  # e.g. the template refuses a role or an order of turns
            raise InvalidRequest(
                f"Model {self.model_id}'s chat template refused the messages: {exc}",
                field="messages",
            ) from None
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    @property
    def default_stop_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids of the generation config and the tokenizer."""
        ids: set[int] = set()
        model = self._adapters.model
        for source in (getattr(model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            ids.update([eos] if isinstance(eos, int) else (eos or []))
        return tuple(sorted(ids))

    # ---- counters --------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Sequences in the running batch now."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Sequences queued for a slot."""
        return len(self._queue)

    # ---- generation ----------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, adapter: str | None = None
    ) -> AsyncIterator[Delta]:
        """Stream the completion of ``prompt_ids``. Checks run now (an unknown adapter is a
        NotFound, a prompt that fills the context a LimitExceeded); the sequence is queued
        when the stream is first iterated, and closing the stream cancels it."""
        if self._closed:
            raise ModelNotReady(f"Model {self.model_id} is shutting down.")
        check_prompt(prompt_ids, sampling, self.model_id, self.context_length, self._vocab_size)
        self._adapters.require(adapter)
        return self._stream(list(prompt_ids), sampling, adapter)

    async def _stream(
        self, prompt_ids: list[int], sampling: Sampling, adapter: str | None
    ) -> AsyncIterator[Delta]:
        bridge = DeltaBridge()
        seq = GenSequence(
            prompt_ids=prompt_ids,
            sampling=sampling,
            adapter=adapter,
            emit=bridge.emit,
            max_new=min(sampling.max_tokens, self.context_length - len(prompt_ids)),
            stream=TextStream(self._decoder, sampling.stop),
            generator=new_generator(sampling),
        )
        self._submit(seq)
        try:
            while True:
                delta = await bridge.next()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not seq.done:
                with self._state:
                    seq.cancelled = True
                    self._state.notify()

    def _submit(self, seq: GenSequence) -> None:
        with self._state:
            if self._closed:
                raise ModelNotReady(f"Model {self.model_id} is shutting down.")
            self._adapters.acquire(seq.adapter)  # NotFound if evicted since generate()
            self._queue.append(seq)
            self._state.notify()

    def _release(self, seq: GenSequence) -> None:
        """The sequence is over (once): its adapter may be evicted again."""
        if not seq.released:
            seq.released = seq.done = True
            self._adapters.release(seq.adapter)

    # ---- adapters ------------------------------------------------------------------------

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters

    def add_adapter(self, name: str, folder: Path) -> None:
        """Load a PEFT LoRA folder as adapter ``name`` (blocking: it waits for the current
        step; call it through ``asyncio.to_thread`` from async code). A folder that is not
        a LoRA for this base raises ArtifactCorrupt and changes nothing."""
        with self._model_lock:
            self._adapters.add(name, Path(folder))

    # ---- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._state:
                while not self._closed and not self._queue and not self._rows:
                    self._state.wait()  # idle: no spinning
                if self._closed:
                    break
                newcomers = self._take_newcomers()
            with self._model_lock, torch.inference_mode():
                try:
                    self._step(newcomers)
                except Exception as exc:  # a bug here must not hang every stream
                    log.exception("generation step failed")
                    self._end(self._rows + newcomers, exc)
        with self._state:
            pending = list(self._queue)
            self._queue.clear()
        self._end(self._rows + pending, ModelNotReady(f"Model {self.model_id} was unloaded."))

    def _take_newcomers(self) -> list[GenSequence]:
        """Waiting sequences for the free slots (called under _state)."""
        free = self.max_batch - sum(1 for s in self._rows if not (s.done or s.cancelled))
        taken: list[GenSequence] = []
        while self._queue and len(taken) < free:
            seq = self._queue.popleft()
            if seq.cancelled:
                self._release(seq)
            else:
                taken.append(seq)
        return taken

    def _step(self, newcomers: list[GenSequence]) -> None:
        self._drop_done()
        if newcomers:
            self._prefill(newcomers)
            self._drop_done()
        if self._rows:
            self._decode()
            self._drop_done()

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, rows: list
    ) -> Any:
        context, kwargs = self._adapters.forward_args([s.adapter for s in rows])
        with context:
            out = self._adapters.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        self.steps += 1
        return out

    def _prefill(self, newcomers: list[GenSequence]) -> None:
        """Run the newcomers' prompts together, merge their cache, sample their first tokens."""
        ids, mask, positions = prefill_inputs([s.prompt_ids for s in newcomers], self._pad_id)
        try:
            out = self._forward(ids, mask, positions, self._batch.new_cache(), newcomers)
        except Exception as exc:  # only the newcomers are affected
            log.exception("prefill of %d sequences failed", len(newcomers))
            self._end(newcomers, exc)
            return
        self._batch.join(out.cache, mask)
        self._rows = self._rows + newcomers
        self.largest_batch = max(self.largest_batch, len(self._rows))
        self._advance(newcomers, out.logits[:, -1, :])

    def _decode(self) -> None:
        """One step for every running row: feed its last token, sample the next."""
        ids = torch.tensor([[s.generated[-1]] for s in self._rows])
        positions = torch.tensor([[s.position] for s in self._rows])
        mask = self._batch.step_mask()
        try:
            out = self._forward(ids, mask, positions, self._batch.cache, self._rows)
        except Exception as exc:  # the batch's cache is in doubt: end the batch
            log.exception("decode step of %d sequences failed", len(self._rows))
            self._end(self._rows, exc)
            return
        self._batch.stepped(out.cache, mask)
        self._advance(self._rows, out.logits[:, -1, :])

    def _advance(self, rows: list[GenSequence], logits: torch.Tensor) -> None:
        """Sample one token per row and hand out what it adds to the text."""
        for row, seq in enumerate(rows):
            if seq.done or seq.cancelled:
                continue
            try:
                token = sample_token(logits[row], seq.sampling, seq.generator)
                self.tokens_generated += 1
                seq.accept(token)
            except Exception as exc:  # one row's failure ends that row only
                log.exception("sampling failed for one sequence")
                seq.fail(exc)

    def _drop_done(self) -> None:
        """Rows that finished, failed or were cancelled leave the batch."""
        keep = [i for i, s in enumerate(self._rows) if not (s.done or s.cancelled)]
        for seq in self._rows:
            if seq.done or seq.cancelled:
                self._release(seq)
        self._batch.keep(keep)
        self._rows = [self._rows[i] for i in keep]

    def _end(self, seqs: list[GenSequence], exc: BaseException) -> None:
        """Fail ``seqs`` with ``exc``; those in the batch leave it (the batch restarts empty
        if any did: its cache may be half-updated)."""
        for seq in seqs:
            seq.fail(exc)
            self._release(seq)
        if any(seq in self._rows for seq in seqs):
            self._drop_done()

    async def close(self) -> None:
        """Stop the worker after its current step; every pending stream ends with a 503."""
        with self._state:
            self._closed = True
            self._state.notify_all()
        await asyncio.to_thread(self._worker.join)


def _pad_id(model: Any, tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, model.config.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0
