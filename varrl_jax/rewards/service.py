"""The OCR pool of a job, built from ``config.ocr``."""

from __future__ import annotations

import functools

from varrl_jax.rewards import ocr as ocr_lib
from varrl_jax.rewards.pool import OcrPool


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
