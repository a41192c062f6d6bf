r"""Where an RL update's time goes (sampling / OCR wait / step), with and without overlap.

Run from the repository root:

  python -m benchmarks.update_breakdown                   # tiny, easyocr, 4 updates a mode
  python -m benchmarks.update_breakdown --engine=rapidocr
  python -m benchmarks.update_breakdown --no_overlap=chunks1 --updates=8

Real RL updates of ``--config`` (`rl.loop.Trainer.run_update`: its weights,
its OCR pool of ``config.ocr.num_workers`` workers) in two modes, on one
trainer and one pool:

- ``overlap``: as training runs it. The prompts are sampled in
  ``rl.rollout_chunks`` parts and each part's OCR runs in the pool while the
  next part is sampled (`rl.rollout`);
- no overlap, ``--no_overlap=wait`` (default): the same chunks, but every
  chunk's OCR is waited for as soon as it is submitted (the pool is wrapped
  here; nothing else changes, so the programs and batch shapes are the same);
  ``--no_overlap=chunks1``: ``rl.rollout_chunks=1`` (the config switch: one
  sampler call of all prompts, then OCR; its sampler batch is larger, so its
  sampling time differs too).

The modes alternate update by update on the same prompts and keys, so load
changes on the machine touch both alike; the first update of each phase and
chunking (it compiles) runs untimed before. ``--updates`` defaults to one
prefix:suffix cycle of the VMR schedule. The OCR result cache is off
(``config.ocr.cache_size=0``): the two modes draw nearly the same images.
Shares are of the wall time around ``run_update``: sample (the trainer's
``time/sample_s`` less the waits of ``wait`` mode), OCR wait, step (batch
building, the reference forward and the GRPO step: ``time/step_s``), other
(rewards, host work). "OCR busy" is the time the pool spent reading, part of
which hides behind sampling when they overlap. Last line:
``overlap_speedup N.NNx`` = mean seconds per update without overlap / with.
"""

from __future__ import annotations

import contextlib
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli
from varrl_jax.models.family import build_model
from varrl_jax.rewards.service import make_pool
from varrl_jax.rl import loop
from varrl_jax.weights import load_weights

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'RL config.')
_ENGINE = flags.DEFINE_enum(
  'engine', 'easyocr', ['easyocr', 'rapidocr'], 'OCR engine (config.ocr.engine).'
)
_UPDATES = flags.DEFINE_integer(
  'updates', None, 'Timed updates per mode (default: prefix + suffix updates).'
)
_NO_OVERLAP = flags.DEFINE_enum(
  'no_overlap',
  'wait',
  ['wait', 'chunks1'],
  "How the no-overlap mode is made: 'wait' for each chunk's OCR right after "
  "submitting it, or 'chunks1' = --config.rl.rollout_chunks=1.",
)


class WaitingPool:
  """An OCR pool whose ``submit_batch`` returns only once the batch is read."""

  def __init__(self, pool):
    self.pool = pool
    self.seconds = 0.0

  def submit_batch(self, images):
    t0 = time.time()
    future = self.pool.submit_batch(images)
    future.result()
    self.seconds += time.time() - t0
    return future


@contextlib.contextmanager
def mode(trainer: loop.Trainer, name: str, chunks: int):
  """Sets the trainer's pool and ``rl.rollout_chunks`` for one mode; yields the
  waiting pool (or None)."""
  ocr = trainer.reward.get('ocr')
  pool, old_chunks = ocr.pool, trainer.config.rl.rollout_chunks
  waiting = WaitingPool(pool) if name == 'wait' else None
  ocr.pool = waiting or pool
  trainer.config.rl.rollout_chunks = 1 if name == 'chunks1' else chunks
  try:
    yield waiting
  finally:
    ocr.pool, trainer.config.rl.rollout_chunks = pool, old_chunks


def run_one(config, trainer, name: str, chunks: int, update: int) -> dict:
  """One update in mode ``name``; returns its timings (seconds)."""
  with mode(trainer, name, chunks) as waiting:
    t0 = time.time()
    metrics, _, _, phase = trainer.run_update(
      update,
      loop.update_prompts(config, update),
      jax.random.fold_in(jax.random.key(0), update),
    )
    total = time.time() - t0
  blocked = waiting.seconds if waiting else 0.0
  out = {
    'total': total,
    'sample': metrics['time/sample_s'] - blocked,
    'ocr_wait': metrics['time/ocr_wait_s'] + blocked,
    'step': metrics['time/step_s'],
    'ocr_busy': metrics['ocr/seconds'],
    'images': metrics['ocr/images'],
    'phase': phase,
  }
  out['other'] = total - out['sample'] - out['ocr_wait'] - out['step']
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  config.ocr.engine = _ENGINE.value
  config.ocr.cache_size = 0
  rl = config.rl
  chunks = rl.rollout_chunks
  if chunks < 2:
    raise app.UsageError(
      f'config.rl.rollout_chunks={chunks}: with one chunk nothing overlaps OCR'
    )
  modes = ['overlap', _NO_OVERLAP.value]
  model = build_model(config)
  params, source = load_weights(config, model)
  method = loop.Method.from_config(config, model)
  phases = [
    loop.phase_of(u, method, rl.vmr.prefix_updates, rl.vmr.suffix_updates)
    for u in range(rl.vmr.prefix_updates + rl.vmr.suffix_updates)
  ]
  updates = _UPDATES.value or len(phases)

  times: dict[str, list[dict]] = {m: [] for m in modes}
  with make_pool(config) as pool:
    t0 = time.time()
    pool.wait_ready()
    ready_s = time.time() - t0
    trainer = loop.Trainer(config, model, params, pool)
    t0 = time.time()
    # Compile every (phase, chunking) the timed updates will use; 'wait' runs
    # the programs of 'overlap'.
    shapes = {'overlap': chunks, 'wait': chunks, 'chunks1': 1}
    warmed = set()
    for m in modes:
      for phase in dict.fromkeys(phases):
        if (phase, shapes[m]) not in warmed:
          warmed.add((phase, shapes[m]))
          run_one(config, trainer, m, chunks, phases.index(phase))
    warm_s = time.time() - t0
    for u in range(updates):
      # Alternate which mode goes first, against drifts in the machine's load.
      for m in modes if u % 2 == 0 else modes[::-1]:
        times[m].append(run_one(config, trainer, m, chunks, u))

  mean = lambda m, k: float(np.mean([t[k] for t in times[m]]))  # noqa: E731
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}')
  print(
    f'config: {rl.mode}, {rl.prompts_per_update} prompts x G {rl.group_size} '
    f'(x K {rl.vmr.num_branches} branches), {mean("overlap", "images"):.0f} images/update, '
    f'{chunks} rollout chunks; weights: {source}'
  )
  print(
    f'OCR: {config.ocr.engine}, {config.ocr.num_workers} worker(s), cache off '
    f'(ready in {ready_s:.1f} s); warm-up {len(warmed)} updates {warm_s:.1f} s; '
    f'{updates} timed updates a mode ({", ".join(phases[u % len(phases)] for u in range(updates))})'
  )
  print(
    f'{"mode":9s}{"s/update":>9s}{"sample":>15s}{"OCR wait":>15s}{"step":>15s}'
    f'{"other":>15s}{"OCR busy":>10s}'
  )
  for m in modes:
    total = mean(m, 'total')
    cells = ''.join(
      f'{f"{mean(m, k):.2f} s {mean(m, k) / total:4.0%}":>15s}'
      for k in ('sample', 'ocr_wait', 'step', 'other')
    )
    print(f'{m:9s}{total:9.2f}{cells}{mean(m, "ocr_busy"):8.2f} s')
  saved = mean(modes[1], 'total') - mean('overlap', 'total')
  # OCR of chunks 1..c-1 can hide only behind the sampling of chunks 2..c.
  bound = min(
    mean(modes[1], 'sample') * (chunks - 1) / chunks,
    mean('overlap', 'ocr_busy') * (chunks - 1) / chunks,
  )
  print(
    f'overlap hides {saved:.2f} s of {mean("overlap", "ocr_busy"):.2f} s of OCR per '
    f'update (at most ~{bound:.2f} s can hide: the sampling of chunks 2..{chunks})'
  )
  print(f'overlap_speedup {mean(modes[1], "total") / mean("overlap", "total"):.2f}x')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
