"""The weights a job starts from: a checkpoint, or a seeded random init."""

from __future__ import annotations

import os

import jax
from absl import logging

# The pretrained tiny model shipped inside the package (configs/tiny.py's
# default); its manifest.json records how it was made and how good it is.
SHIPPED_TINY = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'assets', 'tiny'
)
# The many-scale testbed (configs/small.py): eight scales, the same images.
SHIPPED_SMALL = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'assets', 'small'
)


def load_weights(
  config,
  model,
  checkpoint: str | None = None,
  parts=('tokenizer', 'transformer'),
  mesh=None,
) -> tuple[dict, str]:
  """(params, description) from ``checkpoint``, else ``config.init_checkpoint``.

  With neither set, a random initialisation seeded by ``config.seed`` (with a
  warning: its samples are noise). With a ``mesh`` the parameters are created
  or restored straight onto its shardings (`parallel.param_shardings`), never
  whole on one device; without, on the first local device. Checkpoint
  problems raise `varrl_jax.checkpoint.CheckpointError` naming the path and
  the command that recreates it.
  """
  from varrl_jax import checkpoint as ckpt_lib
  from varrl_jax import parallel

  path = checkpoint or config.init_checkpoint
  if not path:
    logging.warning('No checkpoint configured: randomly initialised weights.')
    key = jax.random.key(config.seed)
    if mesh is None:
      params = model.init(key)
    else:
      params, _ = parallel.sharded_init(model, key, mesh)
    return {p: params[p] for p in parts}, f'random init (seed {config.seed})'
  shardings = None if mesh is None else parallel.param_shardings(model, mesh)
  params = ckpt_lib.load_params(
    path, model, parts, config=config.to_dict(), shardings=shardings
  )
  return params, path
