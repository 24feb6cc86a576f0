"""Sphinx configuration: API pages built from the package's numpydoc docstrings."""

from __future__ import annotations

import subcell_scale

project = "subcell-scale"
release = version = subcell_scale.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "demo_fields.py"]
root_doc = "index"

autodoc_typehints = "none"  # types live in the signatures, as in the code
autodoc_member_order = "bysource"
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()  # numpydoc's parser still warns on malformed sections
myst_heading_anchors = 3
intersphinx_mapping = {}  # built offline: no inventories fetched
nitpicky = False

html_theme = "alabaster"
html_title = f"subcell-scale {version}"
html_static_path: list[str] = []
