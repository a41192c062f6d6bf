r"""OCR pool throughput: images/s with 1 and 2 workers at 64x64 and 256x256.

Run from the repository root:

  python -m benchmarks.ocr                      # easyocr, 16 images per size
  python -m benchmarks.ocr --engine=rapidocr --num_images=32
  python -m benchmarks.ocr --rl_updates=0       # skip the RL-update part

Each image is a distinct rendered word (DejaVu Sans), so neither the cache
nor deduplication helps; every pool is warmed up before timing (engine
construction is not counted) and each case is timed ``--repeats`` times.
Prints a table of median images/s (with min-max); then runs ``--rl_updates``
real RL updates of ``--config`` (default configs/tiny.py; its weights, its
OCR pool) and reports the share of an update's wall time spent waiting for
OCR, with the time OCR was in progress beside it (OCR of a rollout chunk runs
while the next chunk is sampled, so in-progress > wait when the overlap works). The
first update of each phase (prefix / suffix: they compile) is not counted.
Last line: the 2-vs-1-worker speedup at the first size (64x64).
"""

from __future__ import annotations

import functools
import random
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax.rewards.ocr import make_engine
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rewards.testing import render_text

_ENGINE = flags.DEFINE_enum('engine', 'easyocr', ['easyocr', 'rapidocr'], 'OCR engine.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 16, 'Images per timed batch.')
_SIZES = flags.DEFINE_list('sizes', ['64', '256'], 'Square image sides.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Worker counts to compare.')
_THREADS = flags.DEFINE_integer('threads', 1, 'torch/onnx threads per worker.')
_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'RL config.')
_RL_UPDATES = flags.DEFINE_integer('rl_updates', 6, 'RL updates to time (0: skip).')
_STEP_SECONDS = flags.DEFINE_float(
  'step_seconds',
  None,
  'Seconds of one RL step; if set, also times OCR submitted before the step '
  '(overlapped) against OCR then step (sequential). The step is simulated by '
  'sleeping, i.e. it stands for accelerator work that leaves host CPUs free.',
)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per case (median).')
_SEED = flags.DEFINE_integer('seed', 0, 'Word sampling seed.')

WORDS = (
  'apple river stone light house green paper music water happy table night '
  'cloud train bread smile ocean dream tiger piano chair honey lemon quiet '
  'brave storm maple candy robot pixel'
).split()


def word_images(n: int, side: int, rng: random.Random) -> tuple[list[str], np.ndarray]:
  """n distinct rendered words, uint8 [n, side, side, 3]."""
  words, images, seen = [], [], set()
  while len(images) < n:
    word = rng.choice(WORDS)
    word = word.upper() if rng.random() < 0.5 else word
    image = render_text(word, side, side, fill_fraction=rng.uniform(0.6, 0.9))
    if image.tobytes() in seen:
      continue
    seen.add(image.tobytes())
    words.append(word)
    images.append(image)
  return words, np.stack(images)


def num_read(words: list[str], results) -> int:
  return sum(
    ' '.join(r.texts).strip().lower() == w.lower() for w, r in zip(words, results)
  )


def main(argv: list[str]) -> None:
  del argv
  rng = random.Random(_SEED.value)
  sizes = [int(s) for s in _SIZES.value]
  workers = [int(w) for w in _WORKERS.value]
  data = {side: word_images(_NUM_IMAGES.value, side, rng) for side in sizes}
  factory = functools.partial(make_engine, _ENGINE.value, num_threads=_THREADS.value)

  rows, speed = [], {}
  overlap_lines: list[str] = []
  for num_workers in workers:
    with OcrPool(
      factory, num_workers=num_workers, timeout_s=120.0, cache_size=0
    ) as pool:
      pool.wait_ready()
      for side in sizes:
        words, images = data[side]
        # Warm-up: first reads pay one-off costs (allocations, lazy init).
        _, warm_images = word_images(2 * max(1, num_workers), side, random.Random(side))
        pool.read_batch(warm_images)
        # The median of several runs: the host may be shared, and one busy
        # moment on either core halves a 2-worker run.
        runs = []
        for _ in range(_REPEATS.value):
          t0 = time.perf_counter()
          results, stats = pool.read_batch(images)
          runs.append(len(images) / (time.perf_counter() - t0))
        speed[num_workers, side] = float(np.median(runs))
        rows.append(
          f'{_ENGINE.value:9s}{num_workers:8d}{f"{side}x{side}":>10s}'
          f'{len(images):7d}{speed[num_workers, side]:10.2f}'
          f'{f"{min(runs):.2f}-{max(runs):.2f}":>13s}'
          f'{f"{num_read(words, results)}/{len(images)}":>8s}'
          f'{int(stats["ocr/failures"]):7d}'
        )
      if _STEP_SECONDS.value is not None and num_workers == max(workers):
        overlap_lines = time_overlap(pool, data[sizes[0]][1], _STEP_SECONDS.value)

  print(
    f'{"engine":9s}{"workers":>8s}{"size":>10s}{"images":>7s}{"images/s":>10s}'
    f'{"min-max":>13s}{"read":>8s}{"failed":>7s}'
  )
  print('\n'.join(rows))

  if _STEP_SECONDS.value is not None:
    print('\n'.join(overlap_lines))
  if _RL_UPDATES.value > 0:
    print('\n'.join(time_rl_updates(_CONFIG.value, _RL_UPDATES.value)))

  side = sizes[0]
  if len(workers) >= 2 and (1, side) in speed and (2, side) in speed:
    print(f'ocr_2w_vs_1w_speedup {speed[2, side] / speed[1, side]:.2f}x')


def time_overlap(pool: OcrPool, images: np.ndarray, step_seconds: float) -> list[str]:
  """Sequential (OCR, then step) vs overlapped (submit, step, result)."""
  # The benchmark pools run with cache_size=0, so both runs read every image.
  t0 = time.perf_counter()
  pool.read_batch(images)
  time.sleep(step_seconds)
  sequential = time.perf_counter() - t0
  t0 = time.perf_counter()
  future = pool.submit_batch(images)
  time.sleep(step_seconds)
  future.result()
  overlapped = time.perf_counter() - t0
  return [
    f'overlap ({len(images)} images, {pool.num_workers} workers, step '
    f'{step_seconds:.2f} s): sequential {sequential:.2f} s, overlapped '
    f'{overlapped:.2f} s, saved {sequential - overlapped:.2f} s per step'
  ]


def time_rl_updates(config, updates: int) -> list[str]:
  """Times real RL updates; returns report lines."""
  import jax

  from varrl_jax.data import synthetic
  from varrl_jax.models.family import build_model
  from varrl_jax.rewards.service import make_pool
  from varrl_jax.rl import loop
  from varrl_jax.weights import load_weights

  model = build_model(config)
  params, source = load_weights(config, model)
  rl = config.rl
  rows, seen = [], set()
  with make_pool(config) as pool:
    trainer = loop.Trainer(config, model, params, pool)
    for u in range(updates):
      prompts = [
        (p.prompt, p.targets)
        for p in synthetic.prompts(
          'train',
          rl.prompts_per_update,
          start=u * rl.prompts_per_update,
          variety=synthetic.Variety.from_config(config.data),
        )
      ]
      t0 = time.perf_counter()
      metrics, _, _, phase = trainer.run_update(u, prompts, jax.random.key(u))
      total = time.perf_counter() - t0
      if phase in seen:
        rows.append((phase, total, metrics))
      seen.add(phase)
  if not rows:
    return [
      'rl update: too few updates to time (need one past the first of each phase)'
    ]
  mean = lambda key: float(np.mean([m[key] for _, _, m in rows]))  # noqa: E731
  total = float(np.mean([t for _, t, _ in rows]))
  images = mean('ocr/images')
  return [
    f'rl update ({config.rl.mode}, {len(rows)} timed, {images:.0f} images each, '
    f'{config.ocr.num_workers} OCR worker(s), weights: {source}): {total:.2f} s/update = '
    f'sample {mean("time/sample_s"):.2f} s + OCR wait {mean("time/ocr_wait_s"):.2f} s '
    f'+ step {mean("time/step_s"):.2f} s',
    f'rl update OCR share: waiting {mean("time/ocr_wait_s") / total:.1%} of the update; '
    f'OCR in progress {mean("ocr/seconds") / total:.1%} (runs while later chunks are sampled)',
  ]


if __name__ == '__main__':
  app.run(main)
