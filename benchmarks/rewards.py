r"""Reward throughput on this machine: images/s of each reward, side by side.

Run from the repository root:

  python -m benchmarks.rewards                     # all, 256x256, ~4 min on 2 cores
  python -m benchmarks.rewards --rewards=jpeg,clipscore --num_images=8

Rewards (each through its registered implementation, except that the CLIP
models get random weights of the real size, so nothing is downloaded):

- ``jpeg``: jpeg_compressibility (Pillow, in process);
- ``easyocr`` / ``rapidocr``: the ``ocr`` reward with that engine, one OCR
  worker process, cache off;
- ``clipscore``: CLIP ViT-L/14 (OpenAI's size, quick_gelu), jitted JAX;
- ``preference``: CLIP ViT-H/14 (HPS-v2 / PickScore size), jitted JAX.

Inputs are distinct 256x256 renders of words, with prompts from a small set
(as in RL, where a prompt's G images share it): the CLIP text tower runs in
the warm-up call and its features are cached afterwards; ``prompts/s`` is
the text tower alone. Each reward is warmed up (compiles, engine start),
then timed ``--repeats`` times on ``--num_images`` images; the median is
printed. ``--torch_reference`` also times open_clip's torch forward of the
same ViT-L/14 on the same cores (what a host worker pool would run).
Last lines: each reward's images/s relative to jpeg and to easyocr.
"""

from __future__ import annotations

import random
import time

import jax
import numpy as np
from absl import app, flags

from varrl_jax.config import base_config
from varrl_jax.models import clip as clip_lib
from varrl_jax.models import clip_open_clip, clip_weights
from varrl_jax.models.clip_tokenizer import ClipTokenizer
from varrl_jax.rewards import api
from varrl_jax.rewards import clip as clip_rewards
from varrl_jax.rewards.testing import render_text

_REWARDS = flags.DEFINE_list(
  'rewards',
  ['jpeg', 'easyocr', 'rapidocr', 'clipscore', 'preference'],
  'Rewards to time.',
)
_NUM_IMAGES = flags.DEFINE_integer('num_images', 4, 'Images per timed call.')
_SIDE = flags.DEFINE_integer('side', 256, 'Square image side.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed calls per reward (median).')
_BATCH = flags.DEFINE_integer('batch_size', 4, 'CLIP images per jitted call.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'CLIP dtype (float32 | bfloat16).')
_TORCH = flags.DEFINE_bool(
  'torch_reference', True, 'Also time open_clip ViT-L-14 (torch).'
)

ARCHS = {'clipscore': 'ViT-L-14-quickgelu', 'preference': 'ViT-H-14'}
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


def time_reward(name: str, batches: list[np.ndarray]) -> tuple[float, str]:
  t0 = time.perf_counter()
  reward = build(name)
  setup = time.perf_counter() - t0
  try:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(batches[0]))]
    targets = [()] * len(prompts)
    t0 = time.perf_counter()
    reward(batches[0], prompts, targets)  # warm-up: compile / engine start
    warm = time.perf_counter() - t0
    runs = []
    for images in batches[1:]:
      t0 = time.perf_counter()
      reward(images, prompts, targets)
      runs.append(len(images) / (time.perf_counter() - t0))
    extra = ''
    if name in ARCHS:
      emb = reward.embedder
      new = [f'{p} {i}' for i, p in enumerate(prompts * 2)][: _BATCH.value]
      emb.texts(new[:1])  # compile of the text tower is done; this is one batch
      t0 = time.perf_counter()
      emb.texts([f'{p}!' for p in new])
      extra = f'{len(new) / (time.perf_counter() - t0):.1f} prompts/s'
  finally:
    if hasattr(reward, 'close'):
      reward.close()
  med = float(np.median(runs))
  print(
    f'{name:11s}{med:10.2f}{f"{min(runs):.2f}-{max(runs):.2f}":>17s}'
    f'{setup:9.1f}{warm:9.1f}   {extra}',
    flush=True,
  )
  return med, extra


def time_torch_reference(batches: list[np.ndarray]) -> float:
  import open_clip
  import torch

  model = open_clip.create_model('ViT-L-14-quickgelu', pretrained=None).eval()
  x = torch.randn(_NUM_IMAGES.value, 3, 224, 224)
  runs = []
  with torch.no_grad():
    model.encode_image(x[:1])
    for _ in batches[1:]:
      t0 = time.perf_counter()
      model.encode_image(x)
      runs.append(len(x) / (time.perf_counter() - t0))
  med = float(np.median(runs))
  print(f'{"torch L/14":11s}{med:10.2f}{f"{min(runs):.2f}-{max(runs):.2f}":>17s}'
        '   (open_clip encode_image, preprocessed input)')  # fmt: skip
  return med


def main(argv: list[str]) -> None:
  del argv
  rng = random.Random(0)
  n, side = _NUM_IMAGES.value, _SIDE.value
  images = word_images(n * (_REPEATS.value + 1), side, rng)
  batches = [images[i * n : (i + 1) * n] for i in range(_REPEATS.value + 1)]
  print(f'{n} images of {side}x{side} per call, median of {_REPEATS.value} calls, '
        f'{jax.device_count()} {jax.default_backend()} device(s)')  # fmt: skip
  print(f'{"reward":11s}{"images/s":>10s}{"min-max":>17s}{"setup_s":>9s}{"warm_s":>9s}')
  speed = {}
  for name in _REWARDS.value:
    speed[name], _ = time_reward(name, batches)
  if _TORCH.value and 'clipscore' in speed:
    speed['torch L/14'] = time_torch_reference(batches)
  for base in ('jpeg', 'easyocr'):
    if base in speed:
      ratios = '  '.join(
        f'{k} {v / speed[base]:.3g}x' for k, v in speed.items() if k != base
      )
      print(f'relative to {base}: {ratios}')


if __name__ == '__main__':
  app.run(main)
