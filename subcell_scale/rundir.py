"""The run directory's names and files: :class:`FieldId` names a field from job to shard to AnnData,
:class:`RunPath` reaches a file or folder of the run on a local disk or under an fsspec URL.

Every part of a run (the client, the workers, the records, the cells store) reads and writes the run
through these two, so the same code serves a shared disk and object storage.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ._constants import Files
from ._docs import doc_params
from ._folders import make_folder
from .errors import RunDirectoryError


@dataclass(frozen=True, order=True)
class FieldId:
    """One field of one plate: the identity a field keeps from job to shard to manifest to AnnData.

    Attributes
    ----------
    plate
        The plate's name (unique within a run).
    well
        Well name, ``"B03"``.
    field
        The field's path inside the well (``"0"``).
    """

    plate: str
    well: str
    field: str

    def __post_init__(self) -> None:
        for part, what in ((self.plate, "plate name"), (self.well, "well"), (self.field, "field")):
            if not part or "/" in part or "\\" in part or part in (".", ".."):
                msg = f"{what} {part!r} cannot name a field of a run (empty or contains a path separator)"
                raise RunDirectoryError(msg)

    @property
    def key(self) -> str:
        """Manifest key: ``"<plate>/<well>/<field>"``."""
        return f"{self.plate}/{self.well}/{self.field}"

    @property
    def obs_prefix(self) -> str:
        """Start of the obs names of the field's cells: ``"<plate>_<well>_<field>"`` (then ``_<label>``)."""
        return f"{self.plate}_{self.well}_{self.field}"

    @property
    def shard(self) -> str:
        """Path of the field's shard inside the run directory."""
        return f"{Files.SHARDS}/{self.plate}/{self.well}_{self.field}.npz"

    @classmethod
    def from_key(cls, key: str) -> FieldId:
        """The field a manifest key names."""
        parts = str(key).split("/")
        if len(parts) != 3:
            msg = f"{key!r} is not a field key '<plate>/<well>/<field>'"
            raise RunDirectoryError(msg)
        return cls(*parts)

    def __str__(self) -> str:
        return self.key


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://``, ``gs://``, ...) rather than a local path."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


@doc_params
class RunPath:
    """A file or folder of a run directory: a local path, or a key under an fsspec URL (``s3://bucket/run``).

    The client, the workers and the cells store all reach a run's files through it, so the same code
    writes to a shared disk and to object storage. Its operations keep the guarantees of the run
    directory on both:

    - :meth:`write_bytes` writes a file whole: locally through a temporary file and a rename, on object
      storage as one object (a PUT is atomic per object: readers see the old object or the new one);
    - :meth:`create` writes only when nothing is there: ``O_EXCL`` locally, a conditional PUT
      (``If-None-Match: *``) on object storage, read back afterwards (see :meth:`ResultsStore.lock`);
    - :meth:`move` renames locally (atomic) and copies then deletes on object storage, which has no
      rename; :meth:`put_tree` moves a folder's files here in an order the caller chooses;
    - :meth:`local_copy` hands a reader a local file (a download from object storage), for readers
      that take paths (checkpoints, flat fields).

    It is small and picklable (its URL and ``storage_options``, never an open connection), so a task
    carries it to a worker that writes there itself.

    Parameters
    ----------
    location
        A local path (made absolute here, so that workers started elsewhere resolve nothing against
        their own working directory), a ``file://`` URL, or any fsspec URL.
    {storage_options}
    """

    __slots__ = ("_fs", "storage_options", "url")

    def __init__(self, location: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        text = os.fspath(location)
        if is_url(text):
            self.url = text.rstrip("/")
            self.storage_options: dict[str, Any] | None = dict(storage_options or {})
        else:
            self.url = os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
            self.storage_options = None
        self._fs: Any = None

    @classmethod
    def of(cls, location: str | os.PathLike[str] | RunPath,
           storage_options: Mapping[str, Any] | None = None) -> RunPath:
        """``location`` as a :class:`RunPath` (a RunPath is returned as it is)."""
        return location if isinstance(location, RunPath) else cls(location, storage_options)

    # -- identity -----------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.storage_options is None

    @property
    def local(self) -> Path:
        """The local path.

        Raises
        ------
        RunDirectoryError
            This is a URL: whatever needs a local path must use :meth:`local_copy` or the methods here.
        """
        if not self.is_local:
            msg = f"{self.url} is on object storage, not a local path"
            raise RunDirectoryError(msg)
        return Path(self.url)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] if not self.is_local else Path(self.url).name

    def __truediv__(self, relative: str) -> RunPath:
        relative = str(relative).strip("/")
        return self._child(os.path.join(self.url, relative) if self.is_local else f"{self.url}/{relative}")

    def _child(self, url: str) -> RunPath:
        child = RunPath.__new__(RunPath)
        child.url, child.storage_options, child._fs = url, self.storage_options, self._fs
        return child

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RunPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RunPath):
            return self.url == other.url and self.storage_options == other.storage_options
        if isinstance(other, str | os.PathLike) and self.is_local:
            return Path(self.url) == Path(os.path.abspath(os.fspath(other)))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self) -> tuple[Any, ...]:
        return RunPath, (self.url, self.storage_options)

    # -- file system --------------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec file system (listings never cached: other processes write here too)."""
        if self._fs is None:
            import fsspec.core

            options = {"use_listings_cache": False, **(self.storage_options or {})}
            self._fs = fsspec.core.url_to_fs(self.url, **options)[0]
        return self._fs

    @property
    def _key(self) -> str:
        return self.url if self.is_local else self.fs._strip_protocol(self.url)

    def exists(self) -> bool:
        if self.is_local:
            return Path(self.url).exists()
        return bool(self.fs.exists(self._key))

    def mkdir(self) -> None:
        """Create the folder (locally; object storage has no folders, keys are made by writing).

        Raises
        ------
        RunDirectoryError
            The path, or a folder above it, is a file.
        """
        if self.is_local:
            make_folder(self.url)

    def read_bytes(self) -> bytes:
        """The whole file (one GET on object storage). Raises FileNotFoundError when it is missing."""
        if self.is_local:
            return Path(self.url).read_bytes()
        return self.fs.cat_file(self._key)

    def open_read(self) -> BinaryIO:
        """A seekable binary reader (``np.load`` of a shard): the file, or the object read whole."""
        if self.is_local:
            return open(self.url, "rb")
        return io.BytesIO(self.read_bytes())

    def write_bytes(self, data: bytes) -> None:
        """Write the file whole (see the class doc): readers never see half of it."""
        if self.is_local:
            with self.writer() as fh:
                fh.write(data)
        else:
            self.fs.pipe_file(self._key, data)

    @contextmanager
    def writer(self) -> Iterator[BinaryIO]:
        """A binary file to write into, published whole here when the block ends without error.

        Locally a temporary file beside the target then a rename: a killed process leaves the old
        file or the new one, never half of one. There is no fsync (it cost 50 ms a shard on network
        and busy disks): after a power cut a shard may be empty, which :func:`shard_meta` treats as
        missing, so the field is simply recomputed. For object storage a local temporary file, then
        one upload (for writers that stream, such as ``torch.save`` of large weights).

        The file gets the permissions of any file the user creates (``0666`` less the umask: ``0644``
        under umask 022), so the people who may read the folder may read the run.
        """
        target = Path(self.url) if self.is_local else None
        folder = target.parent if target is not None else Path(tempfile.gettempdir())
        if target is not None:
            folder.mkdir(parents=True, exist_ok=True)
        # the upload's local copy stays private in the shared temporary folder
        temporary, handle = _new_file(folder, f".{self.name}.", 0o666 if target is not None else 0o600)
        try:
            try:
                with handle as fh:
                    yield fh
            except OSError as exc:
                if exc.filename is not None:
                    raise
                # a failed write (disk full, file-size limit) names no file; say which one could not be written
                raise OSError(exc.errno, f"{exc.strerror or exc} writing", self.url) from exc
            if target is not None:
                os.replace(temporary, target)
            else:
                self.fs.put_file(str(temporary), self._key)
        finally:
            temporary.unlink(missing_ok=True)

    def create(self, data: bytes) -> None:
        """Write the file only if it does not exist (see :meth:`ResultsStore.lock` for what this guarantees).

        Raises
        ------
        FileExistsError
            The file exists already (or, on object storage, another writer's content is what reads back).
        """
        if self.is_local:
            fd = os.open(self.url, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return
        try:
            self.fs.pipe_file(self._key, data, mode="create")
        except TypeError:  # a file system without exclusive writes: look first (the read-back is the check)
            if self.fs.exists(self._key):
                raise FileExistsError(self.url) from None
            self.fs.pipe_file(self._key, data)
        if self.read_bytes() != data:  # a store that ignored the condition, and another writer won
            raise FileExistsError(self.url)

    @contextmanager
    def local_copy(self) -> Iterator[Path]:
        """A local path holding this file: the file itself, or a download removed after the block."""
        if self.is_local:
            yield Path(self.url)
            return
        with tempfile.TemporaryDirectory(prefix="subcell-scale-") as folder:
            local = Path(folder) / self.name
            self.fs.get_file(self._key, str(local))
            yield local

    def remove(self) -> None:
        """Delete the file or folder (with everything under it); nothing there is fine."""
        if self.is_local:
            path = Path(self.url)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return
        keys = self.fs.find(self._key)
        if keys:
            self.fs.rm(keys)

    def move(self, target: RunPath) -> None:
        """Make this file ``target``: a rename locally (atomic); a copy then a delete on object storage."""
        if self.is_local:
            os.replace(self.url, target.url)
        else:
            self.fs.mv(self._key, target._key)

    def put_tree(self, folder: str | os.PathLike[str], *, skip: Sequence[str] = ()) -> None:
        """Move the files of the local ``folder`` here under their relative names, leaving those whose
        first part is in ``skip``.

        Locally each file is renamed (copied when ``folder`` is on another file system); to object
        storage they are uploaded together, each as a whole object, then removed from ``folder``.
        Callers that must publish some files last (a zarr store's root metadata) skip them first
        and move them with a second call.
        """
        folder = Path(folder)
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip]
        names = [p.relative_to(folder).as_posix() for p in files]
        if self.is_local:
            for file, name in zip(files, names, strict=True):
                target = Path(self.url) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(file, target)
            return
        if files:
            self.fs.put([str(p) for p in files], [f"{self._key}/{name}" for name in names])
        for file in files:
            file.unlink()

    def zarr_store(self, *, read_only: bool) -> Any:
        """What zarr opens: the local path, or an fsspec store over the URL."""
        if self.is_local:
            return self.url
        from zarr.storage import FsspecStore

        options = {"use_listings_cache": False, **(self.storage_options or {})}
        return FsspecStore.from_url(self.url, storage_options=options, read_only=read_only)


def _new_file(folder: Path, prefix: str, mode: int) -> tuple[Path, BinaryIO]:
    """A new, uniquely named ``<prefix>XXXXXXXX.tmp`` file in ``folder``: its path, and the file open
    for writing.

    Created with ``mode`` less the process's umask: ``0o666`` gives what ``open()`` gives any new file,
    where ``tempfile.NamedTemporaryFile`` makes every file private (``0600``) whatever the umask, and
    a file renamed into a run would stay unreadable to everyone else who reads the run's folder.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        path = folder / f"{prefix}{uuid.uuid4().hex[:8]}.tmp"
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:  # pragma: no cover - 32 random bits taken already
            continue
        return path, os.fdopen(fd, "wb")
