"""settings: one place for session-wide defaults, read by the functions that take None for "the setting"."""

from __future__ import annotations

import ast
import logging
import re
import subprocess
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]
ENV_NAME = re.compile(r"SUBCELL_SCALE_[A-Z0-9_]+")


def _environment_reads(source: str) -> set[str]:
    """Names the code looks up in the environment: ``os.environ.get(X)``, ``os.environ[X]``, ``os.getenv(X)``,
    ``X in os.environ``..., with ``X`` a string or a module constant bound to one."""
    tree = ast.parse(source)
    constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for t in node.targets if isinstance(t, ast.Name)}

    def text(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    keys = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute) and (
                (is_environ(node.func.value) and node.func.attr in ("get", "pop", "setdefault"))
                or node.func.attr == "getenv"):
            keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            keys.append(node.left)
    return {name for name in map(text, keys) if name}


def test_every_environment_variable_the_docs_name_is_one_the_code_reads():
    """cluster files, notebooks, README, docs and benchmarks tell users to export only what the code reads."""
    read: set[str] = set()
    for path in (ROOT / "subcell_scale").rglob("*.py"):
        read |= {n for n in _environment_reads(path.read_text()) if n.startswith("SUBCELL_SCALE_")}
    assert {"SUBCELL_SCALE_HOME", "SUBCELL_SCALE_OFFLINE", "SUBCELL_SCALE_BASE_URL"} <= read  # the derivation works

    named: dict[str, set[str]] = {}
    places = [ROOT / "README.md", *(p for d in ("cluster", "notebooks", "docs", "benchmarks", "subcell_scale")
                                    for p in sorted((ROOT / d).rglob("*")))]
    for path in places:
        if path.is_file() and path.suffix in (".md", ".rst", ".yaml", ".yml", ".ipynb", ".py", ".txt", ".sh", ".toml"):
            for name in ENV_NAME.findall(path.read_text(errors="replace")):
                named.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert any(p.startswith("cluster/") for ps in named.values() for p in ps)  # the cluster files were read
    unknown = {name: sorted(paths) for name, paths in named.items() if name not in read}
    assert not unknown, f"environment variables named but never read by subcell_scale: {unknown}"
