"""What one training run is asked to do: `RunSpec`, checked once, where the settings enter.

Settings enter in three places: the Train page's form, the command line (`simulate`,
`benchmark`) and a queued run's row in the database (the run's settings over the project's).
Each builds a RunSpec, and a RunSpec that exists is valid: its one set of limits (`LIMITS`) and
its one message per error live here, and nothing downstream (training, the round, the worker)
checks them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import SettingError, check_choice, check_float, check_int

# (what the message calls it, lowest, highest)
LIMITS: dict[str, tuple[str, float, float]] = {
    "budget_s": ("The training time (seconds)", 1, 24 * 3600),
    "steps": ("The step limit", 1, 10_000_000),
    "seed": ("The seed", 0, 2**31 - 1),
    "mc_samples": ("The number of BALD samples", 2, 100),
    "diverse_batch": ("The diverse batch size", 0, 1000),
    "threads": ("The number of CPU threads", 1, 1024),
}
DEFAULT_BUDGET_S = 60.0


def check_model(name: Any) -> str:
    """`name` when it is a registered model, else the one 'unknown model' SettingError."""
    from .models import MODELS

    if name not in MODELS:
        raise SettingError(f"Unknown model {name!r}: choose one of {', '.join(MODELS)}.")
    return name


def check_strategy(name: Any) -> str:
    from .active import STRATEGIES

    return check_choice("The strategy", name, STRATEGIES)


def check_threads(value: Any, what: str = "--threads") -> int:
    """A number of torch CPU threads within LIMITS, for a command-line flag called `what`."""
    _, low, high = LIMITS["threads"]
    return check_int(what, value, int(low), int(high))


def _limit(key: str, value: Any, kind: type) -> Any:
    what, low, high = LIMITS[key]
    if kind is int:
        return check_int(what, value, int(low), int(high))
    return check_float(what, value, low, high)


@dataclass(frozen=True)
class RunSpec:
    """One run's settings. `budget_s` and `steps`: whichever ends first (at least one);
    `config`: the model's setting overrides (range checked against its Config); `threads`:
    torch CPU threads where the caller owns the process (the CLI), None to leave them."""

    model: str
    budget_s: float | None = DEFAULT_BUDGET_S
    steps: int | None = None
    strategy: str = "entropy"
    seed: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    mc_samples: int = 8
    diverse_batch: int = 20
    warm_start: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        from .train import make_config

        def put(key: str, value: Any) -> None:
            object.__setattr__(self, key, value)

        put("model", check_model(self.model))
        if self.budget_s is None and self.steps is None:
            raise SettingError("Give a training budget: a number of seconds, of steps, or both.")
        if self.budget_s is not None:
            put("budget_s", _limit("budget_s", self.budget_s, float))
        if self.steps is not None:
            put("steps", _limit("steps", self.steps, int))
        put("strategy", check_strategy(self.strategy))
        for key in ("seed", "mc_samples", "diverse_batch"):
            put(key, _limit(key, getattr(self, key), int))
        if self.threads is not None:
            put("threads", _limit("threads", self.threads, int))
        if not isinstance(self.config, Mapping):
            raise SettingError(f"The model settings must be a mapping of name to value, got {self.config!r}.")
        make_config(self.model, dict(self.config))  # range checks every override
        put("config", dict(self.config))
        put("warm_start", bool(self.warm_start))

    @classmethod
    def parse(cls, values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> RunSpec:
        """A RunSpec from loose values (a form, JSON from the database), `values` over
        `defaults`; keys that are not settings are ignored. A step limit of 0 means none."""
        merged = {**(defaults or {}), **(values or {})}
        steps = merged.get("steps") or None
        budget = merged.get("budget_s", DEFAULT_BUDGET_S if steps is None else None)
        names = {f.name for f in dataclasses.fields(cls)} - {"budget_s", "steps"}
        given = {key: merged[key] for key in names if merged.get(key) is not None}
        return cls(**{"model": merged.get("model"), **given, "budget_s": budget, "steps": steps})

    def settings(self) -> dict[str, Any]:
        """The JSON a run's row keeps (what `parse` reads back)."""
        out = dataclasses.asdict(self)
        out["config"] = dict(self.config)
        return {key: value for key, value in out.items() if value is not None}

    def model_config(self) -> Any:
        """The model's Config dataclass with the overrides applied."""
        from .train import make_config

        return make_config(self.model, dict(self.config))

    def budget(self):
        from .models import Budget

        return Budget(steps=self.steps, seconds=self.budget_s)

    def with_seed(self, seed: int) -> RunSpec:
        return dataclasses.replace(self, seed=seed)
