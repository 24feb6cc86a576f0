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

from .._docs import doc_params
from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..rundir import RunPath
    from .subcell import SubCell

log = logging.getLogger(__name__)

RANDOM = "random"
"""The ``model`` name of seeded random weights (``--model random``)."""


@doc_params
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
        Files for ``"checkpoint"``; paths every worker can read, or fsspec URLs (a model instance
        saved into a run directory on object storage) that the worker plugin fetches to a local
        temporary folder before :meth:`load` (:mod:`subcell_scale.distributed.plugin`).
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
    {storage_options}
        For URL checkpoint files; not part of the model's description (nor of the manifest).
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
    storage_options: dict[str, Any] | None = field(default=None, compare=False, repr=False)

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
        d.pop("storage_options")
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
            name = options.pop("variant", self.variant)
            return SubCell.random(name or config, config=config if name else None, seed=self.seed,
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

    @property
    def summary(self) -> str:
        """One line saying which model this is: its source, file, sha256 prefix, variant and channels."""
        spec = self.spec
        if spec is None:
            source = "SubCell instance"
        elif spec.source == "checkpoint":
            source = f"checkpoint {Path(spec.encoder_path).name}"
        elif spec.source == "variant":
            source = f"published {spec.variant} from the model cache"
        else:
            source = f"random weights (seed {spec.seed})"
        sha = self.checkpoint_sha256
        parts = [source] + ([f"sha256 {sha[:12]}..."] if sha else []) + [f"variant {self.variant or 'not named'}"]
        if self.channels is not None:
            parts.append(f"channels {', '.join(self.channels)}")
        return ", ".join(parts)

    def with_channels(self, device: str | None = None) -> ResolvedModel:
        """This model with its channels known: a checkpoint is loaded here once to read them (and kept).

        Logs :attr:`summary`, so a run's log names the model it uses (not a preset's default).
        """
        if self.channels is not None:
            log.info("model: %s", self.summary)
            return self
        instance = self.spec.load(device=device)
        identity = {**self.identity, "variant": instance.variant, "channels": list(instance.channels)}
        resolved = replace(self, instance=instance, channels=tuple(instance.channels), identity=identity)
        log.info("model: %s", resolved.summary)
        return resolved

    def local(self, device: str | None = None) -> SubCell:
        """The model in this process (built from the spec when there is no instance yet)."""
        return self.instance if self.instance is not None else self.spec.load(device=device)

    def for_workers(self, folder: RunPath) -> ModelSpec:
        """A spec every worker can follow; an instance is first saved as checkpoint files in ``folder``.

        ``folder`` is where every worker reads the run (``out/model`` as a
        :class:`~subcell_scale.rundir.RunPath`: a shared folder, or a URL whose storage options go with
        the spec). Each file is written whole there, so a worker never reads half of one.
        """
        if self.spec is not None:
            return self.spec
        return _save_instance(self.instance, folder)


@doc_params
def resolve_model(model: str | os.PathLike[str] | SubCell | ModelSpec | ResolvedModel | None,
                  classifiers: Any = None, *, default_variant: str | None = None, variant: str | None = None,
                  num_heads: int | None = None) -> ResolvedModel:
    """Turn the ``model`` argument of ``embed_plate`` into a :class:`ResolvedModel`.

    No weights are read, except to hash checkpoint files; a published variant missing from the model
    cache is downloaded here (unless :attr:`~subcell_scale.settings.offline`), so the run's identity
    holds the sha256 of the files the workers will load.

    Parameters
    ----------
    {model}
        ``"random"`` and None both take ``variant``, or else ``default_variant``: random weights of
        its architecture, or its published weights.
    {classifiers}
    default_variant
        The preset's variant, used when neither ``model`` nor ``variant`` is given. It says nothing
        about a checkpoint: a preset's default is no statement about a file.
    variant
        Which published variant a checkpoint is (see :meth:`SubCell.from_checkpoint
        <subcell_scale.models.SubCell.from_checkpoint>`): needed for a 3-channel checkpoint whose
        name does not say it, refused when the name says another. With a variant name or an instance
        it must agree with it; with no model it is the variant used.
    num_heads
        Attention heads of a checkpoint whose width is not a multiple of 64.

    Raises
    ------
    CheckpointError
        A path that does not exist, a checkpoint name against ``variant``, or (offline) a variant that
        is not in the model cache.
    ConfigError
        An unknown variant name (the message lists them), ``variant`` against the model's, or an
        object that is no model.
    DownloadError
        Downloading a variant failed.
    """
    from .registry import get_variant

    if model is None:
        model = variant if variant is not None else default_variant
    if isinstance(model, str) and model.lower() == RANDOM:
        name = variant if variant is not None else default_variant
        spec = _with_options(ModelSpec(RANDOM, variant=get_variant(name).name if name else None), None, num_heads)
        return ResolvedModel(spec, None, _tuple(spec.channels), _spec_identity(spec))
    if isinstance(model, ResolvedModel):
        _agree(model.variant, variant, "the model given")
        if num_heads is not None:
            msg = "num_heads= applies to a checkpoint path or ModelSpec, not to a resolved model"
            raise ConfigError(msg)
        return model
    if isinstance(model, ModelSpec):
        spec = _with_options(model, variant, num_heads)
        # a checkpoint is loaded once here (with_channels): its shapes are checked before any work
        channels = None if spec.source == "checkpoint" else _tuple(spec.channels)
        return ResolvedModel(spec, None, channels, _spec_identity(spec))
    if isinstance(model, str | os.PathLike) and is_checkpoint_path(model):
        spec = checkpoint_spec(model, classifiers or (), variant=variant, num_heads=num_heads)
        return ResolvedModel(spec, None, None, _spec_identity(spec))
    if isinstance(model, str | os.PathLike):
        chosen = get_variant(os.fspath(model))  # raises with the known names
        _agree(chosen.name, variant, f"model {chosen.name!r}")
        if num_heads is not None:
            msg = ("--num-heads (num_heads=) applies to a checkpoint --model whose width is not a multiple of 64; "
                   f"the published {chosen.name} has 12 heads")
            raise ConfigError(msg)
        spec = _with_options(ModelSpec("variant", variant=chosen.name), None, num_heads)
        return ResolvedModel(spec, None, tuple(chosen.channels), _spec_identity(spec))
    if hasattr(model, "embed") and hasattr(model, "channels"):
        _agree(model.variant, variant, "the SubCell instance")
        identity = {"source": "instance", "variant": model.variant, "checkpoint_sha256": model.checkpoint_sha256,
                    "config": model.config.to_dict(), "n_classifiers": model.n_classifiers,
                    "channels": list(model.channels)}
        return ResolvedModel(None, model, tuple(model.channels), identity)
    msg = f"model must be a variant name, a checkpoint path, a SubCell or a ModelSpec, got {type(model).__name__}"
    raise ConfigError(msg)


def describe_model(model: Any) -> Any:
    """What a ``model`` argument was, as plain JSON for a run's record (a name, a path or a description)."""
    if model is None or isinstance(model, str | os.PathLike):
        return None if model is None else os.fspath(model)
    describe = getattr(model, "describe", None)
    if callable(describe):
        return describe()
    if isinstance(model, ResolvedModel):
        return model.identity
    return type(model).__name__


def is_checkpoint_path(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` means a file, not a variant name: it exists, has a folder part or a .pth/.pt suffix."""
    name = os.fspath(model)
    return Path(name).is_file() or any(sep in name for sep in ("/", "\\")) or name.endswith((".pth", ".pt"))


def checkpoint_spec(encoder: str | os.PathLike[str], classifiers: Any = (), *, variant: str | None = None,
                    num_heads: int | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of checkpoint files, checked now: the files exist, ``variant`` agrees with the name.

    ``variant`` is kept in the spec's options only when given: a variant read off the file name is
    read again wherever the file is loaded (the path keeps its name, symbolic links included).

    Raises
    ------
    CheckpointError
        A file does not exist, or the encoder's name names another variant than ``variant``.
    """
    from .registry import checkpoint_variant

    name = os.fspath(encoder)
    if not Path(name).is_file():
        msg = f"model checkpoint {name} does not exist (give an encoder .pth file or a variant name)"
        raise CheckpointError(msg)
    if isinstance(classifiers, str | os.PathLike):
        classifiers = [classifiers]
    for path in classifiers:
        if not Path(path).is_file():
            msg = f"classifier checkpoint {os.fspath(path)} does not exist"
            raise CheckpointError(msg)
    given = checkpoint_variant(name, variant) if variant is not None else None
    options: dict[str, Any] = {}
    if given is not None:
        options["variant"] = given.name
    if num_heads is not None:
        options["num_heads"] = _heads(num_heads)
    return ModelSpec("checkpoint", encoder_path=os.path.abspath(name),
                     classifier_paths=tuple(os.path.abspath(c) for c in classifiers), options=options)


def _heads(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"num_heads must be a positive integer, got {value!r}"
        raise ConfigError(msg)
    return value


def _agree(have: str | None, variant: str | None, what: str) -> None:
    """``variant`` (when given) must not contradict the variant ``what`` is (when it is one)."""
    from .registry import get_variant

    if variant is None:
        return
    wanted = get_variant(variant)
    if have is not None and get_variant(have) != wanted:
        msg = f"variant={wanted.name} was given, but {what} is {have}"
        raise ConfigError(msg)


def _with_options(spec: ModelSpec, variant: str | None, num_heads: int | None) -> ModelSpec:
    """``spec`` told its variant and heads: in the options of a checkpoint, checked against the others."""
    if variant is None and num_heads is None:
        return spec
    options = dict(spec.options)
    if variant is not None:
        if spec.source == "checkpoint":
            from .registry import checkpoint_variant

            if "variant" in options:
                _agree(options["variant"], variant, "the spec")
            options["variant"] = checkpoint_variant(spec.encoder_path, variant).name
        else:
            _agree(options.get("variant", spec.variant), variant, f"the {spec.source} spec")
    if num_heads is not None:
        options["num_heads"] = _heads(num_heads)
    return replace(spec, options=options)


def _spec_identity(spec: ModelSpec) -> dict[str, Any]:
    """What makes the spec's outputs what they are: the sha256 of its files (a variant is fetched first).

    A checkpoint is known by its content, not its path (a moved file is the same model), plus the
    options that change its outputs (``variant``, ``num_heads``, ``precision``, ...).
    """
    if spec.source == "checkpoint":
        identity = _checkpoint_identity(spec)
        if spec.options:
            identity["options"] = dict(spec.options)
        return identity
    if spec.source == "variant":
        return {**spec.describe(), **_cached_sha256(spec)}
    return spec.describe()


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _cached_sha256(spec: ModelSpec) -> dict[str, Any]:
    """sha256 of a published variant's files, from the cache manifest, after downloading what is missing."""
    from .download import fetch_variant, read_manifest, variant_dir

    # the manifest's digests are the identity; every load checks the files against them
    encoder, classifiers = fetch_variant(spec.variant, n_classifiers=spec.n_classifiers, cache_dir=spec.cache_dir,
                                         verify=False)
    files = read_manifest(variant_dir(spec.variant, spec.cache_dir))["files"]
    return {"checkpoint_sha256": files[encoder.name]["sha256"],
            "classifier_sha256": [files[c.name]["sha256"] for c in classifiers]}


def _checkpoint_identity(spec: ModelSpec) -> dict[str, Any]:
    from .checkpoint import sha256_file

    return {"source": "checkpoint", "checkpoint_sha256": sha256_file(spec.encoder_path),
            "classifier_sha256": [sha256_file(p) for p in spec.classifier_paths]}


def _save_instance(model: SubCell, folder: RunPath) -> ModelSpec:
    """Save a model instance once as checkpoint files that every worker can load (local or a URL)."""
    import torch

    def save(tensors: dict[str, Any], name: str) -> str:
        target = folder / name
        with target.writer() as fh:  # a worker never reads half a file
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, fh)
        return target.url

    encoder = save(model.encoder_state_dict(), "encoder.pth")
    classifiers = tuple(save(head.state_dict(), f"classifier_{k}.pth") for k, head in enumerate(model.classifiers))
    options = {"num_heads": model.config.num_heads, "channels": list(model.channels),
               "precision": model.precision, "probability_mode": model.probability_mode}
    if model.variant:
        options["variant"] = model.variant
    log.info("model instance saved to %s for the workers", folder)
    return ModelSpec("checkpoint", encoder_path=encoder, classifier_paths=classifiers, options=options,
                     storage_options=folder.storage_options)
