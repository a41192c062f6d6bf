"""The OCR reward of a job: its worker pool (``config.ocr``) and text rewards.

`OcrReward` is the registered ``ocr`` reward (`rewards.api`): ``submit``
hands a chunk of images to the `OcrPool` (read in worker processes while
the sampler draws the next chunk); ``collect`` waits for them and scores
each image against its targets with ``config.rl.reward.kind`` /
``fallback`` (`rewards.text`). Its regions, for Mask Propagation, are the
boxes of ``config.rl.mp.boxes``: 'matched' (the OCR entries matched to the
targets) or 'all' (everything the OCR read). Diagnostics ``comp``, ``sim``,
``pen``; counters the pool's ``ocr/*`` stats.
"""

from __future__ import annotations

import functools

from varrl_jax.rewards import api
from varrl_jax.rewards import ocr as ocr_lib
from varrl_jax.rewards import pool as pool_lib
from varrl_jax.rewards import text as reward_lib
from varrl_jax.rewards.pool import OcrPool

BOX_SOURCES = ('matched', 'all')
KINDS = ('comp_sim_pen', 'one_minus_ned')


def engine_factory(config, engine: str | None = None):
  """Picklable factory for the configured OCR engine (one per worker).

  ``engine`` overrides ``config.ocr.engine``; the other ``config.ocr``
  settings (threads, upscaling) apply either way.
  """
  return functools.partial(
    ocr_lib.make_engine,
    engine or config.ocr.engine,
    num_threads=config.ocr.threads_per_worker,
    upscale_config=ocr_lib.UpscaleConfig(
      min_side=config.ocr.upscale_min_side,
      max_factor=config.ocr.upscale_max_factor,
    ),
  )


def make_pool(config) -> OcrPool:
  return OcrPool(
    engine_factory(config),
    num_workers=config.ocr.num_workers,
    timeout_s=config.ocr.timeout_s,
    cache_size=config.ocr.cache_size,
    retries=config.ocr.retries,
  )


class OcrReward(api.Reward):
  """Text-rendering reward of OCR readings (module docstring).

  ``owns_pool``: `close` closes the pool (True when it was made here).
  """

  name = 'ocr'

  def __init__(
    self,
    pool: OcrPool,
    kind: str = 'comp_sim_pen',
    fallback: float = 0.0,
    boxes: str = 'matched',
    owns_pool: bool = False,
  ):
    if kind not in KINDS:
      raise ValueError(f'config.rl.reward.kind must be one of {KINDS}, got {kind!r}')
    if boxes not in BOX_SOURCES:
      raise ValueError(f"config.rl.mp.boxes must be 'matched' or 'all', got {boxes!r}")
    self.pool, self.kind, self.fallback = pool, kind, fallback
    self.boxes, self.owns_pool = boxes, owns_pool

  @classmethod
  def from_config(cls, config, pool: OcrPool | None = None) -> OcrReward:
    """The pool of ``config.ocr`` unless ``pool`` is given (then not owned)."""
    rl = config.rl
    # Checked before a pool (worker processes) exists.
    cls(None, rl.reward.kind, rl.reward.fallback, rl.mp.boxes)
    own = pool is None
    return cls(
      make_pool(config) if own else pool,
      rl.reward.kind,
      rl.reward.fallback,
      rl.mp.boxes,
      owns_pool=own,
    )

  def submit(self, images, prompts, targets):
    del prompts
    return self.pool.submit_batch(images), [tuple(t) for t in targets]

  def collect(self, handles) -> api.RewardOutput:
    results, stats = pool_lib.collect([future for future, _ in handles])
    targets = [t for _, chunk in handles for t in chunk]
    batch = reward_lib.rewards_for_batch(
      targets, results, kind=self.kind, fallback=self.fallback
    )
    if self.boxes == 'matched':
      regions = batch.boxes
    else:
      regions = [[w.box for w in r.words] for r in results]
    return api.RewardOutput(
      scores=batch.rewards,
      regions=[list(r) for r in regions],
      diagnostics={'comp': batch.comp, 'sim': batch.sim, 'pen': batch.pen},
      counters=stats,
    )

  def close(self) -> None:
    if self.owns_pool:
      self.pool.close()
