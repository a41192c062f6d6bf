"""An ablation run's record: what it measured and what makes two runs the same.

`execute` trains one run (`varrl_jax.train.train` by default) and returns its
record: held-out Word Accuracy / NED before and after, per image
(`paired.EvalArrays`, so that runs compare prompt by prompt), the reward
curve, wall time, overrides, the git commit, and fingerprints of the config
and the starting weights (`config_fingerprint`, `weights_fingerprint`) that
tell which records may be compared or reused (`finished_runs`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shlex
import subprocess
import time
from collections.abc import Callable

from absl import logging

from varrl_jax import fs, writers
from varrl_jax.experiments import aggregate, mp_overlap, paired, studies
from varrl_jax.experiments.studies import Run


def git_commit() -> dict | None:
  """{'commit', 'dirty'} of the checkout this package runs from, if it is one."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    sha = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=10
    )
    if sha.returncode != 0:
      return None
    status = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'],
      cwd=here,
      capture_output=True,
      text=True,
      timeout=30,
    )
    return {'commit': sha.stdout.strip(), 'dirty': bool(status.stdout.strip())}
  except (OSError, subprocess.SubprocessError):
    return None


def _summary_field(summary, name: str):
  """A field of an evaluation summary (a dict or a `metrics.Summary`)."""
  return summary[name] if isinstance(summary, dict) else getattr(summary, name)


def metric_curve(run_dir: str, name: str) -> list[list[float]]:
  """[[step, value], ...] of metric ``name`` from the run's metrics.jsonl
  (`writers.last_per_step`: the last write of a step wins)."""
  path = os.path.join(run_dir, 'metrics.jsonl')
  by_step = writers.last_per_step(path, lambda r: name in r)
  return [[s, float(by_step[s][name])] for s in sorted(by_step)]


def reward_curve(run_dir: str) -> list[list[float]]:
  """[[step, reward/mean], ...] (`metric_curve`)."""
  return metric_curve(run_dir, 'reward/mean')


def _mp_stats(run_dir: str, run_config) -> dict:
  """`mp_overlap.summarize` of the run; {} (with a warning) when its metrics
  cannot be read: a finished run keeps its record."""
  try:
    return mp_overlap.summarize(run_dir, grids=run_config.scales)
  except (OSError, ValueError) as e:
    logging.warning('MP statistics of %s unreadable: %s', run_dir, e)
    return {}


def _write_json(path: str, obj: dict) -> None:
  # fs.write_text: a record is complete or absent, never half-written.
  fs.write_text(path, json.dumps(obj, indent=2))


# Settings that cannot change an RL run's numbers, left out of the fingerprint
# so that adding one does not set records apart: how the tokenizer's conv
# weight gradients are computed (RL never differentiates the tokenizer),
# where compiled programs are cached, and how often a hung or crashed OCR
# read is tried again (it changes a reading only where the run would
# otherwise have lost it, which the record counts: ocr_failed_*), and whether
# the run evaluates its starting weights itself (eval.before: a sweep shares
# one such evaluation among its runs).
UNFINGERPRINTED = (
  'tokenizer.conv_weight_grad',
  'compilation_cache_dir',
  'ocr.retries',
  'eval.before',
)


def config_fingerprint(config) -> str:
  """A short hash of every value of ``config`` but `UNFINGERPRINTED`."""
  values = config.to_dict()
  for dotted in UNFINGERPRINTED:
    *parents, key = dotted.split('.')
    node = values
    for part in parents:
      node = node.get(part, {})
    node.pop(key, None)
  text = json.dumps(values, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(config) -> str:
  """A short hash of the manifest of the checkpoint the runs start from.

  Any re-export (another decoder, more pretraining) writes a new manifest,
  so records made from other weights are told apart even when the config,
  and so ``config.init_checkpoint``, is the same. 'random init' without one.
  """
  path = config.init_checkpoint
  if not path:
    return 'random init'
  try:
    text = fs.read_text(fs.join(path, 'manifest.json'))
  except OSError:
    return 'unreadable'
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_fingerprint(config, overrides: dict) -> str:
  """`config_fingerprint` of the config a run trains with (base + overrides)."""
  return config_fingerprint(studies.apply_overrides(config, overrides))


def finished_runs(config, workdir: str, weights: str) -> dict[str, tuple[str, dict]]:
  """{run fingerprint: (run path, record)} of the trained (not copied) runs in
  ``workdir`` made from this base config and these starting weights, whose
  evaluations read every image (a run with OCR failures is never a source)."""
  base = config_fingerprint(config)
  out = {}
  for path in aggregate.record_paths(workdir):
    try:
      with open(path) as f:
        rec = json.load(f)
      if rec.get('same_config_as') or rec.get('weights_fingerprint') != weights:
        continue
      if rec.get('base_config_fingerprint') != base:
        continue
      if aggregate.unread_images(rec):
        continue
      key = run_fingerprint(config, rec['overrides'])
    except (OSError, ValueError, KeyError, AttributeError):
      continue  # unreadable or from another config layout: never a source
    out.setdefault(key, (os.path.relpath(os.path.dirname(path), workdir), rec))
  return out


def copied_record(source: dict, run: Run, source_path: str) -> dict:
  """``source``'s record as the record of ``run`` (same config and seed)."""
  record = copy.deepcopy(source)
  record.update(
    study=run.study,
    run=run.name,
    seed=run.seed,
    overrides=_normalized(run.overrides),
    same_config_as=source_path,
  )
  return record


def _normalized(overrides: dict) -> dict:
  return json.loads(json.dumps(overrides))


def eval_settings(config) -> str:
  """A digest of what decides a held-out evaluation of given weights (the
  ``eval``, ``sampling`` and OCR engine settings; `paired.digest_of` of no
  images): runs that share it and their weights share their evaluation
  before RL."""
  return paired.digest_of([], config)


def default_split(config) -> int | None:
  """The base config's VMR split index (None: adaptive or unresolvable): the
  run of Table 3a at this index is the study's default."""
  from varrl_jax.rl import vmr

  try:
    return vmr.split_scale(studies.schedule_of(config), config.rl.vmr.m)
  except ValueError:
    return None


def train_command(run: Run, base_flags: tuple[str, ...], run_dir: str) -> str:
  """The varrl_jax.train command line that makes the same run alone.

  ``base_flags``: the sweep's ``--config=...`` and ``--config.KEY=...`` flags.
  """
  return shlex.join(
    [
      'python',
      '-m',
      'varrl_jax.train',
      *base_flags,
      *run.flags(),
      f'--workdir={run_dir}',
    ]
  )


def execute(
  run: Run,
  config,
  run_dir: str,
  train_fn: Callable,
  pool=None,
  base_flags: tuple[str, ...] = (),
  git: dict | None = None,
  baseline: tuple[str, dict] | None = None,
) -> dict:
  """Trains one run and returns its record (not yet written).

  ``git``: the commit of the code that runs (`git_commit` when the sweep
  started, as the checkout may move on while a long sweep runs).
  ``baseline``: (path, record) of a finished run of the same starting
  weights and evaluation settings (`eval_settings`): the run skips its own
  evaluation before RL (``eval.before=False``) and its record takes that
  one's, marked ``before_from``.
  """
  run_config = studies.apply_overrides(config, run.overrides)
  if baseline is not None and baseline[1].get('eval_settings') != eval_settings(
    run_config
  ):
    baseline = None
  if baseline is not None:
    run_config.eval.before = False
  os.makedirs(run_dir, exist_ok=True)
  t0 = time.time()
  kwargs = {} if pool is None else {'pool': pool}
  result = train_fn(run_config, run_dir, **kwargs)
  wall = time.time() - t0
  before, after = result['before'], result['after']
  if before is None:
    if baseline is None:
      raise ValueError('the run made no evaluation before RL and has no baseline')
    before = {
      'word_accuracy': baseline[1]['word_accuracy_before'],
      'ned': baseline[1]['ned_before'],
      'n_failed': baseline[1].get('ocr_failed_before', 0),
    }
  record = {
    'study': run.study,
    'run': run.name,
    'seed': run.seed,
    'overrides': _normalized(run.overrides),
    'budget_updates': int(run_config.rl.num_updates),
    'word_accuracy_before': float(_summary_field(before, 'word_accuracy')),
    'ned_before': float(_summary_field(before, 'ned')),
    'word_accuracy_after': float(_summary_field(after, 'word_accuracy')),
    'ned_after': float(_summary_field(after, 'ned')),
    # Images whose OCR crashed or timed out count as unread: such a run's
    # figures are low for reasons outside the model (the report warns).
    'ocr_failed_before': int(_summary_field(before, 'n_failed')),
    'ocr_failed_after': int(_summary_field(after, 'n_failed')),
    'eval_split': run_config.eval.split,
    'wall_seconds': wall,
    'reward_curve': reward_curve(run_dir),
    # Per scale, over the prefix updates: MP mask coverage and the K
    # branches' mask overlap ({} without MP stats; `mp_overlap`).
    'mp_stats': _mp_stats(run_dir, run_config),
    # The split of every update (adaptive m moves it), [[step, m], ...].
    'split_curve': metric_curve(run_dir, 'vmr/m'),
    'base_flags': list(base_flags),
    # Of the config before the study's overrides: records made from
    # different base configs do not compare (the report warns).
    'base_config_fingerprint': config_fingerprint(config),
    # Of the starting weights: records from other weights never mix.
    'weights_fingerprint': weights_fingerprint(config),
    'command': train_command(run, base_flags, run_dir),
    'git': git if git is not None else git_commit(),
    'finished': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  # Per image, in prompt order: what paired comparisons need (`paired`).
  for name in ('eval_before', 'eval_after'):
    arrays = paired.read_eval(run_dir, name, run_config)
    record[name] = None if arrays is None else arrays.to_json()
  record['eval_settings'] = eval_settings(run_config)
  if baseline is not None and result['before'] is None:
    record['eval_before'] = baseline[1].get('eval_before')
    record['before_from'] = baseline[0]
  record['eval_prompts'] = int(run_config.eval.num_prompts)
  record['ocr_engine'] = str(run_config.ocr.engine)
  record['default_m'] = default_split(config)
  schedule = studies.schedule_of(run_config)
  # Pixels of the image side the last scale reaches (Table 3a's fractions).
  record['image_side'] = int(schedule.resolution(schedule.num_scales - 1))
  record['updates'] = len(record['reward_curve']) or record['budget_updates']
  for key in ('word_accuracy_after', 'ned_after'):
    if not math.isfinite(record[key]):
      raise FloatingPointError(f'{key} is {record[key]}')
  return record
