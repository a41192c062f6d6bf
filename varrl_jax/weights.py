"""The weights a job starts from: a checkpoint, or a seeded random init."""

from __future__ import annotations

import jax
from absl import logging


def load_weights(config, model, checkpoint: str | None = None) -> tuple[dict, str]:
  """(params, description) from ``checkpoint``, else ``config.init_checkpoint``.

  With neither set, a random initialisation seeded by ``config.seed`` (with a
  warning: its samples are noise). Checkpoint problems raise
  `varrl_jax.checkpoint.CheckpointError` naming the path and the command that
  recreates it.
  """
  from varrl_jax import checkpoint as ckpt_lib

  path = checkpoint or config.init_checkpoint
  if not path:
    logging.warning('No checkpoint configured: randomly initialised weights.')
    return model.init(jax.random.key(config.seed)), f'random init (seed {config.seed})'
  return ckpt_lib.load_params(path, model, config=config.to_dict()), path
