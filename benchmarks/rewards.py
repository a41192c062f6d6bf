r"""Reward throughput on this machine: images/s of each reward, side by side.

Run from the repository root:

  python -m benchmarks.rewards                     # all, 256x256, ~3 min on 2 cores
  python -m benchmarks.rewards --rewards=jpeg,clipscore --num_images=8 --rounds=7

Rewards (each through its registered implementation, except that the CLIP
models get random weights of the real size, so nothing is downloaded):

- ``jpeg``: jpeg_compressibility (Pillow, in process);
- ``easyocr`` / ``rapidocr``: the ``ocr`` reward with that engine, one OCR
  worker process, cache off;
- ``clipscore``: CLIP ViT-L/14 (OpenAI's size, quick_gelu), jitted JAX;
- ``preference``: CLIP ViT-H/14 (HPS-v2 / PickScore size), jitted JAX;
- ``torch L/14`` (``--torch_reference``, with clipscore): open_clip's torch
  ViT-L/14 on the same cores (what a host worker pool would run), given the
  same uint8 images and doing the same work as the JAX tower: bicubic
  antialiased resize of the short side to 224 (rounded to uint8 levels),
  centre crop, ``(x / 255 - mean) / std``, ``encode_image``, L2 norm
  (the same work; not bit-equal, torch's bicubic kernel has a = -0.75).

Inputs are distinct 256x256 renders of words, with prompts from a small set
(as in RL, where a prompt's G images share it). Method, so that load changes
on a shared machine hit every reward alike:

1. build everything first (``setup_s``: model init, engine start);
2. warm each up on a call of exactly the timed shape (``warm_s``: compiles,
   the CLIP text tower, whose prompt features are cached afterwards;
   ``prompts/s`` is the text tower alone, measured once here);
3. ``--rounds`` rounds; round r times every reward on the same
   ``--num_images`` new images, the order rotated by one each round: one
   call, or repeated calls for 0.2 s where one call is quicker (jpeg).

Prints each reward's median images/s over the rounds and its min-max, then
the median over rounds of each round's ratio to easyocr, and of clipscore
(JAX) over torch L/14.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags, logging

from varrl_jax.config import base_config
from varrl_jax.models import clip as clip_lib
from varrl_jax.models import clip_open_clip, clip_weights
from varrl_jax.models.clip_preprocess import resize_shape
from varrl_jax.models.clip_tokenizer import ClipTokenizer
from varrl_jax.rewards import api
from varrl_jax.rewards import clip as clip_rewards
from varrl_jax.rewards.testing import render_text

KNOWN = ('jpeg', 'easyocr', 'rapidocr', 'clipscore', 'preference')
_REWARDS = flags.DEFINE_list('rewards', list(KNOWN), 'Rewards to time.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 4, 'Images per timed call.')
_SIDE = flags.DEFINE_integer('side', 256, 'Square image side.')
_ROUNDS = flags.DEFINE_integer(
  'rounds', 5, 'Alternating rounds; each times every reward once (median).'
)
_BATCH = flags.DEFINE_integer('batch_size', 4, 'CLIP images per jitted call.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'CLIP dtype (float32 | bfloat16).')
_TORCH = flags.DEFINE_bool(
  'torch_reference', True, 'Also time open_clip ViT-L-14 (torch), with clipscore.'
)

ARCHS = {'clipscore': 'ViT-L-14-quickgelu', 'preference': 'ViT-H-14'}
TORCH = 'torch L/14'
MIN_SECONDS = 0.2  # a quick reward's timing repeats its call for this long
PROMPTS = [f"a photo of a sign that reads '{w}'" for w in ('OPEN', 'SALE', 'EXIT')]
WORDS = (
  'apple river stone light house green paper music water happy table night'.split()
)


def word_images(n: int, side: int, rng: random.Random) -> np.ndarray:
  """n renders of words (distinct by size/case), uint8 [n, side, side, 3]."""
  out = []
  for _ in range(n):
    word = rng.choice(WORDS)
    word = word.upper() if rng.random() < 0.5 else word
    out.append(render_text(word, side, side, fill_fraction=rng.uniform(0.6, 0.9)))
  return np.stack(out)


def random_clip(arch: str, seed: int = 0) -> clip_weights.LoadedClip:
  """A CLIP of ``arch``'s size with N(0, 0.02) weights (LayerNorm scales 1)."""
  cfg = clip_open_clip.open_clip_config(arch)
  rng = np.random.default_rng(seed)
  shapes = clip_lib.init_shapes(cfg)

  def fill(path, spec):
    name = jax.tree_util.keystr(path)
    if 'ln' in name and 'scale' in name:
      return np.ones(spec.shape, np.float32)
    return 0.02 * rng.standard_normal(spec.shape, dtype=np.float32)

  params = jax.tree_util.tree_map_with_path(fill, shapes)
  params['logit_scale'] = np.float32(np.log(100.0))
  try:
    from open_clip.tokenizer import default_bpe  # a file of the installed package

    tok = ClipTokenizer.from_open_clip(default_bpe())
  except ImportError:
    raise SystemExit(
      'error: the CLIP rewards need open_clip installed for its BPE file'
    ) from None
  return clip_weights.LoadedClip(cfg, params, tok, f'random {arch}')


def build(name: str):
  config = base_config()
  if name == 'jpeg':
    config.rl.rewards = 'jpeg_compressibility'
    return api.build(config)
  if name in ('easyocr', 'rapidocr'):
    config.rl.rewards = 'ocr'
    config.ocr.engine = name
    config.ocr.num_workers = 1
    config.ocr.cache_size = 0
    reward = api.build(config)
    reward.get('ocr').pool.wait_ready()
    return reward
  loaded = random_clip(ARCHS[name])
  embedder = clip_rewards.ClipEmbedder(loaded, _BATCH.value, _DTYPE.value)
  if name == 'clipscore':
    return clip_rewards.ClipScore(embedder)
  return clip_rewards.PreferenceScore(embedder, 'pickscore')


def torch_clip() -> Callable[[np.ndarray], np.ndarray]:
  """open_clip ViT-L/14 (random weights): uint8 [N, H, W, 3] -> unit features.

  The preprocessing of `varrl_jax.models.clip_preprocess` in torch ops:
  bicubic antialiased resize (short side 224), rounded and clipped to uint8
  levels, centre crop, ``(x / 255 - mean) / std``.
  """
  import open_clip
  import torch
  import torch.nn.functional as F

  model = open_clip.create_model('ViT-L-14-quickgelu', pretrained=None).eval()
  size = model.visual.image_size[0]
  mean = torch.tensor(clip_lib.CLIP_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(clip_lib.CLIP_STD).view(1, 3, 1, 1)

  @torch.inference_mode()
  def embed(images_nhwc: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float()
    new_h, new_w, top, left = resize_shape(x.shape[2], x.shape[3], size)
    if (new_h, new_w) != tuple(x.shape[2:]):
      x = F.interpolate(x, (new_h, new_w), mode='bicubic', antialias=True)
      x = x.round().clamp(0, 255)
    x = x[:, :, top : top + size, left : left + size]
    x = (x / 255.0 - mean) / std
    return F.normalize(model.encode_image(x), dim=-1).numpy()

  return embed


def _text_rate(reward) -> str:
  """prompts/s of the (already compiled) CLIP text tower on new prompts."""
  emb = reward.embedder
  new = [f'{p} {i}' for i, p in enumerate(PROMPTS * _BATCH.value)][: _BATCH.value]
  t0 = time.perf_counter()
  emb.texts(new)
  return f'{len(new) / (time.perf_counter() - t0):.1f} prompts/s'


def _images_per_s(fn: Callable[[np.ndarray], object], images: np.ndarray) -> float:
  """Calls ``fn(images)`` once, or repeatedly for MIN_SECONDS if it is quick.

  A jpeg call takes about a millisecond, where one context switch on a busy
  machine would decide the number.
  """
  calls, t0 = 0, time.perf_counter()
  while True:
    fn(images)
    calls += 1
    elapsed = time.perf_counter() - t0
    if elapsed >= MIN_SECONDS:
      return calls * len(images) / elapsed


def _num(x: float) -> str:
  return f'{x:.0f}' if x >= 100 else f'{x:.3g}'


def _range(xs: list[float]) -> str:
  return f'{_num(min(xs))}-{_num(max(xs))}'


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # open_clip logs each model at INFO
  names = list(dict.fromkeys(_REWARDS.value))
  bad = [n for n in names if n not in KNOWN]
  if bad or _ROUNDS.value < 1 or _NUM_IMAGES.value < 1:
    why = f'--rewards: unknown {bad}, known {list(KNOWN)}' if bad else ''
    why = why or '--rounds and --num_images must be >= 1'
    print(f'error: {why}', file=sys.stderr)
    sys.exit(2)
  n, side, rounds = _NUM_IMAGES.value, _SIDE.value, _ROUNDS.value
  rng = random.Random(0)
  batches = [word_images(n, side, rng) for _ in range(rounds + 1)]
  prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
  targets = [()] * n
  print(f'{n} images of {side}x{side} per call, {rounds} alternating rounds, '
        f'{jax.device_count()} {jax.default_backend()} device(s)', flush=True)  # fmt: skip

  # 1. Build everything.
  fns: dict[str, Callable[[np.ndarray], object]] = {}
  closers, setup, warm, extra = [], {}, {}, {}
  try:
    for name in names + ([TORCH] if _TORCH.value and 'clipscore' in names else []):
      t0 = time.perf_counter()
      if name == TORCH:
        fns[name] = torch_clip()
      else:
        reward = build(name)
        closers.append(reward)
        fns[name] = lambda x, r=reward: r(x, prompts, targets)
      setup[name] = time.perf_counter() - t0
    # 2. Warm up on the timed shape (batches[0] is never timed).
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn(batches[0])
      warm[name] = time.perf_counter() - t0
      if name in ARCHS:
        extra[name] = _text_rate(closers[names.index(name)])
    # 3. Alternating rounds, order rotated by one each round.
    order = list(fns)
    speed: dict[str, list[float]] = {name: [] for name in order}
    for r in range(rounds):
      k = r % len(order)
      for name in order[k:] + order[:k]:
        speed[name].append(_images_per_s(fns[name], batches[r + 1]))
      print(f'round {r + 1}/{rounds}: '
            + '  '.join(f'{m} {_num(speed[m][-1])}' for m in order), flush=True)  # fmt: skip
  finally:
    for reward in closers:
      if hasattr(reward, 'close'):
        reward.close()

  print(f'{"reward":11s}{"images/s":>10s}{"min-max":>17s}{"setup_s":>9s}{"warm_s":>9s}')
  for name in order:
    print(
      f'{name:11s}{_num(statistics.median(speed[name])):>10s}'
      f'{_range(speed[name]):>17s}{setup[name]:9.1f}{warm[name]:9.1f}   '
      f'{extra.get(name, "")}'.rstrip()
    )

  def ratio(a: str, b: str) -> str:
    per_round = [x / y for x, y in zip(speed[a], speed[b])]
    return f'{_num(statistics.median(per_round))}x ({_range(per_round)})'

  if 'easyocr' in speed and len(order) > 1:
    print('relative to easyocr (median and min-max of the per-round ratios):')
    for k in order:
      if k != 'easyocr':
        print(f'  {k:11s}{ratio(k, "easyocr")}')
  if TORCH in speed:
    print(
      f'clipscore (JAX) / {TORCH} (torch), both from uint8 with preprocessing: '
      f'{ratio("clipscore", TORCH)}'
    )


if __name__ == '__main__':
  app.run(main)
