r"""Evaluate a model on CVTG-2K or a synthetic held-out split.

  python -m varrl_jax.evaluate --config=configs/tiny.py --split=heldout
  python -m varrl_jax.evaluate --config=configs/cvtg.py \
      --data=cvtg:/path/to/CVTG-2K --checkpoint=/path/to/ckpt

Generates ``config.eval.images_per_prompt`` images per prompt (at most
``config.eval.num_prompts`` prompts; 0 = all of CVTG-2K), OCRs them, and
reports Word Accuracy and NED overall and per group (CVTG-2K: subset and
region count 2-5; synthetic: split and number of target words). Writes
``WORKDIR/metrics.json``, ``WORKDIR/samples.jsonl`` (per image: targets and
what OCR read) and ``WORKDIR/grid.png`` (targets and OCR text under each
image). Sampling follows ``config.sampling``; the seed is ``config.eval.seed``.

CLIPScore (CVTG-2K's third metric, mean 2.5 max(cos, 0) of image and
prompt) is reported too when a local CLIP is given:
``--config.rewards.clip.path=/path/to/clip-vit-large-patch14`` (a Hugging
Face folder; open_clip files also need ``.arch`` and ``.tokenizer``, see
varrl_jax/config.py).
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli, fs
from varrl_jax import images as images_lib
from varrl_jax.data import synthetic
from varrl_jax.eval import evaluator, prompt_sets
from varrl_jax.models.family import build_model
from varrl_jax.rewards.service import make_pool
from varrl_jax.weights import load_weights

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file.', lock_config=True
)
_DATA = flags.DEFINE_string('data', None, 'cvtg:/path/to/CVTG-2K (overrides --split).')
_SPLIT = flags.DEFINE_string(
  'split', None, 'Synthetic split (default: config.eval.split).'
)
_CHECKPOINT = flags.DEFINE_string(
  'checkpoint', None, "Checkpoint (default: the config's)."
)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/eval', 'Output folder.')
_SOURCE = flags.DEFINE_enum(
  'source',
  'samples',
  list(evaluator.SOURCES),
  'What to score: the model samples, or (synthetic splits) the ground-truth '
  'renders or their tokenizer reconstructions.',
)


def run(
  config, data, split, checkpoint, workdir, source='samples'
) -> evaluator.EvalReport:
  spec = data or split or config.eval.split
  prompts = prompt_sets.from_spec(
    spec,
    config.eval.num_prompts,
    config.eval.data_seed,
    config.eval.cvtg_targets,
    synthetic.Variety.from_config(config.data),
  )
  model = build_model(config)
  # Fail fast on bad prompts, before any compile.
  evaluator.encode_prompts(model, prompts, config.eval.truncate_prompts)
  if source != 'samples' and spec.startswith('cvtg:'):
    raise ValueError(
      f'--source={source} needs ground-truth renders: use a synthetic --split, '
      'not --data=cvtg:...'
    )
  # Renders need no model; reconstructions only the tokenizer.
  parts = {'samples': ('tokenizer', 'transformer'), 'reconstructions': ('tokenizer',)}
  if source == 'renders':
    params, weights = {}, 'none (ground-truth renders)'
  else:
    params, weights = load_weights(config, model, checkpoint, parts[source])
  print(f'model weights: {weights}')
  clip = None
  if config.rewards.clip.path:
    from varrl_jax.rewards import clip as clip_rewards

    clip = clip_rewards.ClipScore(clip_rewards.embedder_from_config(config, 'clip'))
    print(f'CLIPScore model: {clip.embedder.source}')
  with make_pool(config) as pool:
    report = evaluator.evaluate(
      model, params, config, prompts, pool, source=source, clip=clip
    )
  workdir = fs.resolve(workdir)
  fs.makedirs(workdir)
  summary = {
    'data': spec,
    'source': source,
    'weights': weights,
    'num_prompts': len(prompts),
    'images_per_prompt': config.eval.images_per_prompt,
    'seed': config.eval.seed,
    'sampling': config.sampling.to_dict(),
    'case_sensitive': config.eval.case_sensitive,
    'clip': clip.embedder.source if clip else None,
    'metrics': report.flat,
    'ocr': report.ocr_stats,
    'seconds': report.seconds,
  }
  fs.write_text(fs.join(workdir, 'metrics.json'), json.dumps(summary, indent=2))
  fs.write_text(
    fs.join(workdir, 'samples.jsonl'),
    ''.join(json.dumps(r) + '\n' for r in report.records),
  )
  grid = images_lib.save_grid(
    fs.join(workdir, 'grid.png'),
    report.grid_images,
    evaluator.grid_captions(report.records, len(report.grid_images)),
    columns=4,
    scale=2,
  )
  for group, values in report.by_group.items():
    for value, s in sorted(values.items(), key=lambda kv: str(kv[0])):
      clip_s = '' if s.clipscore is None else f'  clipscore {s.clipscore:.4f}'
      print(
        f'  {group}={value}: word_accuracy {s.word_accuracy:.4f}  ned {s.ned:.4f}'
        f'{clip_s}  ({s.n_images} images, {s.n_words} words)'
      )
  s = report.summary
  print(f'metrics: {fs.join(workdir, "metrics.json")}  grid: {grid}')
  clip_s = '' if s.clipscore is None else f'  CLIPScore {s.clipscore:.4f}'
  print(
    f'{spec} ({source}): Word Accuracy {s.word_accuracy:.4f}  NED {s.ned:.4f}{clip_s}  '
    f'({s.n_images} images, {s.n_words} target words, {s.n_failed} OCR failures)'
  )
  return report


def main(argv):
  del argv
  cli.setup_compilation_cache(_CONFIG.value)
  cli.run_reporting_errors(
    run,
    _CONFIG.value,
    _DATA.value,
    _SPLIT.value,
    _CHECKPOINT.value,
    _WORKDIR.value,
    _SOURCE.value,
  )


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=cli.parse_flags)
