"""The vLLM engine: one base model on a GPU behind vLLM's async engine (``AsyncLLM``).

Prompt token ids go in as a ``TokensPrompt`` with ``SamplingParams`` made from our
:class:`~fnbundle.tasks.generate.engine.Sampling` (``output_kind=DELTA``, so each
``RequestOutput`` carries only the new text and token ids); text deltas come out with
their token counts, and the last one with its finish reason. A consumer that closes the
stream early aborts the request in vLLM (its KV blocks are freed at the next step). LoRA:
the engine starts with ``enable_lora``, ``max_loras`` (adapters on the GPU at once) and
``max_lora_rank``; :meth:`VLLMEngine.add_adapter` only records name -> folder under a
unique integer id, and vLLM loads an adapter on its first request and keeps its own LRU.

Decision: vLLM's async engine sits behind *our* routes, not vLLM's OpenAI server in a
subprocess. One request schema, one error shape, one set of limits, the store's model
names and adapters, bearer keys and metrics are then the same on every runtime (the local
gateway on CPU, Modal, RunPod), and one conformance suite tests both engines. What vLLM's
server adds beyond that (tool parsers, multimodal inputs) is not served by fnbundle.

Key rules: vLLM is imported inside :meth:`VLLMEngine.load` and the methods it returns
through, never at module level (it exists only in the GPU images; this module imports on
any machine); what can be checked without a GPU (the sampling mapping, the engine
arguments, delta extraction, the adapter table) is plain functions tested on CPU.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fnbundle.errors import ArtifactCorrupt, InvalidRequest, NotFound
from fnbundle.tasks.generate.engine import Delta, FinishReason, Sampling
from fnbundle.tasks.generate.sizing import VLLM_LORA_RANKS, device_fit_problem, shape_from_folder

BACKEND = "vllm"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_KNOWN_ADAPTERS = 256  # names remembered; vLLM's own LRU bounds what it holds in memory
CPU_LORAS_PER_GPU_SLOT = 4  # adapters vLLM keeps in host memory per GPU slot (max_cpu_loras)


# --- what goes into vLLM --------------------------------------------------------------
def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """``SamplingParams`` keyword arguments for one sequence (``output_kind`` is added
    where vLLM is imported). Stop strings are cut from the text; special tokens such as
    ``<|im_end|>`` never reach it."""
    return {
        "n": 1,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,  # 0: greedy in vLLM too
        "top_p": sampling.top_p,
        "seed": sampling.seed,  # per request: reproducible whatever shares the batch
        "stop": list(sampling.stop),
        "stop_token_ids": list(sampling.stop_token_ids),
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }


def engine_kwargs(
    folder: Path,
    *,
    model_id: str,
    context_length: int | None,
    max_batch: int,
    max_adapters: int,
    gpu_memory_utilization: float,
    max_lora_rank: int,
) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments for the base model in ``folder``."""
    if max_lora_rank not in VLLM_LORA_RANKS:
        raise InvalidRequest(
            f"max_lora_rank {max_lora_rank} is not one vLLM serves: "
            f"{', '.join(map(str, VLLM_LORA_RANKS))}.",
            field="max_lora_rank",
        )
    kwargs: dict[str, Any] = {
        "model": str(folder),
        "tokenizer": str(folder),
        "served_model_name": model_id,
        "max_model_len": context_length,  # None: the model's own limit
        "max_num_seqs": max_batch,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enable_prefix_caching": True,  # chats resend their history: reuse its KV blocks
        "trust_remote_code": False,  # the store refuses remote code; so does the engine
        "disable_log_stats": True,
    }
    if max_adapters > 0:
        kwargs |= {
            "enable_lora": True,
            "max_loras": max_adapters,
            "max_lora_rank": max_lora_rank,
            "max_cpu_loras": max_adapters * CPU_LORAS_PER_GPU_SLOT,
        }
    return kwargs


def capped_context(model_context: int | None, cap: int | None) -> int | None:
    """The context vLLM serves: the model's own, lowered to ``cap`` (None: no cap; a
    model that names none gets the cap, or vLLM's reading of its config)."""
    if cap is None:
        return model_context
    return cap if model_context is None else min(model_context, cap)


def check_device_fits(
    folder: Path,
    context_length: int | None,
    gpu_memory_utilization: float,
    *,
    max_adapters: int,
    max_lora_rank: int,
) -> None:
    """ArtifactCorrupt, with the numbers, when this process's GPU cannot hold the model and
    one full context (sizing reads config.json and the safetensors headers only)."""
    import torch

    shape = shape_from_folder(folder)
    context = context_length or shape.max_context
    if context is None or not torch.cuda.is_available():
        return  # vLLM says it itself
    _free, total = torch.cuda.mem_get_info()
    problem = device_fit_problem(
        shape,
        int(total),
        gpu_memory_utilization,
        context_length=context,
        max_adapters=max_adapters,
        max_lora_rank=max_lora_rank if max_adapters else 0,
    )
    if problem:
        raise ArtifactCorrupt(problem)


# --- what comes out of vLLM -----------------------------------------------------------
class CompletionLike(Protocol):
    text: str
    token_ids: Sequence[int]
    finish_reason: str | None


class RequestOutputLike(Protocol):
    outputs: Sequence[CompletionLike]
    finished: bool


def finish_reason(reason: str | None) -> FinishReason:
    """vLLM's finish reason as ours: "length" stays, everything else ended on a stop."""
    return "length" if reason == "length" else "stop"


def delta_from_output(output: RequestOutputLike) -> Delta | None:
    """The delta in one DELTA-kind ``RequestOutput``; None when it carries nothing new."""
    completion = output.outputs[0] if output.outputs else None
    text = completion.text if completion is not None else ""
    tokens = len(completion.token_ids) if completion is not None else 0
    reason = None
    if output.finished:
        reason = finish_reason(completion.finish_reason if completion is not None else None)
    if not text and not tokens and reason is None:
        return None
    return Delta(text=text, tokens=tokens, finish_reason=reason)


# --- adapters -------------------------------------------------------------------------
@dataclass(frozen=True)
class Adapter:
    name: str  # the adapter artifact's version id
    int_id: int  # vLLM's lora_int_id: unique for the engine's life, never reused
    path: Path
    rank: int


class AdapterTable:
    """Adapter name -> folder and vLLM id; the least recently used name is forgotten past
    ``bound`` (vLLM evicts its own copy by its LRU)."""

    def __init__(self, max_lora_rank: int, bound: int = MAX_KNOWN_ADAPTERS):
        self.max_lora_rank = max_lora_rank
        self.bound = bound
        self._adapters: OrderedDict[str, Adapter] = OrderedDict()
        self._ids = itertools.count(1)  # 0 means "no adapter" to vLLM

    def add(self, name: str, folder: Path) -> Adapter:
        if name in self._adapters:
            self._adapters.move_to_end(name)
            return self._adapters[name]
        missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
        if missing:
            raise ArtifactCorrupt(f"Adapter {name} lacks {', '.join(missing)}.")
        try:
            config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
            rank = int(config["r"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactCorrupt(
                f"Adapter {name} has an unreadable adapter_config.json: {exc}"
            ) from None
        if rank > self.max_lora_rank:
            raise InvalidRequest(
                f"Adapter {name} has rank {rank}; this engine serves ranks up to "
                f"{self.max_lora_rank} (FNB_VLLM_MAX_LORA_RANK).",
                field="model",
            )
        adapter = Adapter(name=name, int_id=next(self._ids), path=folder, rank=rank)
        self._adapters[name] = adapter
        while len(self._adapters) > self.bound:
            self._adapters.popitem(last=False)
        return adapter

    def get(self, name: str) -> Adapter:
        if name not in self._adapters:
            raise NotFound(f"Adapter {name} is not loaded on this engine.", field="model")
        self._adapters.move_to_end(name)
        return self._adapters[name]

    def __contains__(self, name: object) -> bool:
        return name in self._adapters


# --- the engine -----------------------------------------------------------------------
class VLLMEngine:
    """One base model served by vLLM's ``AsyncLLM``; see the module docstring."""

    backend = BACKEND

    def __init__(
        self, llm: Any, tokenizer: Any, *, model_id: str, context_length: int, max_lora_rank: int
    ):
        self._llm = llm
        self.tokenizer = tokenizer  # transformers' tokenizer of the base (chat template)
        self.model_id = model_id
        self.context_length = context_length
        self.adapters = AdapterTable(max_lora_rank)

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        model_id: str,
        context_length: int | None,
        max_batch: int,
        max_adapters: int,
        gpu_memory_utilization: float | None = None,
        max_lora_rank: int | None = None,
    ) -> VLLMEngine:
        """Start vLLM on the base in ``folder`` (blocks while the weights load and CUDA
        graphs are captured). The vLLM-only knobs come from the settings unless given:
        ``FNB_VLLM_GPU_MEMORY_UTILIZATION``, ``FNB_VLLM_MAX_LORA_RANK``, and
        ``FNB_VLLM_MAX_MODEL_LEN``, which caps ``context_length`` (the model's own): vLLM
        reserves KV cache for it, so the endpoint's sizing decides it."""
        from fnbundle.settings import get_settings

        settings = get_settings()
        context_length = capped_context(context_length, settings.vllm_max_model_len)
        if gpu_memory_utilization is None:
            gpu_memory_utilization = settings.vllm_gpu_memory_utilization
        if max_lora_rank is None:
            max_lora_rank = settings.vllm_max_lora_rank
        kwargs = engine_kwargs(
            folder,
            model_id=model_id,
            context_length=context_length,
            max_batch=max_batch,
            max_adapters=max_adapters,
            gpu_memory_utilization=gpu_memory_utilization,
            max_lora_rank=max_lora_rank,
        )
        try:
            import vllm  # noqa: F401 - the clear error below, not an ImportError deep inside
        except ImportError:
            raise ArtifactCorrupt(
                "The vllm backend needs the vllm package (the GPU images install it: "
                "requirements/vllm.txt); use the transformers backend on this machine."
            ) from None
        check_device_fits(
            folder,
            context_length,
            gpu_memory_utilization,
            max_adapters=max_adapters,
            max_lora_rank=max_lora_rank,
        )
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        return cls(
            llm,
            tokenizer,
            model_id=model_id,
            context_length=int(llm.model_config.max_model_len),
            max_lora_rank=max_lora_rank,
        )

    # -- prompts ---------------------------------------------------------------------
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    # -- adapters --------------------------------------------------------------------
    def add_adapter(self, name: str, folder: Path) -> None:
        self.adapters.add(name, folder)

    def has_adapter(self, name: str) -> bool:
        return name in self.adapters

    def _lora_request(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        known = self.adapters.get(adapter)
        return LoRARequest(known.name, known.int_id, str(known.path))

    # -- generation ------------------------------------------------------------------
    def generate(
        self, prompt_ids: list[int], sampling: Sampling, adapter: str | None = None
    ) -> AsyncIterator[Delta]:
        """The sequence's deltas; an unknown adapter is refused here, before any stream."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(**sampling_kwargs(sampling), output_kind=RequestOutputKind.DELTA)
        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        return self._stream(prompt, params, self._lora_request(adapter))

    async def _stream(self, prompt: Any, params: Any, lora: Any) -> AsyncIterator[Delta]:
        request_id = f"fnb-{uuid.uuid4().hex}"
        stream = self._llm.generate(prompt, params, request_id, lora_request=lora)
        finished = False
        try:
            async for output in stream:
                delta = delta_from_output(output)
                if delta is None:
                    continue
                finished = delta.finish_reason is not None
                yield delta
        except ValueError as exc:  # vLLM's request validation (VLLMValidationError)
            raise InvalidRequest(str(exc)) from None
        finally:
            if not finished:  # the consumer went away: free the sequence's slot now
                await stream.aclose()
                await self._llm.abort(request_id)

    async def close(self) -> None:
        self._llm.shutdown()
