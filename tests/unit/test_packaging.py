"""The wheel's package list names every package of the tree, and the data folders resolve inside the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

from spark3r_stream.config import CONFIGS_DIR
from spark3r_stream.launch_files import LAUNCH_DIR

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_lists_every_package_and_maps_the_top_level_folders():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "spark3r_stream").rglob("__init__.py")}
    for name, folder in mapping.items():
        on_disk |= {
            name + "." + ".".join(p.parent.relative_to(REPO / folder).parts)
            for p in (REPO / folder).rglob("__init__.py")
        }
    on_disk = {name.rstrip(".") for name in on_disk}
    assert set(setuptools["packages"]) == on_disk
    assert mapping["spark3r_stream.nodes"] == "nodes" and mapping["spark3r_stream.launch"] == "launch"


def test_launch_and_config_folders_resolve_through_the_package():
    assert (LAUNCH_DIR / "demo.yaml").is_file() and (CONFIGS_DIR / "pipeline.yaml").is_file()
    assert (CONFIGS_DIR / "spark3r" / "paper.yaml").is_file()
