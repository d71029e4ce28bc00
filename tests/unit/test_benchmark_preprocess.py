"""benchmarks/preprocess.py: its synthetic-data cache is keyed by the whole generation config."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from maskgan.data import synthetic

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "preprocess.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_preprocess", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def changed(value):
    """Another valid value of a SyntheticConfig field."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return value / 2
    return value + 1


def test_every_generation_parameter_changes_the_cache_folder(bench, tmp_path):
    base = synthetic.SyntheticConfig(num_images=4, image_size=64, mask_size=32)
    folders = {bench.raw_cache_dir(tmp_path, base)}
    assert bench.raw_cache_dir(tmp_path, dataclasses.replace(base)) in folders  # same config, same cache
    for field in dataclasses.fields(synthetic.SyntheticConfig):
        other = dataclasses.replace(base, **{field.name: changed(getattr(base, field.name))})
        folder = bench.raw_cache_dir(tmp_path, other)
        assert folder not in folders, field.name
        folders.add(folder)


def test_cached_data_is_reused_only_for_the_same_config(bench, tmp_path):
    config = synthetic.SyntheticConfig(num_images=2, image_size=16, mask_size=8)
    root = Path(bench.ensure_raw(tmp_path, config))
    assert sorted(p.name for p in (root / synthetic.IMAGE_DIR).iterdir()) == ["0.jpg", "1.jpg"]
    stamp = (root / synthetic.MAPPING_FILE).stat().st_mtime_ns
    assert Path(bench.ensure_raw(tmp_path, config)) == root
    assert (root / synthetic.MAPPING_FILE).stat().st_mtime_ns == stamp  # not generated again
    other = Path(bench.ensure_raw(tmp_path, dataclasses.replace(config, jpeg_quality=50)))
    assert other != root and (other / synthetic.MAPPING_FILE).exists()


def test_help_shows_every_default(bench):
    parser = bench.build_parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.default not in (None, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, action.option_strings
