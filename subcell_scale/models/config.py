"""Sizes of a SubCell model: the ViT backbone, the gated-attention pooler and the MLP classifiers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one SubCell model; the defaults are the published ViT-B/16 (section 2.2 of the model doc).

    Tests and demos use tiny configs, e.g. ``ModelConfig(hidden_size=48, num_layers=2, num_heads=4,
    intermediate_size=96, num_channels=4, pool_int_dim=32)``.

    Attributes
    ----------
    hidden_size, num_layers, num_heads, intermediate_size
        ViT width, depth, attention heads and MLP width.
    num_channels
        Input channels (4, 3 or 2 for the published variants).
    patch_size, image_size
        Patch side and the training image side; the position-embedding table has
        ``(image_size // patch_size) ** 2 + 1`` rows and is interpolated for other input sizes.
    layer_norm_eps
        LayerNorm epsilon of every norm in the backbone (1e-12, as published).
    pool_int_dim, pool_heads
        Gated-attention pooler width and number of pooling heads; the embedding has
        ``pool_heads * hidden_size`` values.
    num_classes, classifier_hidden
        MLP classifier output size and hidden widths.
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    num_channels: int = 4
    patch_size: int = 16
    image_size: int = 448
    layer_norm_eps: float = 1e-12
    pool_int_dim: int = 512
    pool_heads: int = 2
    num_classes: int = 31
    classifier_hidden: tuple[int, ...] = field(default=(512, 256))

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "num_channels",
                     "patch_size", "image_size", "pool_int_dim", "pool_heads", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"ModelConfig.{name} must be a positive integer, got {value!r}"
                raise ConfigError(msg)
        if self.hidden_size % self.num_heads:
            msg = f"ModelConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            raise ConfigError(msg)
        if self.image_size % self.patch_size:
            msg = f"ModelConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            raise ConfigError(msg)
        object.__setattr__(self, "classifier_hidden", tuple(int(h) for h in self.classifier_hidden))

    @property
    def embedding_dim(self) -> int:
        """Length of the embedding: the pooling heads' weighted sums, concatenated."""
        return self.pool_heads * self.hidden_size

    @property
    def grid_size(self) -> int:
        """Patches per side at the training size (28 for 448 / 16)."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        """Plain-JSON form, for provenance records."""
        d = asdict(self)
        d["classifier_hidden"] = list(self.classifier_hidden)
        return d
