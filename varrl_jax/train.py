r"""RL of a next-scale text-to-image model: GRPO with VMR, PANW and MP.

  python -m varrl_jax.train --config=configs/tiny.py
  python -m varrl_jax.train --config=configs/tiny.py --config.rl.mode=vanilla \
      --config.rl.num_updates=50 --workdir=/tmp/vanilla

Reads top to bottom: checks of the reward and prompt configuration, model
and weights, the reward (``config.rl.rewards``; its OCR pool), held-out
evaluation before, the update loop (rollouts of ``config.rl.prompts`` ->
rewards -> advantages, VMR, masks -> GRPO steps), checkpoint, held-out
evaluation after. Writes to WORKDIR: ``metrics.jsonl`` and TensorBoard
events (one record per update: rewards total and per term, V_m, the split
m and its prefix share (`rl.adaptive_m`), advantages, per-scale KL /
entropy / ratio / clip fraction / gradient share / PANW weight / mask
coverage, OCR and timing), ``masks.png`` (the propagated mask
at every scale over one rollout image), ``eval_before/``, ``eval_after/``,
``before_after.png`` and ``checkpoints/final``.

The held-out evaluation is OCR Word Accuracy / NED (`eval.evaluator`) when
the reward has an ``ocr`` term and the prompts are synthetic text prompts;
otherwise it is the configured reward's mean and std, total and per term
(`eval.reward_eval`), on ``config.eval.num_prompts`` prompts: the synthetic
``config.eval.split``, for class prompts a fixed choice of the configured
classes, or for a text list (jsonl / cvtg / tfds / generated) with
``config.rl.heldout_prompts`` > 0 its held-out prompts (seed
``config.eval.data_seed``).

Multi-host (a TPU pod: one process per worker, the same command on all):
``config.distributed`` starts ``jax.distributed`` (automatic on Cloud TPU
VMs); the mesh of ``config.mesh`` spans every device; each process OCRs its
own rows of the rollout images and the rewards are all-gathered; process 0
alone writes metrics, images and reports; every process takes part in the
orbax checkpoint saves (WORKDIR must be shared, e.g. a gs:// bucket).

Exit codes: 0 done; 2 bad input or an unusable checkpoint (one ``error:``
line); 3 a non-finite loss or reward (one ``error:`` line naming
``checkpoints/nonfinite_update<U>``, the last finite parameters: a step
with a non-finite loss or gradient leaves the state as it was); 128 +
signal after SIGTERM/SIGINT (the update in flight finished and the train
state was saved: run the same command again to resume). The fault matrix
of tests/test_faults.py runs each case through this command line.
"""

from __future__ import annotations

import signal
import sys

import jax
import numpy as np
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from varrl_jax import checkpoint as ckpt_lib
from varrl_jax import cli, distributed, fs, parallel
from varrl_jax.data import prompt_sources
from varrl_jax.eval import heldout
from varrl_jax.models.family import build_model
from varrl_jax.models.text import PromptError
from varrl_jax.rewards import api as reward_api
from varrl_jax.rl import batch_check, grpo, loop, mask_viz, phase_rows, pipeline
from varrl_jax.weights import load_weights
from varrl_jax.writers import MetricWriter

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/train', 'Output folder.')


def _save(config, trainer, workdir: str, name: str, update: int, metrics: dict) -> str:
  from varrl_jax import checkpoint as ckpt_lib

  path = fs.join(workdir, 'checkpoints', name)
  # With LoRA: the merged params plus the adapters (`Trainer.checkpoint_parts`).
  parts, lora_record = trainer.checkpoint_parts()
  ckpt_lib.save_params(
    path,
    parts,
    {
      **lora_record,
      'stage': 'rl',
      'step': update,
      'command': ' '.join(sys.argv),
      'metrics': {k: float(v) for k, v in metrics.items() if np.isscalar(v)},
      'config': config.to_dict(),
    },
  )
  return path


# Exit code of a run stopped by a non-finite loss or reward (module docstring).
EXIT_NONFINITE = 3


class Preempted(SystemExit):
  """SIGTERM/SIGINT arrived: the state was saved; exit code 128 + signal."""


class _StopFlag:
  """Turns SIGTERM/SIGINT into a flag read between updates (restored on exit)."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no handler, no flag
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _run_record(config, trainer, update: int) -> dict:
  return {
    'seed': int(config.seed),
    'rl_data_seed': int(config.rl.data_seed),
    'prompts_consumed': int(update * config.rl.prompts_per_update),
    'reference': config.init_checkpoint or f'random init (seed {config.seed})',
    'reference_fingerprint': trainer.ref_fingerprint,
    'reference_fingerprint_version': ckpt_lib.FINGERPRINT_VERSION,
    'mode': config.rl.mode,
    'lora': _lora_record(config),
    'pipeline': config.rl.pipeline,
    'vmr_split': _split_record(trainer),
  }


def _split_record(trainer) -> dict:
  """The adaptive split's state (`rl.adaptive_m`), or {'rule': 'fixed'}."""
  split = getattr(trainer, 'split', None)  # `loop.Trainer.split`
  return {'rule': 'fixed'} if split is None else split.record()


def _split_setting(rule: str) -> str:
  if rule == 'adaptive':
    return "config.rl.vmr.m='adaptive'"
  return 'a fixed config.rl.vmr.m'


def _lora_record(config) -> dict:
  lc = config.rl.lora
  if int(lc.rank) == 0:
    return {'rank': 0}
  return {'rank': int(lc.rank), 'alpha': float(lc.alpha), 'targets': str(lc.targets)}


def _resume(config, trainer, states, pipe=None) -> int:
  """Restores the newest state into ``trainer`` (through ``pipe``, the
  `rl.pipeline`); returns the next update."""
  latest = states.latest_record()
  if latest is not None and latest.get('pipeline', 'sync') != config.rl.pipeline:
    # An overlap state also holds the behaviour params of the rollout in flight.
    raise ckpt_lib.CheckpointError(
      f'{states.directory}: saved with config.rl.pipeline='
      f'{latest.get("pipeline", "sync")!r}, but this run has '
      f'{config.rl.pipeline!r}; use the same setting, another --workdir or '
      '--config.checkpoint.resume=False'
    )
  if latest is not None and latest.get('lora', {'rank': 0}) != _lora_record(config):
    # Another LoRA layout is another train state (or, for alpha alone, another
    # policy from the same arrays): refuse before restoring anything.
    raise ckpt_lib.CheckpointError(
      f'{states.directory}: saved with config.rl.lora {latest.get("lora", {"rank": 0})}, '
      f'but this run has {_lora_record(config)}; use the same settings, another '
      '--workdir or --config.checkpoint.resume=False'
    )
  rule = _split_record(trainer)['rule']
  saved_rule = (latest or {}).get('vmr_split', {'rule': 'fixed'})['rule']
  if latest is not None and saved_rule != rule:
    # The adaptive split's state (m, EMA) would be dropped or made up.
    raise ckpt_lib.CheckpointError(
      f'{states.directory}: saved with {_split_setting(saved_rule)}, but this run '
      f'has {_split_setting(rule)}; use the same setting, another --workdir or '
      '--config.checkpoint.resume=False'
    )
  restored = states.restore_latest(trainer.state if pipe is None else pipe.saved())
  if restored is None:
    return 0
  state, record = restored
  saved = record.get('reference_fingerprint')
  if record.get('reference_fingerprint_version') != ckpt_lib.FINGERPRINT_VERSION:
    # Digests of older versions summed floats, which rounds differently per
    # mesh and per GPU run: they cannot be compared with today's.
    logging.warning(
      '%s: saved by an older varrl_jax whose reference digest is not comparable; '
      'the reference is not checked on this resume',
      states.directory,
    )
  elif saved != trainer.ref_fingerprint:
    raise ckpt_lib.CheckpointError(
      f'{states.directory}: saved with reference {record.get("reference")!r} '
      f'(weights digest {saved}), but this run starts from '
      f'{config.init_checkpoint or "a random init"!r} (weights digest '
      f'{trainer.ref_fingerprint}): other weights or another seed; use another '
      '--workdir or --config.checkpoint.resume=False'
    )
  if pipe is None:
    trainer.state = state
  else:
    pipe.restore(state)
  if getattr(trainer, 'split', None) is not None:
    try:
      if 'vmr_split' not in record:
        raise ValueError('its resume record holds no adaptive split state')
      trainer.split.restore(record['vmr_split'])
    except (KeyError, TypeError, ValueError) as e:
      raise ckpt_lib.CheckpointError(f'{states.directory}: {e}') from None
  update = int(record['update'])
  print(f'resuming from {states.directory}/{update} (update {update})')
  return update


def _run_updates(config, model, pipe, states, writer, workdir, start, stop) -> dict:
  """Updates ``start .. num_updates - 1`` through ``pipe`` (`rl.pipeline`);
  returns the last update's metrics.

  Saves the train state every ``config.checkpoint.every`` updates and at the
  end; after a SIGTERM/SIGINT it saves and raises `Preempted`.
  """
  rl, trainer = config.rl, pipe.trainer
  metrics = {}
  bar = tqdm.trange(
    start,
    rl.num_updates,
    desc=f'rl[{rl.mode}]',
    initial=start,
    disable=not distributed.is_main(),
  )
  for update in bar:
    try:
      metrics, ro, scored, phase = pipe.run(update)
    except loop.NonFiniteError as e:
      path = _save(
        config, trainer, workdir, f'nonfinite_update{update}', update, metrics
      )
      raise loop.NonFiniteError(f'{e}; stopped, checkpoint saved to {path}') from None
    writer.write(update, metrics)
    bar.set_postfix(phase=phase, reward=f'{metrics["reward/mean"]:.3f}')
    if update == 0 and distributed.is_main():
      # Of the rows whose images are in this process, the one with most boxes.
      boxes = scored.boxes or [[] for _ in ro.prompts]
      j = int(np.argmax([len(boxes[r]) for r in ro.local_rows]))
      row = None if scored.boxes is None else [boxes[ro.local_rows[j]]]
      mask = phase_rows.mask_rows(config, trainer.method, model.schedule, row, 1)[0]
      fs.save_image(
        fs.join(workdir, 'masks.png'),
        mask_viz.mask_panels(ro.images[j], mask, model.schedule),
      )
    done = update + 1
    if done % config.checkpoint.every == 0 or done == rl.num_updates or stop.signum:
      path = states.save(done, pipe.saved(), _run_record(config, trainer, done))
    if stop.signum:
      bar.close()
      writer.close()
      name = signal.Signals(stop.signum).name
      print(
        f'{name}: stopped after update {update}; state saved to {path}. '
        'Run the same command again to resume.'
      )
      raise Preempted(128 + stop.signum)
  return metrics


def _check(config, model):
  """Bad rewards, prompts or batch shapes fail here, before anything loads or
  compiles."""
  batch_check.check_batches(config)
  pipeline.check(config)
  grpo.off_policy_objective(config.rl)
  reward_api.parse(config.rl.rewards)
  source = prompt_sources.from_config(config)
  if isinstance(source, prompt_sources.TextPrompts):
    # A finite list: every distinct prompt, so none fails hours into a run.
    prompts = list(dict.fromkeys(p for p, _ in (*source.train, *source.heldout)))
  else:
    prompts = [p for p, _ in source.batch(0, config.rl.prompts_per_update)]
  try:
    model.check_prompts(prompts)
  except PromptError as e:
    raise PromptError(
      f'config.rl.prompts={config.rl.prompts!r} does not fit the '
      f'{model.family!r} family: {e}'
    ) from None
  return source


def train(config, workdir: str, pool=None) -> dict:
  """Runs the whole job; returns the before/after held-out summaries:
  `eval.metrics.Summary` (Word Accuracy, NED) or `reward_eval.RewardSummary`
  (module docstring); 'before' is None with ``config.eval.before=False``.

  ``pool``: an OCR pool for the ``ocr`` reward term instead of the one
  ``config.ocr`` describes (tests inject engines this way; the caller closes
  it; unused when ``config.rl.rewards`` has no ``ocr`` term).
  """
  # Model, checks of the reward and prompts, weights.
  model = build_model(config)
  prompt_source = _check(config, model)
  method = loop.Method.from_config(config, model)
  # Mesh: config.mesh over every device of every process. The weights are
  # loaded straight onto it.
  mesh = parallel.make_mesh(config.mesh)
  params, source = load_weights(config, model, None, mesh=mesh)
  logging.info('weights: %s; method %s', source, method)
  logging.info(
    'mesh %s over %d devices in %d processes (this is process %d)',
    dict(mesh.shape),
    mesh.size,
    jax.process_count(),
    jax.process_index(),
  )
  workdir = fs.resolve(workdir)
  fs.makedirs(workdir)
  writer = MetricWriter(workdir)

  with reward_api.build(config, pool=pool) as reward:
    logging.info('reward %s, weights %s', reward.name, reward.weights)
    ocr_eval = heldout.uses_ocr_eval(reward, prompt_source)
    before = None
    if config.eval.before:  # ablation sweeps evaluate the start once (eval.before)
      before = heldout.evaluate(
        config, model, params, reward, prompt_source, workdir, 'eval_before', mesh
      )
      heldout.print_before(before, ocr_eval)
    trainer = loop.Trainer(config, model, params, reward, mesh)
    states = ckpt_lib.TrainCheckpoints(
      fs.join(workdir, 'checkpoints', 'state'), config.checkpoint.keep
    )
    try:
      pipe = pipeline.build(
        config,
        trainer,
        lambda u: loop.update_prompts(config, u, prompt_source),
        jax.random.key(config.seed),
      )
      start = _resume(config, trainer, states, pipe) if config.checkpoint.resume else 0
      writer.resume_at(start)
      with _StopFlag() as stop:
        metrics = _run_updates(
          config, model, pipe, states, writer, workdir, start, stop
        )
    finally:
      states.close()
    ckpt = _save(config, trainer, workdir, 'final', config.rl.num_updates, metrics)
    after = heldout.evaluate(
      config,
      model,
      trainer.params,
      reward,
      prompt_source,
      workdir,
      'eval_after',
      mesh,
    )
  writer.close()
  b = None if before is None else before.summary
  if distributed.is_main():
    print(f'checkpoint: {ckpt}')
    heldout.report_change(config, prompt_source, workdir, before, after, ocr_eval)
  return {'before': b, 'after': after.summary}


def main(argv):
  del argv
  cli.setup_compilation_cache(_CONFIG.value)
  # Before any JAX computation: a multi-host job joins its processes here.
  cli.run_reporting_errors(distributed.initialize, _CONFIG.value)
  cli.run_reporting_errors(_train_or_exit_diverged, _CONFIG.value, _WORKDIR.value)


def _train_or_exit_diverged(config, workdir: str) -> dict:
  try:
    return train(config, workdir)
  except loop.NonFiniteError as e:
    # Not bad input (exit 2): a retry from the saved state diverges again.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_NONFINITE)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=cli.parse_flags)
