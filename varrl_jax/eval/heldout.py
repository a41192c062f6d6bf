"""The held-out evaluation of `varrl_jax.train`, before and after RL.

Word Accuracy and NED (and CLIPScore when a CLIP model is configured) when
the reward has an ``ocr`` term and the prompts carry text targets;
otherwise the configured reward's mean and std, total and per term
(`eval.reward_eval`). The prompts: the synthetic ``config.eval.split``, a
fixed choice of the configured classes for class prompts, or the held-out
prompts of a text list (``config.rl.heldout_prompts``).
"""

from __future__ import annotations

import json

import numpy as np

from varrl_jax import distributed, fs
from varrl_jax import images as images_lib
from varrl_jax.data import prompt_sources, synthetic
from varrl_jax.eval import evaluator, prompt_sets, reward_eval


def uses_ocr_eval(reward, source) -> bool:
  """Word Accuracy needs text targets and the OCR pool (module docstring).

  Text lists have targets on every prompt when the reward has an ocr term
  (`prompt_sources.text_prompts` checks it)."""
  return reward.get('ocr') is not None and isinstance(
    source, (prompt_sources.SyntheticPrompts, prompt_sources.TextPrompts)
  )


def eval_split(config, source) -> str:
  if isinstance(source, prompt_sources.TextPrompts) and source.heldout:
    return 'rl.heldout_prompts'
  return config.eval.split


def eval_prompts(config, source) -> list[prompt_sets.EvalPrompt]:
  ec = config.eval
  if isinstance(source, prompt_sources.ClassPrompts):
    return [
      prompt_sets.EvalPrompt(p, t, {'class': int(p)}, f'classes/{i}')
      for i, (p, t) in enumerate(source.evaluation(ec.num_prompts, ec.data_seed))
    ]
  if isinstance(source, prompt_sources.TextPrompts) and source.heldout:
    # The prompts config.rl.heldout_prompts kept out of training.
    return [
      prompt_sets.EvalPrompt(p, t, {'regions': len(t)}, f'heldout_prompts/{i}')
      for i, (p, t) in enumerate(source.evaluation(ec.num_prompts, ec.data_seed))
    ]
  return prompt_sets.synthetic_prompts(
    ec.split, ec.num_prompts, ec.data_seed, synthetic.Variety.from_config(config.data)
  )


_CLIP_SCORERS: dict = {}


def clip_scorer(config, reward):
  """CVTG-2K's third metric, CLIPScore, when a CLIP model is configured: the
  reward's own ``clipscore`` term, or one loaded once per path."""
  term = reward.get('clipscore')
  if term is not None or not config.rewards.clip.path:
    return term
  key = config.rewards.clip.path
  if key not in _CLIP_SCORERS:
    from varrl_jax.rewards import clip as clip_rewards

    embedder = clip_rewards.embedder_from_config(config, 'clip')
    _CLIP_SCORERS[key] = clip_rewards.ClipScore(embedder)
  return _CLIP_SCORERS[key]


def evaluate(config, model, params, reward, source, workdir: str, name: str, mesh):
  prompts = eval_prompts(config, source)
  if uses_ocr_eval(reward, source):
    report = evaluator.evaluate(
      model,
      params,
      config,
      prompts,
      reward.get('ocr').pool,
      progress=False,
      mesh=mesh,
      clip=clip_scorer(config, reward),
    )
  else:
    report = reward_eval.evaluate(model, params, config, prompts, reward, mesh)
  if distributed.is_main():
    out = fs.join(workdir, name)
    fs.makedirs(out)
    fs.write_text(
      fs.join(out, 'metrics.json'),
      json.dumps(
        {'split': eval_split(config, source), 'metrics': report.flat}, indent=2
      ),
    )
    if getattr(report, 'records', None) is not None:
      # Per image (prompt key, targets, reading, words right): what paired
      # comparisons of two runs on the same prompts and keys need.
      fs.write_text(
        fs.join(out, 'records.jsonl'),
        ''.join(json.dumps(r, default=float) + '\n' for r in report.records),
      )
  return report


def captions(report, n: int) -> list[str]:
  if isinstance(report, reward_eval.RewardReport):
    return reward_eval.grid_captions(report.records, n)
  return evaluator.grid_captions(report.records, n)


def print_before(before, ocr_eval: bool) -> None:
  if ocr_eval:
    print(
      f'held-out before: Word Accuracy {before.summary.word_accuracy:.4f}  '
      f'NED {before.summary.ned:.4f}'
    )
  else:
    print(f'held-out before: {before.summary.line()}')


def report_change(config, source, workdir: str, before, after, ocr_eval: bool) -> None:
  """Writes ``WORKDIR/before_after.png`` (the after row alone without a
  ``before`` evaluation, ``eval.before=False``) and prints the change."""
  n = min(len(after.grid_images), 8)
  rows = [] if before is None else [before]
  images = np.concatenate([r.grid_images[:n] for r in [*rows, after]])
  labels = [] if before is None else [f'before\n{c}' for c in captions(before, n)]
  grid = images_lib.save_grid(
    fs.join(workdir, 'before_after.png'),
    images,
    labels + [f'after\n{c}' for c in captions(after, n)],
    columns=n,
    scale=2,
    caption_lines=3,
  )
  print(f'before/after grid: {grid}')
  a = after.summary
  split = eval_split(config, source)
  if before is None:
    line = (
      f'Word Accuracy {a.word_accuracy:.4f}  NED {a.ned:.4f}' if ocr_eval else a.line()
    )
    print(f'held-out after: {line}  ({split})')
    return
  b = before.summary
  if ocr_eval:
    print(
      f'held-out Word Accuracy {b.word_accuracy:.4f} -> {a.word_accuracy:.4f}  '
      f'NED {b.ned:.4f} -> {a.ned:.4f}  ({split}, {a.n_words} words)'
    )
  else:
    print(f'held-out {b.change(a)}  ({a.n_images} images)')
