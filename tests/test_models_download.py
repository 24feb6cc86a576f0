"""Model download end to end against a real HTTP server on 127.0.0.1 (Range requests, drops, corruption)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _http_bucket import publish, serve

import subcell_scale as ss
from subcell_scale.cli import main
from subcell_scale.errors import CheckpointError, DownloadError
from subcell_scale.models import SubCell, get_variant
from subcell_scale.models.download import cache_root, cached_files, download_file, download_variant

TINY = Path(__file__).parent / "data" / "subcell" / "tiny_rybg"
VARIANT = get_variant("all_channels_MAE-CellS-ProtS-Pool")  # 4 channels, like the tiny fixture


@pytest.fixture()
def server():
    with serve() as (base, bucket):
        publish(bucket, base, VARIANT, TINY / "encoder.pth", [TINY / f"classifier_seed_{k}.pth" for k in (0, 1)])
        yield base, bucket


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_download_with_the_cli_then_load_from_the_cache(server, tmp_path, capsys):
    base, bucket = server
    rc = main(["download", VARIANT.name, "--classifiers", "2", "--dest", str(tmp_path), "--base-url", base,
               "--no-progress"])
    assert rc == 0
    folder = tmp_path / VARIANT.name
    assert capsys.readouterr().out.strip() == str(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    names = [VARIANT.encoder_filename, VARIANT.classifier_filename(0), VARIANT.classifier_filename(1)]
    assert set(manifest["files"]) == set(names)
    sources = [TINY / "encoder.pth", TINY / "classifier_seed_0.pth", TINY / "classifier_seed_1.pth"]
    for name, source in zip(names, sources):
        assert (folder / name).read_bytes() == source.read_bytes()
        assert manifest["files"][name]["sha256"] == sha(source)
        assert manifest["files"][name]["size"] == source.stat().st_size
    assert not list(folder.glob("*.part"))

    model = SubCell.from_pretrained(VARIANT.name, n_classifiers=2, cache_dir=tmp_path, device="cpu", num_heads=4)
    assert model.variant == VARIANT.name and model.checkpoint_sha256 == sha(TINY / "encoder.pth")
    out = model(torch.from_numpy(np.load(TINY / "input_64.npy")))
    np.testing.assert_allclose(out.probabilities.numpy(), np.load(TINY / "out64_probabilities.npy"), atol=1e-6)

    # a second run finds everything cached and intact: no request at all
    n_requests = len(bucket.requests)
    assert main(["download", VARIANT.name, "--classifiers", "2", "--dest", str(tmp_path), "--base-url", base,
                 "--no-progress"]) == 0
    assert len(bucket.requests) == n_requests

    assert main(["download", "--list", "--dest", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    line = next(row for row in listing.splitlines() if row.startswith(VARIANT.name))
    assert "encoder, classifier seeds [0, 1]" in line
    assert "not cached" in next(r for r in listing.splitlines() if r.startswith("DNA-Protein_ViT"))


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    base, bucket = server
    path = "/models/" + VARIANT.encoder_filename
    total = len(bucket.files[path])
    bucket.drop_once.add(path)
    dest = tmp_path / VARIANT.encoder_filename
    with pytest.raises(DownloadError, match=r"failed after 1 attempt.*bytes kept in .*\.part, run the download again"):
        download_file(base + "/" + VARIANT.encoder_filename, dest, retries=0, progress=False)
    part = dest.with_name(dest.name + ".part")
    assert not dest.exists() and part.exists()
    kept = part.stat().st_size
    assert 0 < kept < total
    digest, size = download_file(base + "/" + VARIANT.encoder_filename, dest, retries=0, progress=False)
    assert bucket.requests[-1] == (path, f"bytes={kept}-")
    assert (digest, size) == (sha(TINY / "encoder.pth"), total)
    assert dest.read_bytes() == (TINY / "encoder.pth").read_bytes() and not part.exists()


def test_a_failed_download_that_kept_nothing_says_so(server, tmp_path):
    """No byte arrived (nothing listens; or the connection closed before the body): no part file is named."""
    import socket

    base, bucket = server
    with socket.socket() as sock:  # a port nothing listens on: the connection is refused
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/models"
    dest = tmp_path / VARIANT.encoder_filename
    part = dest.with_name(dest.name + ".part")
    with pytest.raises(DownloadError, match=r"failed after 1 attempt.*; nothing was kept; run the download again$"):
        download_file(closed + "/" + VARIANT.encoder_filename, dest, retries=0, progress=False)
    assert not part.exists() and not dest.exists()
    bucket.files["/models/one.pth"] = b"x"
    bucket.drop_once.add("/models/one.pth")  # headers, then the connection closes before the first byte
    with pytest.raises(DownloadError, match=r"connection ended at 0 of 1 bytes\); nothing was kept") as error:
        download_file(base + "/one.pth", tmp_path / "one.pth", retries=0, progress=False)
    assert "bytes kept" not in str(error.value) and not (tmp_path / "one.pth.part").exists()


def test_a_dropped_connection_is_resumed_within_one_run(server, tmp_path):
    base, bucket = server
    path = "/models/" + VARIANT.encoder_filename
    bucket.drop_once.add(path)
    folder = download_variant(VARIANT, n_classifiers=0, dest=tmp_path, base_url=base, retries=2, progress=False)
    ranges = [r for p, r in bucket.requests if p == path]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert sha(folder / VARIANT.encoder_filename) == sha(TINY / "encoder.pth")


def test_corrupted_transfer_is_refused_and_nothing_is_kept(server, tmp_path):
    base, bucket = server
    bucket.corrupt.add("/models/" + VARIANT.encoder_filename)
    with pytest.raises(DownloadError, match=rf"{VARIANT.encoder_filename} refused: MD5 .* differs from the server's ETag"):
        download_variant(VARIANT, n_classifiers=0, dest=tmp_path, base_url=base, progress=False)
    folder = tmp_path / VARIANT.name
    assert not (folder / VARIANT.encoder_filename).exists()
    assert not list(folder.glob("*.part"))


def test_a_file_that_is_not_the_checkpoint_is_refused(server, tmp_path):
    base, bucket = server
    # the 2-channel variant's URL serves the 4-channel tiny encoder: valid file, wrong variant
    other = get_variant("DNA-Protein_MAE-CellS-ProtS-Pool")
    bucket.files["/models/" + other.encoder_filename] = (TINY / "encoder.pth").read_bytes()
    with pytest.raises(DownloadError, match=r"not the expected checkpoint: .*has 4 input channels, variant DNA-Protein_MAE-CellS-ProtS-Pool needs 2"):
        download_variant(other, n_classifiers=0, dest=tmp_path, base_url=base, progress=False)
    bucket.files["/models/" + other.encoder_filename] = b"<html>Access Denied</html>"
    with pytest.raises(DownloadError, match=r"not the expected checkpoint: .*not a loadable weights file"):
        download_variant(other, n_classifiers=0, dest=tmp_path, base_url=base, progress=False)
    assert not (tmp_path / other.name / other.encoder_filename).exists()


def test_http_errors_name_the_url(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match=r"/models/nothing\.pth: HTTP 404"):
        download_file(base + "/nothing.pth", tmp_path / "nothing.pth", progress=False)
    assert main(["download", "DNA-Protein_ViT-ProtS-Pool", "--dest", str(tmp_path), "--base-url", base,
                 "--no-progress"]) == 1


def test_cache_is_verified_on_load(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("SUBCELL_SCALE_HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home"
    with ss.settings.override(offline=True), pytest.raises(
            CheckpointError, match=rf"not in the model cache; run `subcell-scale download {VARIANT.name} --classifiers 1`"):
        SubCell.from_pretrained(VARIANT.name, num_heads=4)
    download_variant(VARIANT, n_classifiers=1, base_url=base, progress=False)
    encoder, classifiers = cached_files(VARIANT, n_classifiers=1)
    assert encoder == tmp_path / "home" / VARIANT.name / VARIANT.encoder_filename and len(classifiers) == 1
    with pytest.raises(CheckpointError, match="not in the model cache"):
        cached_files(VARIANT, n_classifiers=2)
    damaged = bytearray(encoder.read_bytes())
    damaged[-50] ^= 0xFF
    encoder.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=rf"{VARIANT.encoder_filename}: sha256 .* does not match .*manifest\.json"):
        SubCell.from_pretrained(VARIANT.name, num_heads=4)
    # download repairs it: the damaged file no longer matches the manifest, so it is fetched again
    download_variant(VARIANT, n_classifiers=1, base_url=base, progress=False)
    assert SubCell.from_pretrained(VARIANT.name, num_heads=4, device="cpu").checkpoint_sha256 == sha(TINY / "encoder.pth")
