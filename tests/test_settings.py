"""settings: one place for session-wide defaults, read by the functions that take None for "the setting"."""

from __future__ import annotations

import logging
import subprocess

import pytest

import subcell_scale as ss
from subcell_scale.errors import ConfigError
from subcell_scale.models.download import cache_root


def test_defaults_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SUBCELL_SCALE_HOME", raising=False)
    monkeypatch.delenv("SUBCELL_SCALE_OFFLINE", raising=False)
    assert ss.settings.model_cache.name == "subcell-scale" and ss.settings.offline is False
    monkeypatch.setenv("SUBCELL_SCALE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SUBCELL_SCALE_OFFLINE", "1")
    # read when used, so workers started with their own environment follow it
    assert ss.settings.model_cache == tmp_path / "cache" == cache_root()
    assert ss.settings.offline is True


def test_override_is_scoped_and_values_are_checked(tmp_path):
    before = repr(ss.settings)
    with ss.settings.override(batch_size=8, memory_budget="1 GiB", model_cache=tmp_path, progress=False,
                              verbosity="DEBUG"):
        assert ss.settings.batch_size == 8 and ss.settings.memory_budget == 2**30
        assert cache_root() == tmp_path and ss.settings.progress is False
        assert logging.getLogger("subcell_scale").getEffectiveLevel() == logging.DEBUG
    assert repr(ss.settings) == before
    for key, value in (("batch_size", 0), ("batch_size", True), ("progress", "yes"), ("memory_budget", "lots"),
                       ("worker_timeout", -1), ("verbosity", "LOUD")):
        with pytest.raises(ConfigError, match=key):
            setattr(ss.settings, key, value)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['batchsize'\]"):
        with ss.settings.override(batchsize=2):
            pass


def test_command_line_defaults_are_the_python_defaults():
    from subcell_scale.cli import build_parser
    from subcell_scale.cli._options import default_of
    from subcell_scale import embed_plate
    from subcell_scale.workflow import run

    # embed and run share one set of options, unset by default (the Python default then applies)
    for command in ("embed", "run"):
        parser = build_parser(command)
        args = parser.parse_args([command, "plate.zarr", "--out", "x"])
        assert (args.batch_size, args.retries, args.format, args.preset) == (None, None, None, None)
    assert default_of(embed_plate, "batch_size") is None is default_of(run, "batch_size")
    assert default_of(embed_plate, "retries") == default_of(run, "retries")
    help_text = subprocess.run(["subcell-scale", "embed", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert f"settings.batch_size, now {ss.settings.batch_size}" in " ".join(help_text.split())
