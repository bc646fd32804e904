"""A LoRA adapter fine-tuned by ``finetune_lora`` answers through the official ``openai``
SDK, by its name, on a real uvicorn: it knows the made-up door passwords it was trained on,
and the base it names (imported into the store by the fine-tune) does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fnbundle.api import create_app
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams
from fnbundle.training.lora import finetune_lora

from tests.e2e.test_openai_generate import uvicorn_thread
from tests.model.test_finetune_lora import LEARN, door_rows, passwords, question, write_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a fine-tune, then a served model: ~80 s

KEY = "lora-e2e-key-0123456789abcdef"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llm_base: Path) -> tuple[Path, str]:
    """A store holding the imported base and the adapter fine-tuned on the doors."""
    root = tmp_path_factory.mktemp("lora-store")
    data = write_jsonl(root / "doors.jsonl", door_rows())
    settings = Settings(store=root / "store", data_roots=[root, tiny_llm_base.parent], threads=1)
    params = FinetuneLoraParams(data=str(data), name="doors", base=str(tiny_llm_base), **LEARN)
    result = finetune_lora(params, settings)
    return root / "store", result.base_id


@pytest.fixture(scope="module")
def client(trained: tuple[Path, str]) -> Iterator[openai.OpenAI]:
    store, _ = trained
    settings = Settings(store=store, data_roots=[store], api_keys=[KEY], preload=[],
                        generate_backend="transformers", threads=1)  # fmt: skip
    with uvicorn_thread(create_app(settings, jobs=False)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


def answer(client: openai.OpenAI, model: str, text: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0
    )
    return (response.choices[0].message.content or "").strip()


def test_the_adapter_answers_the_passwords_and_its_base_does_not(client, trained):
    store, base_id = trained
    adapter = Store(store).resolve("doors")
    assert adapter.manifest["base"]["id"] == base_id
    listed = {m.id for m in client.models.list()}
    assert adapter.id in listed and base_id in listed
    words = passwords()
    tuned = sum(answer(client, "doors", question(i + 1)) == w for i, w in enumerate(words))
    plain = sum(answer(client, base_id, question(i + 1)) == w for i, w in enumerate(words))
    assert plain == 0
    assert tuned >= 18, f"{tuned} of 30 passwords through /v1/chat/completions"
