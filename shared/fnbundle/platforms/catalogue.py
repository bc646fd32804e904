"""The one table of GPUs per platform: names, memory and what a second costs, with its date.

Key rule: a GPU name or price is written here and nowhere else. The cost estimates price
jobs from it, the job API accepts its names, and :mod:`fnbundle.endpoints` validates
deployments against it (Modal GPU types and how many a container takes, RunPod GPU pools,
CPU instances and CUDA versions), so updating a price or adding a GPU is one edit. Every
price carries its source page, the month it was read and how sure it is; a GPU the
platform accepts but whose price was never read is deployable and never chosen by an
estimate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from fnbundle.errors import InvalidRequest

Platform = Literal["local", "modal", "runpod"]
PLATFORMS: tuple[Platform, ...] = ("local", "modal", "runpod")

GIB = 1024**3  # bytes
HOURS = 3600  # seconds: Modal quotes prices per hour as well

CATALOGUE_AS_OF = "2026-11"
MODAL_PRICING = "https://modal.com/pricing"
RUNPOD_PRICING = "https://docs.runpod.io/serverless/pricing"  # flex workers
CONFIRMED = "read from the pricing page"
QUOTED = "the pricing page's figure, as quoted by 2026 price comparisons"
UNCONFIRMED = "best known public figure; not confirmed against the pricing page"

MODAL_CPU_USD_PER_CORE_S = 0.0000131  # per physical core (2 vCPUs) and second (quoted)
MODAL_MEMORY_USD_PER_GIB_S = 0.00000222  # per GiB and second (best known figure, unconfirmed)


class Gpu(BaseModel):
    """One GPU type (Modal) or GPU pool (RunPod) and what a second of it costs."""

    model_config = ConfigDict(frozen=True)

    platform: Platform
    name: str  # as the platform's API spells it: Modal gpu type, RunPod gpu_ids pool
    memory_gib: float  # nominal size; ``recommend_gpu``'s headroom covers what CUDA keeps
    usd_per_s: float
    fp32_tflops: float  # dense fp32 peak (NVIDIA data sheet); weakest GPU of a RunPod pool
    source: str
    as_of: str = CATALOGUE_AS_OF
    note: str = CONFIRMED
    models: str = ""  # the GPUs a RunPod pool may give (its name does not say)

    @property
    def label(self) -> str:
        """The name with what it is and how sure its price is, for an estimate's assumptions."""
        return f"{self.name} ({'; '.join(filter(None, (self.models, self.note)))})"


def _gpu(
    platform: Platform,
    name: str,
    gib: float,
    usd_per_s: float,
    tflops: float,
    note: str,
    models: str = "",
) -> Gpu:
    source = MODAL_PRICING if platform == "modal" else RUNPOD_PRICING
    return Gpu(
        platform=platform,
        name=name,
        memory_gib=gib,
        usd_per_s=round(usd_per_s, 7),
        fp32_tflops=tflops,
        source=source,
        note=note,
        models=models,
    )


CATALOGUE: dict[str, dict[str, Gpu]] = {
    "modal": {
        g.name: g
        for g in (
            _gpu("modal", "T4", 16, 0.59 / HOURS, 8.1, QUOTED),
            _gpu("modal", "L4", 24, 0.80 / HOURS, 30.3, QUOTED),
            _gpu("modal", "A10G", 24, 1.10 / HOURS, 31.2, UNCONFIRMED),
            _gpu("modal", "L40S", 48, 1.95 / HOURS, 91.6, QUOTED),
            _gpu("modal", "A100-40GB", 40, 2.10 / HOURS, 19.5, UNCONFIRMED),
            _gpu("modal", "A100-80GB", 80, 2.50 / HOURS, 19.5, QUOTED),
            _gpu("modal", "H100", 80, 3.95 / HOURS, 67.0, QUOTED),
            _gpu("modal", "H200", 141, 4.54 / HOURS, 67.0, UNCONFIRMED),
            _gpu("modal", "B200", 180, 6.25 / HOURS, 75.0, QUOTED),
        )
    },
    # RunPod serverless GPU pools: an endpoint lists pools in order of preference.
    "runpod": {
        g.name: g
        for g in (
            _gpu("runpod", "AMPERE_16", 16, 0.00016, 19.2, CONFIRMED,
                 "RTX A4000, A4500, RTX 4000/2000 Ada"),
            _gpu("runpod", "AMPERE_24", 24, 0.00019, 27.8, CONFIRMED, "RTX A5000, L4, RTX 3090"),
            _gpu("runpod", "ADA_24", 24, 0.00031, 82.6, CONFIRMED, "L4, RTX 4090"),
            _gpu("runpod", "ADA_32_PRO", 32, 0.00044, 104.8, UNCONFIRMED, "RTX 5090"),
            _gpu("runpod", "AMPERE_48", 48, 0.00034, 37.4, CONFIRMED, "A40, RTX A6000"),
            _gpu("runpod", "ADA_48_PRO", 48, 0.00053, 90.5, CONFIRMED, "L40, L40S, RTX 6000 Ada"),
            _gpu("runpod", "AMPERE_80", 80, 0.00076, 19.5, CONFIRMED, "A100 PCIe / SXM"),
            _gpu("runpod", "ADA_80_PRO", 80, 0.00116, 51.0, CONFIRMED, "H100 PCIe / SXM / NVL"),
            _gpu("runpod", "HOPPER_141", 141, 0.00155, 67.0, CONFIRMED, "H200"),
        )
    },
}  # fmt: skip

# Other spellings Modal accepts for a catalogue GPU, priced as that GPU: "A10" is the newer
# name of "A10G", "A100" is the 40 GB card, "H100!" pins an H100 (no silent upgrade to
# H200) and "B200+" accepts a B300 at B200 price.
MODAL_ALIASES = {"A10": "A10G", "A100": "A100-40GB", "H100!": "H100", "B200+": "B200"}
# Modal GPU types that deploy but have no price here yet: an estimate never picks them.
MODAL_UNPRICED = frozenset({"RTX-PRO-6000"})

MODAL_MAX_GPUS = 8  # per container
MODAL_MAX_GPUS_A10 = 4  # per container: A10 hosts are smaller

# RunPod serverless CPU instance ids, <flavor>-<vCPUs>-<GB of RAM>: c = compute-optimised,
# g = general purpose (more memory per vCPU). Source: RunPod's "CPU types" reference,
# https://docs.runpod.io/flash/configuration/cpu-types (runpod/docs,
# flash/configuration/cpu-types.mdx), read 2026-11-28. cpu5c is stocked in EU-RO-1 only.
RUNPOD_CPU_INSTANCES: dict[str, str] = {
    "cpu3c-1-2": "3rd gen compute-optimised, 1 vCPU, 2 GB",
    "cpu3c-2-4": "3rd gen compute-optimised, 2 vCPU, 4 GB",
    "cpu3c-4-8": "3rd gen compute-optimised, 4 vCPU, 8 GB",
    "cpu3c-8-16": "3rd gen compute-optimised, 8 vCPU, 16 GB",
    "cpu3g-1-4": "3rd gen general purpose, 1 vCPU, 4 GB",
    "cpu3g-2-8": "3rd gen general purpose, 2 vCPU, 8 GB",
    "cpu3g-4-16": "3rd gen general purpose, 4 vCPU, 16 GB",
    "cpu3g-8-32": "3rd gen general purpose, 8 vCPU, 32 GB",
    "cpu5c-1-2": "5th gen compute-optimised, 1 vCPU, 2 GB",
    "cpu5c-2-4": "5th gen compute-optimised, 2 vCPU, 4 GB",
    "cpu5c-4-8": "5th gen compute-optimised, 4 vCPU, 8 GB",
    "cpu5c-8-16": "5th gen compute-optimised, 8 vCPU, 16 GB",
}
# CUDA versions a RunPod endpoint can require of its hosts' drivers (``allowedCudaVersions``).
# Source: the CudaVersion enum of RunPod's REST API (also the console's list), read 2026-11-28.
RUNPOD_CUDA_VERSIONS = (
    "11.8",
    "12.0",
    "12.1",
    "12.2",
    "12.3",
    "12.4",
    "12.5",
    "12.6",
    "12.7",
    "12.8",
    "12.9",
    "13.0",
)


def modal_gpu_types() -> frozenset[str]:
    """Every GPU type a Modal app may ask for (upper case; Modal matches case-insensitively)."""
    names = set(CATALOGUE["modal"]) | set(MODAL_ALIASES) | MODAL_UNPRICED
    return frozenset(name.upper() for name in names)


def runpod_gpu_pools() -> dict[str, str]:
    """Every RunPod GPU pool id with its memory and the GPUs it may give."""
    return {g.name: f"{g.memory_gib:g} GB: {g.models}" for g in CATALOGUE["runpod"].values()}


def check_platform(platform: str) -> None:
    if platform not in PLATFORMS:
        raise InvalidRequest(
            f"Unknown platform {platform!r}; known: {', '.join(PLATFORMS)}.", field="platform"
        )


def get_gpu(platform: str, name: str) -> Gpu:
    """The catalogue entry for ``name`` (case-insensitive, as Modal matches it)."""
    check_platform(platform)
    gpus = CATALOGUE.get(platform, {})
    for gpu in gpus.values():
        if gpu.name.upper() == name.strip().upper():
            return gpu
    known = ", ".join(gpus) or "none: it runs on CPU"
    raise InvalidRequest(f"Unknown {platform} GPU {name!r}; known: {known}.", field="gpu")


def recommend_gpu(platform: str, memory_bytes: float, headroom: float = 1.2) -> Gpu:
    """The cheapest GPU of ``platform`` with ``memory_bytes * headroom`` of memory."""
    check_platform(platform)
    needed = memory_bytes * headroom
    fitting = [g for g in CATALOGUE.get(platform, {}).values() if g.memory_gib * GIB >= needed]
    if not fitting:
        raise InvalidRequest(
            f"No {platform} GPU has {needed / GIB:.1f} GiB ({memory_bytes / GIB:.1f} GiB "
            f"x {headroom} headroom); lower batch_size or max_length.",
            field="gpu",
        )
    return min(fitting, key=lambda g: (g.usd_per_s, g.memory_gib))


def cpu_usd_per_s(cores: int, memory_gib: float = 0.0) -> float:
    """A CPU machine at Modal's rates: ``cores`` physical cores and ``memory_gib`` of memory."""
    return cores * MODAL_CPU_USD_PER_CORE_S + memory_gib * MODAL_MEMORY_USD_PER_GIB_S
