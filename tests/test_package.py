"""The package imports fast and exposes its API lazily; the CLI prints one-line errors."""

import re
import subprocess
import sys

import pytest

import subcell_scale
from subcell_scale import errors


def test_import_does_not_load_torch_or_dask():
    code = "import sys, subcell_scale; print('torch' in sys.modules, 'dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        subcell_scale.nope  # noqa: B018


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.PlateNotFoundError, FileNotFoundError),
        (errors.PlateFormatError, ValueError),
        (errors.PlatemapError, ValueError),
        (errors.ChannelMismatchError, ValueError),
        (errors.CheckpointError, ValueError),
        (errors.DownloadError, OSError),
        (errors.RunDirectoryError, OSError),
    ],
)
def test_errors_share_one_base_and_keep_the_builtin(cls, builtin):
    assert issubclass(cls, errors.SubcellScaleError)
    assert issubclass(cls, builtin)


def test_cli_version_and_help():
    out = subprocess.run(["subcell-scale", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"subcell-scale {subcell_scale.__version__}"
    out = subprocess.run(["subcell-scale", "--help"], capture_output=True, text=True, check=True)
    assert "usage: subcell-scale" in out.stdout


def _import_graph() -> dict[str, set[str]]:
    """Module -> subcell_scale modules it imports anywhere (functions included; TYPE_CHECKING blocks not)."""
    import ast
    from pathlib import Path

    root = Path(subcell_scale.__file__).parent
    graph: dict[str, set[str]] = {}

    def exists(name: str) -> bool:
        path = root.parent / name.replace(".", "/")
        return path.with_suffix(".py").exists() or (path / "__init__.py").exists()

    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[:-1]  # the package a relative import starts from, for a module and an __init__ alike
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    edges.add(f"{target}.{alias.name}" if exists(f"{target}.{alias.name}") else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[module] = {e for e in edges if e.startswith("subcell_scale") and e != module}
    return graph


def test_no_import_circles():
    graph = _import_graph()
    path: list[str] = []
    state: dict[str, int] = {}

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_stages_never_import_the_layers_that_compose_them():
    stages = ("io", "segment", "cells", "models", "profiles", "metrics", "illumination")
    above = ("pipeline", "workflow", "cellstore", "params", "report", "cli", "store", "datasets", "tl",
             "pl", "distributed.cluster", "distributed.plugin", "distributed.deploy")
    for module, targets in _import_graph().items():
        name = module.removeprefix("subcell_scale.")
        if name.split(".")[0] not in stages:
            continue
        upward = sorted(t for t in targets if t.removeprefix("subcell_scale.").startswith(above))
        assert not upward, f"{module} imports {upward}"


def test_help_loads_no_heavy_library():
    code = ("import sys\nfrom subcell_scale.cli import main\n"
            "for argv in (['--help'], ['embed', '--help'], ['run', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(*[m in sys.modules for m in ('torch', 'dask', 'distributed', 'zarr', 'anndata')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-5:] == ["False"] * 5


def test_the_package_speaks_of_itself_only():
    """Docstrings point to files of this repository, never to a design document that is not in it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "subcell_scale"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"DESIGN\.md|see DESIGN|\(DESIGN", p.read_text())]
    assert offenders == []


def test_license_file_matches_the_declared_licence():
    """pyproject's SPDX licence, the file it names, and that file's text agree (MIT)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    (name,) = project["license-files"]
    text = (root / name).read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    assert "subcell-scale developers" in text
