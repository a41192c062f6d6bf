r"""Sample images for prompts with the KV-cached sampler and OCR them.

  python -m varrl_jax.sample --config=configs/tiny.py \
      --prompt="a wooden sign that reads 'OPEN'" --workdir=/tmp/varrl_sample
  python -m varrl_jax.sample --config=configs/var.py:16 \
      --config.init_checkpoint=DIR --prompt=207 --prompt=88 --ocr=none

A prompt is whatever the model family conditions on: text for ``varrl`` and
``infinity``, an ImageNet class id for the class-conditional ``var`` family.
Writes ``WORKDIR/samples.png`` (one row per prompt, OCR text under each
image) and ``WORKDIR/samples.npz`` (``tokens`` int32 [N, L, *token_shape],
every image's tokens in schedule order: ids [N, L], or Infinity's bits
[N, L, d]; ``scale_index`` int32 [L]; ``images`` uint8 [N, H, W, 3];
``prompts`` [N]), and prints what the OCR engine read. ``--reconstruct=IMAGE.png``
instead round-trips an image through the tokenizer (encode to the scales,
decode) and writes the pair.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from varrl_jax import checkpoint, cli, sampling
from varrl_jax import images as images_lib
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file.', lock_config=True
)
_PROMPTS = flags.DEFINE_multi_string(
  'prompt',
  [],
  "Prompt(s); repeat the flag for several (default: the family's examples).",
)
_NUM = flags.DEFINE_integer('num_per_prompt', 4, 'Images per prompt.')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/sample', 'Output folder.')
_SEED = flags.DEFINE_integer('seed', None, 'Sampling seed (default: config.seed).')
_OCR = flags.DEFINE_enum(
  'ocr', 'rapidocr', ['rapidocr', 'easyocr', 'none'], 'OCR engine.'
)
_RECONSTRUCT = flags.DEFINE_string(
  'reconstruct', None, 'PNG to round-trip through the tokenizer.'
)


def _load_png(path: str, image_size) -> np.ndarray:
  from PIL import Image

  try:
    img = np.asarray(Image.open(path).convert('RGB'))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read image ({e})') from None
  if img.shape[:2] != tuple(image_size):
    raise ValueError(
      f'{path}: image is {img.shape[0]}x{img.shape[1]} (HxW), the config expects '
      f'{image_size[0]}x{image_size[1]} (config.image_size)'
    )
  return img[None]


def _ocr_texts(images: np.ndarray, engine_name: str, config) -> list[str]:
  if engine_name == 'none':
    return [''] * len(images)
  from varrl_jax.rewards import service

  engine = service.engine_factory(config, engine_name)()
  return [' '.join(engine.read(img).texts) for img in images]


def run(config, prompts, num_per_prompt, workdir, seed, engine_name, reconstruct):
  model = build_model(config)
  seed = config.seed if seed is None else seed
  # Validate every input before any compile so mistakes fail in a second.
  if reconstruct:
    image = _load_png(reconstruct, model.schedule.image_size)
  else:
    prompts = list(prompts) or list(model.example_prompts)
    batch = [p for p in prompts for _ in range(num_per_prompt)]
    cond = model.encode_prompts(batch)
    opts = SamplingOptions.from_config(config.sampling)
  if config.init_checkpoint:
    params = checkpoint.load_params(
      config.init_checkpoint, model, config=config.to_dict()
    )
  else:
    logging.warning(
      'No checkpoint configured (config.init_checkpoint is empty): sampling '
      'from randomly initialised weights.'
    )
    params = model.init(jax.random.key(seed))
  os.makedirs(workdir, exist_ok=True)

  if reconstruct:
    tokens = model.encode_images(params, image)
    recon = np.asarray(model.decode_tokens(params, tokens))
    path = images_lib.save_grid(
      os.path.join(workdir, 'reconstruction.png'),
      np.concatenate([image, recon]),
      ['input', f'{tokens.shape[1]} tokens'],
      columns=2,
      scale=2,
    )
    print(f'reconstruction written to {path}')
    return

  sampler = sampling.Sampler(model, opts)
  t0 = time.time()
  out = sampler.sample(params, cond, jax.random.key(seed))
  imgs = np.asarray(jax.device_get(out.images))
  npz = _save_npz(
    os.path.join(workdir, 'samples.npz'),
    tokens=np.asarray(jax.device_get(out.tokens), np.int32),
    scale_index=np.asarray(out.scale_index, np.int32),
    images=imgs,
    prompts=np.asarray(batch),
  )
  print(
    f'sampled {len(batch)} images of {model.schedule.num_tokens} tokens '
    f'in {time.time() - t0:.1f}s (incl. compile)'
  )
  if engine_name == 'none':
    captions = [p[-24:] for p in batch]
  else:
    read = _ocr_texts(imgs, engine_name, config)
    for prompt, got in zip(batch, read):
      print(f'{prompt!r} -> OCR {got!r}')
    captions = [f'{p[-24:]}\nOCR: {r}' for p, r in zip(batch, read)]
  path = images_lib.save_grid(
    os.path.join(workdir, 'samples.png'),
    imgs,
    captions,
    columns=num_per_prompt,
    scale=2,
  )
  print(f'image grid written to {path}')
  print(f'tokens and images written to {npz}')


def _save_npz(path: str, **arrays) -> str:
  """Writes the arrays to ``path`` atomically (a temporary file, then rename)."""
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def main(argv):
  del argv
  cli.setup_compilation_cache(_CONFIG.value)
  cli.run_reporting_errors(
    run,
    _CONFIG.value,
    _PROMPTS.value,
    _NUM.value,
    _WORKDIR.value,
    _SEED.value,
    _OCR.value,
    _RECONSTRUCT.value,
  )


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=cli.parse_flags)
