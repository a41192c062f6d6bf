r"""OCR cost per image at equal reading accuracy, on the shipped model's rollouts.

Run from the repository root (one timed run at a time on a shared host):

  flock /work/scratch/bench.lock python -m benchmarks.ocr_cost   # ~3 min, 2 cores
  python -m benchmarks.ocr_cost --updates=1 --num_renders=16     # quicker

Images (all 40x160 with configs/tiny.py):

- ``rollouts``: ``--updates`` RL rollout batches of the config's model (the
  shipped tiny checkpoint), sampled exactly as an RL update does
  (`rl.loop.update_prompts`, the config's sampling options, the VMR split
  and K branches of `rl.rollout.sample`, one chunk), key ``--rollout_seed``. Their
  targets are the words the prompts ask for; there is no ground truth.
- ``renders``: ``--num_renders`` held-out synthetic renders of the full data
  variety (one or two words, eight faces, random size and place, noisy
  backgrounds; the truth is the rendered text): small text, known truth.
- ``recon``: the same renders through the model's tokenizer (encode, decode;
  it was trained on the narrower tiny variety): model-like blur and damage
  with a known truth.

Variants, each one in-process engine with one thread (what one OCR worker
runs), warmed on a few images before timing: EasyOCR and RapidOCR with
upscale factor 1 and 2 (``upscale_max_factor``; 40 px images get the full
2x under the default ``upscale_min_side=128``), and ``easyocr_2x_batched``:
EasyOCR's CRAFT detector run once on a stacked chunk of images, then the
per-crop recognizer per image (easyocr's ``readtext_batched`` path; on CPU
easyocr recognizes crops one at a time whatever its ``batch_size``).

Method: the images are cut into chunks of ``--chunk`` images; each chunk is
read by every variant, the order rotated by one per chunk, so load changes
on a shared host hit all variants alike. Seconds per image = total time /
images, wall and CPU (the process's CPU time: what the work costs a core
of its own, much less inflated than wall time on a busy shared host); the
printed cost ratios are the median over chunks of the per-chunk ratio of
CPU seconds (wall in brackets). Accuracy: the OCR reward (``config.rl.reward.kind``,
`rewards.text`) against the targets: its mean with standard error, the
paired difference to ``easyocr_2x`` (the current default) with its standard
error, Pearson r of the per-image rewards with ``easyocr_2x`` (``r``) and of
the rewards minus their prompt group's mean (``adv r``: the signal GRPO's
advantages see), the share of images read identically (``same``) and of
rollouts whose whole reading is the target (``exact``); on renders and
reconstructions, word accuracy (the whole normalized reading equals the
words).

Last lines: reward agreement with easyocr 2x, then cost ratios, the last
``rapidocr_vs_easyocr_cost N.NNx`` (rapidocr at 2x over easyocr at 2x, CPU
seconds; the line before it the same in wall seconds).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax.rewards import ocr as ocr_lib
from varrl_jax.rewards import text as text_lib
from varrl_jax.rewards.types import OcrResult, OcrWord

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'RL config.')
_UPDATES = flags.DEFINE_integer('updates', 2, 'Rollout batches (tiny: 32 images).')
_NUM_RENDERS = flags.DEFINE_integer('num_renders', 32, 'Held-out renders.')
_CHUNK = flags.DEFINE_integer('chunk', 8, 'Images per timed chunk.')
_SEED = flags.DEFINE_integer('rollout_seed', 0, 'Rollout sampling key.')
_VARIANTS = flags.DEFINE_list(
  'variants',
  ['easyocr_2x', 'easyocr_1x', 'easyocr_2x_batched', 'rapidocr_2x', 'rapidocr_1x'],
  'Variants to compare; easyocr_2x (the reference) must be among them.',
)
REFERENCE = 'easyocr_2x'


# ---------------------------------------------------------------------------
# Images.
# ---------------------------------------------------------------------------


def rollout_images(config, model, params, updates: int, seed: int):
  """uint8 [N, H, W, 3] rollout images and their targets, as RL samples them."""
  from varrl_jax.policy import SamplingOptions
  from varrl_jax.rl import loop
  from varrl_jax.sampling import Sampler

  method = loop.Method.from_config(config, model)
  sampler = Sampler(model, SamplingOptions.from_config(config.sampling))
  g, k = config.rl.group_size, config.rl.vmr.num_branches
  images, targets = [], []
  for u in range(updates):
    prompts = loop.update_prompts(config, u)
    rows = [p for p, _ in prompts for _ in range(g)]
    cond = model.encode_prompts(rows)
    key = jax.random.fold_in(jax.random.key(seed), u)
    prefix_key, suffix_key = jax.random.split(key)
    if method.use_vmr:  # prefix to scale m, then K branches (rl/rollout.py)
      state = sampler.sample_prefix(params, cond, prefix_key, method.m)
      out = sampler.branch(params, state, suffix_key, method.m, k)
      rep = k
    else:
      out, rep = sampler.sample(params, cond, prefix_key), 1
    images.append(np.asarray(jax.device_get(out.images)))
    targets += [tuple(t) for _, t in prompts for _ in range(g * rep)]
  return np.concatenate(images), targets


def render_images(config, model, params, n: int):
  """Held-out renders (full variety) and their tokenizer reconstructions."""
  from varrl_jax.data import synthetic

  data = synthetic.SyntheticTextDataset(
    'heldout', tuple(config.image_size), seed=config.seed, variety=synthetic.FULL
  )
  examples = [data[i] for i in range(n)]
  renders = np.stack([e.image for e in examples])
  roundtrip = jax.jit(lambda p, x: model.decode_tokens(p, model.encode_images(p, x)))
  recon = np.asarray(jax.device_get(roundtrip(params, renders)))
  return renders, recon, [tuple(e.targets) for e in examples]


# ---------------------------------------------------------------------------
# Variants.
# ---------------------------------------------------------------------------


def easyocr_read_stacked(engine: ocr_lib.EasyOcrEngine, images: np.ndarray) -> list:
  """``engine.read`` of each image, but CRAFT runs once on the stacked batch.

  images: uint8 [B, H, W, 3], one shape. Same upscaling, colour handling and
  box mapping as `EasyOcrEngine`; the per-crop recognizer runs per image.
  """
  import cv2

  reader, cfg = engine._reader, engine.upscale_config
  height, width = images.shape[1:3]
  factor = ocr_lib.upscale_factor(height, width, cfg.min_side, cfg.max_factor)
  rgb = np.stack([ocr_lib.upscale(im, factor, cfg.interpolation) for im in images])
  horizontal, free = reader.detect(rgb, reformat=False, **engine.detect_kwargs)
  results = []
  for image, h_list, f_list in zip(rgb, horizontal, free):
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    lines = reader.recognize(
      grey, h_list, f_list, reformat=False, **engine.recognize_kwargs
    )
    words = [
      OcrWord(
        text=str(t),
        box=ocr_lib.quad_to_box(pts, factor, height, width),
        confidence=float(c),
      )
      for pts, t, c in lines
      if float(c) >= engine.min_confidence and t.strip()
    ]
    results.append(OcrResult(words=tuple(words)))
  return results


def make_variants(names: list[str], min_side: int) -> dict:
  """name -> callable(images [B, H, W, 3]) -> list[OcrResult]."""
  engines, variants = {}, {}
  for name in names:
    engine_name, factor = name.split('_')[0], int(name.split('_')[1][0])
    if (engine_name, factor) not in engines:
      engines[engine_name, factor] = ocr_lib.make_engine(
        engine_name,
        num_threads=1,
        upscale_config=ocr_lib.UpscaleConfig(min_side=min_side, max_factor=factor),
      )
    engine = engines[engine_name, factor]
    if name.endswith('_batched'):
      variants[name] = lambda x, e=engine: easyocr_read_stacked(e, x)
    else:
      variants[name] = lambda x, e=engine: [e.read(im) for im in x]
  return variants


def time_variants(variants: dict, images: np.ndarray, chunk: int):
  """Reads every image with every variant, chunk by chunk, rotating the order.

  Returns (results: name -> list[OcrResult], wall and cpu: name -> seconds
  per chunk). CPU seconds are the process's (all its threads; the engines
  run one), which a busy shared host inflates much less than wall time.
  """
  names = list(variants)
  results = {n: [] for n in names}
  wall = {n: [] for n in names}
  cpu = {n: [] for n in names}
  for c, start in enumerate(range(0, len(images), chunk)):
    part = images[start : start + chunk]
    for name in names[c % len(names) :] + names[: c % len(names)]:
      t0, c0 = time.perf_counter(), time.process_time()
      results[name] += variants[name](part)
      cpu[name].append(time.process_time() - c0)
      wall[name].append(time.perf_counter() - t0)
  return results, wall, cpu


# ---------------------------------------------------------------------------
# Accuracy.
# ---------------------------------------------------------------------------


def reading(result: OcrResult) -> str:
  return text_lib.normalize_text(' '.join(result.texts))


def word_accuracy(results: list, targets: list) -> float:
  return float(
    np.mean(
      [
        reading(r) == text_lib.normalize_text(' '.join(t))
        for r, t in zip(results, targets)
      ]
    )
  )


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  if a.std() == 0 or b.std() == 0:
    return float('nan')
  return float(np.corrcoef(a, b)[0, 1])


def centred(rewards: np.ndarray, group: int) -> np.ndarray:
  """Rewards minus their prompt group's mean (rows are prompt-major): what
  GRPO's advantages see."""
  r = rewards.reshape(-1, group)
  return (r - r.mean(axis=1, keepdims=True)).ravel()


def cost_ratio(seconds: dict, a: str, b: str) -> float:
  """Median over chunks of seconds(a) / seconds(b)."""
  return statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))


def main(argv: list[str]) -> None:
  del argv
  from varrl_jax.models.family import build_model
  from varrl_jax.weights import load_weights

  config = _CONFIG.value
  names = list(_VARIANTS.value)
  if REFERENCE not in names:
    raise app.UsageError(f'--variants must include {REFERENCE}')
  t0 = time.perf_counter()
  model = build_model(config)
  params, source = load_weights(config, model)
  rollouts, roll_targets = rollout_images(
    config, model, params, _UPDATES.value, _SEED.value
  )
  renders, recon, render_targets = render_images(
    config, model, params, _NUM_RENDERS.value
  )
  images_s = time.perf_counter() - t0

  variants = make_variants(names, config.ocr.upscale_min_side)
  for fn in variants.values():  # warm-up: lazy init, first allocations
    fn(renders[: min(4, len(renders))])
  sets = {'rollouts': rollouts, 'renders': renders, 'recon': recon}
  results, wall, cpu = {}, {}, {}
  for set_name, images in sets.items():
    results[set_name], wall[set_name], cpu[set_name] = time_variants(
      variants, images, _CHUNK.value
    )

  kind = config.rl.reward.kind

  def rewards(name):
    out = text_lib.rewards_for_batch(roll_targets, results['rollouts'][name], kind)
    return out.rewards.astype(np.float64)

  ref = rewards(REFERENCE)
  n = len(rollouts)
  group = n // (_UPDATES.value * config.rl.prompts_per_update)  # G K per prompt
  print(
    f'{n} rollouts ({_UPDATES.value} updates of {config.rl.prompts_per_update} '
    f'prompts x G {config.rl.group_size}, weights: {source}), {len(renders)} '
    f'renders + reconstructions, {rollouts.shape[1]}x{rollouts.shape[2]}; '
    f'images made in {images_s:.0f} s; reward {kind}; one thread per engine'
  )
  print(
    f'{"variant":20s}{"wall roll":>10s}{"cpu roll":>9s}{"cpu rend":>9s}{"reward":>15s}'
    f'{"diff vs 2x":>16s}{"r vs 2x":>8s}{"adv r":>6s}{"same":>6s}{"exact":>7s}'
    f'{"renders":>8s}{"recon":>7s}'
  )
  for name in names:
    rew = rewards(name)
    diff = rew - ref
    same = np.mean(
      [
        reading(a) == reading(b)
        for a, b in zip(results['rollouts'][name], results['rollouts'][REFERENCE])
      ]
    )
    exact = word_accuracy(results['rollouts'][name], roll_targets)
    print(
      f'{name:20s}{sum(wall["rollouts"][name]) / n:10.4f}'
      f'{sum(cpu["rollouts"][name]) / n:9.4f}'
      f'{sum(cpu["renders"][name]) / len(renders):9.4f}'
      f'{f"{rew.mean():.3f}+-{rew.std(ddof=1) / np.sqrt(n):.3f}":>15s}'
      f'{f"{diff.mean():+.3f}+-{diff.std(ddof=1) / np.sqrt(n):.3f}":>16s}'
      f'{pearson(rew, ref):8.2f}'
      f'{pearson(centred(rew, group), centred(ref, group)):6.2f}'
      f'{same:6.2f}{exact:7.2f}'
      f'{word_accuracy(results["renders"][name], render_targets):8.2f}'
      f'{word_accuracy(results["recon"][name], render_targets):7.2f}'
    )

  for name in names:
    if name != REFERENCE:
      print(f'{name}_vs_easyocr_2x_reward_r {pearson(rewards(name), ref):.2f}x')
  roll = cpu['rollouts']
  pairs = [
    ('easyocr_1x_vs_2x_cost', 'easyocr_1x', 'easyocr_2x'),
    ('easyocr_batched_vs_2x_cost', 'easyocr_2x_batched', 'easyocr_2x'),
    ('rapidocr_1x_vs_2x_cost', 'rapidocr_1x', 'rapidocr_2x'),
    ('rapidocr_1x_vs_easyocr_cost', 'rapidocr_1x', 'easyocr_2x'),
    ('rapidocr_vs_easyocr_cost', 'rapidocr_2x', 'easyocr_2x'),
  ]
  for i, (label, a, b) in enumerate(pairs):
    if a not in roll or b not in roll:
      continue
    in_wall = cost_ratio(wall['rollouts'], a, b)
    if i < len(pairs) - 1:
      print(f'{label} {cost_ratio(roll, a, b):.2f}x  (wall {in_wall:.2f}x)')
    else:
      print(f'wall_{label} {in_wall:.2f}x')
      print(f'{label} {cost_ratio(roll, a, b):.2f}x')


if __name__ == '__main__':
  app.run(main)
