"""Consolidated metadata: read plates as they are on disk, and keep listings honest after writing.

Zarr can copy the metadata of every node below a group into that group's own metadata (the
``consolidated_metadata`` of a v3 ``zarr.json``, or a v2 ``.zmetadata`` file), so a reader opens a
whole hierarchy with one request. The listing is a snapshot: a label image written afterwards is
on disk but not in it, and zarr, trusting the snapshot, then says the labels group does not exist
while refusing to create it because it does. ngff-zarr consolidates every image it writes by
default, and users consolidate plates before uploading them to object storage.

subcell-scale therefore never reads through a consolidated listing (:func:`open_on_disk`), and
whenever it writes into a plate it repairs the listings above what it wrote
(:func:`repair_consolidated`): the listing of the field and of nodes inside it is rebuilt (cheap,
and only the task that owns the field writes there), while a listing of the plate, a row or a well
is dropped, because rebuilding it would read the whole plate for every field and would race with
workers writing other fields. ``zarr.consolidate_metadata(plate)`` rebuilds it once segmentation is
over, if object-storage readers need it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import zarr
import zarr.errors

logger = logging.getLogger(__name__)

# zarr warns on every consolidation of a v3 hierarchy that the format does not specify it yet
_V3_CONSOLIDATION_WARNING = r"Consolidated metadata is currently not part in the Zarr format 3 specification"
_AUTOSHARDING_NOTICE = "zarr v3 autosharding will be the default"

FIELD_DEPTH = 3
"""Path depth of a field group below the plate root ("row/column/field")."""


@contextlib.contextmanager
def quiet_consolidation() -> Iterator[None]:
    """Silence zarr's "consolidated metadata is not part of the Zarr v3 specification" warning.

    anndata consolidates every zarr store it writes, and so does :func:`repair_consolidated`; the
    warning then appears on every run although nothing is wrong and the user can do nothing about
    it. anndata's notice that zarr v3 autosharding will become its default is silenced too: the stores
    written here choose their chunks themselves. Only those warnings are filtered, and only inside the
    ``with`` block, so the same warnings from a user's own code elsewhere are still shown, as is every
    other warning.
    """
    with warnings.catch_warnings():
        # zarr.errors.ZarrUserWarning (zarr >= 3.1) is a UserWarning, as the same warning was before
        warnings.filterwarnings("ignore", message=_V3_CONSOLIDATION_WARNING, category=UserWarning)
        warnings.filterwarnings("ignore", message=_AUTOSHARDING_NOTICE, category=UserWarning)
        yield


def open_on_disk(store: Any, path: str = "", *, mode: Literal["r", "r+"] = "r",
                 storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Open the group at ``path`` of ``store`` from its own metadata, ignoring consolidated listings.

    Membership tests (``"labels" in group``), ``require_group`` and listings of the returned group
    then ask the store, so nodes written after a consolidation are found. ``store`` is a path, an
    fsspec URL (with ``storage_options``) or an open zarr store.
    """
    kwargs: dict[str, Any] = {"path": path, "mode": mode, "use_consolidated": False}
    if storage_options is not None:
        kwargs["storage_options"] = storage_options
    return zarr.open_group(store, **kwargs)


def _has_listing(store: Any, path: str) -> tuple[bool, int]:
    """(whether the group at ``path`` carries a consolidated listing, its zarr format)."""
    try:
        group = zarr.open_group(store, path=path, mode="r")
    except (KeyError, FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
        return False, 0
    return group.metadata.consolidated_metadata is not None, group.metadata.zarr_format


def repair_consolidated(store: Any, written: str, *, where: str = "") -> list[str]:
    """Bring every consolidated listing above the node ``written`` back in line with the store.

    Parameters
    ----------
    store
        The plate's zarr store (an open store, so no second connection is made).
    written
        Path of the node just written, relative to the plate root ("B/3/0/labels/cells").
    where
        Names the plate in the log message.

    Returns
    -------
    list of str
        What was done, one "refreshed PATH" or "dropped PATH" entry per listing touched, deepest
        first; empty when the plate has no consolidated metadata (the usual case).
    """
    parts = [p for p in written.strip("/").split("/") if p]
    ancestors = ["/".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]
    done = []
    for path in ancestors:
        listed, zarr_format = _has_listing(store, path)
        if not listed:
            continue
        if _depth(path) >= FIELD_DEPTH:
            with quiet_consolidation():
                zarr.consolidate_metadata(store, path=path, zarr_format=zarr_format)
            done.append(f"refreshed {path}")
        else:
            _drop_listing(store, path, zarr_format)
            done.append(f"dropped {path or '/'}")
    if any(d.startswith("dropped") for d in done):
        logger.warning("%s: removed the consolidated metadata of %s, which no longer listed every node after "
                       "%s was written; zarr.consolidate_metadata(plate) rebuilds it once writing is over",
                       where or "plate", ", ".join(d.split(" ", 1)[1] for d in done if d.startswith("dropped")),
                       written)
    elif done:
        logger.info("%s: %s", where or "plate", "; ".join(done))
    return done


def _depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


def _drop_listing(store: Any, path: str, zarr_format: int) -> None:
    """Remove the consolidated listing of the group at ``path``, keeping its own metadata."""
    group = open_on_disk(store, path, mode="r+")
    if zarr_format == 3:
        group.update_attributes({})  # rewrites zarr.json from the group's own metadata, without the listing
        return
    from zarr.core.sync import sync

    key = f"{path}/.zmetadata" if path else ".zmetadata"
    sync(group.store.delete(key))
