r"""The paper's ablations at small scale: resumable sweeps of `varrl_jax.train`.

  python -m varrl_jax.experiments.ablate --config=configs/tiny.py --study=table4a
  python -m varrl_jax.experiments.ablate --config=configs/tiny.py --study=table3b \
      --seeds=2 --budget_updates=20 --workdir=workdir/ablate --max_minutes=60
  python -m varrl_jax.experiments.ablate --config=configs/tiny.py --study=table5 --dry_run
  python -m varrl_jax.experiments.ablate --config=configs/tiny.py --study=table4a --report

Studies (`varrl_jax.experiments.studies`): table4a (vanilla GRPO, +VMR,
+VMR+PANW, +MP; 3 seeds by default), table3a (split m at every middle scale),
table3b (alpha), table5 (K), table4b (3:1 vs coarse; 2 seeds by default).

Budget: every run gets the same fixed number of updates, ``--budget_updates``
(default the config's ``rl.num_updates``); its wall time is recorded. The
comparison is at equal updates, as in the paper; VMR modes cost more per
update (K suffix branches). ``--max_minutes`` bounds a sitting: no new run
starts after that, and the same command later continues the sweep.

Resumable: each finished run writes ``WORKDIR/STUDY/RUN/seedS/record.json``
(held-out WA/NED before and after, reward curve, wall time, overrides, git
commit); a run with a record is skipped. A run that crashes writes no
record; the sweep goes on with the next and exits with code 1 listing the
failures. A run interrupted mid-way resumes from its own train-state
checkpoint (`varrl_jax.train` exact resume). A record also counts the
evaluation images whose OCR crashed or timed out (``ocr_failed_before``,
``ocr_failed_after``): they read as nothing, so the sweep's log and the
report warn, and such a run is never reused; move its folder aside (any
name but ``seedS``) and the next sweep trains it again.

Same config, same run: a run whose full config (base config + overrides,
seed included) and starting weights equal those of a finished run of any
study in the workdir is not trained again; its record is that run's,
copied under the new path with ``same_config_as`` naming the source (on
tiny, the full method at seed s is also Table 3a's default m, 3b's alpha
0.6, 5's K = 2 and 4b's 3:1 at seed s), and the report says so.
``--noreuse_same_config`` trains it anyway. After the runs (and with
``--report`` alone) the records are aggregated into ``WORKDIR/STUDY.md``
and ``WORKDIR/STUDY_reward.png`` (`varrl_jax.experiments.aggregate`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Callable

from varrl_jax import fs
from varrl_jax.experiments import aggregate, studies
from varrl_jax.experiments.records import (  # noqa: F401 (re-exported)
  _normalized,
  _write_json,
  config_fingerprint,
  copied_record,
  execute,
  finished_runs,
  git_commit,
  reward_curve,
  run_fingerprint,
  train_command,
  weights_fingerprint,
)
from varrl_jax.experiments.studies import Run


@dataclasses.dataclass
class SweepResult:
  done: list[str] = dataclasses.field(default_factory=list)  # run paths
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)
  not_started: list[str] = dataclasses.field(default_factory=list)  # out of time
  reused: list[tuple[str, str]] = dataclasses.field(
    default_factory=list
  )  # (path, source)


def sweep(
  config,
  runs: list[Run],
  workdir: str,
  *,
  train_fn: Callable | None = None,
  pool_factory: Callable | None = None,
  max_minutes: float | None = None,
  base_flags: tuple[str, ...] = (),
  log: Callable[[str], None] = print,
  reuse_same_config: bool = True,
) -> SweepResult:
  """Runs every run without a record; see the module doc.

  ``train_fn(config, workdir[, pool=...]) -> {'before': summary, 'after':
  summary}`` defaults to `varrl_jax.train.train`; ``pool_factory()`` makes a
  fresh OCR pool per run (tests inject engines this way; the default is the
  pool of ``config.ocr``).
  """
  if train_fn is None:
    from varrl_jax import train as train_lib

    train_fn = train_lib.train
  result = SweepResult()
  base_fingerprint = config_fingerprint(config)
  weights = weights_fingerprint(config)
  finished = finished_runs(config, workdir, weights) if reuse_same_config else {}
  git = git_commit()  # the code this process loaded, whatever the checkout does next
  # One evaluation of the starting weights serves every run (same weights,
  # prompts and keys): the first run makes it, the others take it.
  baseline = next(
    (
      (path, rec)
      for path, rec in finished.values()
      if rec.get('eval_before') and not rec.get('before_from')
    ),
    None,
  )
  start = time.time()
  for i, run in enumerate(runs):
    run_dir = os.path.join(workdir, run.path)
    path = os.path.join(run_dir, 'record.json')
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      old_weights = old.get('weights_fingerprint')
      why = None
      if old.get('overrides') != _normalized(run.overrides):
        why = (
          f'its record was made with other overrides {old.get("overrides")}; '
          'use another --workdir (or delete the record)'
        )
      elif old_weights not in (None, weights):
        why = (
          f'its record was made from other starting weights ({old_weights}, now '
          f'{weights}: {config.init_checkpoint} changed); use another --workdir'
        )
      if why is not None:
        result.failed.append((run.path, why))
        log(f'[{i + 1}/{len(runs)}] {run.path}: CONFLICT: {why}')
      else:
        result.skipped.append(run.path)
        note = ''
        if old.get('base_config_fingerprint') not in (None, base_fingerprint):
          note = ' (WARNING: made from another base config)'
        elif old_weights is None:
          note = ' (WARNING: its starting weights were not recorded)'
        unread = aggregate.unread_images(old)
        if unread:
          note += (
            f' (WARNING: {unread} evaluation images unread, OCR failed; move '
            f'{run_dir} aside to rerun it)'
          )
        log(f'[{i + 1}/{len(runs)}] {run.path}: done before, skipped{note}')
      continue
    key = run_fingerprint(config, run.overrides)
    source, source_record = finished.get(key, (None, None))
    if source is not None and source != run.path:
      record = copied_record(source_record, run, source)
      fs.makedirs(run_dir)
      _write_json(path, record)
      result.reused.append((run.path, source))
      log(
        f'[{i + 1}/{len(runs)}] {run.path}: same config and seed as {source}: '
        'its record reused'
      )
      continue
    if max_minutes is not None and time.time() - start >= 60 * max_minutes:
      result.not_started.append(run.path)
      continue
    log(f'[{i + 1}/{len(runs)}] {run.path}: {" ".join(run.flags())}')
    try:
      pool = pool_factory() if pool_factory is not None else None
      record = execute(run, config, run_dir, train_fn, pool, base_flags, git, baseline)
    except Exception as e:  # one failed run must not stop the sweep
      traceback.print_exc()
      result.failed.append((run.path, f'{type(e).__name__}: {e}'))
      log(f'[{i + 1}/{len(runs)}] {run.path}: FAILED: {type(e).__name__}: {e}')
      continue
    _write_json(path, record)
    result.done.append(run.path)
    if baseline is None and record.get('eval_before') and not record.get('before_from'):
      baseline = (run.path, record)
    unread = aggregate.unread_images(record)
    if not unread:
      finished.setdefault(key, (run.path, record))
    log(
      f'[{i + 1}/{len(runs)}] {run.path}: WA {record["word_accuracy_before"]:.4f} -> '
      f'{record["word_accuracy_after"]:.4f}  NED {record["ned_before"]:.4f} -> '
      f'{record["ned_after"]:.4f}  ({record["wall_seconds"] / 60:.1f} min)'
      + (f'  WARNING: {unread} evaluation images unread (OCR failed)' if unread else '')
    )
  return result


def describe(runs: list[Run], workdir: str, base_flags: tuple[str, ...] = ()) -> str:
  """The dry-run listing: each run's folder, state and train command."""
  lines = []
  for run in runs:
    run_dir = os.path.join(workdir, run.path)
    state = 'done' if os.path.exists(os.path.join(run_dir, 'record.json')) else 'todo'
    lines.append(f'{run.path}  [{state}]')
    lines.append(f'  {train_command(run, base_flags, run_dir)}')
  return '\n'.join(lines)


def report(workdir: str, study: str, order=(), log=print) -> tuple[str, str] | None:
  out = aggregate.write_report(workdir, study, order)
  if out is None:
    log(f'no records of {study} under {workdir}')
  else:
    log(f'report: {out[0]}\nreward curves: {out[1]}')
  return out


# Flags are defined only when run as a program: importing this module (the
# tests do) next to another CLI module must not define --config twice.
_FLAGS = {}


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  # varrl_jax.train defines --config and --workdir when imported (today at
  # import time); reuse them if so, define them otherwise.
  from varrl_jax import train  # noqa: F401

  if 'config' not in flags.FLAGS:
    config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  if 'workdir' not in flags.FLAGS:
    flags.DEFINE_string('workdir', 'workdir/ablate', 'Output folder of the sweep.')
  flags.FLAGS.set_default('workdir', 'workdir/ablate')
  _FLAGS['study'] = flags.DEFINE_enum('study', None, studies.STUDIES, 'Which study.')
  _FLAGS['seeds'] = flags.DEFINE_integer(
    'seeds', None, 'Seeds per run (default 3 for table4a, 2 otherwise).'
  )
  _FLAGS['budget_updates'] = flags.DEFINE_integer(
    'budget_updates', None, 'Updates of every run (default config.rl.num_updates).'
  )
  _FLAGS['max_minutes'] = flags.DEFINE_float(
    'max_minutes', None, 'Start no new run after this many minutes (one sitting).'
  )
  _FLAGS['eval_prompts'] = flags.DEFINE_integer(
    'eval_prompts',
    None,
    f'Held-out prompts every run is scored on (config.eval.num_prompts; '
    f'default {EVAL_PROMPTS} unless --config.eval.num_prompts is given): the '
    'same prompts and keys for all runs, so they compare pairwise.',
  )
  _FLAGS['allow_random_init'] = flags.DEFINE_bool(
    'allow_random_init',
    False,
    'Sweep from a random init (config.init_checkpoint empty); refused otherwise.',
  )
  _FLAGS['only'] = flags.DEFINE_list('only', [], 'Run only these run names.')
  _FLAGS['dry_run'] = flags.DEFINE_bool(
    'dry_run', False, 'Print the runs and their overrides; run nothing.'
  )
  _FLAGS['report'] = flags.DEFINE_bool(
    'report', False, 'Only aggregate the existing records.'
  )
  _FLAGS['reuse_same_config'] = flags.DEFINE_bool(
    'reuse_same_config',
    True,
    'A run with the same config, seed and weights as a finished run of any '
    'study takes its record (marked same_config_as) instead of training again.',
  )
  flags.mark_flags_as_required(['config', 'study'])


# Held-out prompts of every run unless told otherwise: at 128 one Word
# Accuracy figure's sampling error is about +-0.04, as large as the effects.
EVAL_PROMPTS = 512


def _with_eval_prompts(config, base_flags: tuple[str, ...], flag: int | None):
  """Sets ``config.eval.num_prompts`` from ``--eval_prompts`` (default
  `EVAL_PROMPTS` where the command line does not set it) and returns the
  base flags that make a run alone with it."""
  given = [f for f in base_flags if f.startswith('--config.eval.num_prompts=')]
  if flag is not None and flag < 1:
    raise ValueError(f'--eval_prompts must be >= 1, got {flag}')
  if given:
    if flag is not None and int(given[-1].split('=', 1)[1]) != flag:
      raise ValueError(
        f'--eval_prompts={flag} and {given[-1]} disagree; give one of them'
      )
    return base_flags
  config.eval.num_prompts = EVAL_PROMPTS if flag is None else flag
  return (*base_flags, f'--config.eval.num_prompts={config.eval.num_prompts}')


def _base_flags(argv: list[str]) -> tuple[str, ...]:
  """The ``--config`` file and ``--config.KEY`` overrides of the command line."""
  out, args = [], iter(argv)
  for arg in args:
    if arg == '--config' or (arg.startswith('--config.') and '=' not in arg):
      arg = f'{arg}={next(args, "")}'  # '--config PATH' form
    if arg.startswith('--config=') or arg.startswith('--config.'):
      out.append(arg)
  return tuple(out)


def run_study(
  config,
  study: str,
  workdir: str,
  *,
  seeds: int | None = None,
  budget_updates: int | None = None,
  only: tuple[str, ...] = (),
  max_minutes: float | None = None,
  dry_run: bool = False,
  report_only: bool = False,
  base_flags: tuple[str, ...] = (),
  train_fn: Callable | None = None,
  pool_factory: Callable | None = None,
  reuse_same_config: bool = True,
) -> int:
  """The command: plan, sweep, report; returns the exit code (1: a run failed)."""
  runs = studies.plan(study, config, seeds, budget_updates, only)
  order = tuple(dict.fromkeys(r.name for r in runs))
  if dry_run:
    print(describe(runs, workdir, base_flags))
    print(f'{len(runs)} runs of {study}')
    return 0
  if report_only:
    report(workdir, study, order)
    return 0
  result = sweep(
    config,
    runs,
    workdir,
    train_fn=train_fn,
    pool_factory=pool_factory,
    max_minutes=max_minutes,
    base_flags=base_flags,
    reuse_same_config=reuse_same_config,
  )
  print(
    f'{study}: {len(result.done)} run, {len(result.reused)} same as a finished run, '
    f'{len(result.skipped)} skipped, '
    f'{len(result.failed)} failed, {len(result.not_started)} left for next time'
  )
  report(workdir, study, order)
  if result.not_started:
    print('out of --max_minutes: run the same command again to continue')
  for path, why in result.failed:
    print(f'failed: {path}: {why}', file=sys.stderr)
  return 1 if result.failed else 0


def main(argv) -> None:
  del argv
  from absl import flags

  from varrl_jax import cli

  config = flags.FLAGS.config
  base_flags = _base_flags(sys.argv[1:])
  try:
    base_flags = _with_eval_prompts(config, base_flags, _FLAGS['eval_prompts'].value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if (
    not config.init_checkpoint
    and not _FLAGS['allow_random_init'].value
    and not (_FLAGS['dry_run'].value or _FLAGS['report'].value)
  ):
    print(
      'error: config.init_checkpoint is empty: every run would start from a random '
      'init (is the pretrained checkpoint missing?); pass --allow_random_init to '
      'sweep anyway',
      file=sys.stderr,
    )
    sys.exit(2)
  cli.setup_compilation_cache(config)
  code = cli.run_reporting_errors(
    run_study,
    config,
    _FLAGS['study'].value,
    flags.FLAGS.workdir,
    seeds=_FLAGS['seeds'].value,
    budget_updates=_FLAGS['budget_updates'].value,
    only=tuple(_FLAGS['only'].value),
    max_minutes=_FLAGS['max_minutes'].value,
    dry_run=_FLAGS['dry_run'].value,
    report_only=_FLAGS['report'].value,
    base_flags=base_flags,
    reuse_same_config=_FLAGS['reuse_same_config'].value,
  )
  sys.exit(code)


if __name__ == '__main__':
  from absl import app

  from varrl_jax import cli

  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
