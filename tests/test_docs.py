"""The documentation: a page per public function and class, shared parameter descriptions filled in,
the notebooks rendered, the unit of every AnnData column stated; the Sphinx build without a warning."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import subcell_scale
from subcell_scale._constants import Keys, Obs
from subcell_scale._docs import PARAMS, fill_docstring
from subcell_scale.cellstore import OBS_UNITS

DOCS = Path(__file__).resolve().parents[1] / "docs"

# every namespace the API page covers: what each lists in __all__ (functions and classes) has a page
NAMESPACES = ("subcell_scale", "subcell_scale.io", "subcell_scale.models", "subcell_scale.profiles",
              "subcell_scale.metrics", "subcell_scale.tl", "subcell_scale.pl", "subcell_scale.datasets",
              "subcell_scale.distributed", "subcell_scale.segment", "subcell_scale.cells",
              "subcell_scale.illumination", "subcell_scale.presets", "subcell_scale.params", "subcell_scale.errors")


def _api_entries() -> list[str]:
    """Fully qualified names of the entries of api.rst's autosummary tables."""
    text = (DOCS / "api.rst").read_text()
    current = re.search(r"^\.\. currentmodule:: (\S+)$", text, re.MULTILINE).group(1)
    entries = []
    for block in re.split(r"^\.\. autosummary::$", text, flags=re.MULTILINE)[1:]:
        for line in block.splitlines()[1:]:
            if line.strip() and not line.startswith("   "):
                break
            name = line.strip()
            if name and not name.startswith(":"):
                entries.append(f"{current}.{name}")
    return entries


def _resolve(qualified: str):
    module, _, rest = qualified.partition(".")
    obj = importlib.import_module(module)
    for part in rest.split("."):
        obj = getattr(obj, part)
    return obj


def test_api_page_lists_every_public_function_and_class_once():
    entries = _api_entries()
    assert len(entries) == len(set(entries)), "an entry is listed twice"
    documented = {id(_resolve(name)) for name in entries}
    missing = []
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and id(obj) not in documented:
                missing.append(f"{namespace}.{name}")
    assert not missing, f"public names without an API page (add them to docs/api.rst): {missing}"


def _public_docstrings():
    """(qualified name, docstring) of every module, function, class and method of the package."""
    for info in pkgutil.walk_packages(subcell_scale.__path__, "subcell_scale."):
        module = importlib.import_module(info.name)
        yield info.name, module.__doc__
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != info.name:
                continue
            if inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj.__doc__
            elif inspect.isclass(obj):
                yield f"{info.name}.{name}", obj.__doc__
                for attr, member in vars(obj).items():
                    func = getattr(member, "__func__", member)
                    if inspect.isfunction(func) or isinstance(member, property):
                        yield f"{info.name}.{name}.{attr}", member.__doc__


def test_every_shared_parameter_placeholder_is_filled():
    """A docstring with ``{key}`` lines must be decorated with ``doc_params``; what it shows is filled."""
    placeholder = re.compile(r"^[ \t]*\{(" + "|".join(PARAMS) + r")\}[ \t]*$", re.MULTILINE)
    left = sorted(name for name, doc in _public_docstrings()
                  if doc and placeholder.search(doc) and name != "subcell_scale._docs")
    assert not left, f"docstrings with unfilled shared parameters (decorate them with @doc_params): {left}"


def test_fill_docstring_indents_like_the_placeholder_and_keeps_continuations():
    doc = "Do it.\n\n    Parameters\n    ----------\n    {copy}\n        Also this.\n    other\n        Other.\n"
    filled = fill_docstring(doc, {"copy": "copy\n    Return a copy."})
    assert filled == ("Do it.\n\n    Parameters\n    ----------\n    copy\n        Return a copy.\n"
                      "        Also this.\n    other\n        Other.\n")
    with pytest.raises(KeyError, match="no_such"):
        fill_docstring("x\n    {no_such}\n")
    assert fill_docstring("a {copy} b, {copy}x\n") == "a {copy} b, {copy}x\n"  # only whole lines


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every row of every table on a Markdown page."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_anndata_page_states_the_unit_of_every_column():
    rows = _table_rows((DOCS / "anndata.md").read_text())
    columns = [v for k, v in vars(Obs).items() if k.isupper() and isinstance(v, str)]
    assert set(OBS_UNITS) <= {*columns, Keys.SPATIAL}  # the units the AnnData records are the ones listed here
    expected = ([f"`{c}`" for c in columns] + [f'`obsm["{Keys.SPATIAL}"]`', f'`obsm["{Keys.LOCALIZATION}"]`',
                                               f"`{Keys.N_CELLS}`", f"`{Keys.N_PROFILES}`"])
    for key in expected:
        assert key in rows, f"docs/anndata.md has no row for {key}"
        dtype, unit, meaning = rows[key][:3]
        assert dtype and unit and meaning, f"docs/anndata.md: {key} lacks its dtype, unit or meaning"
    assert rows["`area`"][1] == rows["`centroid_y`"][1] == rows["`centroid_x`"][1] == "pixels (level 0)"
    assert rows['`obsm["spatial"]`'][1] == "micrometres"


def _not_sources(folder: str, names: list[str]) -> list[str]:
    """What the docs build does not read: earlier builds, and in notebooks/ anything but notebooks."""
    if Path(folder).name == "notebooks":
        return [n for n in names if not n.endswith(".ipynb")]
    return [n for n in names if n in ("_build", "generated")]


@pytest.mark.docs
def test_sphinx_builds_a_page_per_name_and_the_notebooks_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_nb")
    source = tmp_path / "docs"  # a copy: the build writes generated/ into its source folder
    shutil.copytree(DOCS, source, ignore=_not_sources)  # docs/notebooks, a link, becomes a copy of the notebooks
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
                           str(source), str(tmp_path / "html")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    html = tmp_path / "html"
    pages = {p.name for p in (html / "generated").glob("*.html")}
    missing = [name for name in _api_entries() if f"{name}.html" not in pages]
    assert not missing, missing
    api = (html / "api.html").read_text()
    for name in ("subcell_scale.embed_plate", "subcell_scale.run", "RunParams", "evaluate_profiles", "postprocess",
                 "read_cells", "top_localization"):
        assert name in api, name
    open_plate = (html / "generated" / "subcell_scale.open_plate.html").read_text()
    assert "ignored for local paths" in open_plate and "{storage_options}" not in open_plate  # shared, filled
    quickstart = (html / "notebooks" / "01_quickstart.html").read_text()
    assert "Quickstart" in quickstart and "get_client" in quickstart  # markdown and code cells rendered
    assert "micrometres" in (html / "anndata.html").read_text()
    assert "jump-cellpainting" in (html / "protocols.html").read_text()
