"""``SubCell``: backbone + gated-attention pooler + MLP classifier ensemble, with loading and batching.

Module tree (and so ``state_dict`` keys): ``encoder.*`` and ``pool_model.*`` exactly as the published
encoder files, ``classifiers.{k}.{0,3,6}.*`` for the classifier seeds.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._docs import doc_params
from ..errors import ChannelMismatchError, CheckpointError, ConfigError
from .checkpoint import (check_state_dict, classifier_shapes, infer_config, load_state_dict_file,
                         sha256_file)
from .classifier import MLPClassifier, ProbabilityMode, ensemble_probabilities
from .config import ModelConfig
from .pooling import GatedAttentionPooler
from .preprocessing import REFERENCE_EPS, min_max_normalize
from .registry import (DEFAULT_VARIANT, VARIANTS, Variant, checkpoint_variant, default_channels, get_variant,
                       three_channel_choice, variants_named_in)
from .vit import AttentionBackend, AttentionImpl, PatchEmbedding, PosInterpolation, ViT

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_LOW_PRECISION = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}

GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""``torch.compile`` modes that replay CUDA graphs: one graph is recorded per input shape."""

GRAPH_PAD = 32
"""Default ``pad_batches`` under a :data:`GRAPH_MODES` compile: at most batch_size / 32 graphs per crop size."""

CPU_ROWS = 8
"""Crops per encoder pass on the CPU. CPU GEMM kernels pick their blocking, and so their rounding, from
the number of rows they see (AVX-512 and AMX machines differ from one batch size to the next), so a
crop's embedding would depend on how many crops share its batch: every CPU pass sees exactly this many,
the last one padded with blank crops, and results are bit-identical whatever the batch size or split."""


@dataclass
class SubCellOutput:
    """What one forward pass returns.

    Attributes
    ----------
    embedding
        ``(B, pool_heads * hidden)`` (1536 for the published models), float32.
    probabilities
        ``(B, 31)`` mean of the classifiers' sigmoids (softmax of it in ``probability_mode="softmax"``);
        ``None`` without classifiers.
    pool_attention
        ``(B, pool_heads, H/16, W/16)`` gated-attention weights of the patches (CLS column dropped).
    attentions
        ``(B, heads, H/16, W/16)`` last layer's CLS-to-patch attention, only with ``return_attentions=True``.
    logits
        ``(B, K, 31)`` each classifier's logits; ``None`` without classifiers.
    last_hidden_state
        ``(B, 1 + N, hidden)``, only with ``return_hidden_state=True``.
    """

    embedding: torch.Tensor
    probabilities: torch.Tensor | None
    pool_attention: torch.Tensor
    attentions: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from .._device import resolve_device

    return torch.device(resolve_device(device))


def _random_array(seed: int, name: str, shape: tuple[int, ...], kind: str, fan_in: int) -> np.ndarray:
    """Deterministic values for one parameter, from numpy's PCG64 stream seeded by (seed, crc32(name)).

    numpy's Generator streams do not depend on the machine, so the same seed gives bit-identical
    weights everywhere, and each tensor's values do not depend on the others (a deeper config keeps
    the first layers' weights).
    """
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "ones":
        return np.ones(shape, np.float32)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))
    std = 0.02 if kind == "vit" else 1.0 / np.sqrt(fan_in)
    # uniform with the wanted standard deviation: cheaper to draw than normals and bounded like a
    # truncated normal
    values = rng.random(shape, dtype=np.float32)
    values *= np.float32(2 * np.sqrt(3) * std)
    values -= np.float32(np.sqrt(3) * std)
    return values


@doc_params
class SubCell(nn.Module):
    """The SubCell model, ready for inference.

    Build it with :meth:`from_pretrained` (model cache), :meth:`from_checkpoint` (files) or
    :meth:`random` (demos and tests). Call it on float ``(B, C, H, W)`` in [0, 1] with H, W multiples
    of 16, or use :meth:`embed` on numpy crops.

    Parameters
    ----------
    config
        Architecture.
    n_classifiers
        Number of MLP heads (0..10); their sigmoids are averaged.
    channels
        Model slots in input order; defaults to the variant's, else to the usual slots for the count.
    variant
        Published variant name, if these are (or stand in for) its weights.
    {device}
    precision
        ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``. Reduced precision
        only applies on CUDA: there the backbone and pooler weights are cast to that dtype (at the first
        forward pass on the device) and run in it, with softmax statistics in fp32 and the classifiers
        in fp32. Casting the weights instead of autocasting every op gives the same embeddings (bf16:
        relative Frobenius error about 6e-3 against fp32, cosine > 0.9999) about 20 % faster. Going
        back to ``"fp32"`` afterwards keeps the rounded weights; reload the checkpoint for exact fp32.
    probability_mode
        ``"sigmoid"`` (published) or ``"softmax"`` (SubCellPortable >= 2025-10 compatibility).
    pos_interpolation
        ``"size"`` (transformers >= 4.45, default) or ``"legacy"`` (<= 4.44).
    attention
        ``"sdpa"`` (default) or ``"eager"`` (reference-style, every layer's probabilities kept).
    max_batch_bytes
        Activation budget per forward pass; a batch whose estimate (:meth:`estimate_batch_bytes`) is
        larger raises ``torch.OutOfMemoryError`` as the GPU would, so :meth:`embed` splits it.
    compile
        Wrap the backbone in ``torch.compile``: ``True`` for the default mode or a mode name
        (``"max-autotune-no-cudagraphs"``, ...). The first call per input shape compiles (about 15 s
        for ViT-B on a GPU); on an H200 the default mode gave about 7 % more cells/s in bf16. The
        modes that replay CUDA graphs (``"reduce-overhead"``, ``"max-autotune"``) record one graph
        per batch shape; their batches are padded (``pad_batches``) so that a run's partial batches
        reuse a few graphs instead of recording one per field.
    attention_backend
        The attention kernel: ``"auto"`` (default, torch chooses), ``"cudnn"``, ``"flash"``,
        ``"efficient"`` or ``"math"`` (see :class:`~subcell_scale.models.vit.ViT`). The same embeddings
        within rounding; only the speed differs.
    patch_embedding
        ``"unfold"`` (default), ``"conv"`` or ``"channels-last"``: how the patch projection runs (see
        :class:`~subcell_scale.models.vit.PatchEmbeddings`); the same embeddings within rounding.
    pad_batches
        Pad each forward batch of :meth:`embed` with blank crops to a multiple of this many rows (never
        past the batch size), so a compiled engine sees few batch shapes; the blank rows are dropped
        from the results, and the cells' embeddings do not change (each crop is computed on its own).
        Default: :data:`GRAPH_PAD` under a CUDA-graph compile mode, else no padding. Set it to the
        batch size for one shape per crop size.
    """

    def __init__(self, config: ModelConfig, *, n_classifiers: int = 1, channels: Sequence[str] | None = None,
                 variant: str | None = None, device: str | torch.device | None = None,
                 precision: Precision = "auto", probability_mode: ProbabilityMode = "sigmoid",
                 pos_interpolation: PosInterpolation = "size", attention: AttentionImpl = "sdpa",
                 max_batch_bytes: int | None = None, compile: bool | str = False,
                 attention_backend: AttentionBackend = "auto", patch_embedding: PatchEmbedding = "unfold",
                 pad_batches: int | None = None) -> None:
        super().__init__()
        if not 0 <= n_classifiers <= 10:
            msg = f"n_classifiers must be 0..10 (ten seeds are published), got {n_classifiers}"
            raise ConfigError(msg)
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            msg = f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}"
            raise ConfigError(msg)
        if probability_mode not in ("sigmoid", "softmax"):
            msg = f"probability_mode must be 'sigmoid' or 'softmax', got {probability_mode!r}"
            raise ConfigError(msg)
        if pad_batches is not None and (isinstance(pad_batches, bool) or int(pad_batches) != pad_batches
                                        or pad_batches < 1):
            msg = f"pad_batches must be a whole number of rows >= 1 or None, got {pad_batches!r}"
            raise ConfigError(msg)
        self.config = config
        self.variant = get_variant(variant).name if variant else None
        if channels is None:
            channels = get_variant(variant).channels if variant else default_channels(config.num_channels)
        if len(channels) != config.num_channels:
            msg = f"{len(channels)} channel names {list(channels)} for a model with {config.num_channels} inputs"
            raise ChannelMismatchError(msg)
        self.channels: tuple[str, ...] = tuple(channels)
        self.precision: Precision = precision
        self.probability_mode: ProbabilityMode = probability_mode
        self.max_batch_bytes = max_batch_bytes
        self.checkpoint_sha256: str | None = None
        self.classifier_sha256: list[str] = []
        self.encoder = ViT(config, attention=attention, pos_interpolation=pos_interpolation,
                           attention_backend=attention_backend, patch_embedding=patch_embedding)
        self.pool_model = GatedAttentionPooler(config)
        self.classifiers = nn.ModuleList(MLPClassifier.from_config(config) for _ in range(n_classifiers))
        self.requires_grad_(False)
        self.eval()
        self.to(_resolve_device(device))
        # kept out of the module tree so the compiled wrapper adds no state_dict keys
        mode = None if compile is True or not compile else str(compile)
        self.__dict__["_compiled_encoder"] = torch.compile(self.encoder, mode=mode) if compile else None
        self.graphs = mode in GRAPH_MODES
        """Whether the compiled backbone replays CUDA graphs (on a CUDA device)."""
        self.pad_batches = int(pad_batches) if pad_batches is not None else (GRAPH_PAD if self.graphs else None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(cls, variant: str | Variant | ModelConfig = DEFAULT_VARIANT, *, config: ModelConfig | None = None,
               seed: int = 0, n_classifiers: int = 1, device: str | torch.device | None = None,
               **options: Any) -> SubCell:
        """A model with deterministic random weights (same seed -> bit-identical weights on any machine).

        For demos without downloaded weights and for tests with tiny configs. ``variant`` is a variant
        name (full-size ViT-B/16 with its channels) or a :class:`ModelConfig`; ``config`` gives a
        variant another architecture (a tiny model standing in for it); ``options`` are passed to the
        constructor. ``checkpoint_sha256`` is the sha256 of the generated weights.
        """
        if isinstance(variant, ModelConfig):
            config, name = variant, None
        else:
            v = get_variant(variant)
            config, name = config or ModelConfig(num_channels=v.num_channels), v.name
        model = cls._empty(config, n_classifiers=n_classifiers, variant=name, **options)
        digest = hashlib.sha256(f"subcell-scale random seed={seed}".encode())
        state = {}
        for key, tensor in model.state_dict().items():
            leaf = key.rsplit(".", 1)[-1]
            if key.endswith("layernorm_before.weight") or key.endswith("layernorm_after.weight") \
                    or key == "encoder.layernorm.weight":
                kind = "ones"
            elif leaf == "bias":
                kind = "zeros"
            else:
                kind = "mlp" if key.startswith("classifiers.") else "vit"
            fan_in = int(np.prod(tensor.shape[1:])) if tensor.ndim > 1 else 1
            arr = _random_array(seed, key, tuple(tensor.shape), kind, fan_in)
            digest.update(key.encode())
            digest.update(arr.tobytes())
            state[key] = torch.from_numpy(arr)
        model.load_state_dict(state, strict=True, assign=True)
        model.requires_grad_(False)
        model.checkpoint_sha256 = digest.hexdigest()
        model.to(_resolve_device(device))._match_precision()
        return model

    @classmethod
    def _empty(cls, config: ModelConfig, **kwargs: Any) -> SubCell:
        """A CPU model with uninitialised weights, for loaders that fill every tensor anyway."""
        with torch.device("meta"):
            model = cls(config, device="meta", **kwargs)
        return model.to_empty(device="cpu")

    @classmethod
    def from_checkpoint(cls, encoder_path: str | Path, classifier_paths: Sequence[str | Path] = (), device:
                        str | torch.device | None = None, *, variant: str | None = None,
                        num_heads: int | None = None, **options: Any) -> SubCell:
        """Load published-layout weight files strictly.

        Parameters
        ----------
        encoder_path
            Raw state_dict with ``encoder.*`` and ``pool_model.*`` keys (e.g. ``all_channels_MAE-CellS-ProtS-Pool.pth``).
        classifier_paths
            MLP classifier files (keys ``0/3/6``); their sigmoids are averaged.
        variant
            Published variant these weights are (a name, case-insensitive). Without it the variant is
            read from the file's name (or its folder's, see
            :func:`~subcell_scale.models.registry.variant_from_path`); it sets the channel slots, and its
            channel count is checked against the file. A 3-channel checkpoint needs one or the other
            (or ``channels=``): the microtubule and ER variants both take three channels.
        num_heads
            Attention heads, needed only when the width is not a multiple of 64 (the published models
            have 768 / 64 = 12); the shapes in the file do not tell it.
        options
            Passed to the constructor (``precision``, ``probability_mode``, ``channels``, ...).

        Raises
        ------
        CheckpointError
            Unreadable/unsafe file, wrong keys or shapes, channel count of another variant, a
            3-channel file whose variant is not said, ``variant`` against the file's name, or a
            classifier that does not fit the encoder (by shape or by its published name); the message
            names the file.
        """
        encoder_path = Path(encoder_path)
        if isinstance(classifier_paths, (str, Path)):  # one file given without a list
            classifier_paths = [classifier_paths]
        named = checkpoint_variant(encoder_path, variant)
        told_by = "variant=" if variant is not None else "its name"
        sd = load_state_dict_file(encoder_path)
        config = infer_config(sd, encoder_path, num_heads=num_heads)
        if named is not None and named.num_channels != config.num_channels:
            msg = (f"{encoder_path}: has {config.num_channels} input channels but {named.name} needs "
                   f"{named.num_channels} ({', '.join(named.channels)}), and {told_by} says it is {named.name}; "
                   "is this another variant's file?")
            raise CheckpointError(msg)
        if named is None and options.get("channels") is None and config.num_channels == 3:
            example = next(v.name for v in VARIANTS.values() if v.prefix == "ER-DNA-Protein")
            msg = (f"{encoder_path}: a 3-channel SubCell checkpoint whose name does not say which variant it is, "
                   f"{three_channel_choice()}; say which with variant= (--variant on the command line), e.g. "
                   f"variant={example!r}, or name the file after its variant ({example}.pth)")
            raise CheckpointError(msg)
        classifier_sds = []
        for cpath in classifier_paths:
            by_name = variants_named_in(Path(cpath).name)
            if named is not None and len(by_name) == 1 and by_name[0] != named:
                msg = (f"{cpath}: by its name a classifier of {by_name[0].name}, but the encoder {encoder_path.name} "
                       f"is {named.name}; a classifier only reads the embeddings of the variant it was trained on")
                raise CheckpointError(msg)
            csd = load_state_dict_file(cpath)
            in_dim, hidden, n_classes = classifier_shapes(csd, cpath)
            if in_dim != config.embedding_dim:
                msg = (f"{cpath}: classifier takes {in_dim}-d embeddings but the encoder {encoder_path.name} "
                       f"gives {config.embedding_dim}-d")
                raise CheckpointError(msg)
            config = replace(config, classifier_hidden=hidden, num_classes=n_classes)
            classifier_sds.append((Path(cpath), csd))
        model = cls._empty(config, n_classifiers=len(classifier_sds), variant=named.name if named else None,
                           **options)
        check_state_dict(sd, model.encoder_state_dict(), encoder_path, f"SubCell encoder ({config.num_channels} channels)")
        model.load_encoder_state_dict(sd)
        for k, (cpath, csd) in enumerate(classifier_sds):
            check_state_dict(csd, model.classifiers[k].state_dict(), cpath, "SubCell MLP classifier")
            model.classifiers[k].load_state_dict(csd, strict=True)
        model.checkpoint_sha256 = sha256_file(encoder_path)
        model.classifier_sha256 = [sha256_file(p) for p, _ in classifier_sds]
        logger.info("loaded %s (sha256 %s..., variant %s, channels %s; %d layers, %d heads, %d classifiers)",
                    encoder_path.name, model.checkpoint_sha256[:12],
                    f"{named.name} from {told_by}" if named else "not named", ", ".join(model.channels),
                    config.num_layers, config.num_heads, len(classifier_sds))
        model.to(_resolve_device(device))._match_precision()
        return model

    @classmethod
    def from_pretrained(cls, variant: str = DEFAULT_VARIANT, *, n_classifiers: int = 1,
                        cache_dir: str | Path | None = None, device: str | torch.device | None = None,
                        **options: Any) -> SubCell:
        """Load a published variant from the model cache, downloading it first when it is not there.

        The first use of a variant downloads its encoder and classifier seeds 0..n-1 from
        :attr:`subcell_scale.settings.base_url` into the cache (with a progress bar, resumable,
        checked and recorded with its sha256 as ``subcell-scale download`` does; processes starting
        together download it once). With :attr:`subcell_scale.settings.offline` (or
        ``SUBCELL_SCALE_OFFLINE=1``) a variant not in the cache is a :class:`CheckpointError` naming
        the download command. The sha256 of every cached file is checked against the cache manifest;
        a mismatch is a :class:`CheckpointError` naming the file.
        """
        from .download import fetch_variant

        encoder_path, classifier_paths = fetch_variant(variant, n_classifiers=n_classifiers, cache_dir=cache_dir)
        return cls.from_checkpoint(encoder_path, classifier_paths, device, variant=get_variant(variant).name,
                                   **options)

    # ------------------------------------------------------------------ state
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The ``encoder.*`` and ``pool_model.*`` tensors: exactly the published encoder file's keys."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("classifiers.")}

    def load_encoder_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Strictly load an encoder file's tensors (all keys must be present, none extra)."""
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if unexpected or any(not k.startswith("classifiers.") for k in missing):
            msg = f"encoder state_dict mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}"
            raise CheckpointError(msg)

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def n_classifiers(self) -> int:
        return len(self.classifiers)

    @property
    def device(self) -> torch.device:
        return self.encoder.layernorm.weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype the backbone runs in: fp32 on the CPU or with ``precision="fp32"``, else bf16/fp16."""
        if self.device.type != "cuda" or self.precision == "fp32":
            return torch.float32
        return _LOW_PRECISION[self.precision]

    def _match_precision(self) -> None:
        """Cast the backbone and pooler to :attr:`compute_dtype` when the device or precision changed."""
        want = self.compute_dtype
        have = self.encoder.embeddings.cls_token.dtype
        if have == want:
            return
        if have != torch.float32:
            logger.warning("weights were rounded to %s earlier; running in %s with those rounded weights "
                           "(reload the checkpoint for exact fp32)", have, want)
        self.encoder.to(want)
        self.pool_model.to(want)

    def estimate_batch_bytes(self, batch: int, height: int, width: int, *, attentions: bool = False) -> int:
        """Rough peak activation bytes of one forward pass (weights excluded).

        Counts the widest live tensors of one block (residual, LayerNorm output, q/k/v, MLP hidden) and,
        for eager attention, the ``heads x T x T`` score and probability tensors (all layers' when the
        reference-style ``attention="eager"`` keeps them).
        """
        c = self.config
        tokens = (height // c.patch_size) * (width // c.patch_size) + 1
        elem = torch.finfo(self.compute_dtype).bits // 8
        per_token = 6 * c.hidden_size + 2 * c.intermediate_size + 2 * c.pool_int_dim
        total = batch * tokens * per_token * elem
        eager_layers = c.num_layers if self.encoder.attention_impl == "eager" else int(attentions)
        if eager_layers:
            total += batch * c.num_heads * tokens * tokens * 4 * (2 + eager_layers)
        return int(total)

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor, *, return_attentions: bool = False,
                return_hidden_state: bool = False) -> SubCellOutput:
        """Embed a float batch ``(B, C, H, W)`` in [0, 1]; H and W must be multiples of the patch size."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.num_channels:
            msg = (f"SubCell expects (B, {c.num_channels}, H, W) input with channels ({', '.join(self.channels)}), "
                   f"got shape {tuple(x.shape)}")
            raise ChannelMismatchError(msg)
        batch, _, height, width = x.shape
        if height % c.patch_size or width % c.patch_size or height == 0 or width == 0:
            msg = f"SubCell input height and width must be multiples of {c.patch_size}, got {height} x {width}"
            raise ConfigError(msg)
        if self.max_batch_bytes is not None:
            need = self.estimate_batch_bytes(batch, height, width, attentions=return_attentions)
            if need > self.max_batch_bytes:
                msg = (f"batch of {batch} at {height}x{width} needs about {need / 2**20:.0f} MiB of activations, "
                       f"over the max_batch_bytes budget of {self.max_batch_bytes / 2**20:.0f} MiB")
                raise torch.OutOfMemoryError(msg)
        self._match_precision()
        x = x.to(self.device, dtype=self.compute_dtype, non_blocking=True)
        hidden, attn, embedding, weights = self._encode_and_pool(x, "last" if return_attentions else "none")
        embedding = embedding.float()
        logits, probs = self._classify(embedding) if self.classifiers else (None, None)
        gh, gw = height // c.patch_size, width // c.patch_size
        out = SubCellOutput(
            embedding=embedding,
            probabilities=probs,
            pool_attention=weights[:, :, 1:].reshape(batch, -1, gh, gw).float(),
            logits=logits,
        )
        if return_attentions and attn is not None:
            out.attentions = attn[-1][:, :, 0, 1:].reshape(batch, -1, gh, gw).float()
        if return_hidden_state:
            out.last_hidden_state = hidden.float()
        return out

    def _encode_and_pool(self, x: torch.Tensor, output_attentions: str
                         ) -> tuple[torch.Tensor, list[torch.Tensor] | None, torch.Tensor, torch.Tensor]:
        """Hidden states, attentions, pooled embedding and pooling weights of a device batch; on the CPU in
        passes of :data:`CPU_ROWS` crops."""
        if self.device.type != "cpu":
            hidden, attn = self._encode(x, output_attentions)
            return (hidden, attn, *self.pool_model(hidden))
        rows = x.shape[0]
        padded = -(-rows // CPU_ROWS) * CPU_ROWS
        if padded != rows:
            x = torch.cat((x, x.new_zeros(padded - rows, *x.shape[1:])))
        parts = []
        for start in range(0, padded, CPU_ROWS):
            hidden, attn = self._encode(x[start:start + CPU_ROWS], output_attentions)
            parts.append((hidden, attn, *self.pool_model(hidden)))
        hidden, embedding, weights = (torch.cat([part[i] for part in parts])[:rows] for i in (0, 2, 3))
        attn = None if parts[0][1] is None else [torch.cat(layer)[:rows] for layer in zip(*(p[1] for p in parts))]
        return hidden, attn, embedding, weights

    def _encode(self, x: torch.Tensor, output_attentions: str) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The backbone on a device batch: compiled when asked, a kernel that cannot run said plainly.

        Replayed CUDA graphs write their outputs into memory the next replay reuses, so with
        :attr:`graphs` each call starts a new graph step and the outputs are copied before returning.
        """
        compiled = self.__dict__["_compiled_encoder"]
        encoder = compiled if compiled is not None else self.encoder
        if compiled is not None and self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            hidden, attn = encoder(x, output_attentions=output_attentions)
        except RuntimeError as exc:
            text = str(exc)
            if "No available kernel" not in text and "No viable backend" not in text:
                raise
            msg = (f"attention_backend={self.encoder.attention_backend!r} cannot run on {self.device} in "
                   f"{str(x.dtype).removeprefix('torch.')} with {self.config.hidden_size // self.config.num_heads}-d "
                   f"heads ({' '.join(text.split())[:160]}); 'auto' lets torch choose a kernel that can "
                   "(the CPU has 'flash' and 'math')")
            raise ConfigError(msg) from exc
        if compiled is not None and self.graphs:
            hidden = hidden.clone()
            attn = [a.clone() for a in attn] if attn is not None else None
        return hidden, attn

    def _classify(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, K, classes)`` of every classifier and their ensemble probabilities ``(B, classes)``.

        CPU kernels (GEMM for a handful of rows, the vectorised sigmoid's scalar tail) round differently
        depending on how many values they see, so a cell's probabilities would depend on how many cells
        share its batch, or on the number of threads. On the CPU each row is classified on its own, which
        keeps them bit-identical whatever the batch size and threads; elsewhere the rows are padded to a
        multiple of 16.
        """
        rows = embedding.shape[0]
        if self.device.type == "cpu":
            # one row at a time: a product of a few rows is split over the threads along its inputs (the
            # sum's order then follows the thread count), and threads split a batch's sigmoids where its size says
            logits = torch.cat([torch.stack([clf(embedding[i:i + 1]) for clf in self.classifiers], dim=1)
                                for i in range(rows)]).float()
            probs = torch.cat([ensemble_probabilities(logits[i:i + 1], self.probability_mode) for i in range(rows)])
            return logits, probs
        padded = -(-rows // 16) * 16
        if padded != rows:
            embedding = torch.cat((embedding, embedding.new_zeros(padded - rows, embedding.shape[1])))
        logits = torch.stack([clf(embedding) for clf in self.classifiers], dim=1).float()
        return logits[:rows], ensemble_probabilities(logits, self.probability_mode)[:rows]

    def embed(self, crops: np.ndarray | torch.Tensor, *, batch_size: int = 64, eps: float = REFERENCE_EPS,
              pool_attention: bool = True, trim: bool = False) -> dict[str, np.ndarray | None]:
        """Embed many crops in batches; returns numpy arrays.

        Parameters
        ----------
        crops
            ``(N, C, H, W)``, or ``(N, P, C, H, W)`` for P passes per cell (multi-pass mode: the passes'
            embeddings are concatenated). Integer crops (uint8, uint16, ...) are min-max normalised per
            crop over all channels first, exactly as the reference (``(x - min) / (max - min + eps)``);
            float crops are taken as already normalised and passed through. A torch tensor is used where
            it lies (crops cut on the GPU are never copied back to the host).
        batch_size
            Crops per forward pass. When a pass runs out of memory (CUDA, or the ``max_batch_bytes``
            budget), the batch is halved and retried, down to 1; results do not depend on the split.
        pool_attention
            Also return the pooling attention maps (skip them to save the device-to-host copies).
        trim
            Cut each crop to the largest multiple of the patch size (JUMP's 478 px to 464: the
            reference ViT's patch convolution never reads the last pixels either), one batch at a
            time, so the whole array is never copied for it.

        Returns
        -------
        dict
            ``"embedding"`` ``(N, D)`` (``(N, P * D)`` multi-pass), ``"probabilities"`` ``(N, 31)``
            (``(N, P, 31)`` multi-pass; ``None`` without classifiers), ``"pool_attention"``
            ``(N, 2, H/16, W/16)`` (``(N, P, 2, H/16, W/16)`` multi-pass; None when not asked for).
        """
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ConfigError(msg)
        if crops.ndim not in (4, 5):
            msg = f"embed expects crops (N, C, H, W) or (N, P, C, H, W), got shape {tuple(crops.shape)}"
            raise ChannelMismatchError(msg)
        lead = tuple(crops.shape[:-3])
        flat = crops.reshape(-1, *crops.shape[-3:])
        if not isinstance(flat, torch.Tensor):
            flat = _host_array(np.asarray(flat))
        integer = not flat.dtype.is_floating_point
        c = self.config
        height, width = crops.shape[-2], crops.shape[-1]
        if trim:
            height, width = height // c.patch_size * c.patch_size, width // c.patch_size * c.patch_size
        gh, gw = height // c.patch_size, width // c.patch_size
        n = flat.shape[0]
        emb = np.empty((n, c.embedding_dim), np.float32)
        probs = np.empty((n, c.num_classes), np.float32) if self.classifiers else None
        pool = np.empty((n, c.pool_heads, gh, gw), np.float32) if pool_attention else None
        for start, stop, out in self._batches(flat, batch_size, normalize=integer, eps=eps, size=(height, width)):
            emb[start:stop] = out.embedding.cpu().numpy()
            if pool is not None:
                pool[start:stop] = out.pool_attention.cpu().numpy()
            if probs is not None:
                probs[start:stop] = out.probabilities.cpu().numpy()
        if len(lead) == 2:
            return {
                "embedding": emb.reshape(lead[0], -1),
                "probabilities": probs.reshape(*lead, -1) if probs is not None else None,
                "pool_attention": pool.reshape(*lead, *pool.shape[1:]) if pool is not None else None,
            }
        return {"embedding": emb, "probabilities": probs, "pool_attention": pool}

    def _batches(self, flat: torch.Tensor, batch_size: int, *, normalize: bool, eps: float,
                 size: tuple[int, int]) -> Iterator[tuple[int, int, SubCellOutput]]:
        """Forward passes over ``flat`` (B, C, H, W) cut to ``size``, halving a batch that runs out of memory.

        The one place that splits work into batches: a field is not lost to one oversized batch, and
        the outputs do not depend on the split (the classifiers pad their rows, see :meth:`_classify`).
        With :attr:`pad_batches`, blank crops fill the batch up to its padded size and their rows are
        dropped before anything is returned. Float crops outside [0, 1] (not normalised) are said once.
        """
        cuda = self.device.type == "cuda"
        height, width = size
        rows_per, start, n = batch_size, 0, flat.shape[0]
        with torch.inference_mode():
            while start < n:
                stop = min(start + rows_per, n)
                batch = flat[start:stop, :, :height, :width].contiguous()  # one batch copied, not the array
                if start == 0 and not normalize:
                    _check_range(batch)
                if batch.device != self.device:
                    batch = (batch.pin_memory() if cuda else batch).to(self.device, non_blocking=True)
                if normalize:
                    # the reference normalisation (float64, per crop over all channels), on the model's device
                    batch = min_max_normalize(batch, eps=eps).float()
                rows = stop - start
                padded = self._padded_rows(rows, rows_per)
                if padded > rows:
                    batch = torch.cat((batch, batch.new_zeros(padded - rows, *batch.shape[1:])))
                try:
                    out = self(batch)
                    if padded > rows:
                        out = _first_rows(out, rows)
                except torch.OutOfMemoryError as exc:
                    if padded == 1:
                        raise
                    rows_per = max(1, (stop - start) // 2)
                    logger.warning("out of memory with a batch of %d crops (%s); retrying with %d",
                                   stop - start, " ".join(str(exc).split())[:120], rows_per)
                    del batch
                    if cuda:
                        torch.cuda.empty_cache()
                    continue
                yield start, stop, out
                start = stop

    def _padded_rows(self, rows: int, limit: int) -> int:
        """Rows of the forward batch that carries ``rows`` crops: up to a multiple of :attr:`pad_batches`, at most ``limit``."""
        if not self.pad_batches:
            return rows
        return max(rows, min(-(-rows // self.pad_batches) * self.pad_batches, limit))

    def extra_repr(self) -> str:
        engine = [f"{k}={v}" for k, v in (("attention_backend", self.encoder.attention_backend),
                                          ("patch_embedding", self.encoder.embeddings.patch_embeddings.mode),
                                          ("pad_batches", self.pad_batches)) if v not in ("auto", "unfold", None)]
        model = (f"variant={self.variant}, channels={self.channels}, embedding_dim={self.embedding_dim}, "
                 f"classifiers={self.n_classifiers}, precision={self.precision}")
        return ", ".join([model, *engine])


def _check_range(batch: torch.Tensor) -> None:
    """Warn when float crops are not min-max normalised (checked on the first batch: a run's crops come
    from one function, so one batch tells)."""
    if not batch.numel():
        return
    low, high = float(batch.min()), float(batch.max())
    if low < -1e-3 or high > 1 + 1e-3:
        logger.warning("float crops span [%.3g, %.3g], outside [0, 1]; SubCell expects min-max normalised input "
                       "(pass integer crops to have them normalised)", low, high)


def _first_rows(out: SubCellOutput, rows: int) -> SubCellOutput:
    """``out`` without the padding rows after the first ``rows``."""
    return SubCellOutput(**{f.name: None if getattr(out, f.name) is None else getattr(out, f.name)[:rows]
                            for f in fields(SubCellOutput)})


def _host_array(arr: np.ndarray) -> torch.Tensor:
    """A host tensor of numpy crops; uint64 (no torch arithmetic) goes through float64, exact up to 2**53."""
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        arr = arr.astype(np.float64)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr))
