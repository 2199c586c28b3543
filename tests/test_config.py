"""The config schema: defaults, files, overrides, and errors that say what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmforge.config import DataConfig, load_config
from dmforge.contract.system import compose_system_prompt
from dmforge.errors import DmforgeError
from dmforge.scenarios.model import Header


def test_defaults():
    config = load_config()
    assert config.data.scenarios == Path("data/scenarios")
    assert config.data.max_file_bytes == 1024 * 1024


def test_yaml_and_toml_files_and_overrides(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("data:\n  seed: 7\n  validation_fraction: 0.2\n")
    (tmp_path / "c.toml").write_text("[data]\nseed = 8\n")
    assert load_config(tmp_path / "c.yaml").data.seed == 7
    assert load_config(tmp_path / "c.toml").data.seed == 8
    config = load_config(tmp_path / "c.yaml", {"data": {"seed": 9, "out": None}})
    assert (config.data.seed, config.data.validation_fraction) == (9, 0.2)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("data:\n  sead: 7\n", "`data.sead` is not an option. Did you mean `seed`?"),
        ("dta:\n  seed: 7\n", "`dta` is not an option"),
        ("data:\n  validation_fraction: 0.9\n", "data.validation_fraction"),
        ("data:\n  system_template: '{world}'\n", "must contain {system}"),
        ("data:\n  system_template: '{system} {weather}'\n", "unknown placeholder(s) weather"),
        ("data: [1, 2\n", "cannot be parsed"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_config_errors_are_one_clear_sentence(tmp_path: Path, content, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(DmforgeError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(DmforgeError, match="Cannot read the config file"):
        load_config(tmp_path / "nope.yaml")


def test_system_prompt_composition():
    header = Header(title="T", world="Eberron", location="Sharn", party="Ana (rogue 2)", tags=["noir"], level=2)
    config = DataConfig()
    assert compose_system_prompt(config, header, "Be grim.") == (
        "Be grim.\n\nWorld: Eberron\nLocation: Sharn\nParty: Ana (rogue 2)"
    )
    assert compose_system_prompt(config, header, None).startswith("You are the Dungeon Master")
    custom = DataConfig(system_template="{system} [{title}|{tags}|{level}|{category}]")
    assert compose_system_prompt(custom, header, "X") == "X [T|noir|2|general]"


def test_a_run_saved_by_an_earlier_dmforge_still_loads(tmp_path: Path):
    saved = tmp_path / "config.yaml"
    saved.write_text("export:\n  max_intent_drop: 0.05\neval:\n  all_quants: true\n  greedy_column: false\n")
    config = load_config(saved)
    assert config.export.max_metric_drop == 0.05 and config.eval.diagnostics is True


def test_the_training_budget_is_forty_minutes_on_a_cpu_and_none_on_a_gpu():
    train = load_config().train
    assert train.max_minutes == "auto"
    assert train.budget_minutes("cpu") == 35.0 and train.budget_minutes("cuda") is None
    assert train.budget_minutes("mps") is None
    assert load_config(None, {"train": {"max_minutes": 12}}).train.budget_minutes("cuda") == 12
    with pytest.raises(DmforgeError, match="positive number of minutes"):
        load_config(None, {"train": {"max_minutes": 0}})


def test_lora_layers_is_a_count_or_a_share_of_the_base(tmp_path: Path):
    # The default adapts the top half: 15 of SmolLM2-135M's 30 layers, 9 of Gemma3-270M's 18.
    train = load_config().train
    assert (train.adapted_layers(30), train.adapted_layers(18)) == (15, 9)
    assert load_config(None, {"train": {"lora_layers": 8}}).train.adapted_layers(30) == 8
    assert load_config(None, {"train": {"lora_layers": 40}}).train.adapted_layers(30) == 30
    assert load_config(None, {"train": {"lora_layers": "100%"}}).train.adapted_layers(30) == 30
    (tmp_path / "all.yaml").write_text("train:\n  lora_layers: null\n")
    assert load_config(tmp_path / "all.yaml").train.adapted_layers(30) == 30
    assert load_config(None, {"train": {"lora_layers": " 25% "}}).train.adapted_layers(30) == 8
    assert load_config(None, {"train": {"lora_layers": "1%"}}).train.adapted_layers(2) == 1
    for wrong in ("half", "0%", "150%", 0):
        with pytest.raises(DmforgeError, match="share such as `50%`"):
            load_config(None, {"train": {"lora_layers": wrong}})
