"""Resolving --base: presets, local folders, hub ids, GGUF files; and the refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from dmforge.errors import DmforgeError
from dmforge.models import load_catalog, resolve_base
from dmforge.models.hardware import detect_hardware
from dmforge.models.resolve import dequantize_gguf


def test_catalog_has_the_presets_the_app_needs():
    catalog = load_catalog()
    names = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen3-0.6b", "qwen3-1.7b", "gemma3-1b", "smollm2-360m")
    for name in (*names, "llama3.2-1b"):
        assert catalog[name].cactus, name
    assert catalog["smollm2-135m"].source == "pypi" and catalog["gemma3-270m"].template == "gemma"
    assert not catalog["lfm2-350m"].cactus
    assert catalog["qwen2.5-0.5b"].repo == "Qwen/Qwen2.5-0.5B-Instruct"
    # The quant that suits each base follows its widths: K-quants need multiples of 256.
    for preset in catalog.values():
        assert preset.takes_k_quants == (preset.quant == "Q4_K_M"), preset.name
    assert {n for n, p in catalog.items() if p.takes_k_quants} == {
        "qwen3-0.6b",
        "qwen3-1.7b",
        "llama3.2-1b",
        "lfm2-350m",
    }


def test_the_preflight_times_every_base_but_advises_a_switch_only_on_a_measurement(monkeypatch):
    from dmforge.models import catalog, recommend

    rows = recommend.estimates(10.0, 135, 30)
    assert [e.name for e in rows if e.fits] == ["smollm2-135m", "gemma3-270m", "smollm2-360m"]
    assert "lfm2-350m" not in {e.name for e in rows}, "a base the app cannot run is never suggested"
    # Size alone is no reason: without a measured row nothing is recommended.
    text = recommend.advice("smollm2-135m", 10.0, 135, 30)
    assert "smollm2-360m 27 min" in text and "--base" not in text and "no base measured better" in text

    measured = dict(catalog.load_catalog())
    measured["smollm2-360m"] = measured["smollm2-360m"].model_copy(update={"measured_intent": 0.4})
    measured["smollm2-135m"] = measured["smollm2-135m"].model_copy(update={"measured_intent": 0.3})
    monkeypatch.setattr(recommend, "load_catalog", lambda: measured)
    text = recommend.advice("smollm2-135m", 10.0, 135, 30)
    assert (
        "--base smollm2-360m (downloaded once from the Hugging Face hub) measured a held-out intent match of "
        "0.40 against 0.30 for smollm2-135m" in text
    )
    assert "--base" not in recommend.advice("smollm2-135m", 100.0, 135, 30), "a better base that does not fit"


def test_smollm2_resolves_offline_to_a_cached_safetensors_folder(smollm2_base):
    path = smollm2_base.path
    assert (path / "model.safetensors").is_file() and (path / "chat_template.jinja").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config, "the GGUF quantizer marker must be cleared"
    assert config["model_type"] == "llama"
    started = time.monotonic()
    again = resolve_base("smollm2-135m")
    assert again.path == path and time.monotonic() - started < 10, "the dequantized copy is reused"
    source = json.loads((path / "dmforge-source.json").read_text())
    assert path.name == source["sha256"][:16]


def test_a_gguf_path_resolves_to_the_same_cache(smollm2_base):
    gguf = Path(json.loads((smollm2_base.path / "dmforge-source.json").read_text())["gguf"])
    resolved = resolve_base(str(gguf))
    assert resolved.path == smollm2_base.path and resolved.origin == f"gguf:{gguf}"
    assert dequantize_gguf(gguf) == smollm2_base.path


def test_a_local_folder_is_used_as_is(smollm2_base):
    resolved = resolve_base(str(smollm2_base.path))
    assert resolved.path == smollm2_base.path and resolved.origin.startswith("local:")


@pytest.mark.parametrize("name", ["smolm2-135m", "gpt-5", "not a model"])
def test_unknown_names_list_the_choices(name):
    with pytest.raises(DmforgeError, match="Unknown base model") as info:
        resolve_base(name)
    assert "smollm2-135m" in str(info.value) and info.value.exit_code == 2


def test_pickle_only_folders_are_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(DmforgeError, match="refuses them because loading a pickle can run arbitrary code"):
        resolve_base(str(tmp_path))


def test_folder_without_config_and_single_files_are_explained(tmp_path: Path):
    with pytest.raises(DmforgeError, match=r"no config\.json"):
        resolve_base(str(tmp_path))
    with pytest.raises(DmforgeError, match="not a single weights file"):
        resolve_base(str(tmp_path / "model.safetensors"))
    with pytest.raises(DmforgeError, match="does not exist"):
        resolve_base(str(tmp_path / "missing.gguf"))


def test_a_hub_id_offline_says_how_to_get_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DmforgeError, match=r"Could not download someorg/some-model.*--base DIR"):
        resolve_base("someorg/some-model")


def test_hardware_on_this_machine():
    hw = detect_hardware()
    assert hw.device in ("cpu", "cuda", "mps") and hw.threads >= 1 and hw.memory_bytes > 2**30
    assert detect_hardware(dtype="float32").dtype == torch.float32
    if not torch.backends.mps.is_available():
        with pytest.raises(DmforgeError, match="no Apple GPU"):
            detect_hardware(device="mps")
