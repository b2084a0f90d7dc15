"""Static checks of the nodes and launch files: thin mains, torch-free front end, every launch file resolves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from spark3r_stream.config import CONFIGS_DIR
from spark3r_stream.errors import ConfigError
from spark3r_stream.launch_files import LAUNCH_DIR, load_launch_file, resolve, translate_overrides
from spark3r_stream.transport.endpoints import NODE_EDGES

NODES_DIR = Path(__file__).resolve().parents[2] / "nodes"
MAX_NODE_LINES = 100  # STYLE.md §6


@pytest.mark.parametrize("kind", list(NODE_EDGES))
def test_node_is_thin(kind):
    source = (NODES_DIR / f"{kind}.py").read_text()
    assert len(source.splitlines()) <= MAX_NODE_LINES
    tree = ast.parse(source)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


@pytest.mark.parametrize("kind", ["capture", "keyframes"])
def test_front_end_nodes_start_without_torch(kind):
    code = (
        f"import sys, nodes.{kind}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=NODES_DIR.parent, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", sorted(LAUNCH_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_launch_file_resolves_with_out_and_path_override(path, tmp_path):
    spec, source = load_launch_file(path, ["capture.path=/data/seq"])
    assert spec.nodes["capture"].params["path"] == "/data/seq"
    nodes = resolve(spec, source, tmp_path, "t")
    assert {n.kind for n in nodes} == set(NODE_EDGES)
    for node in nodes:
        assert node.config["out"] == str(tmp_path)
        edges = {e["edge"] for e in node.config["endpoints"]}
        assert edges == set(NODE_EDGES[node.kind]["in"] + NODE_EDGES[node.kind]["out"])


def test_overrides_target_params_node_fields_and_top_level():
    names = ["capture", "fusion"]
    assert translate_overrides(
        ["capture.path=/x", "capture.respawn=always", "vars.h=1", "fusion.map.voxel_size=0.1"], names
    ) == [
        "nodes.capture.params.path=/x",
        "nodes.capture.respawn=always",
        "vars.h=1",
        "nodes.fusion.params.map.voxel_size=0.1",
    ]


def test_remote_launch_file_binds_beyond_loopback_only_where_it_says_so(tmp_path):
    spec, source = load_launch_file("remote_reconstruction", ["vars.gpu_host=10.0.0.7"])
    nodes = {n.name: n for n in resolve(spec, source, tmp_path, "t")}
    assert spec.nodes["reconstruction"].remote
    keyframes_out = next(e for e in nodes["keyframes"].config["endpoints"] if e["edge"] == "keyframes")
    assert keyframes_out["address"] == "tcp://10.0.0.7:5551" and not keyframes_out["bind"]
    binds = [e for n in nodes.values() for e in n.config["endpoints"] if e["bind"] and "0.0.0.0" in e["address"]]
    assert {e["edge"] for e in binds} == {"keyframes", "results"}
    assert all(e["allow_remote_bind"] for e in binds)


def test_reconstruction_spark3r_config_is_typed_from_the_launch_file_and_set(tmp_path):
    from spark3r_stream.config import from_dict
    from spark3r_stream.spark3r import Spark3RConfig
    from spark3r_stream.stream.reconstructor import ReconstructionConfig

    def reconstruction(overrides):
        spec, source = load_launch_file("demo", overrides)
        node = next(n for n in resolve(spec, source, tmp_path, "t") if n.kind == "reconstruction")
        return from_dict(ReconstructionConfig, node.config["params"])

    assert reconstruction([]).spark3r == Spark3RConfig()  # the paper's reduction by default
    assert reconstruction(["reconstruction.spark3r.group_size=10"]).spark3r.group_size == 10
    assert reconstruction(["reconstruction.spark3r=false"]).spark3r is None
    assert from_dict(ReconstructionConfig, {"spark3r": True}).spark3r == Spark3RConfig()
    q_only = from_dict(ReconstructionConfig, {"spark3r_config": str(CONFIGS_DIR / "spark3r" / "q-only.yaml")})
    assert q_only.spark3r.r_kv == 1 and q_only.spark3r != Spark3RConfig()
    with pytest.raises(ConfigError, match=r"spark3r.group_size: expected int >= 1, got 0"):
        reconstruction(["reconstruction.spark3r.group_size=0"])


def test_viewer_flags_are_the_same_on_every_recording_command(tmp_path):
    from spark3r_stream.cli import build_parser, viewer_config, viewer_overrides

    parser = build_parser()
    for command in (
        ["infer", "x", "--out", "o"],
        ["demo"],
        ["launch", "demo", "--out", "o"],
        ["run", "demo", "--out", "o"],
    ):
        args = parser.parse_args([*command, "--spawn", "--connect", "rerun+http://h:9876/proxy", "--rrd", "r.rrd"])
        assert (args.spawn, args.connect, args.rrd, args.no_rrd) == (True, "rerun+http://h:9876/proxy", "r.rrd", False)
    with pytest.raises(SystemExit):  # one or the other
        parser.parse_args(["demo", "--rrd", "r.rrd", "--no-rrd"])
    args = parser.parse_args(["demo", "--no-rrd"])
    assert viewer_overrides(args) == ["fusion.save_rrd=false"]
    assert viewer_config(args, tmp_path).rrd_path is None
    assert viewer_config(parser.parse_args(["demo"]), tmp_path).rrd_path == tmp_path / "recording.rrd"


def test_keyframes_and_fusion_params_are_typed_and_unknown_keys_are_one_line_errors(tmp_path):
    from spark3r_stream.config import from_dict
    from spark3r_stream.stream.pipeline import FusionConfig, KeyframesConfig

    spec, source = load_launch_file("demo", ["fusion.rerun.jpeg_quality=50", "keyframes.windows.stride=5"])
    params = {n.kind: n.config["params"] for n in resolve(spec, source, tmp_path, "t")}
    fusion = from_dict(FusionConfig, params["fusion"])
    assert fusion.rerun.jpeg_quality == 50 and fusion.rerun_config(tmp_path).rrd_path == tmp_path / "recording.rrd"
    assert from_dict(KeyframesConfig, params["keyframes"]).windows.stride == 5
    with pytest.raises(ConfigError, match=r"save_rdd: unknown key for FusionConfig; did you mean 'save_rrd'\?"):
        from_dict(FusionConfig, {"save_rdd": False})


def test_keyframes_are_sized_for_the_reconstruction_model_unless_the_file_says(tmp_path):
    from spark3r_stream.input_size import keyframe_hw

    def selector(file, overrides=()):
        spec, source = load_launch_file(file, list(overrides))
        return next(n for n in resolve(spec, source, tmp_path, "t") if n.kind == "keyframes").config["params"][
            "selector"
        ]

    assert selector("demo") == {"model": "vggt-tiny"}
    assert selector("replay_tum_pi3")["model"] == "pi3" and selector("replay_tum_da3")["model"] == "da3-large"
    assert selector("demo", ["keyframes.selector.model_hw=[56, 56]"]) == {"model_hw": [56, 56]}
    assert keyframe_hw("pi3", (480, 640)) == (434, 574) and keyframe_hw("da3-large", (480, 640)) == (378, 504)
    assert keyframe_hw("vggt-tiny", (480, 640)) == (112, 112)
    for path in LAUNCH_DIR.glob("*.yaml"):
        settings = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        assert "model_hw" not in settings, f"{path.name} states an input size the preset knows"


def test_importing_the_nodes_changes_no_signal_handler():
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    import spark3r_stream.nodes.capture  # noqa: F401
    import spark3r_stream.nodes.fusion  # noqa: F401

    assert {sig: signal.getsignal(sig) for sig in before} == before  # run_main installs them, in a node process
