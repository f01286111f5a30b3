"""The model registry: names used by the CLI, the UI and the database -> model classes.

Entries are imported on first use, and so is the shared interface (`base`, which imports torch):
importing the registry, e.g. for the CLI's list of model names, loads neither.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import (
        Budget,
        CheckpointError,
        Progress,
        SSLModel,
        TrainingCancelled,
        TrainingDiverged,
        check_finite,
        load_checkpoint,
        save_checkpoint,
    )

__all__ = [
    "DESCRIPTIONS",
    "MODELS",
    "Budget",
    "CheckpointError",
    "Progress",
    "SSLModel",
    "TrainingCancelled",
    "TrainingDiverged",
    "check_finite",
    "load_checkpoint",
    "save_checkpoint",
]
_FROM_BASE = set(__all__) - {"DESCRIPTIONS", "MODELS"}  # loaded from base on first use


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        return getattr(importlib.import_module("labeler.models.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ENTRIES: dict[str, tuple[str, str, str]] = {
    # name: (module, class, one-line description for the UI)
    "m1": ("labeler.models.m1", "M1", "M1: VAE features + a linear classifier (Kingma et al. 2014)"),
    "m2": (
        "labeler.models.m2",
        "M2",
        "M2: label as a latent variable, q(y|x) classifies (Kingma et al. 2014)",
    ),
    "m1m2": ("labeler.models.m1m2", "M1M2", "M1+M2: M2 on the latent codes of M1 (Kingma et al. 2014)"),
    "sslgan": (
        "labeler.models.sslgan",
        "SSLGAN",
        "SSL-GAN: K-class discriminator, feature matching (Salimans et al. 2016)",
    ),
    "badgan": (
        "labeler.models.badgan",
        "BadGAN",
        "Bad GAN: complement generator + entropy term (Dai et al. 2017)",
    ),
    "supervised": (
        "labeler.models.baselines",
        "Supervised",
        "Baseline: the classifier network on labeled images only",
    ),
    "selftrain": (
        "labeler.models.baselines",
        "SelfTrain",
        "Baseline: self-training with confident pseudo-labels",
    ),
    "labelspread": (
        "labeler.models.baselines",
        "LabelSpread",
        "Baseline: label spreading on a PCA embedding (scikit-learn)",
    ),
    "aae": (
        "labeler.models.aae",
        "AAE",
        "AAE: adversarial autoencoder, categorical and Gaussian codes (Makhzani et al. 2015)",
    ),
    "pixelgan": (
        "labeler.models.pixelgan",
        "PixelGAN",
        "PixelGAN AE: categorical code, tiny PixelCNN decoder (Makhzani and Frey 2017)",
    ),
    "mtc": (
        "labeler.models.mtc",
        "MTC",
        "MTC: contractive autoencoder tangents + tangent propagation (Rifai et al. 2011)",
    ),
    "tsvm": (
        "labeler.models.tsvm",
        "TSVM",
        "Baseline: transductive linear SVM on a PCA embedding (Joachims 1999)",
    ),
}


class _Registry(Mapping[str, type]):
    def __getitem__(self, name: str) -> type[SSLModel]:
        module, cls, _ = _ENTRIES[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_ENTRIES)

    def __len__(self) -> int:
        return len(_ENTRIES)


MODELS: Mapping[str, type[SSLModel]] = _Registry()
DESCRIPTIONS = {name: entry[2] for name, entry in _ENTRIES.items()}
