"""Every registered model (timm's test_models.py pattern): builds on the meta device, declares what it is, and its
reduction targets resolve to the shared attention layers; presets with an official manifest match it elsewhere
(tests/parity/test_manifests_pi3_da3.py, test_vggt_parity.py)."""

from __future__ import annotations

import pytest

from spark3r_stream.errors import ConfigError
from spark3r_stream.models import ModelSpec, build_model, list_models
from spark3r_stream.models.layers.attention import Attention
from spark3r_stream.models.registry import get_preset
from spark3r_stream.spark3r import Spark3RConfig, accelerate, disable
from tests.parity.test_manifests_pi3_da3 import MANIFESTS

MANIFEST_TESTED = set(MANIFESTS) | {"vggt-1b"}


@pytest.mark.parametrize("name", list_models())
def test_model_builds_on_meta_and_declares_its_spec(name):
    model = build_model(name, device="meta")
    spec = model.spec
    assert isinstance(spec, ModelSpec) and spec.name == name and spec.family == get_preset(name).family
    assert spec.input_size % model.config.patch_size == 0
    targets = spec.reduction_targets
    if not targets.global_attention:  # monocular nets (da3-metric-large, da3-mono-large): nothing to reduce, said so
        with pytest.raises(ConfigError, match=f"accelerate '{name}': the model has no cross-frame"):
            accelerate(model, Spark3RConfig())
        return
    for path in targets.global_attention:
        assert isinstance(model.get_submodule(path), Attention), path
    assert all(0 <= i < len(targets.global_attention) for i in targets.sensitive_layers)
    accelerate(model, Spark3RConfig())  # the reduction attaches from the declaration alone
    assert all(model.get_submodule(p).reducer is not None for p in targets.global_attention)
    disable(model)


@pytest.mark.parametrize("name", list_models())
def test_full_size_presets_have_an_official_manifest_test(name):
    if get_preset(name).weights.package_file is not None:
        return  # the project's own model: its shipped file is the reference (test_trainer, integration tests)
    assert name in MANIFEST_TESTED, f"{name}: add its official key/shape manifest to tests/fixtures"


@pytest.mark.parametrize("name", list_models())
def test_torch_free_input_table_mirrors_the_registry(name):
    from spark3r_stream.input_size import PRESET_INPUTS

    preset = get_preset(name)
    assert PRESET_INPUTS[name] == (preset.family, preset.input_size)
