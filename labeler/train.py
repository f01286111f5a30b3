"""The training entry point for any registered model: build or warm-start, then fit.

Used by the background worker (`labeler.trainer`) and the headless simulation
(`labeler.simulate`); it never touches the database or Streamlit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import SettingError
from .models import MODELS, Budget, CheckpointError, SSLModel, load_checkpoint
from .models.base import ProgressFn

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def get_model_class(model_name: str) -> type[SSLModel]:
    if model_name not in MODELS:
        raise SettingError(f"Unknown model {model_name!r}: choose one of {', '.join(MODELS)}.")
    return MODELS[model_name]


def make_config(model_name: str, overrides: dict[str, Any] | None = None, base: Any = None):
    """The model's Config dataclass with `overrides` applied; unknown keys are an error."""
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
    typed = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        try:
            # Keep the dataclass' types: "0.001" from a form or the CLI becomes a float.
            if isinstance(current, bool):
                typed[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(current, int) and not isinstance(value, bool):
                typed[key] = int(value)
            elif isinstance(current, float):
                typed[key] = float(value)
            else:
                typed[key] = value
        except (TypeError, ValueError):
            raise SettingError(f"The setting {key} of {model_name} must look like {current!r}, got {value!r}.") from None
    return dataclasses.replace(config, **typed)


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
    """The model to continue from, or None (with the reason in `notes`) to train fresh."""
    if warm_start is None:
        return None
    if isinstance(warm_start, SSLModel):
        model = warm_start
    else:
        if not Path(warm_start).exists():
            notes.append(f"The previous checkpoint {warm_start} is missing; trained from scratch.")
            return None
        try:
            model = load_checkpoint(warm_start, device=device)
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
    model_name: str,
    x: np.ndarray,
    labeled_idx: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    budget_s: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    warm_start: str | Path | SSLModel | None = None,
    config: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> SSLModel:
    """Train `model_name` on the pool `x` (float32 (N, C, H, W) in [0, 1]) with the given labels.

    Continues from `warm_start` (a checkpoint path or a model) when it is the same model for the
    same input shape, classes and settings; otherwise, or when the checkpoint will not load,
    starts fresh and says why in `notes`. Raises TrainingCancelled when `progress` returns True,
    TrainingDiverged when a loss is not finite, SettingError for bad settings.
    """
    notes = notes if notes is not None else []
    if budget_s is None and steps is None:
        raise SettingError("Give a training budget: a number of seconds or of steps.")
    if budget_s is not None and not (budget_s > 0 and math.isfinite(budget_s)):
        raise SettingError(f"The training time must be a positive number of seconds, got {budget_s!r}.")
    if steps is not None and int(steps) < 1:
        raise SettingError(f"The number of training steps must be at least 1, got {steps!r}.")
    labeled_idx = np.asarray(labeled_idx, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labeled_idx) != len(labels):
        raise ValueError(f"{len(labeled_idx)} labeled indices but {len(labels)} labels.")
    if len(labeled_idx) == 0:
        raise SettingError("There are no labels yet: label a few images, then train.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise SettingError(f"Labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}.")

    cls = get_model_class(model_name)
    cfg = make_config(model_name, config)
    input_shape = tuple(int(s) for s in x.shape[1:])
    model = warm_start_model(model_name, warm_start, input_shape, num_classes, cfg, device, notes)
    if model is None:
        model = cls(input_shape, num_classes, config=cfg, device=device, seed=seed)
    # Fresh randomness per call, reproducible per seed, also when warm-starting.
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    losses = model.fit(x, labeled_idx, labels, Budget(steps=steps, seconds=budget_s), progress=progress)
    bad = {k: v for k, v in (losses or {}).items() if not math.isfinite(float(v))}
    if bad:
        raise TrainingDiverged(
            f"Training diverged ({', '.join(f'{k}={v}' for k, v in bad.items())}): lower the learning rate or try another model."
        )
    for note in notes:
        log.info("%s", note)
    return model
