r"""The RL update pipeline: sync vs overlap (``config.rl.pipeline``).

Run from the repository root:

  python -m benchmarks.pipeline                         # speed, tiny, ~10 min
  python -m benchmarks.pipeline --part=accuracy --workdir=/tmp/pipe_acc \
      --seeds=0,1,2                                     # held-out, ~1 h on 2 cores

``--part=speed``: real RL updates of ``--config`` (its weights, its reward and
OCR pool) on one trainer and one pool, in blocks of ``--block`` updates that
alternate sync and overlap (``--rounds`` blocks of each), so that load
changes on a shared machine hit both. A sync update's parts are timed
separately: sampling (``time/sample_s``), OCR (the pool's busy time,
``ocr/seconds``) and the step (``time/step_s``: batch, reference forward,
GRPO steps). The first update of every overlap block fills the pipeline (it
samples its own rollout first) and is not counted; at the end of a block the
rollout in flight is read and dropped, untimed. The first update of each
phase is run untimed first in both modes (compiles). Prints the median
seconds per update of each mode, the sync parts, and last

  sync_vs_max_part N.NNx      sync s/update / max(sampling, OCR, step)
  overlap_vs_max_part N.NNx   overlap s/update / max(sampling, OCR, step)

(the parts are those of the sync updates of the same run: run alone, each
part has the machine to itself). On a CPU host the three parts share the
same cores, so no schedule beats the update's CPU seconds / cores: the run
also measures each update's CPU time (this process's threads plus the OCR
workers', from /proc) and prints s/update over that bound per mode, and
``overlap_vs_cpu_bound``. On a TPU host the chips sample and step while the
host CPUs read OCR: there max(sample + step, OCR) is the bound.
``--pin`` sets up that split here: JAX on CPU 0, the OCR workers on the
other CPUs; the last lines are then s/update over max(sample + step, OCR)
of the sync parts: ``sync_vs_pinned_bound``, ``overlap_vs_pinned_bound``.

``--part=accuracy``: for each seed of ``--seeds`` trains ``--config`` with
``--config.seed=S --config.rl.data_seed=S`` in every arm of ``--arms``
(`ARMS`: sync; overlap with the decoupled objective, the default; overlap
with the 'behaviour' objective), the same command line otherwise
(``python -m varrl_jax.train``, one process per run, ``--updates``
updates), each run's held-out evaluation on the same ``--eval_prompts``
prompts with the same sampling keys (``eval.seed`` fixed), and reports
held-out Word Accuracy per run and each arm - sync in Word Accuracy and
NED, paired per image, with a 95% bootstrap interval over seeds and one
shared prompt resample (`varrl_jax.experiments.paired`). Finished runs
(with ``eval_after/records.jsonl``) are not rerun: the sweep resumes after
an interruption.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from varrl_jax import cli
from varrl_jax.data import prompt_sources
from varrl_jax.models.family import build_model
from varrl_jax.rewards import api as reward_api
from varrl_jax.rl import loop, pipeline, rollout
from varrl_jax.weights import load_weights

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/tiny.py', 'RL config.')
_PART = flags.DEFINE_enum('part', 'speed', ['speed', 'accuracy'], 'What to measure.')
_BLOCK = flags.DEFINE_integer('block', 4, 'Updates per block (speed).')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Blocks of each mode (speed).')
_PIN = flags.DEFINE_bool(
  'pin',
  False,
  'Speed: JAX on CPU 0, the OCR workers on the other CPUs, as on a TPU host '
  '(chips sample and step, host CPUs read OCR).',
)
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/pipeline_accuracy', 'Runs (accuracy).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (accuracy).')
_UPDATES = flags.DEFINE_integer('updates', 24, 'RL updates per run (accuracy).')
_ARMS = flags.DEFINE_list(
  'arms', ['sync', 'overlap', 'overlap_behaviour'], 'Runs per seed (accuracy; ARMS).'
)
_EVAL_PROMPTS = flags.DEFINE_integer('eval_prompts', 128, 'Held-out prompts.')
_BOOT = flags.DEFINE_integer('bootstrap', 10000, 'Bootstrap resamples.')


def _worker_cpu_s(reward) -> float:
  """CPU seconds (user + system) used so far by the OCR worker processes."""
  ocr = reward.get('ocr')
  total = 0.0
  for pid in ocr.pool.worker_pids if ocr is not None else []:
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, TypeError):
      continue
    total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
  return total


def _drain(pipe) -> None:
  """Reads and drops the overlap pipeline's rollout in flight."""
  if getattr(pipe, 'pending', None) is not None:
    rollout.score(pipe.pending[1], pipe.trainer.reward)
  if isinstance(pipe, pipeline.Overlap):
    # The next block starts from the current params, as a fresh run would.
    pipe.pending = pipe.behaviour = None


def speed(config) -> None:
  rl = config.rl
  rl.num_updates = 10**6  # an overlap block always has a next update
  cpus = sorted(os.sched_getaffinity(0))
  if _PIN.value:
    # Before JAX starts its thread pool: the device work gets CPU 0.
    os.sched_setaffinity(0, cpus[:1])
  model = build_model(config)
  params, source = load_weights(config, model)
  method = loop.Method.from_config(config, model)
  cycle = rl.vmr.prefix_updates + rl.vmr.suffix_updates if method.use_vmr else 1
  prompts = prompt_sources.from_config(config)
  key = jax.random.key(config.seed)
  times = {'sync': [], 'overlap': []}
  cpu = {'sync': [], 'overlap': []}  # CPU seconds of the whole job per update
  cores = len(os.sched_getaffinity(0))
  parts = {'sample': [], 'ocr': [], 'step': []}
  with reward_api.build(config) as reward:
    trainer = loop.Trainer(config, model, params, reward)
    ocr = reward.get('ocr')
    if _PIN.value and ocr is not None:
      for pid in ocr.pool.worker_pids:
        os.sched_setaffinity(pid, cpus[1:])
    pipes = {
      name: cls(trainer, lambda u: loop.update_prompts(config, u, prompts), key, 10**6)
      for name, cls in (('sync', pipeline.Sync), ('overlap', pipeline.Overlap))
    }
    t0 = time.time()
    update = 0
    for name in pipes:  # compile every phase's programs in both modes
      for _ in range(cycle + (name == 'overlap')):
        pipes[name].run(update)
        update += 1
      _drain(pipes[name])
    warm_s = time.time() - t0
    for r in range(2 * _ROUNDS.value):
      name = ('sync', 'overlap')[(r + r // 2) % 2]  # s o o s s o ...
      pipe = pipes[name]
      for i in range(_BLOCK.value):
        c0 = time.process_time() + _worker_cpu_s(reward)
        metrics = pipe.run(update)[0]
        update += 1
        if name == 'overlap' and i == 0:
          continue
        times[name].append(metrics['time/update_s'])
        cpu[name].append(time.process_time() + _worker_cpu_s(reward) - c0)
        if name == 'sync':
          parts['sample'].append(metrics['time/sample_s'])
          parts['ocr'].append(metrics.get('ocr/seconds', 0.0))
          parts['step'].append(metrics['time/step_s'])
      _drain(pipe)
  med = {k: statistics.median(v) for k, v in {**times, **parts}.items()}
  # All parts share this host's cores here: an update cannot take less than
  # its CPU seconds / cores (on a TPU host the chips sample and step while
  # the host's CPUs read OCR, and max(sample + step, OCR) bounds it instead).
  bound = {k: statistics.median(v) / cores for k, v in cpu.items()}
  print(
    f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; weights: {source}'
  )
  print(
    f'config: {rl.mode}, {rl.prompts_per_update} prompts x G {rl.group_size} x K '
    f'{rl.vmr.num_branches}, {rl.rollout_chunks} chunks; reward {reward.name}, '
    f'OCR {config.ocr.engine} x {config.ocr.num_workers} worker(s); warm-up {warm_s:.0f} s'
  )
  print(
    f'timed: {len(times["sync"])} sync and {len(times["overlap"])} overlap updates '
    f'({_ROUNDS.value} blocks of {_BLOCK.value} each, alternating)'
  )
  print(
    'sync parts (median s): '
    + ', '.join(f'{k} {med[k]:.2f}' for k in ('sample', 'ocr', 'step'))
  )
  biggest = max(med['sample'], med['ocr'], med['step'])
  for name in times:
    spread = f'{min(times[name]):.2f}-{max(times[name]):.2f}'
    print(f'{name:8s} {med[name]:6.2f} s/update (min-max {spread})')
  for name in times if not _PIN.value else ():
    print(
      f'{name:8s} CPU {bound[name] * cores:.2f} s/update on {cores} cores: '
      f'at least {bound[name]:.2f} s/update here; '
      f's/update / that bound {med[name] / bound[name]:.2f}x'
    )
  print(f'overlap_speedup {med["sync"] / med["overlap"]:.2f}x')
  if _PIN.value:
    # Sampling and the step share CPU 0, OCR has the others: no schedule
    # beats max(sample + step, OCR).
    pinned = max(med['sample'] + med['step'], med['ocr'])
    print(f'pinned bound max(sample + step, OCR) {pinned:.2f} s')
    print(f'sync_vs_pinned_bound {med["sync"] / pinned:.2f}x')
    print(f'overlap_vs_pinned_bound {med["overlap"] / pinned:.2f}x')
  else:
    print(f'overlap_vs_cpu_bound {med["overlap"] / bound["overlap"]:.2f}x')
  print(f'sync_vs_max_part {med["sync"] / biggest:.2f}x')
  print(f'overlap_vs_max_part {med["overlap"] / biggest:.2f}x')


# Accuracy arms: name -> overrides of the train command.
ARMS = {
  'sync': ['--config.rl.pipeline=sync'],
  'overlap': ['--config.rl.pipeline=overlap'],  # rl.off_policy.objective='decoupled'
  'overlap_behaviour': [
    '--config.rl.pipeline=overlap',
    '--config.rl.off_policy.objective=behaviour',
  ],
}


def _run_dir(seed: str, name: str) -> str:
  return os.path.join(_WORKDIR.value, f'seed{seed}_{name}')


def _train(config_arg: str, seed: str, name: str, extra: list[str]) -> None:
  run_dir = _run_dir(seed, name)
  if os.path.exists(os.path.join(run_dir, 'eval_after', 'records.jsonl')):
    print(f'{run_dir}: done')
    return
  cmd = [
    sys.executable,
    '-m',
    'varrl_jax.train',
    f'--config={config_arg}',
    f'--workdir={run_dir}',
    f'--config.seed={seed}',
    f'--config.rl.data_seed={seed}',
    *ARMS[name],
    f'--config.rl.num_updates={_UPDATES.value}',
    f'--config.eval.num_prompts={_EVAL_PROMPTS.value}',
    # Every run starts from the same weights: its "before" is the same.
    '--config.eval.before=False',
    *extra,
  ]
  print(' '.join(cmd), flush=True)
  t0 = time.time()
  subprocess.run(cmd, check=True)
  print(f'{run_dir}: {time.time() - t0:.0f} s', flush=True)


def accuracy(config, config_arg: str, extra: list[str]) -> None:
  """Trains every arm of ``--arms`` per seed, then compares each with sync:
  held-out Word Accuracy and NED, paired per image (`experiments.paired`:
  seeds and one shared prompt resample)."""
  from varrl_jax.experiments import paired

  arms = _ARMS.value
  unknown = [a for a in arms if a not in ARMS]
  if unknown or 'sync' not in arms:
    raise app.UsageError(
      f'--arms: {unknown or arms} (known: {list(ARMS)}; sync is the baseline)'
    )
  os.makedirs(_WORKDIR.value, exist_ok=True)
  for seed in _SEEDS.value:
    for name in arms:
      _train(config_arg, seed, name, extra)
  evals = {
    name: {
      int(s): paired.read_eval(_run_dir(s, name), 'eval_after', config)
      for s in _SEEDS.value
    }
    for name in arms
  }
  print(f'{"seed":>5s} ' + ' '.join(f'{n + " WA":>22s}' for n in arms))
  for s in _SEEDS.value:
    print(
      f'{s:>5s} ' + ' '.join(f'{evals[n][int(s)].pooled("wa"):22.4f}' for n in arms)
    )
  wa_diff = {}
  for name in arms:
    if name == 'sync':
      continue
    for metric in paired.METRICS:
      iv = paired.compare(
        evals['sync'], evals[name], metric, _BOOT.value, ('sync', name)
      )
      print(
        f'{name} - sync held-out {metric.upper()}: {iv.fmt()} ({iv.seeds} seeds x '
        f'{iv.prompts} prompts, {_UPDATES.value} updates; seeds agree: '
        f'{len({np.sign(d) for d in iv.per_seed}) == 1})'
      )
      if metric == 'wa':
        wa_diff[name] = iv.diff
  for name, diff in wa_diff.items():  # the ratios last, as every benchmark prints them
    print(f'{name}_minus_sync_word_accuracy {diff:+.4f}')


def main(argv):
  if _PART.value == 'speed':
    del argv
    speed(_CONFIG.value)
    return
  # The train runs get this command's --config argument and its overrides.
  config_arg = next(
    (a.split('=', 1)[1] for a in sys.argv if a.startswith('--config=')),
    'configs/tiny.py',
  )
  extra = [a for a in sys.argv[1:] if a.startswith('--config.')]
  del argv
  accuracy(_CONFIG.value, config_arg, extra)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
