"""The tokenizer stage's step as the benchmarks time it (no flags: imported
by `tokenizer_step.py` and `conv_backends.py`, run from ``benchmarks/``)."""

from __future__ import annotations

import jax

from varrl_jax.data import batches as batches_lib
from varrl_jax.data import synthetic
from varrl_jax.pretrain import loop
from varrl_jax.pretrain import tokenizer_stage as stage


def tokenizer_step(config, model, conv_backend: str | None = None):
  """(jitted tokenizer-stage step, fresh-state factory) of ``config``'s
  ``pretrain.tokenizer`` settings; the factory gives a new step-0 state on
  each call (the step donates its state), from the config's seed."""
  sc = config.pretrain.tokenizer
  optimizer, _ = loop.make_optimizer(sc)
  step = stage.make_train_step(model, optimizer, sc, conv_backend=conv_backend)

  def init():
    params = model.init_part(jax.random.key(config.seed), 'tokenizer')
    return stage.init_state(model, optimizer, params, sc.trainable)

  return step, init


def train_batch(config, model, batch_size: int) -> dict:
  """The first synthetic training batch of ``batch_size`` renders."""
  return next(
    batches_lib.synthetic_batches(
      'train',
      model.schedule.image_size,
      config.pretrain.data_seed,
      batch_size,
      variety=synthetic.Variety.from_config(config.data),
    )
  )
