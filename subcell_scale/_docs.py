"""Parameter descriptions that many functions share, written once (as scanpy's ``_docs``).

A docstring names a shared description by a line holding only ``{key}`` where its entry would be;
:func:`doc_params` replaces that line with the entry (the parameter's name line and its description),
indented like the placeholder::

    @doc_params
    def open_plate(path, *, storage_options=None):
        \"\"\"Open a plate.

        Parameters
        ----------
        path
            A local path or URL.
        {storage_options}
        \"\"\"

Lines indented under a placeholder continue its description, so a function can add what is
particular to it. A placeholder naming no entry is an error when the module is imported.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=Callable)

PARAMS: dict[str, str] = {
    # -- plates and storage -------------------------------------------------------------------------
    "plate": """\
plate
    An opened :class:`~subcell_scale.io.Plate`, or its local path or fsspec URL
    (``plate.zarr``, ``s3://bucket/plate.zarr``).""",
    "plate_list": """\
plate
    A plate path (``plate.zarr``) or fsspec URL, a glob, an opened :class:`~subcell_scale.io.Plate`,
    or a list of them.""",
    "storage_options": """\
storage_options
    fsspec options of a URL (credentials, anonymous access, ``client_kwargs={"endpoint_url": ...}``);
    ignored for local paths. Without options, fsspec takes credentials from the environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).""",
    "missing_chunks": """\
missing_chunks
    ``"raise"`` (default): reading an image whose chunks are not all in the store fails with a
    :class:`~subcell_scale.errors.PlateFormatError` naming the plate, well, field and the missing
    chunk keys, because zarr would otherwise read them as the fill value (black pixels) and cells
    would be embedded on them. ``"fill"``: read missing chunks as the fill value, for plates written
    sparsely on purpose (zarr leaves out chunks that hold only the fill value unless told
    otherwise). Label images are always read with fill values: an empty region of a label image is
    legitimately not stored.""",
    "platemap": """\
platemap
    Well annotations (``plate``, ``well``, ``compound``, ``moa``, ``control_type``, ...): a CSV,
    TSV or parquet file, or a DataFrame (see :func:`subcell_scale.io.read_platemap`); its columns
    are joined to ``obs`` on (plate, well).""",
    "label_name": """\
label_name
    The label image holding the cells (``labels/<name>`` in each field); the preset's
    (``"cells"``) by default.""",
    # -- runs ---------------------------------------------------------------------------------------
    "client": """\
client
    A ``distributed.Client`` (see :func:`subcell_scale.get_client`); ``None`` runs the fields one
    after the other in this process.""",
    "out": """\
out
    The run directory: a local folder (on a file system every worker sees) or an fsspec URL
    (``s3://bucket/run``). Called again with the same ``out``, finished fields are read back, not
    recomputed.""",
    "preset": """\
preset
    ``"hpa"`` (default) or ``"jump-cellpainting"`` (see :mod:`subcell_scale.presets`), or parameters
    resolved earlier with :meth:`subcell_scale.params.RunParams.resolve`.""",
    "channel_map": """\
channel_map
    Model slot -> plate channel name(s), e.g. ``{"protein": "GFP", "nucleus": "DAPI"}``; a list of
    channels for one slot means one model pass per channel (embeddings concatenated, pass after
    pass). Slots not in the map are matched to the plate's channels by name.""",
    "overrides": """\
**overrides
    Any preset parameter (``out_size=64``, ``mask_mode="none"``, ``min_area_um2=30``, ...).""",
    "batch_size": """\
batch_size
    Crops per forward pass (default :attr:`subcell_scale.settings.batch_size`); the embeddings do
    not depend on it, memory does.""",
    "progress": """\
progress
    Show a progress bar over fields (default :attr:`subcell_scale.settings.progress`).""",
    # -- models -------------------------------------------------------------------------------------
    "model": """\
model
    A published variant name (from the model cache, downloaded on first use), an encoder checkpoint
    path, ``"random"`` (seeded random weights: to try a plate out before the weights are there), a
    :class:`~subcell_scale.models.SubCell` instance or a :class:`~subcell_scale.models.ModelSpec`.""",
    "classifiers": """\
classifiers
    Classifier checkpoint paths that go with an encoder checkpoint path (their sigmoids are
    averaged).""",
    "device": """\
device
    ``"auto"`` or None (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"``.""",
    # -- AnnData in, AnnData out --------------------------------------------------------------------
    "copy": """\
copy
    Return a new AnnData (default) or, with ``False``, change ``adata`` in place and return it.""",
    "tl_adata": """\
adata
    The cells AnnData or the profiles AnnData.""",
    "tl_copy": """\
copy
    Return a copy holding the result instead of writing it into ``adata`` (and returning None).""",
    # -- metrics ------------------------------------------------------------------------------------
    "distance": """\
distance
    ``"cosine"`` (default), ``"abs_cosine"``, ``"correlation"``, ``"euclidean"``,
    ``"manhattan"``, ``"chebyshev"``, any ``scipy.spatial.distance`` metric (similarity
    ``1/(1+d)``, ``1-d`` for jaccard and hamming) or a callable on paired rows.""",
    "similarity_batch_size": """\
batch_size
    Similarity values per block (query rows x profiles); ``None`` picks about 4 million.""",
    # -- figures ------------------------------------------------------------------------------------
    "save": """\
save
    Also write the figure to this path (PNG, PDF, SVG by extension).""",
    "results_by": """\
by
    Column that splits one long ``results`` table into its parts (designs, or neighbour rules);
    ignored for a mapping.""",
    "title": """\
title
    Figure title.""",
}
"""Shared parameter descriptions, by placeholder key."""

_PLACEHOLDER = re.compile(r"^([ \t]*)\{([A-Za-z_]\w*)\}[ \t]*$", re.MULTILINE)


def fill_docstring(doc: str, params: dict[str, str] | None = None) -> str:
    """``doc`` with each line holding only ``{key}`` replaced by ``params[key]``, indented alike."""
    params = PARAMS if params is None else params

    def replace(match: re.Match[str]) -> str:
        indent, key = match.groups()
        if key not in params:
            msg = f"docstring placeholder {{{key}}} names no shared parameter description"
            raise KeyError(msg)
        return textwrap.indent(params[key], indent, lambda line: True)

    return _PLACEHOLDER.sub(replace, doc)


def doc_params(obj: T) -> T:
    """Decorator: fill the shared parameter descriptions into ``obj``'s docstring."""
    if obj.__doc__:  # None under python -OO
        obj.__doc__ = fill_docstring(obj.__doc__)
    return obj
