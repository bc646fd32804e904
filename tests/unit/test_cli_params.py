"""CLI options come from a training task's params model: a field added there is an option
of `fnbundle train` and `fnbundle jobs submit`, with its help and default."""

from typing import Any, Literal

import pytest
import typer
from fnbundle.cli import app
from fnbundle.cli.params import with_params
from fnbundle.tasks import REGISTRY
from pydantic import BaseModel, Field
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


class Params(BaseModel):
    data: str = Field(description="The data.")
    rank: int = Field(8, ge=1, description="LoRA rank.")  # a field the CLI never named
    mode: Literal["fast", "exact"] = Field("fast", description="How.")
    merge: bool = Field(False, description="Merge the adapter.")
    quantize: bool = Field(True, json_schema_extra={"cli": "--quant/--no-quant"})


def command_app(seen: list[dict[str, Any]]) -> typer.Typer:
    cli = typer.Typer()

    @cli.command()
    @with_params(Params)
    def go(params: dict[str, Any], verbose: bool = False) -> None:
        seen.append({"params": params, "verbose": verbose})

    return cli


def test_every_field_is_an_option_with_its_help_and_default():
    result = runner.invoke(command_app([]), ["--help"])
    assert result.exit_code == 0, result.output
    for text in ("--data", "--rank", "LoRA rank. (default: 8)", "One of: fast, exact",
                 "--merge", "--no-merge", "--quant", "--no-quant", "--verbose"):  # fmt: skip
        assert text in result.output


def test_options_given_reach_the_command_and_the_rest_keep_the_models_defaults():
    seen: list[dict[str, Any]] = []
    result = runner.invoke(
        command_app(seen), ["--data", "d.csv", "--rank", "16", "--no-quant", "--verbose"]
    )
    assert result.exit_code == 0, result.output
    assert seen == [{"params": {"data": "d.csv", "rank": 16, "quantize": False}, "verbose": True}]
    assert Params(**seen[0]["params"]).mode == "fast"


def test_a_required_field_is_a_required_option():
    result = runner.invoke(command_app([]), ["--rank", "2"])
    assert result.exit_code == 2 and "--data" in result.output


TRAINING = sorted(REGISTRY.training)


@pytest.mark.parametrize("where", [["train"], ["jobs", "submit"]])
@pytest.mark.parametrize("slug", TRAINING)
def test_the_training_commands_offer_every_field_of_the_registered_params(where, slug):
    model = REGISTRY.training_task(slug).params_model
    result = runner.invoke(app, [*where, slug.removeprefix("train_"), "--help"])
    assert result.exit_code == 0, result.output
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flag = str(extra.get("cli", "--" + name.replace("_", "-"))).split("/")[0]
        assert flag in result.output, name
    assert "PydanticUndefined" not in result.output


class Shaped(BaseModel):
    data: str
    hidden: list[int] = Field(default_factory=lambda: [128, 64], description="Units.")
    kinds: dict[str, Literal["numeric", "text"]] = Field(default_factory=dict)
    pick: Literal["a", "b"] | Literal["all"] | None = Field(None, description="Which.")


def test_lists_and_mappings_are_comma_separated_options():
    seen: list[dict[str, Any]] = []
    cli = typer.Typer()

    @cli.command()
    @with_params(Shaped)
    def go(params: dict[str, Any]) -> None:
        seen.append(params)

    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Units. (default: 128,64)" in result.output and "One of: a, b, all" in result.output
    args = ["--data", "t.csv", "--hidden", "32, 16", "--kinds", "zip=text,age=numeric"]
    result = runner.invoke(cli, [*args, "--pick", "all"])
    assert result.exit_code == 0, result.output
    assert seen == [{"data": "t.csv", "hidden": ["32", "16"], "kinds": {"zip": "text",
                     "age": "numeric"}, "pick": "all"}]  # fmt: skip
    checked = Shaped(**seen[0])
    assert checked.hidden == [32, 16] and checked.kinds["zip"] == "text"
