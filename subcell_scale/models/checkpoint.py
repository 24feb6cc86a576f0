"""Safe, strict loading of SubCell weight files.

Files are read with ``torch.load(weights_only=True)``: a pickle that would import or call anything is
refused by torch's restricted unpickler before it runs. Every failure (missing file, truncated zip,
wrapper dict, missing/extra keys, wrong shapes, another variant's channel count) is a
:class:`~subcell_scale.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from .config import ModelConfig

logger = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^encoder\.encoder\.layer\.(\d+)\.")
CLASSIFIER_KEYS = ("0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are ~350 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a raw state_dict (a flat mapping of names to tensors) safely onto the CPU.

    Raises
    ------
    CheckpointError
        The file is missing, unreadable, truncated, not loadable with ``weights_only=True`` (e.g. it
        would run code), or not a flat mapping of string keys to tensors.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: checkpoint file not found"
        raise CheckpointError(msg)
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol is refused below if it matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = " ".join(str(exc).split())[:300]
        msg = (f"{path}: not a loadable weights file ({type(exc).__name__}: {reason}); "
               "only plain state_dicts are read (weights_only=True), nothing in the file was executed")
        raise CheckpointError(msg) from exc
    if not isinstance(obj, Mapping):
        msg = f"{path}: expected a state_dict (a mapping of names to tensors), found {type(obj).__name__}"
        raise CheckpointError(msg)
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            msg = (f"{path}: the state_dict is wrapped under the key {wrapper!r}; SubCell files are raw "
                   "state_dicts, save the inner mapping instead")
            raise CheckpointError(msg)
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        msg = f"{path}: not a state_dict: entries {bad[:5]!r} are not named tensors"
        raise CheckpointError(msg)
    if not obj:
        msg = f"{path}: the state_dict is empty"
        raise CheckpointError(msg)
    return dict(obj)


def _shape(sd: Mapping[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in sd:
        msg = f"{path}: not a SubCell encoder checkpoint: key {key!r} is missing"
        raise CheckpointError(msg)
    return tuple(sd[key].shape)


def infer_config(sd: Mapping[str, torch.Tensor], path: str | Path, *, num_heads: int | None = None,
                 classifier_hidden: tuple[int, ...] = (512, 256), num_classes: int = 31) -> ModelConfig:
    """Read the architecture off an encoder state_dict's shapes.

    Width, depth, MLP width, channels, patch and training size and the pooler sizes follow from the
    shapes; the number of attention heads does not, so it defaults to ``hidden_size // 64`` (the ViT-B
    convention) and must be given for other widths.
    """
    path = Path(path)
    hidden, channels, patch, patch_w = _shape(sd, "encoder.embeddings.patch_embeddings.projection.weight", path)
    n_pos = _shape(sd, "encoder.embeddings.position_embeddings", path)[1]
    layers = {int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k))}
    if not layers:
        msg = f"{path}: not a SubCell encoder checkpoint: no 'encoder.encoder.layer.*' keys"
        raise CheckpointError(msg)
    intermediate = _shape(sd, "encoder.encoder.layer.0.intermediate.dense.weight", path)[0]
    pool_int, pool_dim = _shape(sd, "pool_model.attention_v.1.weight", path)
    pool_heads = _shape(sd, "pool_model.attention.weight", path)[0]
    grid = round((n_pos - 1) ** 0.5)
    if patch != patch_w or grid * grid != n_pos - 1 or pool_dim != hidden:
        msg = (f"{path}: inconsistent encoder shapes (patch {patch}x{patch_w}, {n_pos} position rows, "
               f"pool input {pool_dim} vs hidden {hidden})")
        raise CheckpointError(msg)
    if num_heads is None:
        if hidden % 64:
            msg = (f"{path}: hidden size {hidden} is not a multiple of 64, so the number of attention heads "
                   "cannot be inferred; pass num_heads= (--num-heads on the command line)")
            raise CheckpointError(msg)
        num_heads = hidden // 64
    try:
        return ModelConfig(hidden_size=hidden, num_layers=max(layers) + 1, num_heads=num_heads,
                           intermediate_size=intermediate, num_channels=channels, patch_size=patch,
                           image_size=grid * patch, pool_int_dim=pool_int, pool_heads=pool_heads,
                           num_classes=num_classes, classifier_hidden=classifier_hidden)
    except ValueError as exc:
        msg = f"{path}: {exc}"
        raise CheckpointError(msg) from exc


def check_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor | torch.Size],
                     path: str | Path, what: str) -> None:
    """Require exactly the expected keys with the expected shapes (a strict load that explains itself)."""
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    wrong = []
    for k, ref in expected.items():
        if k in sd:
            want = tuple(ref.shape) if isinstance(ref, torch.Tensor) else tuple(ref)
            if tuple(sd[k].shape) != want:
                wrong.append(f"{k} {tuple(sd[k].shape)} (expected {want})")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {missing[:4]}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s) {extra[:4]}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): {'; '.join(wrong[:4])}")
    if problems:
        msg = f"{path}: does not match the {what}: {', '.join(problems)}"
        raise CheckpointError(msg)


def classifier_shapes(sd: Mapping[str, torch.Tensor], path: str | Path) -> tuple[int, tuple[int, ...], int]:
    """(input dim, hidden widths, classes) of an MLP classifier state_dict with keys 0/3/6."""
    path = Path(path)
    keys = set(sd)
    if keys != set(CLASSIFIER_KEYS):
        missing = sorted(set(CLASSIFIER_KEYS) - keys)
        extra = sorted(keys - set(CLASSIFIER_KEYS))
        msg = (f"{path}: not a SubCell MLP classifier (expected keys {list(CLASSIFIER_KEYS)}; "
               f"missing {missing[:4]}, unexpected {extra[:4]})")
        raise CheckpointError(msg)
    w0, w3, w6 = (tuple(sd[f"{i}.weight"].shape) for i in (0, 3, 6))
    if len(w0) != 2 or len(w3) != 2 or len(w6) != 2 or w3[1] != w0[0] or w6[1] != w3[0]:
        msg = f"{path}: classifier layer shapes do not chain: {w0}, {w3}, {w6}"
        raise CheckpointError(msg)
    return w0[1], (w0[0], w3[0]), w6[0]


def expected_encoder_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Key -> shape of the encoder file for ``config`` (``encoder.*``, ``pool_model.*``), built on the
    meta device, so no memory is used and no ``SubCell`` is needed to check a downloaded file."""
    from .pooling import GatedAttentionPooler
    from .vit import ViT

    with torch.device("meta"):
        parts = {"encoder": ViT(config), "pool_model": GatedAttentionPooler(config)}
    return {f"{prefix}.{k}": v.shape for prefix, module in parts.items() for k, v in module.state_dict().items()}
