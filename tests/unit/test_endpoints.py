"""The endpoint declaration: the shipped file, and the values each platform would refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fnbundle.endpoints import DEFAULT_PATH, get_endpoint, load_endpoints
from fnbundle.errors import InvalidRequest, NotFound
from fnbundle.platforms.catalogue import RUNPOD_CPU_INSTANCES, RUNPOD_CUDA_VERSIONS

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML


def write_declaration(
    tmp_path: Path, modal: dict[str, Any], runpod: dict[str, Any], task: str = "classify"
) -> Path:
    """One endpoint ``demo`` with valid defaults, overridden by ``modal`` / ``runpod``
    (a value of None leaves the key out)."""
    modal = {"app": "fnbundle-demo", "file": "functions/demo.py", **modal}
    runpod = {
        "handler": "handlers/demo.py",
        "image": "fnbundle-demo",
        "compute": "GPU",
        "gpu_ids": ["ADA_24"],
        "cuda_versions": ["12.8"],
        **runpod,
    }
    lines = ["[endpoints.demo]", f"task = {task!r}", "", "[endpoints.demo.modal]"]
    lines += [f"{k} = {_value(v)}" for k, v in modal.items() if v is not None]
    lines += ["", "[endpoints.demo.runpod]"]
    lines += [f"{k} = {_value(v)}" for k, v in runpod.items() if v is not None]
    path = tmp_path / "endpoints.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def refused(
    tmp_path: Path, modal: dict[str, Any] | None = None, task: str = "classify", **runpod: Any
) -> str:
    path = write_declaration(tmp_path, modal or {}, runpod, task)
    with pytest.raises(InvalidRequest) as caught:
        load_endpoints(path)
    return caught.value.message


def accepted(
    tmp_path: Path, modal: dict[str, Any] | None = None, task: str = "classify", **runpod: Any
):
    return load_endpoints(write_declaration(tmp_path, modal or {}, runpod, task))["demo"]


# A CPU endpoint: instance ids, no GPU pools, no CUDA.
CPU = {"compute": "CPU", "gpu_ids": None, "cuda_versions": None}


# --- the shipped declaration ---------------------------------------------------------------
def test_shipped_declaration_loads_every_endpoint():
    endpoints = load_endpoints(DEFAULT_PATH)
    assert {"classify", "train_classifier"} <= set(endpoints)
    assert get_endpoint("classify").modal.app == "fnbundle-classify"
    assert get_endpoint("train_classifier").runpod.compute == "GPU"


@pytest.mark.parametrize("name", sorted(load_endpoints(DEFAULT_PATH)))
def test_every_endpoint_has_a_modal_app_and_a_runpod_handler(name):
    endpoint = load_endpoints(DEFAULT_PATH)[name]
    assert (REPO / endpoint.modal.file).is_file(), f"missing Modal app {endpoint.modal.file}"
    assert (REPO / endpoint.runpod.handler).is_file(), f"missing handler {endpoint.runpod.handler}"


@pytest.mark.parametrize("name", sorted(load_endpoints(DEFAULT_PATH)))
def test_every_shipped_endpoint_scales_to_zero(name):
    endpoint = load_endpoints(DEFAULT_PATH)[name]
    assert endpoint.modal.min_containers == 0
    assert endpoint.runpod.workers_min == 0


def test_unknown_endpoint_names_the_declared_ones():
    with pytest.raises(NotFound) as caught:
        get_endpoint("summarize")
    assert "summarize" in caught.value.message and "classify" in caught.value.message


# --- Modal -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gpu", ["L4", "h100", "H100:2", "H100!", "A100-80GB:8", "B200+", "A10:4"])
def test_modal_gpu_names_modal_accepts(tmp_path, gpu):
    assert accepted(tmp_path, {"gpu": gpu}).modal.gpu == gpu


@pytest.mark.parametrize("gpu", ["X100", "RTX4090", "A10:8", "H100:9", "H100:0", "L4:two"])
def test_modal_gpu_names_modal_refuses(tmp_path, gpu):
    message = refused(tmp_path, {"gpu": gpu})
    assert "endpoints.demo.modal.gpu" in message and gpu.split(":")[0] in message


@pytest.mark.parametrize("window", [2, 3600])
def test_modal_scaledown_window_edges_are_accepted(tmp_path, window):
    assert accepted(tmp_path, {"scaledown_window_s": window}).modal.scaledown_window_s == window


@pytest.mark.parametrize("window", [0, 1, 3601, 7200])
def test_modal_scaledown_window_outside_2_to_3600_s_is_refused(tmp_path, window):
    assert "modal.scaledown_window_s" in refused(tmp_path, {"scaledown_window_s": window})


def test_modal_target_inputs_above_max_inputs_is_refused(tmp_path):
    message = refused(tmp_path, {"max_inputs": 4, "target_inputs": 8})
    assert "target_inputs" in message


def test_modal_min_containers_above_max_is_refused(tmp_path):
    assert "min_containers" in refused(tmp_path, {"min_containers": 3, "max_containers": 2})


@pytest.mark.parametrize("file", ["classify.py", "functions/../x.py", "/abs/functions/x.py"])
def test_modal_file_must_sit_in_functions(tmp_path, file):
    assert "modal.file" in refused(tmp_path, {"file": file})


def test_misspelled_key_is_refused_by_name(tmp_path):
    assert "scaledown_window" in refused(tmp_path, {"scaledown_window": 300})


# --- RunPod ----------------------------------------------------------------------------------
def test_runpod_gpu_pools_in_preference_order(tmp_path):
    pools = ["ADA_24", "AMPERE_24", "HOPPER_141"]
    assert accepted(tmp_path, gpu_ids=pools).runpod.gpu_ids == pools


@pytest.mark.parametrize("pool", ["RTX_4090", "NVIDIA L4", "ada_24", "H100"])
def test_runpod_unknown_gpu_pool_is_refused(tmp_path, pool):
    message = refused(tmp_path, gpu_ids=["ADA_24", pool])
    assert "runpod.gpu_ids" in message and pool in message and "AMPERE_16" in message


@pytest.mark.parametrize("timeout", [0, 3601])
def test_runpod_idle_timeout_outside_1_to_3600_s_is_refused(tmp_path, timeout):
    assert "runpod.idle_timeout_s" in refused(tmp_path, idle_timeout_s=timeout)


def test_runpod_execution_timeout_above_24_h_is_refused(tmp_path):
    assert "execution_timeout_s" in refused(tmp_path, execution_timeout_s=25 * 3600)


@pytest.mark.parametrize("cpu", sorted(RUNPOD_CPU_INSTANCES))
def test_runpod_cpu_endpoint_takes_every_listed_instance_id(tmp_path, cpu):
    assert accepted(tmp_path, **CPU, cpu_flavor_ids=[cpu]).runpod.cpu_flavor_ids == [cpu]


def test_runpod_cpu_instance_table_is_runpods_serverless_list():
    # RunPod's CPU types reference: cpu3c and cpu5c at 2 GB per vCPU, cpu3g at 4 GB, 1-8 vCPU.
    expected = {
        f"cpu{flavor}-{vcpus}-{vcpus * gb}"
        for flavor, gb in (("3c", 2), ("5c", 2), ("3g", 4))
        for vcpus in (1, 2, 4, 8)
    }
    assert set(RUNPOD_CPU_INSTANCES) == expected


# Malformed, and well-formed ids RunPod does not offer (the old pattern let these through).
@pytest.mark.parametrize(
    "cpu", ["cpu3c", "cpu4c-2-4", "c3-2-4", "cpu5g-0-4", "cpu5g-4-16", "cpu3m-2-16", "cpu3c-3-6"]
)
def test_runpod_unknown_cpu_instance_is_refused(tmp_path, cpu):
    message = refused(tmp_path, **CPU, cpu_flavor_ids=[cpu])
    assert "runpod.cpu_flavor_ids" in message and cpu in message and "cpu3c-2-4" in message


def test_runpod_compute_and_hardware_must_agree(tmp_path):
    assert "gpu_ids" in refused(tmp_path, gpu_ids=[])
    assert "cpu_flavor_ids" in refused(tmp_path, compute="CPU")  # still lists a GPU pool


# --- RunPod: CUDA versions ------------------------------------------------------------------
def test_runpod_gpu_endpoint_sends_its_cuda_versions(tmp_path):
    endpoint = accepted(tmp_path, cuda_versions=["12.8", "12.9", "13.0"])
    assert endpoint.runpod.cuda_versions == ["12.8", "12.9", "13.0"]
    assert set(endpoint.runpod.cuda_versions) <= set(RUNPOD_CUDA_VERSIONS)


def test_runpod_gpu_endpoint_without_cuda_versions_is_refused(tmp_path):
    message = refused(tmp_path, cuda_versions=None)
    assert "cuda_versions" in message and "GPU endpoint" in message


@pytest.mark.parametrize("version", ["12", "12.10", "11.7", "cuda12.8", "13.0.1", ""])
def test_runpod_unknown_cuda_version_is_refused(tmp_path, version):
    message = refused(tmp_path, cuda_versions=["12.8", version])
    assert "runpod.cuda_versions" in message and "12.9" in message  # names the known ones


def test_runpod_cuda_version_listed_twice_is_refused(tmp_path):
    assert "twice" in refused(tmp_path, cuda_versions=["12.8", "12.8"])


def test_runpod_cpu_endpoint_with_cuda_versions_is_refused(tmp_path):
    message = refused(tmp_path, **{**CPU, "cuda_versions": ["12.8"]}, cpu_flavor_ids=["cpu3c-2-4"])
    assert "cuda_versions" in message and "CPU endpoint" in message


def test_shipped_gpu_endpoints_declare_cuda_versions():
    for endpoint in load_endpoints(DEFAULT_PATH).values():
        spec = endpoint.runpod
        assert bool(spec.cuda_versions) == (spec.compute == "GPU"), endpoint.name


def test_runpod_workers_min_above_max_is_refused(tmp_path):
    assert "workers_min" in refused(tmp_path, workers_min=4, workers_max=2)


@pytest.mark.parametrize("image", ["docker.io/me/x:1", "Fnbundle", "x:latest"])
def test_runpod_image_is_a_bare_repository_name(tmp_path, image):
    assert "runpod.image" in refused(tmp_path, image=image)


def test_runpod_environment_names_must_be_upper_case(tmp_path):
    assert accepted(tmp_path, env={"FNB_PRELOAD": "sentiment"}).runpod.env == {
        "FNB_PRELOAD": "sentiment"
    }
    assert "runpod.env" in refused(tmp_path, env={"fnb-preload": "x"})


def test_runpod_env_cannot_set_what_deploy_sets_from_concurrency(tmp_path):
    message = refused(tmp_path, env={"FNB_WORKER_CONCURRENCY": "4"})
    assert "FNB_WORKER_CONCURRENCY" in message and "runpod.concurrency" in message


# --- keys that nothing would apply are refused ------------------------------------------------
def test_runpod_network_volume_gb_is_refused_with_what_to_do(tmp_path):
    message = refused(tmp_path, network_volume_gb=20)
    assert "endpoints.demo.runpod" in message and "network_volume_gb" in message
    assert "--network-volume" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_inputs", 4),
        ("max_inputs", 1),  # even the value it happens to run with: nothing reads it
        ("target_inputs", 1),
        ("buffer_containers", 1),
        ("enable_memory_snapshot", True),
        ("retries", 2),
    ],
)
def test_modal_concurrency_and_snapshot_keys_are_refused_on_a_training_app(tmp_path, key, value):
    message = refused(tmp_path, {key: value}, task="train_classifier")
    assert f"modal.{key}" in message and "training app does not apply" in message
    assert getattr(accepted(tmp_path, {key: value}).modal, key) == value  # a serving app takes it


def test_modal_web_timeout_is_for_a_training_apps_jobs_api(tmp_path):
    assert accepted(tmp_path, {"web_timeout_s": 3600}, task="train_classifier").modal.web_timeout_s
    message = refused(tmp_path, {"web_timeout_s": 3600})
    assert "modal.web_timeout_s" in message and "modal.timeout_s" in message


@pytest.mark.parametrize("seconds", [0, 9, 24 * 3600 + 1])
def test_modal_web_timeout_outside_10_s_to_24_h_is_refused(tmp_path, seconds):
    message = refused(tmp_path, {"web_timeout_s": seconds}, task="train_classifier")
    assert "modal.web_timeout_s" in message


def test_every_problem_of_a_table_is_reported_at_once(tmp_path):
    message = refused(tmp_path, {"gpu": "X100"}, idle_timeout_s=0)
    assert "modal.gpu" in message and "runpod.idle_timeout_s" in message


# --- the file itself --------------------------------------------------------------------------
def test_broken_toml_is_a_clear_error(tmp_path):
    path = tmp_path / "endpoints.toml"
    path.write_text("[endpoints.demo\n")
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        load_endpoints(path)


def test_missing_declaration_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        load_endpoints(tmp_path / "nowhere.toml")
