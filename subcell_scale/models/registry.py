"""The eight published SubCell variants: channel order, file names, URLs and the 31 classes.

Everything here is plain data (no torch), so the CLI can list variants instantly. The channel order of
a variant is always the subsequence of (microtubules, er, nucleus, protein) that the model was trained
with; it is the order of dimension 1 of the input tensor.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .._settings import BASE_URL
from ..errors import CheckpointError, ConfigError

# Model slots, in the order the reference stacks them (HPA colours r, y, b, g).
MICROTUBULES = "microtubules"
ER = "er"
NUCLEUS = "nucleus"
PROTEIN = "protein"
SLOTS: tuple[str, ...] = (MICROTUBULES, ER, NUCLEUS, PROTEIN)
SLOT_LETTERS = {MICROTUBULES: "r", ER: "y", NUCLEUS: "b", PROTEIN: "g"}

N_CLASSIFIER_SEEDS = 10
"""Each variant ships ten MLP classifiers (seeds 0..9)."""

# Channel prefix of the published file names -> channel slots.
_PREFIXES: dict[str, tuple[str, ...]] = {
    "all_channels": (MICROTUBULES, ER, NUCLEUS, PROTEIN),
    "MT-DNA-Protein": (MICROTUBULES, NUCLEUS, PROTEIN),
    "ER-DNA-Protein": (ER, NUCLEUS, PROTEIN),
    "DNA-Protein": (NUCLEUS, PROTEIN),
}
# Model family of the published file names -> (short family name used by the classifiers, reference model_type).
_FAMILIES: dict[str, tuple[str, str]] = {
    "ViT-ProtS-Pool": ("ViT", "vit_supcon_model"),
    "MAE-CellS-ProtS-Pool": ("MAE", "mae_contrast_supcon_model"),
}


@dataclass(frozen=True)
class Variant:
    """One published SubCell model.

    Attributes
    ----------
    name
        Published name, e.g. ``"all_channels_MAE-CellS-ProtS-Pool"`` (also the cache folder name).
    channels
        Model slots in input order.
    family
        ``"ViT"`` or ``"MAE"``; the MAE models were pre-trained with masked auto-encoding.
    model_type
        The reference tool's ``model_type`` for the same weights.
    """

    name: str
    channels: tuple[str, ...]
    family: str
    model_type: str

    @property
    def prefix(self) -> str:
        """Channel part of the published name (``"all_channels"``, ``"DNA-Protein"``, ...)."""
        return self.name.split("_ViT-")[0].split("_MAE-")[0]

    @property
    def channel_letters(self) -> str:
        """The reference tool's ``model_channels`` string (``"rybg"``, ``"bg"``, ...)."""
        return "".join(SLOT_LETTERS[c] for c in self.channels)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def encoder_filename(self) -> str:
        return f"{self.name}.pth"

    def classifier_filename(self, seed: int) -> str:
        """File name of the MLP classifier trained with ``seed`` (0..9)."""
        return f"{self._classifier_stem}_seed_{seed}.pth"

    @property
    def _classifier_stem(self) -> str:
        return f"{self.prefix}_{self.family}_MLP_classifier"

    def encoder_url(self, base_url: str = BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.encoder_filename}"

    def classifier_url(self, seed: int, base_url: str = BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self._classifier_stem}/{self.classifier_filename(seed)}"


VARIANTS: dict[str, Variant] = {
    f"{prefix}_{family}": Variant(f"{prefix}_{family}", channels, short, model_type)
    for prefix, channels in _PREFIXES.items()
    for family, (short, model_type) in _FAMILIES.items()
}
"""All eight published variants by name."""

DEFAULT_VARIANT = "all_channels_MAE-CellS-ProtS-Pool"


def get_variant(name: str | Variant) -> Variant:
    """Look a variant up by its published name (case-insensitive) or return it unchanged.

    Raises
    ------
    ConfigError
        Unknown name; the message lists the known ones.
    """
    if isinstance(name, Variant):
        return name
    if name in VARIANTS:
        return VARIANTS[name]
    folded = {k.lower(): v for k, v in VARIANTS.items()}
    if isinstance(name, str) and name.lower() in folded:
        return folded[name.lower()]
    msg = f"unknown SubCell variant {name!r}; known variants: {', '.join(VARIANTS)}"
    raise ConfigError(msg)


def default_channels(num_channels: int) -> tuple[str, ...]:
    """Slots of a model with ``num_channels`` inputs when no variant says otherwise.

    Three channels are ambiguous: the microtubule and the ER variants both take three, and guessing
    one would make a run fail later on a plate that lacks that channel (or embed the wrong channel),
    so the caller must name the variant or the channels.

    Raises
    ------
    ConfigError
        Three channels (the message names both variants), or a count no SubCell model has.
    """
    if num_channels == 3:
        raise ConfigError(f"a 3-channel SubCell model is {three_channel_choice()}; name the variant or the channels")
    table = {4: SLOTS, 2: (NUCLEUS, PROTEIN), 1: (PROTEIN,)}
    if num_channels not in table:
        msg = f"a SubCell model takes 1 to 4 channels, not {num_channels}"
        raise ConfigError(msg)
    return table[num_channels]


def three_channel_choice() -> str:
    """``"MT-DNA-Protein (microtubules, nucleus, protein) or ER-DNA-Protein (er, nucleus, protein)"``."""
    return " or ".join(f"{prefix} ({', '.join(slots)})" for prefix, slots in _PREFIXES.items() if len(slots) == 3)


def _fold(text: str) -> str:
    """Lower case with every separator (``-``, ``_``, ``.``, space) made ``_``: how names are compared."""
    return re.sub(r"[-_.\s]+", "_", text.lower())


# Every name that identifies a variant: its own name (the encoder file's stem) and its classifiers' stem.
_NAMES: tuple[tuple[str, Variant], ...] = tuple(
    (_fold(name), v) for v in VARIANTS.values() for name in (v.name, v._classifier_stem))
# The reference tool's folders: models/<channel letters>/<model_type>/encoder.pth
_PORTABLE: dict[tuple[str, str], Variant] = {(v.channel_letters, v.model_type): v for v in VARIANTS.values()}


def variants_named_in(text: str) -> list[Variant]:
    """The published variants whose name or file name occurs in ``text`` (case and separators ignored).

    A name found only inside a longer one is not counted: ``MT-DNA-Protein_ViT-ProtS-Pool`` holds
    ``DNA-Protein_ViT-ProtS-Pool`` but names the microtubule variant only.
    """
    folded = _fold(text)
    spans = []
    for name, variant in _NAMES:
        start = folded.find(name)
        while start >= 0:
            spans.append((start, start + len(name), variant))
            start = folded.find(name, start + 1)
    kept = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0])
                                        for o in spans)]
    found: list[Variant] = []
    for _, _, variant in sorted(kept, key=lambda s: s[0]):
        if variant not in found:
            found.append(variant)
    return found


def variant_from_path(path: str | os.PathLike[str]) -> Variant | None:
    """The published variant a weights file's name says it is, or None when it says nothing.

    The file name is read first, then its folder's name (the model cache keeps
    ``<variant>/<variant>.pth``), then the reference tool's layout ``<rybg|rbg|ybg|bg>/<model_type>/``.

    Raises
    ------
    CheckpointError
        The file name (or folder name) names more than one variant.
    """
    path = Path(path)
    for part in (path.name, path.parent.name):
        found = variants_named_in(part)
        if len(found) > 1:
            msg = (f"{path}: the name {part!r} names several SubCell variants ({', '.join(v.name for v in found)}); "
                   "say which with variant= (--variant on the command line)")
            raise CheckpointError(msg)
        if found:
            return found[0]
    return _PORTABLE.get((path.parent.parent.name.lower(), path.parent.name.lower()))


def checkpoint_variant(path: str | os.PathLike[str], variant: str | Variant | None = None) -> Variant | None:
    """Which published variant the checkpoint ``path`` is: ``variant`` when given, else what its name says.

    Raises
    ------
    CheckpointError
        ``variant`` and the file's name name different variants: one of them is wrong, and using
        either silently could embed the wrong channels.
    ConfigError
        ``variant`` is not a published variant.
    """
    given = get_variant(variant) if variant is not None else None
    named = variant_from_path(path)
    if given is not None and named is not None and given != named:
        msg = (f"{path}: its name says {named.name} but variant={given.name} was given; rename the file "
               f"(or copy it under a neutral name) if it is {given.name}, or drop variant= (--variant) if it is "
               f"{named.name}")
        raise CheckpointError(msg)
    return given or named


CLASS_NAMES: tuple[str, ...] = (
    "Actin filaments",
    "Aggresome",
    "Cell Junctions",
    "Centriolar satellite",
    "Centrosome",
    "Cytokinetic bridge",
    "Cytoplasmic bodies",
    "Cytosol",
    "Endoplasmic reticulum",
    "Endosomes",
    "Focal adhesion sites",
    "Golgi apparatus",
    "Intermediate filaments",
    "Lipid droplets",
    "Lysosomes",
    "Microtubules",
    "Midbody",
    "Mitochondria",
    "Mitotic chromosome",
    "Mitotic spindle",
    "Nuclear bodies",
    "Nuclear membrane",
    "Nuclear speckles",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nucleoli rim",
    "Nucleoplasm",
    "Peroxisomes",
    "Plasma membrane",
    "Vesicles",
    "Negative",
)
"""The 31 localization classes in classifier output order (index 30 is "Negative")."""

CLASS_COLORS: tuple[str, ...] = (
    "#ffeb3b", "#76ff03", "#ff6d00", "#eb30c1", "#faadd4", "#795548", "#64ffda", "#00e676",
    "#03a9f4", "#4caf50", "#ffc107", "#00bcd4", "#cddc39", "#212121", "#8bc34a", "#ff9800",
    "#ae8c08", "#ffff00", "#31b61f", "#9e9e9e", "#2196f3", "#e91e63", "#3f51b5", "#9c27b0",
    "#673ab7", "#d3a50b", "#f44336", "#009688", "#ff9e80", "#242e4b", "#000000",
)  # fmt: skip
"""The reference tool's colour for each class, same order as :data:`CLASS_NAMES`."""

NUM_CLASSES = len(CLASS_NAMES)
