"""The private Keras API the project relies on, checked so that a Keras upgrade fails here, loudly,
rather than silently changing training (see ``training/trainer.py``)."""

import keras
import numpy as np

from training.trainer import NetworkTrainer


class CountingModel(keras.Model):
    calls = 0

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        type(self).calls += 1
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def test_fit_still_calls_the_symbolic_build_hook_the_trainer_overrides():
    assert "_maybe_symbolic_build" in vars(NetworkTrainer)
    model = CountingModel()
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 2), np.float32)
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    assert CountingModel.calls >= 1
