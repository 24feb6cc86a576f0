"""Which model a run uses, in the forms each side needs: a recipe for workers, an instance, an identity.

``embed_plate`` accepts a published variant name, checkpoint files, a :class:`~subcell_scale.models.SubCell`
instance or a :class:`ModelSpec`; :func:`resolve_model` turns any of them into one
:class:`ResolvedModel`. Workers never receive weights inside a task graph: they get a :class:`ModelSpec`
(a few strings) and build the model from it once (:mod:`subcell_scale.distributed.plugin`); an
instance built in a notebook is first saved as checkpoint files into the run directory
(:meth:`ResolvedModel.for_workers`). The identity (variant, sha256 of the files) goes into the
manifest, the provenance of the cells AnnData and the digest that decides what a resumed run reuses.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .subcell import SubCell

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Recipe for a SubCell model that any process can follow.

    Attributes
    ----------
    source
        ``"variant"`` (published weights from the local model cache), ``"checkpoint"`` (encoder and
        classifier files) or ``"random"`` (deterministic random weights, for demos and tests).
    variant
        Published variant name (``"variant"``, ``"random"``) or None.
    encoder_path, classifier_paths
        Files for ``"checkpoint"``; paths every worker can read.
    config
        Architecture (:class:`subcell_scale.models.config.ModelConfig` fields) for ``"random"``.
    seed, n_classifiers
        Random weights seed and classifier count (``"random"``); classifiers to load (``"variant"``).
    cache_dir
        Model cache for ``"variant"`` (:attr:`subcell_scale.settings.model_cache` when None).
    options
        Keyword options of the :class:`~subcell_scale.models.SubCell` constructor or loader
        (``precision``, ``channels``, ``num_heads``, ``variant`` for a checkpoint, ...).
    torch_threads
        ``torch.set_num_threads`` on the worker before loading (Dask starts workers with 1).
    """

    source: str
    variant: str | None = None
    encoder_path: str | None = None
    classifier_paths: tuple[str, ...] = ()
    config: dict[str, Any] | None = None
    seed: int = 0
    n_classifiers: int = 1
    cache_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    torch_threads: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.source not in ("variant", "checkpoint", "random"):
            msg = f"ModelSpec.source must be 'variant', 'checkpoint' or 'random', got {self.source!r}"
            raise ConfigError(msg)
        if self.source == "checkpoint" and not self.encoder_path:
            msg = "ModelSpec(source='checkpoint') needs encoder_path"
            raise ConfigError(msg)
        if self.source == "variant" and not self.variant:
            msg = "ModelSpec(source='variant') needs a variant name"
            raise ConfigError(msg)
        object.__setattr__(self, "classifier_paths", tuple(str(p) for p in self.classifier_paths))

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description (for the manifest and the parameter digest)."""
        d = asdict(self)
        d.pop("torch_threads")
        d["classifier_paths"] = list(self.classifier_paths)
        return d

    @property
    def channels(self) -> list[str] | None:
        """The model's input slots when the spec tells them without loading weights, else None."""
        from .registry import default_channels, get_variant

        if "channels" in self.options:
            return list(self.options["channels"])
        variant = self.options.get("variant", self.variant)
        if variant:
            return list(get_variant(variant).channels)
        if self.source == "random" and self.config is not None:
            return list(default_channels(int(self.config.get("num_channels", 4))))
        return None

    def load(self, device: str | None = None) -> SubCell:
        """Build the model in this process on ``device`` (CUDA when available, else CPU)."""
        from .config import ModelConfig
        from .subcell import SubCell

        options = dict(self.options)
        if self.source == "random":
            config = ModelConfig(**self.config) if self.config is not None else None
            if config is not None and self.variant:
                options.setdefault("variant", self.variant)
            return SubCell.random(config if config is not None else self.variant, seed=self.seed,
                                  n_classifiers=self.n_classifiers, device=device, **options)
        if self.source == "checkpoint":
            return SubCell.from_checkpoint(self.encoder_path, self.classifier_paths, device, **options)
        return SubCell.from_pretrained(self.variant, n_classifiers=self.n_classifiers,
                                       cache_dir=self.cache_dir, device=device, **options)


@dataclass(frozen=True)
class ResolvedModel:
    """The model of a run: a spec for workers, an instance for this process, its channels and identity.

    Attributes
    ----------
    spec
        How workers build the model; None for an instance not saved yet (see :meth:`for_workers`).
    instance
        The model in this process, when it was given or had to be loaded (to learn its channels).
    channels
        The model's input slots; None until a checkpoint has been read.
    identity
        Plain-JSON identity: source, variant, sha256 of the weight files, architecture.
    """

    spec: ModelSpec | None
    instance: SubCell | None
    channels: tuple[str, ...] | None
    identity: dict[str, Any]

    @property
    def variant(self) -> str | None:
        """Published variant the weights belong to (or stand in for), when known."""
        if self.instance is not None:
            return self.instance.variant
        return self.identity.get("variant") or self.spec.variant or self.spec.options.get("variant")

    @property
    def checkpoint_sha256(self) -> str | None:
        if self.instance is not None and self.instance.checkpoint_sha256:
            return self.instance.checkpoint_sha256
        return self.identity.get("checkpoint_sha256")

    @property
    def embedding_dim(self) -> int:
        """Width of one pass's embedding (1536 for the published models)."""
        if self.instance is not None:
            return self.instance.embedding_dim
        from .config import ModelConfig

        config = self.spec.config if self.spec is not None and self.spec.config is not None else {}
        return ModelConfig(**config).embedding_dim

    def with_channels(self, device: str | None = None) -> ResolvedModel:
        """This model with its channels known: a checkpoint is loaded here once to read them (and kept)."""
        if self.channels is not None:
            return self
        instance = self.spec.load(device=device)
        identity = {**self.identity, "variant": instance.variant, "channels": list(instance.channels)}
        return replace(self, instance=instance, channels=tuple(instance.channels), identity=identity)

    def local(self, device: str | None = None) -> SubCell:
        """The model in this process (built from the spec when there is no instance yet)."""
        return self.instance if self.instance is not None else self.spec.load(device=device)

    def for_workers(self, folder: str | os.PathLike[str]) -> ModelSpec:
        """A spec every worker can follow; an instance is first saved as checkpoint files in ``folder``.

        ``folder`` should be inside the run directory, which every worker reads; the files are
        written once per run (an existing identical save is reused by a resumed run).
        """
        if self.spec is not None:
            return self.spec
        return _save_instance(self.instance, Path(folder))


def resolve_model(model: str | os.PathLike[str] | SubCell | ModelSpec | ResolvedModel | None,
                  classifiers: Any = None, *, default_variant: str | None = None) -> ResolvedModel:
    """Turn the ``model`` argument of ``embed_plate`` into a :class:`ResolvedModel` (no weights are read,
    except to hash checkpoint files).

    Parameters
    ----------
    model
        A published variant name (from the model cache), an encoder checkpoint path, a
        :class:`~subcell_scale.models.SubCell`, a :class:`ModelSpec`, or None for ``default_variant``.
    classifiers
        Classifier checkpoint paths that go with an encoder path.
    default_variant
        The preset's variant, used when ``model`` is None.

    Raises
    ------
    CheckpointError
        A path that does not exist, or a variant that is not in the model cache.
    ConfigError
        An unknown variant name (the message lists them) or an object that is no model.
    """
    from .registry import get_variant

    if isinstance(model, ResolvedModel):
        return model
    if model is None:
        model = default_variant
    if isinstance(model, ModelSpec):
        return ResolvedModel(model, None, _tuple(model.channels), model.describe())
    if isinstance(model, str | os.PathLike) and Path(model).is_file():
        spec = ModelSpec("checkpoint", encoder_path=str(Path(model).resolve()),
                         classifier_paths=tuple(str(Path(c).resolve()) for c in classifiers or ()))
        return ResolvedModel(spec, None, None, _checkpoint_identity(spec))
    if isinstance(model, str | os.PathLike):
        name = os.fspath(model)
        if any(sep in name for sep in ("/", "\\")) or name.endswith((".pth", ".pt")):
            msg = f"model checkpoint {name} does not exist (give an encoder .pth file or a variant name)"
            raise CheckpointError(msg)
        variant = get_variant(name)  # raises with the known names
        spec = ModelSpec("variant", variant=variant.name)
        return ResolvedModel(spec, None, tuple(variant.channels), {**spec.describe(), **_cached_sha256(spec)})
    if hasattr(model, "embed") and hasattr(model, "channels"):
        identity = {"source": "instance", "variant": model.variant, "checkpoint_sha256": model.checkpoint_sha256,
                    "config": model.config.to_dict(), "n_classifiers": model.n_classifiers,
                    "channels": list(model.channels)}
        return ResolvedModel(None, model, tuple(model.channels), identity)
    msg = f"model must be a variant name, a checkpoint path, a SubCell or a ModelSpec, got {type(model).__name__}"
    raise ConfigError(msg)


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _cached_sha256(spec: ModelSpec) -> dict[str, Any]:
    """sha256 of a cached variant's files, from the cache manifest; fails early when it is not cached."""
    from .download import cached_files, read_manifest, variant_dir

    encoder, classifiers = cached_files(spec.variant, n_classifiers=spec.n_classifiers, cache_dir=spec.cache_dir,
                                        verify=False)
    files = read_manifest(variant_dir(spec.variant, spec.cache_dir))["files"]
    return {"checkpoint_sha256": files[encoder.name]["sha256"],
            "classifier_sha256": [files[c.name]["sha256"] for c in classifiers]}


def _checkpoint_identity(spec: ModelSpec) -> dict[str, Any]:
    from .checkpoint import sha256_file

    return {"source": "checkpoint", "checkpoint_sha256": sha256_file(spec.encoder_path),
            "classifier_sha256": [sha256_file(p) for p in spec.classifier_paths]}


def _save_instance(model: SubCell, folder: Path) -> ModelSpec:
    """Save a model instance once as checkpoint files that every worker can load."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)

    def save(tensors: dict[str, Any], path: Path) -> str:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a worker never reads half a file
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
        return str(path)

    encoder = save(model.encoder_state_dict(), folder / "encoder.pth")
    classifiers = tuple(save(head.state_dict(), folder / f"classifier_{k}.pth")
                        for k, head in enumerate(model.classifiers))
    options = {"num_heads": model.config.num_heads, "channels": list(model.channels),
               "precision": model.precision, "probability_mode": model.probability_mode}
    if model.variant:
        options["variant"] = model.variant
    log.info("model instance saved to %s for the workers", folder)
    return ModelSpec("checkpoint", encoder_path=encoder, classifier_paths=classifiers, options=options)
