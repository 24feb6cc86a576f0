"""SubCell inference: plain-torch ViT + gated-attention pooler + MLP classifiers, preprocessing, weights.

``SubCell`` and friends are imported lazily, so ``subcell_scale.models.registry`` and
``subcell_scale.models.preprocessing`` can be used without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_LAZY = {
    "SubCell": "subcell_scale.models.subcell",
    "SubCellOutput": "subcell_scale.models.subcell",
    "ModelSpec": "subcell_scale.models.spec",
    "ResolvedModel": "subcell_scale.models.spec",
    "resolve_model": "subcell_scale.models.spec",
    "ModelConfig": "subcell_scale.models.config",
    "VARIANTS": "subcell_scale.models.registry",
    "Variant": "subcell_scale.models.registry",
    "get_variant": "subcell_scale.models.registry",
    "CLASS_NAMES": "subcell_scale.models.registry",
    "CLASS_COLORS": "subcell_scale.models.registry",
    "DEFAULT_VARIANT": "subcell_scale.models.registry",
    "download_variant": "subcell_scale.models.download",
    "cached_files": "subcell_scale.models.download",
    "fetch_variant": "subcell_scale.models.download",
    "cache_root": "subcell_scale.models.download",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .config import ModelConfig
    from .download import cache_root, cached_files, download_variant, fetch_variant
    from .spec import ModelSpec, ResolvedModel, resolve_model
    from .registry import CLASS_COLORS, CLASS_NAMES, DEFAULT_VARIANT, VARIANTS, Variant, get_variant
    from .subcell import SubCell, SubCellOutput


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
