"""Folders subcell-scale writes into: made with their parents, or refused in one clear line."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RunDirectoryError


def make_folder(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create the folder ``path`` and its parents (an existing folder is fine); returns it.

    Parameters
    ----------
    what
        What the folder is to the user (``"output directory"``, ``"output folder"``), for the message.

    Raises
    ------
    RunDirectoryError
        ``path``, or a folder it would be made in, is a file: "output directory run is a file, not a
        folder", "output directory out/run cannot be created: out is a file" (the operating system's
        own "File exists" / "Not a directory" names neither).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:  # pragma: no cover - changed meanwhile by another process
            raise
        # worded as the checks before a run word it (runcheck.writable_folder)
        msg = (f"{what} {path} is a file, not a folder" if blocker == path
               else f"{what} {path} cannot be created: {blocker} is a file")
        raise RunDirectoryError(msg) from exc
    return path
