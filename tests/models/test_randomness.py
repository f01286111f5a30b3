"""Each model owns its random numbers: nothing reseeds or reads the global generators, so what
another thread does (a page loading a checkpoint) cannot change a run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from labeler.models import MODELS, load_checkpoint, save_checkpoint
from labeler.models.base import Budget
from labeler.runspec import RunSpec
from labeler.train import train_model
from tests.models.test_registry import SMALL, make, tiny_data


def small_config(name):
    fields = getattr(MODELS[name].Config, "__dataclass_fields__", {})
    return {key: v for key, v in SMALL.items() if key in fields}


@pytest.mark.parametrize("name", list(MODELS))
def test_nothing_seeds_the_global_generators(name, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a model seeded a global generator")

    monkeypatch.setattr(torch, "manual_seed", refuse)
    monkeypatch.setattr(torch.random, "manual_seed", refuse)
    monkeypatch.setattr(np.random, "seed", refuse)
    x, idx, labels = tiny_data()
    model = train_model(RunSpec(name, steps=2, seed=3, config=small_config(name)), x, idx, labels, 3)
    fresh = make(name, seed=3)
    before = torch.get_rng_state()
    fresh.fit(x, idx, labels, Budget(steps=2))  # a first fit (tsvm builds its network there)
    # Training and predicting draw nothing from the global generator either (building a network
    # may: its weights are then redrawn from the model's generator, see the next test).
    model.fit(x, idx, labels, Budget(steps=2))
    model.mc_proba(x[:5], samples=2)
    assert torch.equal(torch.get_rng_state(), before), "training or predicting drew from the global generator"
    load_checkpoint(save_checkpoint(model, tmp_path / "model.pt")).predict_proba(x[:5])


@pytest.mark.parametrize("name", list(MODELS))
def test_initial_weights_come_from_the_seed_alone(name):
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # what another thread might have done
        states.append(make(name, seed=4).state()["modules"])
    for key, weights in states[0].items():
        for param, value in weights.items():
            assert torch.equal(value, states[1][key][param]), f"{key}.{param} depends on the global generator"


@pytest.mark.parametrize("name", ["m2", "sslgan", "supervised"])
def test_a_checkpoint_loaded_on_another_thread_leaves_a_run_unchanged(name, tmp_path):
    # m2 draws z and views, sslgan noise and dropout, supervised dropout: all from its model.
    x, idx, labels = tiny_data()
    config = small_config(name)
    checkpoint = save_checkpoint(
        train_model(RunSpec(name, steps=1, config=config), x, idx, labels, 3), tmp_path / "m.pt"
    )

    def run() -> np.ndarray:
        return train_model(RunSpec(name, steps=40, seed=7, config=config), x, idx, labels, 3).predict_proba(x)

    alone = run()
    stop, loading = threading.Event(), threading.Event()
    loads = [0]

    def page() -> None:  # what the Latent and Export pages do while the worker trains
        while not stop.is_set():
            load_checkpoint(checkpoint)
            torch.rand(3)
            loads[0] += 1
            loading.set()

    reader = threading.Thread(target=page)
    reader.start()
    loading.wait(60)
    try:
        with_loads = run()
    finally:
        stop.set()
        reader.join()
    assert loads[0] > 0
    np.testing.assert_array_equal(with_loads, alone)
    np.testing.assert_array_equal(run(), alone)  # and the same seed gives the same result again


def test_move_to_gives_the_layers_the_new_generator():
    # On a GPU the generator must live on the GPU: move_to replaces it, and every noise and
    # dropout layer (EMA teacher included) draws from the replacement.
    from labeler.models.base import Stochastic

    model = make("sslgan")
    before = model.generator
    model.move_to("cpu")
    assert model.generator is not before
    layers = [m for net in model.modules.values() for m in net.modules() if isinstance(m, Stochastic)]
    assert layers and all(layer.generator() is model.generator for layer in layers)
