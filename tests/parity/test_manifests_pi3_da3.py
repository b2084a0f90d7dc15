"""π³ and DA3 presets built on the meta device match the official key/shape manifests entry for entry."""

from __future__ import annotations

import ast
import json

import pytest

from spark3r_stream.models import build_model
from spark3r_stream.models.da3 import SHARED_TENSOR_ALIASES
from tests.conftest import fixture_path

MANIFESTS = {
    "pi3": "pi3_manifest.json",
    "da3-small": "da3_small_manifest.json",
    "da3-base": "da3_base_manifest.json",
    "da3-large": "da3_large_manifest.json",
    "da3-giant": "da3_giant_manifest.json",
    "da3-metric-large": "da3_metric_large_manifest.json",
    "da3-mono-large": "da3_mono_large_manifest.json",
    "da3-nested-giant-large": "da3_nested_giant_large_manifest.json",
}


def load_manifest(name: str) -> dict:
    manifest = json.loads(fixture_path(MANIFESTS[name]).read_text())
    for key in ("state_dict", "total_params", "num_state_dict_entries"):
        if isinstance(manifest[key], str):  # the π³ manifest stores these as Python literals
            manifest[key] = ast.literal_eval(manifest[key])
    return manifest


@pytest.mark.parametrize("preset", sorted(MANIFESTS))
def test_meta_build_matches_manifest(preset):
    manifest = load_manifest(preset)
    prefix = manifest.get("key_prefix_in_hf_checkpoint", "")
    expected = {key.removeprefix(prefix): tuple(shape) for key, shape in manifest["state_dict"].items()}
    model = build_model(preset, device="meta")
    ours = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == [], "missing from our build"
    assert sorted(set(ours) - set(expected)) == [], "not in the official model"
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert len(ours) == int(manifest["num_state_dict_entries"])
    assert sum(p.numel() for p in model.parameters()) == int(manifest["total_params"])


@pytest.mark.parametrize("preset", [p for p in sorted(MANIFESTS) if p.startswith("da3")])
def test_alias_table_covers_exactly_the_keys_the_released_files_omit(preset):
    manifest = load_manifest(preset)
    omitted = {k.removeprefix("model.") for k in manifest["keys_absent_from_safetensors_file_due_to_sharing"]}
    aliases = getattr(build_model(preset, device="meta"), "shared_tensor_aliases", {})
    assert omitted == set(aliases)
    assert set(aliases.values()) <= {k.removeprefix("model.") for k in manifest["state_dict"]}
    if preset.startswith("da3-") and manifest["shared_tensor_alias_groups"]:  # the any-view DualDPT's shared norm
        assert {k.removeprefix("da3.") for k in aliases} == set(SHARED_TENSOR_ALIASES)
