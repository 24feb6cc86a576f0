"""Model cache and HTTPS download of the published SubCell checkpoints.

Layout: ``<cache>/<variant>/<published file name>`` plus ``<cache>/<variant>/manifest.json`` recording
each file's URL, size and sha256. The cache root is ``$SUBCELL_SCALE_HOME`` or ``~/.cache/subcell-scale``.

A published variant missing from the cache is downloaded on first use (:func:`fetch_variant`, called
by ``SubCell.from_pretrained`` and by ``resolve_model`` for ``embed_plate`` and ``run``) unless
:attr:`subcell_scale.settings.offline` forbids it; files come from
:attr:`subcell_scale.settings.base_url`. A download holds ``<cache>/<variant>/.download.lock`` (an OS
file lock, released by the kernel even when its process dies), so processes starting together (the
workers of a cluster) download each file once: the others wait for the lock, then find the files.

A download writes ``<file>.part`` and resumes it with an HTTP ``Range`` request after a dropped
connection (also in a later run). The file is renamed into place only after its size matches the
server's, its MD5 matches a plain S3 ETag (when the server sends one), its sha256 matches the manifest
(when already recorded) and it loads as the expected state_dict; so a half-written or corrupted file is
never used. :func:`cached_files` re-checks every sha256 before a model is built from the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path
from typing import Any

from .._settings import ENV_HOME, ENV_OFFLINE, settings
from .._version import __version__
from ..errors import CheckpointError, DownloadError
from .registry import N_CLASSIFIER_SEEDS, VARIANTS, Variant, get_variant

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".download.lock"
"""Lock file held in a variant's cache folder while its files are downloaded."""
_LOCK_REPORT_S = 60.0  # a process waiting for another's download says so again this often
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_PLAIN_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The model cache: ``cache_dir``, else :attr:`subcell_scale.settings.model_cache`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else settings.model_cache


def variant_dir(variant: str | Variant, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / get_variant(variant).name


def read_manifest(folder: Path) -> dict[str, Any]:
    """The variant folder's manifest, or an empty one."""
    path = folder / MANIFEST
    if not path.is_file():
        return {"files": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        msg = f"{path}: unreadable model cache manifest ({exc}); delete it and download again"
        raise CheckpointError(msg) from exc
    data.setdefault("files", {})
    return data


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)


def _sha256(path: Path) -> str:
    from .checkpoint import sha256_file

    return sha256_file(path)


def cached_files(variant: str | Variant, *, n_classifiers: int = 1, cache_dir: str | Path | None = None,
                 verify: bool = True) -> tuple[Path, list[Path]]:
    """Paths of a cached variant's encoder and its first ``n_classifiers`` classifiers, sha256-checked.

    Only looks in the cache (see :func:`fetch_variant` to download what is missing).

    Raises
    ------
    CheckpointError
        A file is not cached (the message gives the download command) or its sha256 differs from the
        manifest (the file was changed or damaged after download).
    """
    v = get_variant(variant)
    missing = _missing(v, n_classifiers, cache_dir)
    if missing:
        raise _not_cached(v, missing[0], n_classifiers, cache_dir)
    folder = variant_dir(v, cache_dir)
    manifest = read_manifest(folder)
    paths = [folder / name for name in _file_names(v, n_classifiers)]
    if verify:
        for path in paths:
            actual = _sha256(path)
            recorded = manifest["files"][path.name]["sha256"]
            if actual != recorded:
                msg = (f"{path}: sha256 {actual[:16]}... does not match {recorded[:16]}... recorded in "
                       f"{folder / MANIFEST}; the file changed after download; download it again with --force")
                raise CheckpointError(msg)
    return paths[0], paths[1:]


def fetch_variant(variant: str | Variant, *, n_classifiers: int = 1, cache_dir: str | Path | None = None,
                  progress: bool | None = None, verify: bool = True) -> tuple[Path, list[Path]]:
    """Like :func:`cached_files`, but files missing from the cache are downloaded first (once, locked).

    What ``SubCell.from_pretrained`` and ``embed_plate`` use, so a published variant works on first use
    as Hugging Face models do. The download is :func:`download_variant`'s: from
    :attr:`~subcell_scale.settings.base_url`, resumable, checked (size, ETag, loadable state_dict) and
    recorded with its sha256 in the cache manifest.

    Parameters
    ----------
    progress
        Progress bars while downloading (default :attr:`subcell_scale.settings.progress`).
    verify
        Check the sha256 of files that were already cached (downloaded files are always checked).

    Raises
    ------
    CheckpointError
        A file is missing and :attr:`~subcell_scale.settings.offline` is set (the message gives the
        download command), or a cached file no longer matches its recorded sha256.
    DownloadError
        The download failed or was refused (the message names the URL).
    """
    v = get_variant(variant)
    missing = _missing(v, n_classifiers, cache_dir)
    if not missing:
        return cached_files(v, n_classifiers=n_classifiers, cache_dir=cache_dir, verify=verify)
    if settings.offline:
        raise _not_cached(v, missing[0], n_classifiers, cache_dir, offline=True)
    logger.warning("%s is not in the model cache (%s): downloading %d file(s) from %s (set %s=1 to forbid)",
                   v.name, cache_root(cache_dir), len(missing), settings.base_url, ENV_OFFLINE)
    download_variant(v, n_classifiers=n_classifiers, dest=cache_dir,
                     progress=settings.progress if progress is None else progress)
    # download_variant checked every file it kept against the manifest (or just hashed it)
    return cached_files(v, n_classifiers=n_classifiers, cache_dir=cache_dir, verify=False)


def _file_names(v: Variant, n_classifiers: int) -> list[str]:
    if not 0 <= n_classifiers <= N_CLASSIFIER_SEEDS:
        msg = f"n_classifiers must be 0..{N_CLASSIFIER_SEEDS}, got {n_classifiers}"
        raise CheckpointError(msg)
    return [v.encoder_filename] + [v.classifier_filename(k) for k in range(n_classifiers)]


def _missing(v: Variant, n_classifiers: int, cache_dir: str | Path | None) -> list[Path]:
    """The variant's files that are not in the cache (absent, or not recorded in the manifest)."""
    folder = variant_dir(v, cache_dir)
    files = read_manifest(folder)["files"]
    return [folder / name for name in _file_names(v, n_classifiers)
            if name not in files or not (folder / name).is_file()]


def _not_cached(v: Variant, path: Path, n_classifiers: int, cache_dir: str | Path | None, *,
                offline: bool | None = None) -> CheckpointError:
    offline = settings.offline if offline is None else offline
    why = (f"; downloading on first use is off (settings.offline or ${ENV_OFFLINE})" if offline else "")
    msg = (f"{path}: not in the model cache; run `subcell-scale download {v.name} --classifiers "
           f"{n_classifiers}` (cache: {cache_root(cache_dir)}, or set ${ENV_HOME}){why}")
    return CheckpointError(msg)


@contextmanager
def cache_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder/.download.lock`` while downloading ``what``; wait (saying so) while another process does.

    An OS file lock (``fcntl.flock`` through ``filelock``): it is released when its process ends,
    however it ends, so a killed download never blocks the next one, which resumes its ``.part`` file.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(folder / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("%s: another process is downloading %s; waiting for it to finish", folder / LOCK, what)
        waited = 0.0
        while True:
            try:
                lock.acquire(timeout=_LOCK_REPORT_S)
                break
            except Timeout:
                waited += _LOCK_REPORT_S
                logger.warning("%s: still waiting (%.0f s) for the download of %s by another process",
                               folder / LOCK, waited, what)
    try:
        yield
    finally:
        lock.release()


def cache_status(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per published variant: its channels and what of it is cached (no hashing)."""
    rows = []
    for v in VARIANTS.values():
        folder = variant_dir(v, cache_dir)
        files = read_manifest(folder)["files"] if folder.is_dir() else {}
        present = {name for name in files if (folder / name).is_file()}
        seeds = [k for k in range(N_CLASSIFIER_SEEDS) if v.classifier_filename(k) in present]
        rows.append({"variant": v.name, "channels": list(v.channels), "encoder": v.encoder_filename in present,
                     "classifier_seeds": seeds, "path": str(folder)})
    return rows


def _validate_encoder(variant: Variant) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        from .checkpoint import check_state_dict, expected_encoder_shapes, infer_config, load_state_dict_file

        sd = load_state_dict_file(path)
        config = infer_config(sd, path, num_heads=1)
        if config.num_channels != variant.num_channels:
            msg = f"{path}: has {config.num_channels} input channels, variant {variant.name} needs {variant.num_channels}"
            raise CheckpointError(msg)
        check_state_dict(sd, expected_encoder_shapes(config), path, f"SubCell encoder of {variant.name}")

    return check


def _validate_classifier(path: Path) -> None:
    from .checkpoint import classifier_shapes, load_state_dict_file

    classifier_shapes(load_state_dict_file(path), path)


def download_file(url: str, dest: str | Path, *, expected_sha256: str | None = None, retries: int = 3,
                  timeout: float = 60.0, progress: bool = True,
                  validate: Callable[[Path], None] | None = None) -> tuple[str, int]:
    """Fetch ``url`` to ``dest`` resumably and atomically; returns ``(sha256, size)``.

    Parameters
    ----------
    expected_sha256
        Refuse the file unless it has this digest.
    retries
        Extra attempts after a dropped connection, each resuming from the ``.part`` file. With 0 the
        first failure raises and leaves ``.part`` for a later call to resume.
    validate
        Called on the finished ``.part`` before the rename; a :class:`CheckpointError` refuses the file.

    Raises
    ------
    DownloadError
        HTTP error, connection lost after all retries, size/MD5/sha256 mismatch or failed validation;
        the message names the URL and the file.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": f"subcell-scale/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (http(s) URL by design)
                total, etag = _response_size(resp, offset, part)
                if resp.status == 200:
                    offset = 0
                with open(part, "ab" if offset else "wb") as fh, tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=dest.name, disable=not progress, leave=False) as bar:
                    while block := resp.read(_CHUNK):
                        fh.write(block)
                        bar.update(len(block))
            size = part.stat().st_size
            if total is not None and size != total:
                msg = f"{url}: connection ended at {size} of {total} bytes"
                raise HTTPException(msg)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                logger.warning("%s: server refused to resume at byte %d; starting over", url, offset)
                part.unlink(missing_ok=True)
                continue
            msg = f"{url}: HTTP {exc.code} {exc.reason} while downloading {dest.name}"
            raise DownloadError(msg) from exc
        except (urllib.error.URLError, HTTPException, OSError) as exc:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                if have:
                    kept = f"{have} bytes kept in {part}, run the download again to resume"
                else:  # nothing arrived: no part file to resume from (an empty one is removed)
                    part.unlink(missing_ok=True)
                    kept = "nothing was kept; run the download again"
                msg = (f"{url}: download of {dest.name} failed after {attempt} attempt(s) ({type(exc).__name__}: "
                       f"{exc}); {kept}")
                raise DownloadError(msg) from exc
            logger.warning("%s: %s; resuming from byte %d (attempt %d of %d)", url, exc, have, attempt + 1, retries + 1)
            time.sleep(min(2.0 ** (attempt - 1), 30.0))  # 1, 2, 4, ... s between attempts

    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    with open(part, "rb") as fh:
        while block := fh.read(_CHUNK):
            sha.update(block)
            md5.update(block)
    digest = sha.hexdigest()
    problem = None
    match = _PLAIN_ETAG.match(etag or "")
    if match and match.group(1).lower() != md5.hexdigest():
        problem = f"MD5 {md5.hexdigest()} differs from the server's ETag {match.group(1)} (corrupted in transfer)"
    elif expected_sha256 and digest != expected_sha256:
        problem = f"sha256 {digest} differs from the expected {expected_sha256}"
    elif validate is not None:
        try:
            validate(part)
        except CheckpointError as exc:
            problem = f"not the expected checkpoint: {exc}"
    if problem:
        part.unlink(missing_ok=True)
        msg = f"{url}: downloaded {dest.name} refused: {problem}; nothing was kept"
        raise DownloadError(msg)
    size = part.stat().st_size
    os.replace(part, dest)
    return digest, size


def _response_size(resp: Any, offset: int, part: Path) -> tuple[int | None, str | None]:
    """Total size of the resource and its ETag; checks that a 206 resumes where ``part`` ends."""
    etag = resp.headers.get("ETag")
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset:
            msg = f"server resumed at {resp.headers.get('Content-Range')!r}, expected byte {offset} of {part.name}"
            raise HTTPException(msg)
        return (int(m.group(3)) if m.group(3) != "*" else None), etag
    length = resp.headers.get("Content-Length")
    return (int(length) if length is not None else None), etag


def download_variant(variant: str | Variant, *, n_classifiers: int = 1, dest: str | Path | None = None,
                     base_url: str | None = None, force: bool = False, retries: int = 3, timeout: float = 60.0,
                     progress: bool = True) -> Path:
    """Download a variant's encoder and classifier seeds 0..n-1 into the cache; returns its folder.

    Files already recorded in the manifest with a matching sha256 are skipped (unless ``force``); each
    finished file is added to the manifest at once, so an interrupted run keeps what it finished. The
    variant's cache lock is held throughout (see :func:`cache_lock`): a second process downloading
    the same variant waits, then finds the files cached. ``base_url`` defaults to
    :attr:`subcell_scale.settings.base_url`.
    """
    v = get_variant(variant)
    if not 0 <= n_classifiers <= N_CLASSIFIER_SEEDS:
        msg = f"--classifiers must be 0..{N_CLASSIFIER_SEEDS}, got {n_classifiers}"
        raise DownloadError(msg)
    base_url = settings.base_url if base_url is None else base_url.rstrip("/")
    folder = variant_dir(v, dest)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"{folder}: cannot create the model cache folder ({exc})"
        raise DownloadError(msg) from exc
    with cache_lock(folder, v.name):
        manifest = read_manifest(folder)  # read under the lock: another process may just have finished
        manifest.update(variant=v.name, channels=list(v.channels), base_url=base_url)
        jobs = [(v.encoder_filename, v.encoder_url(base_url), "encoder", None, _validate_encoder(v))]
        jobs += [(v.classifier_filename(k), v.classifier_url(k, base_url), "classifier", k, _validate_classifier)
                 for k in range(n_classifiers)]
        for name, url, kind, seed, validate in jobs:
            path = folder / name
            entry = manifest["files"].get(name)
            if entry and path.is_file() and not force:
                if _sha256(path) == entry["sha256"]:
                    logger.info("%s: already cached", name)
                    continue
                logger.warning("%s: cached file does not match its recorded sha256; downloading again", name)
            logger.info("downloading %s", url)
            digest, size = download_file(url, path, retries=retries, timeout=timeout, progress=progress,
                                         validate=validate)
            manifest["files"][name] = {
                "kind": kind, "seed": seed, "url": url, "sha256": digest, "size": size,
                "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _write_manifest(folder, manifest)
        _write_manifest(folder, manifest)
    return folder
