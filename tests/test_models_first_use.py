"""Published weights on first use: downloaded once (locked), resumable, checked, and never when offline.

Every download here goes to a real HTTP server on 127.0.0.1 (``tests/_http_bucket.py``) through
``SUBCELL_SCALE_BASE_URL`` or ``settings.base_url``; nothing reaches the real network.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _http_bucket import PREFIX, publish, serve

import subcell_scale as ss
from subcell_scale.cli import main
from subcell_scale.errors import CheckpointError, ConfigError, DownloadError
from subcell_scale.models import SubCell, get_variant, resolve_model
from subcell_scale.models.download import LOCK, cached_files

TINY = Path(__file__).parent / "data" / "subcell" / "tiny_rybg"  # 4 channels, width 48, 4 heads
VARIANT = get_variant("all_channels_MAE-CellS-ProtS-Pool")
ENCODER = PREFIX + VARIANT.encoder_filename
CLASSIFIER_0 = PREFIX + VARIANT.classifier_url(0, "")[1:]


def sha(data: bytes | Path) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.read_bytes()).hexdigest()


@pytest.fixture()
def server():
    with serve() as (base, bucket):
        publish(bucket, base, VARIANT, TINY / "encoder.pth", [TINY / f"classifier_seed_{k}.pth" for k in (0, 1)])
        yield base, bucket


@pytest.fixture()
def online(server, tmp_path, monkeypatch):
    """An empty model cache, downloads allowed, from the loopback server (set through the environment)."""
    base, bucket = server
    monkeypatch.setenv("SUBCELL_SCALE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SUBCELL_SCALE_BASE_URL", base)
    monkeypatch.delenv("SUBCELL_SCALE_OFFLINE", raising=False)
    with ss.settings.override(offline=None, base_url=None, model_cache=None, progress=False):
        yield {"base": base, "bucket": bucket, "cache": tmp_path / "cache"}


def test_the_base_url_setting(monkeypatch):
    monkeypatch.delenv("SUBCELL_SCALE_BASE_URL", raising=False)
    assert ss.settings.base_url == "https://czi-subcell-public.s3.amazonaws.com/models"
    monkeypatch.setenv("SUBCELL_SCALE_BASE_URL", "http://mirror.example:8080/subcell/")
    assert ss.settings.base_url == "http://mirror.example:8080/subcell"
    with ss.settings.override(base_url="https://other.example/m"):
        assert ss.settings.base_url == "https://other.example/m"
    monkeypatch.setenv("SUBCELL_SCALE_BASE_URL", "ftp://mirror.example")
    with pytest.raises(ConfigError, match=r"\$SUBCELL_SCALE_BASE_URL must be an http:// or https:// URL"):
        ss.settings.base_url  # noqa: B018 (the property raises)
    with pytest.raises(ConfigError, match="settings.base_url must be an http"):
        ss.settings.base_url = "s3://bucket/models"


def test_first_use_downloads_and_later_uses_read_the_cache(online):
    bucket, cache = online["bucket"], online["cache"]
    model = SubCell.from_pretrained(VARIANT.name, n_classifiers=2, device="cpu", num_heads=4)
    assert bucket.count(ENCODER) == 1 and bucket.count(CLASSIFIER_0) == 1 and len(bucket.requests) == 3
    assert model.variant == VARIANT.name and model.checkpoint_sha256 == sha(TINY / "encoder.pth")
    out = model(torch.from_numpy(np.load(TINY / "input_64.npy")))
    np.testing.assert_allclose(out.probabilities.numpy(), np.load(TINY / "out64_probabilities.npy"), atol=1e-6)
    # recorded as `subcell-scale download` records it
    manifest = json.loads((cache / VARIANT.name / "manifest.json").read_text())
    assert manifest["files"][VARIANT.encoder_filename]["sha256"] == sha(TINY / "encoder.pth")
    assert manifest["base_url"] == online["base"]
    assert not list((cache / VARIANT.name).glob("*.part"))
    # later uses: nothing is requested; one more seed fetches that seed only
    SubCell.from_pretrained(VARIANT.name, n_classifiers=2, device="cpu", num_heads=4)
    assert len(bucket.requests) == 3
    assert cached_files(VARIANT, n_classifiers=2)[0] == cache / VARIANT.name / VARIANT.encoder_filename


@pytest.mark.parametrize("how", ["environment", "settings"])
def test_offline_keeps_the_not_in_the_cache_error(online, monkeypatch, how):
    if how == "environment":
        monkeypatch.setenv("SUBCELL_SCALE_OFFLINE", "1")
    offline = {"offline": True} if how == "settings" else {}
    with ss.settings.override(**offline), pytest.raises(CheckpointError, match=(
            rf"{VARIANT.encoder_filename}: not in the model cache; run `subcell-scale download {VARIANT.name} "
            r"--classifiers 1` .*downloading on first use is off \(settings.offline or \$SUBCELL_SCALE_OFFLINE\)")):
        SubCell.from_pretrained(VARIANT.name, device="cpu", num_heads=4)
    with ss.settings.override(**offline), pytest.raises(CheckpointError, match="not in the model cache"):
        resolve_model(VARIANT.name)
    assert online["bucket"].requests == []


def test_a_dropped_connection_on_first_use_is_resumed(online):
    bucket = online["bucket"]
    bucket.drop_once.add(ENCODER)
    model = SubCell.from_pretrained(VARIANT.name, device="cpu", num_heads=4)
    ranges = [r for p, r in bucket.requests if p == ENCODER]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert model.checkpoint_sha256 == sha(TINY / "encoder.pth")


def test_a_corrupted_first_use_download_is_refused_and_nothing_kept(online):
    bucket, folder = online["bucket"], online["cache"] / VARIANT.name
    bucket.corrupt.add(ENCODER)
    with pytest.raises(DownloadError, match=rf"{VARIANT.encoder_filename} refused: MD5 .* differs from the server's ETag"):
        SubCell.from_pretrained(VARIANT.name, device="cpu", num_heads=4)
    assert not (folder / VARIANT.encoder_filename).exists() and not list(folder.glob("*.part"))
    bucket.corrupt.clear()
    assert SubCell.from_pretrained(VARIANT.name, device="cpu", num_heads=4).checkpoint_sha256 == sha(TINY / "encoder.pth")


def test_the_download_command_follows_the_base_url_setting(online, capsys):
    assert main(["download", VARIANT.name, "--classifiers", "0", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(online["cache"] / VARIANT.name)
    assert online["bucket"].count(ENCODER) == 1


# -- several processes ---------------------------------------------------------------------------
_LOADER = """
import logging, pathlib, sys, time
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
from subcell_scale.models import SubCell
pathlib.Path(sys.argv[1]).touch()
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.01)
model = SubCell.from_pretrained(sys.argv[3], device="cpu", num_heads=int(sys.argv[4]))
print(model.checkpoint_sha256)
"""


def _loader(tmp_path: Path, k: int, variant: str, num_heads: int = 4) -> list[str]:
    return [sys.executable, "-c", _LOADER, str(tmp_path / f"ready-{k}"), str(tmp_path / "go"), variant,
            str(num_heads)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.mark.slow
def test_processes_starting_together_download_once(online, tmp_path):
    """Three processes ask for the variant at the same moment while the server sends slowly: one request per file."""
    bucket = online["bucket"]
    bucket.slow[ENCODER] = 2.5  # long enough that every process arrives while the first downloads
    n = 3
    procs = [subprocess.Popen(_loader(tmp_path, k, VARIANT.name), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(n)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{k}").exists() for k in range(n)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a loader did not start"
            time.sleep(0.02)
        (tmp_path / "go").touch()  # every process is imported and waiting: they start together
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in results]
    assert {out.strip() for out, _ in results} == {sha(TINY / "encoder.pth")}
    assert bucket.count(ENCODER) == 1 and bucket.count(CLASSIFIER_0) == 1
    # the downloading process showed a progress bar (settings.progress is on by default)
    assert any(f"{VARIANT.encoder_filename}: " in err and "%|" in err for _, err in results)
    waited = [err for _, err in results if "another process is downloading" in err]
    assert len(waited) >= 1, "the processes did not overlap, so the lock was not exercised"
    assert (online["cache"] / VARIANT.name / LOCK).exists()


@pytest.fixture(scope="module")
def large_encoder(tmp_path_factory) -> Path:
    """A 4-channel encoder of several MiB (width 128, 2 heads): a download reads 1 MiB blocks, so a file this
    size is seen half-written."""
    from subcell_scale.models.config import ModelConfig

    config = ModelConfig(hidden_size=128, num_layers=3, num_heads=2, intermediate_size=256, num_channels=4,
                         pool_int_dim=32)
    path = tmp_path_factory.mktemp("large") / "encoder.pth"
    torch.save(SubCell.random(config, seed=1, n_classifiers=0, device="cpu").encoder_state_dict(), path)
    assert path.stat().st_size > 2 << 20
    return path


@pytest.mark.slow
def test_a_killed_download_is_resumed_by_the_next_process(online, large_encoder, tmp_path):
    """The lock dies with its process; the next one takes it and resumes the partial file with a Range request."""
    bucket, folder = online["bucket"], online["cache"] / VARIANT.name
    publish(bucket, online["base"], VARIANT, large_encoder, [TINY / "classifier_seed_0.pth"])
    bucket.slow[ENCODER] = 8.0
    proc = subprocess.Popen(_loader(tmp_path, 0, VARIANT.name, num_heads=2), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    (tmp_path / "go").touch()
    part = folder / (VARIANT.encoder_filename + ".part")
    deadline = time.monotonic() + 120
    while not (part.exists() and part.stat().st_size > 0):
        assert time.monotonic() < deadline and proc.poll() is None, "the download did not start"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = part.stat().st_size
    assert 0 < kept < large_encoder.stat().st_size
    bucket.slow.clear()
    model = SubCell.from_pretrained(VARIANT.name, device="cpu", n_classifiers=0)
    assert [r for p, r in bucket.requests if p == ENCODER] == [None, f"bytes={kept}-"]
    assert model.checkpoint_sha256 == sha(large_encoder)


# -- embed_plate: the run's identity is the downloaded files' ----------------------------------------
@pytest.fixture(scope="module")
def standard_model(tmp_path_factory) -> dict:
    """A small 4-channel model of standard width (64, one head) with one classifier, as files to publish."""
    from subcell_scale.models.config import ModelConfig

    config = ModelConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64, num_channels=4,
                         pool_int_dim=16)
    model = SubCell.random(config, seed=7, n_classifiers=1, device="cpu")
    folder = tmp_path_factory.mktemp("published")
    torch.save(model.encoder_state_dict(), folder / "encoder.pth")
    torch.save(model.classifiers[0].state_dict(), folder / "classifier.pth")
    return {"model": model, "encoder": folder / "encoder.pth", "classifier": folder / "classifier.pth"}


@pytest.fixture(scope="module")
def plate(demo_plates) -> str:
    return demo_plates(n_plates=2, n_wells=4, n_fields=1, field_size=384, cells_per_field=16, seed=0)["plate"]


@pytest.mark.slow
def test_embed_plate_downloads_a_variant_and_records_its_sha256(online, standard_model, plate, tmp_path):
    from subcell_scale import embed_plate

    bucket = online["bucket"]
    publish(bucket, online["base"], VARIANT, standard_model["encoder"], [standard_model["classifier"]])
    cells = embed_plate(plate, VARIANT.name, out=tmp_path / "run", out_size=32, progress=False)
    expected = embed_plate(plate, standard_model["model"], out_size=32, progress=False)
    assert bucket.count(ENCODER) == 1 and bucket.count(CLASSIFIER_0) == 1
    np.testing.assert_array_equal(np.asarray(cells.X), expected.X)
    digest = sha(standard_model["encoder"])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["embed"]["model"]["checkpoint_sha256"] == digest
    assert manifest["embed"]["model"]["classifier_sha256"] == [sha(standard_model["classifier"])]
    assert cells.uns["subcell_scale"]["checkpoint_sha256"] == digest
    assert cells.uns["subcell_scale"]["variant"] == VARIANT.name


@pytest.mark.processes
def test_workers_with_their_own_cache_download_once_between_them(online, standard_model, plate, tmp_path,
                                                                 monkeypatch):
    """The client fetches into its cache; two workers whose cache (their environment's) is empty fetch once."""
    from subcell_scale.distributed import get_client, loads_per_worker
    from subcell_scale import embed_plate

    bucket = online["bucket"]
    publish(bucket, online["base"], VARIANT, standard_model["encoder"], [standard_model["classifier"]])
    bucket.slow[ENCODER] = 1.0
    monkeypatch.setenv("SUBCELL_SCALE_HOME", str(tmp_path / "worker-cache"))  # what the workers start with
    client = get_client("local", n_workers=2, threads_per_worker=1, dashboard=False)
    try:
        with ss.settings.override(model_cache=tmp_path / "client-cache"):
            cells = embed_plate(plate, VARIANT.name, client=client, out=tmp_path / "run", out_size=32, progress=False)
        loads = client.run(loads_per_worker)
    finally:
        client.close()
    expected = embed_plate(plate, standard_model["model"], out_size=32, progress=False)
    np.testing.assert_array_equal(np.asarray(cells.X), expected.X)
    assert [sum(per.values()) for per in loads.values()] == [1, 1]  # both workers loaded the model
    assert bucket.count(ENCODER) == 2 and bucket.count(CLASSIFIER_0) == 2  # the client's, then one for both workers
    for cache in ("client-cache", "worker-cache"):
        assert sha(tmp_path / cache / VARIANT.name / VARIANT.encoder_filename) == sha(standard_model["encoder"])
