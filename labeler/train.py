"""The training entry point for any registered model: build or warm-start, then fit.

Used by the background worker (`labeler.worker`) and the headless simulation
(`labeler.simulate`); it never touches the database or Streamlit.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import SettingError, check_choice, check_float, check_int
from .models import MODELS, CheckpointError, SSLModel, TrainingDiverged, check_finite, load_checkpoint
from .models.base import ProgressFn
from .runspec import RunSpec

log = logging.getLogger(__name__)

__all__ = ["TrainingDiverged", "train_model"]


def get_model_class(model_name: str) -> type[SSLModel]:
    from .runspec import check_model

    return MODELS[check_model(model_name)]


# Allowed range of every model setting, by field name, for all models alike; a setting not
# named here gets the range of its kind in `_default_range`. Whole numbers are sizes, counts and
# steps; 0 in latent_dim means "the default for the image size".
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "latent_dim": (0, 1024),
    "m1_latent_dim": (0, 1024),
    "z_dim": (1, 1024),
    "batch_size": (1, 4096),
    "m1_batch_size": (1, 4096),
    "labeled_batch": (1, 4096),
    "unlabeled_batch": (1, 4096),
    "conv_batch_size": (1, 4096),
    "conv_fake_batch_size": (0, 4096),  # 0: conv_batch_size (the form before it existed)
    "conv_width": (1, 512),
    "gen_width": (1, 512),
    "components": (1, 4096),
    "neighbors": (1, 1000),
    "max_iter": (1, 100_000),
    "head_rounds": (0, 100),
    "head_unlabeled_max": (0, 10_000_000),
    "warmup_steps": (0, 10_000_000),
    "lr": (1e-7, 1.0),
    "m1_lr": (1e-7, 1.0),
    "head_c": (1e-6, 1e6),
    "weight_decay": (0.0, 1.0),
    "dropout": (0.0, 0.99),
    "conv_dropout": (0.0, 0.99),
    "ema": (0.0, 0.9999),  # 1 would never update the average
    "beta1": (0.0, 0.9999),
    "m1_fraction": (0.01, 0.99),
    "m1_fraction_warm": (0.0, 0.99),
    "density_quantile": (0.001, 0.999),
    "progress_every_s": (0.01, 3600.0),
}
LAYER_SIZE = (1, 16_384)
MAX_LAYERS = 32
SETTING_CHOICES = {"arch": ("auto", "mlp", "conv"), "classifier_arch": ("auto", "mlp", "conv")}
_PROBABILITY = re.compile(r"threshold|fraction|quantile|prob|decay|alpha$|momentum|ema|beta|dropout")


def _default_range(name: str, kind: type) -> tuple[float, float]:
    """The range of a setting without an entry in SETTING_RANGES, from its name and kind."""
    if kind is int:
        if re.search(r"batch|width|size|neighbors|components|iter|dim|layers|heads|samples", name):
            return (1, 1_000_000)
        return (0, 1_000_000_000)  # steps, rounds, counts
    if re.search(r"(^|_)lr$", name):
        return (1e-7, 1.0)
    if _PROBABILITY.search(name):
        return (0.0, 1.0)
    if "noise" in name:
        return (0.0, 10.0)
    return (0.0, 1000.0)  # weights, scales, strengths


def make_config(model_name: str, overrides: dict[str, Any] | None = None, base: Any = None):
    """The model's Config dataclass with `overrides` applied; unknown keys, values of the wrong
    kind and values out of range (SETTING_RANGES) are a SettingError saying what is allowed."""
    cls = get_model_class(model_name)
    config = base if base is not None else cls.Config()
    if not overrides:
        return config
    if not dataclasses.is_dataclass(config):
        raise SettingError(f"The {model_name} model takes no settings, got {sorted(overrides)}.")
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise SettingError(
            f"The {model_name} model has no setting {', '.join(unknown)}; known: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(type(config))
    typed = {
        key: parse_setting(model_name, key, value, hints[key], getattr(config, key))
        for key, value in overrides.items()
    }
    return dataclasses.replace(config, **typed)


def parse_setting(model_name: str, key: str, value: Any, hint: Any, default: Any) -> Any:
    """`value` (from a form, the CLI or JSON) as the type of setting `key`, range checked."""
    what = f"The setting {key} of {model_name}"
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if optional and (value is None or str(value).strip().lower() in ("", "none", "null", "default")):
        return None
    if origin in (list, tuple):
        return _parse_layers(what, value, origin, allow_empty=optional or not default)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingError(f"{what} must be true or false, got {value!r}.")
    if hint is int:
        low, high = SETTING_RANGES.get(key) or _default_range(key, int)
        if isinstance(value, bool):
            raise SettingError(f"{what} must be a whole number between {low:g} and {high:g}, got {value!r}.")
        return check_int(what, value, int(low), int(high))
    if hint is float:
        low, high = SETTING_RANGES.get(key) or _default_range(key, float)
        if isinstance(value, bool):
            raise SettingError(f"{what} must be a number between {low:g} and {high:g}, got {value!r}.")
        return check_float(what, value, low, high)
    if hint is str:
        text = str(value).strip()
        if key in SETTING_CHOICES:
            return check_choice(what, text, SETTING_CHOICES[key])
        return text
    return value


def _parse_layers(what: str, value: Any, kind: type, allow_empty: bool) -> list[int] | tuple[int, ...]:
    """Layer sizes from [500, 500], (500, 500), "500,500" or "[500, 500]"."""
    items = value
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        items = [part for part in re.split(r"[,\s]+", text) if part]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    low, high = LAYER_SIZE
    try:
        sizes = [int(item) for item in items]
        if any(isinstance(item, bool) or float(item) != int(item) for item in items):
            raise ValueError
    except (TypeError, ValueError):
        sizes = None
    if (
        sizes is None
        or any(not low <= s <= high for s in sizes)
        or len(sizes) > MAX_LAYERS
        or (not sizes and not allow_empty)
    ):
        raise SettingError(
            f"{what} must be a list of {0 if allow_empty else 1} to {MAX_LAYERS} layer sizes between {low} "
            f"and {high}, such as 500,500{' (an empty list: no hidden layer)' if allow_empty else ''}; "
            f"got {value!r}."
        )
    return tuple(sizes) if kind is tuple else sizes


def load_model(path: str | Path, device: str = "cpu") -> SSLModel:
    """`load_checkpoint`, with every failure a CheckpointError: one written by another version,
    whose stored settings this code does not know, fails inside its Config (TypeError)."""
    try:
        return load_checkpoint(path, device=device)
    except CheckpointError:
        raise
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"The checkpoint {path} was written with model settings this version does not know ({reason})."
        ) from error


def _config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def warm_start_model(
    model_name: str,
    warm_start: str | Path | SSLModel | None,
    input_shape: tuple[int, int, int],
    num_classes: int,
    config: Any,
    device: str,
    notes: list[str],
) -> SSLModel | None:
    """The model to continue from, or None to train fresh: with the reason in `notes`, except
    for a model that never warm-starts (`SSLModel.warm_starts`), whose checkpoint is not read."""
    if warm_start is None or not MODELS[model_name].warm_starts:
        return None
    if isinstance(warm_start, SSLModel):
        model = warm_start
    else:
        from .projects import local_file

        local = local_file(warm_start)  # written by a worker on another machine: fetched from the store
        if local is None:
            notes.append(f"The previous checkpoint {warm_start} is missing; trained from scratch.")
            return None
        try:
            model = load_model(local, device=device)
        except CheckpointError as error:
            notes.append(f"{error} Trained from scratch instead.")
            return None
    if model.name != model_name:
        notes.append(f"The previous model is {model.name}, not {model_name}; trained from scratch.")
        return None
    if tuple(model.input_shape) != tuple(input_shape) or model.num_classes != num_classes:
        notes.append(
            f"The previous model was for {model.num_classes} classes of shape {model.input_shape}, "
            f"now {num_classes} of {tuple(input_shape)}; trained from scratch."
        )
        return None
    if _config_dict(model.config) != _config_dict(config):
        notes.append("The model settings changed since the previous run; trained from scratch.")
        return None
    if model.device != torch.device(device):
        model.move_to(device)
    return model


def train_model(
    spec: RunSpec,
    x: np.ndarray,
    labeled_idx: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    warm_start: str | Path | SSLModel | None = None,
    notes: list[str] | None = None,
) -> SSLModel:
    """Train `spec.model` on the pool `x` (float32 (N, C, H, W) in [0, 1]) with the given labels,
    within `spec`'s budget, its randomness from `spec.seed`.

    Continues from `warm_start` (a checkpoint path or a model) when it is the same model for the
    same input shape, classes and settings; otherwise, or when the checkpoint will not load,
    starts fresh and says why in `notes`. A model that never warm-starts (`SSLModel.warm_starts`:
    M2) always starts fresh, without a note. Raises TrainingCancelled when `progress` returns True,
    TrainingDiverged when a loss is not finite, SettingError when there are no usable labels.
    """
    notes = notes if notes is not None else []
    labeled_idx = np.asarray(labeled_idx, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labeled_idx) != len(labels):
        raise ValueError(f"{len(labeled_idx)} labeled indices but {len(labels)} labels.")
    if len(labeled_idx) == 0:
        raise SettingError("There are no labels yet: label a few images, then train.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise SettingError(f"Labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}.")

    cls = MODELS[spec.model]
    cfg = spec.model_config()
    input_shape = tuple(int(s) for s in x.shape[1:])
    model = warm_start_model(spec.model, warm_start, input_shape, num_classes, cfg, device, notes)
    if model is None:
        model = cls(input_shape, num_classes, config=cfg, device=device, seed=spec.seed)
    # Fresh randomness per call, reproducible per seed, also when warm-starting; the model's own
    # generators, so nothing another thread does (a checkpoint loaded for a page) changes them.
    model.reseed(spec.seed)
    losses = model.fit(x, labeled_idx, labels, spec.budget(), progress=progress)
    check_finite(losses or {})
    for note in notes:
        log.info("%s", note)
    return model
