"""The one small interface every model family implements, and checkpoint save/load.

A model sees numpy arrays only: `x` is the whole pool, float32 of shape (N, C, H, W) in [0, 1];
`labeled_idx` indexes the labeled rows of `x` and `labels` gives their classes; every other row
is unlabeled. It never sees the database, Streamlit or the test split.

Checkpoints hold only tensors and plain Python values (no pickled code), so they load with
`torch.load(..., weights_only=True)` and a crafted file cannot run code.

Every random number a model uses comes from its own generators (`Randomness`): initial weights,
batches, noise, dropout and augmentations. Nothing calls `torch.manual_seed` or
`np.random.seed`: those reseed state shared by every thread, so loading a checkpoint on the UI
thread would change a run training on the worker thread.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


class TrainingCancelled(Exception):
    """Raised inside `fit` when the progress callback asks to stop."""


class TrainingDiverged(FloatingPointError):
    """A loss or a prediction became NaN or infinite. `str()` is the one message a user sees;
    `detail` says where, for the log."""

    MESSAGE = (
        "Training diverged (a loss became NaN or infinite): lower the learning rate in the model "
        "settings, or choose another model."
    )

    def __init__(self, detail: str = ""):
        super().__init__(self.MESSAGE)
        self.detail = detail


def check_finite(value: Any, step: int | None = None, what: str = "loss") -> None:
    """Raise TrainingDiverged unless `value` (a tensor, an array, a number, or a dict of them,
    e.g. a progress report's losses) is finite everywhere: the one divergence check."""
    items = value.items() if isinstance(value, dict) else [(what, value)]
    bad = []
    for name, v in items:
        if isinstance(v, torch.Tensor):
            finite = bool(torch.isfinite(v.detach()).all())
        else:
            finite = bool(np.all(np.isfinite(np.asarray(v, dtype=np.float64))))
        if not finite:
            bad.append(name)
    if bad:
        at = f" at step {step}" if step is not None else ""
        raise TrainingDiverged(f"{', '.join(bad)} not finite{at}")


@dataclass
class Progress:
    """A snapshot sent to the progress callback during `fit`."""

    step: int
    seconds: float
    fraction: float  # 0..1 of the step or time budget
    losses: dict[str, float]


ProgressFn = Callable[[Progress], bool | None]  # return True to cancel


class Budget:
    """A step budget, a time budget, or both (whichever ends first)."""

    def __init__(self, steps: int | None = None, seconds: float | None = None):
        if steps is None and seconds is None:
            raise ValueError("Give a step budget, a time budget, or both.")
        self.steps, self.seconds = steps, seconds
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fraction(self, step: int) -> float:
        parts = []
        if self.steps:
            parts.append(step / self.steps)
        if self.seconds:
            parts.append(self.elapsed() / self.seconds)
        return min(1.0, max(parts) if parts else 1.0)

    def done(self, step: int) -> bool:
        return (self.steps is not None and step >= self.steps) or (
            self.seconds is not None and self.elapsed() >= self.seconds
        )


class Randomness:
    """One model's random numbers: a torch generator on the model's device and a numpy
    generator, both seeded from the run's seed. Layers that draw (noise, dropout) hold a
    reference to it, so `move_to` swaps the torch generator under them."""

    def __init__(self, seed: int, device: str | torch.device):
        self.torch = torch.Generator(device=torch.device(device))
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.torch.manual_seed(int(seed))
        self.numpy = np.random.default_rng(int(seed))

    def move_to(self, device: str | torch.device) -> None:
        # A generator draws on its own device only; the new one continues the old one's stream.
        seed = int(torch.randint(0, 2**62, (1,), generator=self.torch, device=self.torch.device))
        self.torch = torch.Generator(device=torch.device(device))
        self.torch.manual_seed(seed)

    def __deepcopy__(self, memo: dict) -> Randomness:
        return self  # an EMA teacher or an export copied from a network draws from its model


class Stochastic(nn.Module):
    """Base of layers that draw random numbers in training mode, from their model's generator
    (attached by `SSLModel.__init__`; a layer used outside a model gets one with `attach`)."""

    random: Randomness | None = None
    __jit_ignored_attributes__: ClassVar[list[str]] = ["random"]  # exports run in eval mode and never draw

    @torch.jit.unused
    def generator(self) -> torch.Generator:
        if self.random is None:
            raise RuntimeError(f"{type(self).__name__} draws random numbers but belongs to no model.")
        return self.random.torch


class Dropout(Stochastic):
    """nn.Dropout with the mask drawn from the model's generator (nn.Dropout takes none)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            return self._drop(x)
        return x

    @torch.jit.unused
    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # uniform_ in the input's own memory layout (channels-last included): aten's bernoulli_
        # took a sixth of the conv discriminator's step on one CPU core (shapes, 32x32).
        keep = torch.empty_like(x).uniform_(generator=self.generator()) >= self.p
        return x * keep / (1.0 - self.p)


def attach(modules: Any, random: Randomness) -> Any:
    """Point every Stochastic layer inside `modules` (one nn.Module or several) at `random`;
    returns `modules`."""
    for module in [modules] if isinstance(modules, nn.Module) else modules:
        for layer in module.modules():
            if isinstance(layer, Stochastic):
                layer.random = random
    return modules


# Layers whose parameters PyTorch initialises without random numbers.
_DETERMINISTIC = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Redraw `module`'s initial weights from `generator`, with PyTorch's default distributions
    (kaiming-uniform weights, uniform biases of +-1/sqrt(fan_in)): construction draws from the
    global generator, which other threads share. A layer of another kind with its own
    parameters must define `init_parameters(generator)`, or this raises. Returns `module`."""
    for layer in module.modules():
        own = list(layer.parameters(recurse=False))
        if hasattr(layer, "init_parameters"):
            layer.init_parameters(generator)
        elif isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=generator)
            if layer.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
                bound = 1 / fan_in**0.5 if fan_in > 0 else 0
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        elif isinstance(layer, nn.Embedding):
            nn.init.normal_(layer.weight, generator=generator)
        elif own and not isinstance(layer, _DETERMINISTIC):
            raise TypeError(f"{type(layer).__name__} has no initialisation from the model's generator.")
    return module


def adam(
    params,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    decoupled: bool = False,
):
    """Adam (AdamW with `decoupled`) with PyTorch's fused kernel: one kernel updates every
    tensor, where the default loops over them in Python. Measured on 2 CPU cores: an update of
    a 64-1000-500-250-250-250-10 MLP takes 0.7 ms fused, 1.8 ms with `foreach`, 3.7 ms with the
    default; whole training steps on digits take 10 to 20 % less time for m1, m1m2, aae and
    pixelgan, and for the other models the gain is within the machine's noise (README,
    Benchmarks). The same arithmetic; only the order of floating-point operations differs."""
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    return kind(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


def decay_lr(optimizers, lr: float, budget: Budget, step: int, decay: float) -> None:
    """With `decay` > 0, set every group's rate to `lr`, falling linearly to 0 over the last
    `decay` of the budget (the SSL-GAN authors' schedule; M2's too); `decay` <= 0: leave it."""
    if decay <= 0:
        return
    factor = min(1.0, (1.0 - budget.fraction(step)) / decay)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * factor


class SSLModel:
    """Base of every model. Subclasses set `name`, `Config` and implement the abstract methods.

    Subclasses keep their learnable state in `self.modules` (a dict of nn.Module) and any
    extra arrays in `self.extra_state()`; `state()` / `from_state()` then work unchanged.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    # Whether `sample_images` can show "what each class looks like" (conditional generator).
    conditional_samples: ClassVar[bool] = False
    # Settings added after checkpoints were written, with the value such a checkpoint was
    # trained with (it lacks the key): an old checkpoint rebuilds the model it came from.
    legacy_config: ClassVar[dict[str, Any]] = {}
    # False: every training run builds the model afresh instead of continuing from the last
    # run's weights (train.warm_start_model), because continuing measured worse (see M2).
    warm_starts: ClassVar[bool] = True

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        config: Any = None,
        device: str = "cpu",
        seed: int = 0,
    ):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.config = config if config is not None else self.Config()
        self.device = torch.device(device)
        self.seed = seed
        self.random = Randomness(seed, self.device)
        self.modules: dict[str, torch.nn.Module] = {}
        # Optimizers that persist across fits; their moments are saved with the weights, so a
        # warm start from a checkpoint continues the same optimisation.
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.build()
        attach(self.modules.values(), self.random)

    @property
    def generator(self) -> torch.Generator:
        """The model's torch generator, on its device: every torch draw of the model uses it."""
        return self.random.torch

    @property
    def rng(self) -> np.random.Generator:
        """The model's numpy generator."""
        return self.random.numpy

    def reseed(self, seed: int) -> None:
        """Restart the model's generators from `seed` (before each fit: a result depends on the
        run's seed alone, also when warm-starting)."""
        self.random.reseed(seed)

    def initialised(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` with its initial weights drawn from the model's generator (`build` calls it
        on each network it creates, after moving it to the device, before copying it)."""
        return init_parameters(module, self.generator)

    # -- to implement ---------------------------------------------------------------------

    def build(self) -> None:
        """Create `self.modules` on `self.device` from `self.config`."""
        raise NotImplementedError

    def fit(
        self,
        x: np.ndarray,
        labeled_idx: np.ndarray,
        labels: np.ndarray,
        budget: Budget,
        progress: ProgressFn | None = None,
    ) -> dict[str, float]:
        """Train (continuing from the current weights) until the budget ends; return final losses.

        Calls `progress` every few steps and raises TrainingCancelled when it returns True.
        """
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, K) class probabilities, rows summing to one."""
        raise NotImplementedError

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, D) latent codes (VAE means, or a discriminator feature)."""
        raise NotImplementedError

    # -- optional -------------------------------------------------------------------------

    def predict_and_embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`predict_proba(x)` and `embed(x)`; a model whose classifier gives both in one pass
        overrides it (the GANs), so a round that needs both reads the images once."""
        return self.predict_proba(x), self.embed(x)

    def mc_proba(self, x: np.ndarray, samples: int = 8) -> np.ndarray:
        """(S, N, K) probabilities from S stochastic passes (for BALD). Default: S copies."""
        p = self.predict_proba(x)
        return np.repeat(p[None], samples, axis=0)

    def sample_images(self, n_per_class: int = 8, seed: int = 0) -> np.ndarray | None:
        """Generated images in [0, 1]: (K, n, C, H, W) for conditional models, (1, n, C, H, W)
        for unconditional ones, or None when the model cannot generate."""
        return None

    def classifier_module(self) -> torch.nn.Module:
        """A self-contained nn.Module mapping (B, C, H, W) in [0, 1] to (B, K) probabilities,
        scriptable with torch.jit.script or traceable, for the standalone export."""
        raise NotImplementedError

    @classmethod
    def checkpoint_config(cls, config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """The settings a checkpoint's model is rebuilt with, from its saved `config` (with
        `legacy_config` filled in) and its whole `state`. Subclasses pin here what a setting such
        as "auto" resolved to when the checkpoint was trained, if its meaning has changed since."""
        return config

    def extra_state(self) -> dict[str, Any]:
        """Tensors and plain values beyond the modules' weights (e.g. a fitted linear head)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -- shared ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": "labeler-checkpoint-1",
            "name": self.name,
            "config": dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {},
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "modules": {key: module.state_dict() for key, module in self.modules.items()},
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
            "extra": self.extra_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        saved = state.get("optimizers", {})
        for key, opt in self.optimizers.items():
            if key in saved:  # checkpoints from before optimizer state was kept start fresh moments
                _load_optimizer(opt, saved[key])
        self.load_extra_state(state.get("extra", {}))

    def move_to(self, device: str | torch.device) -> None:
        """Move the weights and the optimizers' moments to `device`."""
        self.device = torch.device(device)
        self.random.move_to(self.device)
        for module in self.modules.values():
            module.to(self.device)
        for opt in self.optimizers.values():
            opt.load_state_dict(opt.state_dict())  # load_state_dict casts the moments to the params' device


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load `saved` moments into `opt`, keeping `opt`'s own kernel choice (fused, foreach): a
    state dict brings its optimizer's flags along, so a checkpoint from before the fused kernel
    would otherwise switch it off. Loaded twice so the step counters land where the kernel
    wants them (on the parameters' device when fused)."""
    flags = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in opt.param_groups]
    opt.load_state_dict(saved)
    if any(group.get(k) != v for group, kept in zip(opt.param_groups, flags) for k, v in kept.items()):
        for group, kept in zip(opt.param_groups, flags):
            group.update(kept)
        opt.load_state_dict(opt.state_dict())


def uniform_proba(n: int, num_classes: int) -> np.ndarray:
    """(n, K) uniform probabilities: the honest answer of a model that saw no labels."""
    return np.full((n, num_classes), 1.0 / num_classes, dtype=np.float32)


class PredictsWithClassifier:
    """What the models that predict with one logits network share; mix it in before SSLModel.

    Predictions and the export use `modules["teacher"]`, the EMA teacher that a model with the
    consistency term keeps, else the net's own classifier (`_own_classifier`); a model that
    has seen no labels predicts uniform probabilities. `labels_seen` and `steps_done` go with
    a checkpoint under the keys the first checkpoints used (a checkpoint without them: zero).
    """

    modules: dict[str, nn.Module]
    num_classes: int
    device: torch.device
    labels_seen: int = 0  # labels in the last fit: none means uniform predictions
    steps_done: int = 0  # steps of every fit so far (a warm start continues the count)
    # `embed` is the classifier's body (the first of its two parts), so `predict_and_embed`
    # reads the images once.
    embed_is_body: bool = False

    def _own_classifier(self) -> nn.Module:
        """The net's own q(y|x), (B, C, H, W) -> (B, K) logits, in eval mode."""
        return self.modules["net"].eval().classifier()

    def _classifier(self) -> nn.Module:
        """q(y|x) as used for predictions: the EMA teacher with consistency, else the net's own."""
        if "teacher" in self.modules:
            return self.modules["teacher"].eval()
        return self._own_classifier()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.labels_seen == 0:
            return uniform_proba(len(x), self.num_classes)
        classifier = self._classifier()
        return batched(lambda xb: torch.softmax(classifier(xb), 1), x, self.device)

    def predict_and_embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pass for both where `embed_is_body`: the classifier (body, head) gives its
        body's features and the head's softmax side by side; otherwise two passes."""
        if not (self.embed_is_body and self.labels_seen and len(x)):
            return super().predict_and_embed(x)  # type: ignore[misc]
        body, head = self._classifier()

        def logits_and_features(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = body(xb)  # (B, D)
            return head(features), features

        return batched_proba_and_features(logits_and_features, x, self.device, self.num_classes)

    def classifier_module(self) -> nn.Module:
        from . import nets  # nets imports this module

        if self.labels_seen == 0:
            return nets.Uniform(self.num_classes)
        return nets.SoftmaxOf(copy.deepcopy(self._classifier()).cpu().eval()).eval()

    def extra_state(self) -> dict[str, Any]:
        return {"labels_seen": self.labels_seen, "steps_done": self.steps_done}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.labels_seen = int(state.get("labels_seen", 0))
        self.steps_done = int(state.get("steps_done", 0))


DISK_FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def save_checkpoint(model: SSLModel, path: str | Path) -> Path:
    """Write atomically: a crash mid-write never leaves a half checkpoint under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        # Our own handle, closed on the way out: given the path, PyTorch's writer kept the file
        # open from the exception's traceback, so its unlink freed no space and the disk stayed
        # full until the process ended (the run's failure could not be written; exploratory).
        with open(tmp, "wb") as file:
            torch.save(model.state(), file)
        tmp.replace(path)
    except BaseException as error:
        full = isinstance(error, Exception) and shutil.disk_usage(path.parent).free < DISK_FULL_BYTES
        tmp.unlink(missing_ok=True)  # a half file left behind could keep a full disk full
        if full:  # measured before the half file's space came back
            # PyTorch says "unexpected pos 64 vs 0" (an exploratory session): say what it means.
            raise OSError(
                errno.ENOSPC, "the disk is full: the checkpoint could not be written", str(path)
            ) from error
        raise
    return path


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message says why."""


def load_checkpoint(path: str | Path, device: str = "cpu") -> SSLModel:
    """Rebuild a model from a checkpoint written by `save_checkpoint`, without unpickling code."""
    from . import MODELS

    try:
        state = torch.load(Path(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        # PyTorch's own message suggests weights_only=False, which would run the file's code.
        raise CheckpointError(
            f"Cannot load the checkpoint {path}: it is corrupt, or holds Python objects other than "
            "tensors, which could run code, so it was refused."
        ) from error
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"Cannot load the checkpoint {path}: {reason}") from error
    if not isinstance(state, dict) or state.get("format") != "labeler-checkpoint-1":
        raise CheckpointError(f"{path} is not a labeler checkpoint.")
    cls = MODELS.get(state["name"])
    if cls is None:
        raise CheckpointError(f"{path} holds an unknown model {state['name']!r}.")
    saved = cls.checkpoint_config({**cls.legacy_config, **state["config"]}, state) if state["config"] else {}
    config = cls.Config(**saved) if saved else cls.Config()
    model = cls(tuple(state["input_shape"]), state["num_classes"], config=config, device=device)
    try:
        model.load_state(state)
    except Exception as error:
        raise CheckpointError(f"The checkpoint {path} does not fit its model: {error}") from error
    return model


def to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)


@torch.no_grad()
def batched(
    fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, device: torch.device, batch: int = 1024
) -> np.ndarray:
    """Apply `fn` to `x` in batches and return a numpy array."""
    outs = [fn(to_tensor(x[i : i + batch], device)).float().cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)


def batched_proba_and_features(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: np.ndarray,
    device: torch.device,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass of `fn`, (B, C, H, W) -> logits (B, K) and features (B, D), over non-empty `x` in
    batches: the softmax (N, K) and the features (N, D) side by side."""

    def both(xb: torch.Tensor) -> torch.Tensor:
        logits, features = fn(xb)
        return torch.cat([torch.softmax(logits, 1), features], 1)  # (B, K + D)

    out = batched(both, x, device)
    return out[:, :num_classes], out[:, num_classes:]
