r"""OCR workers per TPU host for the paper config: 1024^2 images, measured here.

Run from the repository root (one timed run at a time on a shared host):

  flock /work/scratch/bench.lock python -m benchmarks.ocr_pod_budget   # ~3 min
  python -m benchmarks.ocr_pod_budget --num_images=2 --step_seconds=30

Images, ``--num_images`` of each kind, 1024x1024 (``--side``), four text
regions each (CVTG-2K prompts have 2-5, the paper config's generated
prompts too), so neither the cache nor deduplication helps:

- ``renders``: four held-out synthetic renders of the full data variety
  (one or two words, eight faces, noisy backgrounds), each drawn at
  256x1024 and stacked;
- ``rollouts``: four rollout images of the shipped tiny model (configs/tiny.py,
  its RL sampling options, key 0), each upscaled bicubically from 40x160 to
  256x1024 and stacked: model-like blur at the paper's size.

Each engine runs in-process with one thread (what one OCR worker is), is
warmed on one image, then every image is read by every engine, the order
rotated by one per image. At 1024^2 no upscaling happens
(``upscale_min_side`` 128). Prints wall and CPU seconds per image (the
process's CPU time: what a read costs a core of its own; a busy shared host
inflates wall time), the OCR reward and the share of the four words read
exactly (``comp``) per engine and kind. The budget uses CPU seconds of the
slower kind.

The budget, from the paper config (configs/cvtg.py ``paper_rl``): P x G x K =
16 x 16 x 2 = 512 images per update, spread over the hosts of the slice
(``--hosts``: v5p-128 = 64 chips, 4 per host, 16 hosts), so 32 per host.
Every host reads its own images (`rl.rollout`: each process scores the rows
on its devices). Reading must end within ``--step_seconds`` / ``--margin``
(the GRPO step it overlaps; the default 12.3 s is the v5p-128 AOT roofline
of configs/cvtg.py's step, 5.63e15 model FLOP per chip / 459 TFLOP/s, a
lower bound on the real step, so the worker count is conservative). A
worker reads one image at a time, so with s seconds per image one worker
reads ``floor(budget / s)`` images in the budget and a host needs

    workers = ceil(images_per_host / floor(budget / s))

(one image per worker if s > budget: then no worker count hides OCR). With
``rl.pipeline='sync'`` the OCR of a rollout chunk (of ``rl.rollout_chunks``)
overlaps only the sampling of the next chunk, so the same rule is applied
per chunk (``--chunk_seconds``: 0.77 s, the v5p-128 AOT roofline of one
sampler chunk) and the config takes the larger count. The host's vCPUs
(``--host_vcpus``: 208 on a v5p TPU VM, the public spec) bound workers x
threads. Per-core speed is assumed equal to this host's.

Last line: ``rapidocr_vs_easyocr_cost_1024 N.NNx`` (median over images of the
per-image ratio of CPU seconds, both kinds).
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
from absl import app, flags

from varrl_jax.rewards import ocr as ocr_lib
from varrl_jax.rewards import text as text_lib

_NUM_IMAGES = flags.DEFINE_integer('num_images', 6, '1024^2 images of each kind.')
_SIDE = flags.DEFINE_integer('side', 1024, 'Image side (the paper: 1024).')
_ENGINES = flags.DEFINE_list('engines', ['easyocr', 'rapidocr'], 'Engines to time.')
_IMAGES_PER_UPDATE = flags.DEFINE_integer(
  'images_per_update', 0, 'Images per update; 0: P x G x K of configs/cvtg.py.'
)
_HOSTS = flags.DEFINE_integer('hosts', 16, 'Hosts of the slice (v5p-128: 16).')
_HOST_VCPUS = flags.DEFINE_integer('host_vcpus', 208, 'vCPUs per TPU host.')
_STEP_SECONDS = flags.DEFINE_float(
  'step_seconds', 12.3, 'GRPO step time to hide OCR under (v5p-128 roofline).'
)
_CHUNK_SECONDS = flags.DEFINE_float(
  'chunk_seconds',
  0.77,
  'Sampling time of one rollout chunk (v5p-128 roofline of the sampler).',
)
_MARGIN = flags.DEFINE_float('margin', 1.5, 'Safety factor on the OCR time.')
_REGIONS = 4


def paper_rollouts() -> tuple[int, int, str]:
  """(images per update, rollout chunks, how) of configs/cvtg.py."""
  from configs import cvtg

  rl = cvtg.get_config().rl
  n = rl.prompts_per_update * rl.group_size * rl.vmr.num_branches
  how = f'{rl.prompts_per_update} prompts x G {rl.group_size} x K {rl.vmr.num_branches}'
  return n, rl.rollout_chunks, how


def stack(parts: list[np.ndarray], side: int) -> np.ndarray:
  """Resizes each part to [side / regions, side] (bicubic) and stacks them."""
  import cv2

  h = side // len(parts)
  rows = [cv2.resize(p, (side, h), interpolation=cv2.INTER_CUBIC) for p in parts]
  return np.ascontiguousarray(np.concatenate(rows, axis=0))


def render_images(n: int, side: int):
  from varrl_jax.data import synthetic

  data = synthetic.SyntheticTextDataset(
    'heldout', (side // _REGIONS, side), seed=1, variety=synthetic.FULL
  )
  images, targets = [], []
  for i in range(n):
    parts = [data[i * _REGIONS + j] for j in range(_REGIONS)]
    images.append(stack([p.image for p in parts], side))
    targets.append(tuple(t for p in parts for t in p.targets))
  return images, targets


def rollout_images(n: int, side: int):
  from benchmarks.ocr_cost import rollout_images as sample_rollouts
  from configs import tiny
  from varrl_jax.models.family import build_model
  from varrl_jax.weights import load_weights

  config = tiny.get_config()
  model = build_model(config)
  params, _ = load_weights(config, model)
  per_update = config.rl.prompts_per_update * config.rl.group_size
  per_update *= config.rl.vmr.num_branches
  updates = -(-n * _REGIONS // per_update)
  rollouts, targets = sample_rollouts(config, model, params, updates, 0)
  # Regions from different prompts: every stacked image reads as 4 words.
  order = np.arange(n * _REGIONS).reshape(_REGIONS, n).T
  images = [stack([rollouts[j] for j in row], side) for row in order]
  return images, [tuple(targets[j][0] for j in row) for row in order]


def workers_needed(images_per_host: int, seconds: float, budget: float) -> int:
  """ceil(images / floor(budget / s)); one image per worker if s > budget."""
  per_worker = math.floor(budget / seconds)
  if per_worker < 1:
    return images_per_host
  return math.ceil(images_per_host / per_worker)


def main(argv: list[str]) -> None:
  del argv
  import cv2
  import torch

  torch.set_num_threads(1)
  cv2.setNumThreads(1)
  n, side = _NUM_IMAGES.value, _SIDE.value
  t0 = time.perf_counter()
  kinds = {'renders': render_images(n, side), 'rollouts': rollout_images(n, side)}
  made_s = time.perf_counter() - t0
  engines = {e: ocr_lib.make_engine(e, num_threads=1) for e in _ENGINES.value}
  for engine in engines.values():
    engine.read(kinds['renders'][0][0])

  wall = {(e, k): [] for e in engines for k in kinds}
  seconds = {(e, k): [] for e in engines for k in kinds}  # CPU seconds
  reads = {(e, k): [] for e in engines for k in kinds}
  names, i = list(engines), 0
  for kind, (images, _) in kinds.items():
    for image in images:
      for e in names[i % len(names) :] + names[: i % len(names)]:
        t0, c0 = time.perf_counter(), time.process_time()
        reads[e, kind].append(engines[e].read(image))
        seconds[e, kind].append(time.process_time() - c0)
        wall[e, kind].append(time.perf_counter() - t0)
      i += 1

  print(
    f'{n} images of each kind, {side}x{side}, {_REGIONS} text regions each; made in '
    f'{made_s:.0f} s; one thread per engine'
  )
  print(
    f'{"engine":10s}{"kind":>10s}{"wall s/img":>11s}{"cpu s/img":>10s}'
    f'{"cpu min-max":>13s}{"reward":>8s}{"words":>7s}'
  )
  for (e, kind), secs in seconds.items():
    targets = kinds[kind][1]
    rewards = text_lib.rewards_for_batch(targets, reads[e, kind])
    print(
      f'{e:10s}{kind:>10s}{np.mean(wall[e, kind]):11.2f}{np.mean(secs):10.2f}'
      f'{f"{min(secs):.2f}-{max(secs):.2f}":>13s}{rewards.rewards.mean():8.3f}'
      f'{rewards.comp.mean():7.2f}'
    )

  per_update, chunks, how = paper_rollouts()
  if _IMAGES_PER_UPDATE.value:
    per_update, how = _IMAGES_PER_UPDATE.value, '--images_per_update'
  per_host = -(-per_update // _HOSTS.value)
  per_chunk = -(-per_host // chunks)
  budget = _STEP_SECONDS.value / _MARGIN.value
  chunk_budget = _CHUNK_SECONDS.value / _MARGIN.value
  print(
    f'budget: {per_update} images per update ({how}) / {_HOSTS.value} hosts = '
    f'{per_host} per host ({per_chunk} per rollout chunk, {chunks} chunks); '
    f'margin {_MARGIN.value:.1f}: OCR of an update within step '
    f'{_STEP_SECONDS.value:.1f} s / margin = {budget:.1f} s, OCR of a chunk within '
    f'its sampling {_CHUNK_SECONDS.value:.2f} s / margin = {chunk_budget:.2f} s; '
    f'host vCPUs {_HOST_VCPUS.value}'
  )
  for e in engines:
    s = max(np.mean(seconds[e, k]) for k in kinds)  # the slower kind
    w = workers_needed(per_host, s, budget)
    w_chunk = workers_needed(per_chunk, s, chunk_budget)
    print(
      f'budget {e} (step): {s:.2f} s/img -> ceil({per_host} / floor({budget:.1f} / '
      f'{s:.2f})) = {w} workers per host, OCR {math.ceil(per_host / w) * s:.1f} s '
      'per update'
    )
    pace = 'keeps pace' if s <= chunk_budget else 'cannot keep pace at any count'
    print(
      f'budget {e} (chunk): ceil({per_chunk} / floor({chunk_budget:.2f} / {s:.2f})) '
      f'= {w_chunk} workers per host, a chunk read in '
      f'{math.ceil(per_chunk / w_chunk) * s:.2f} s ({pace}); default '
      f'max = {max(w, w_chunk)} workers, {max(w, w_chunk)} of {_HOST_VCPUS.value} '
      'vCPUs'
    )
  if {'easyocr', 'rapidocr'} <= set(engines):
    ratios = [
      r / q
      for k in kinds
      for r, q in zip(seconds['rapidocr', k], seconds['easyocr', k])
    ]
    print(f'rapidocr_vs_easyocr_cost_1024 {statistics.median(ratios):.2f}x')


if __name__ == '__main__':
  app.run(main)
