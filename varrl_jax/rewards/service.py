"""The OCR pool of a job, built from ``config.ocr``."""

from __future__ import annotations

import functools

from varrl_jax.rewards import ocr as ocr_lib
from varrl_jax.rewards.pool import OcrPool


def engine_factory(config):
  """Picklable factory for the configured OCR engine (one per worker)."""
  return functools.partial(
    ocr_lib.make_engine, config.ocr.engine, num_threads=config.ocr.threads_per_worker
  )


def make_pool(config) -> OcrPool:
  return OcrPool(
    engine_factory(config),
    num_workers=config.ocr.num_workers,
    timeout_s=config.ocr.timeout_s,
    cache_size=config.ocr.cache_size,
  )
