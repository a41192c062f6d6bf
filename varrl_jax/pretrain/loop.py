"""What both pretraining stages share: the optimizer and the host loop.

The loop runs a jitted, state-donating ``step_fn(state, batch)``, averages its
metrics over each logging interval (fetched from the device only then, so
steps stay asynchronous), writes them to ``metrics.jsonl`` and TensorBoard,
calls the stage's ``evaluate`` (grids, held-out metrics) every
``sample_every`` steps, saves periodic checkpoints and a final one. A
non-finite loss stops the run after saving the state for inspection.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from varrl_jax import checkpoint
from varrl_jax.writers import MetricWriter


class Diverged(RuntimeError):
  """The loss became NaN or infinite; the message is one line."""


def decay_mask(params) -> Any:
  """True for the leaves weight decay applies to: conv and dense kernels.

  Codebooks, embeddings, norms and biases are not decayed: decay pulls unused
  codebook rows towards zero, which is how codes die.
  """

  def is_kernel(path, _):
    return str(getattr(path[-1], 'key', '')) == 'kernel'

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(
  sc: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (b1 0.9, b2 0.95), linear warmup then cosine to lr/10, clipping.

  ``sc`` is a stage section of ``config.pretrain``.
  """
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=sc.lr,
    warmup_steps=sc.warmup_steps,
    decay_steps=max(sc.steps, sc.warmup_steps + 1),
    end_value=sc.lr / 10,
  )
  adamw = optax.adamw(
    schedule, b1=0.9, b2=0.95, weight_decay=sc.weight_decay, mask=decay_mask
  )
  if sc.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(sc.grad_clip), adamw), schedule
  return adamw, schedule


def manifest_recipe(manifest: dict, stage: str, workdir: str, config_file: str):
  """The commands that made a checkpoint (older manifests: just its command)."""
  if manifest.get('recipe'):
    return manifest['recipe']
  return [
    manifest.get('command') or checkpoint.recreate_command(stage, workdir, config_file)
  ]


@dataclasses.dataclass
class LoopSpec:
  """How one stage runs; ``workdir`` is the stage's folder, WORKDIR/<stage>."""

  stage: str
  workdir: str
  steps: int
  log_every: int
  sample_every: int
  ckpt_every: int
  keep_checkpoints: int
  lr: float  # peak lr, named in the divergence message
  lr_schedule: optax.Schedule
  manifest: dict  # config, command, data seed: saved with every checkpoint


def _prune(ckpt_dir: str, keep: int) -> None:
  steps = sorted(d for d in os.listdir(ckpt_dir) if d.startswith('step_'))
  for d in steps[: max(0, len(steps) - keep)]:
    shutil.rmtree(os.path.join(ckpt_dir, d), ignore_errors=True)


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
  host = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train_loop(
  spec: LoopSpec,
  state: Any,
  step_fn: Callable[[Any, dict], tuple[Any, dict]],
  batches: Iterator[dict],
  params_of: Callable[[Any], dict],
  evaluate: Callable[[Any, int], dict[str, float]],
) -> str:
  """Runs ``spec.steps`` steps; returns the final checkpoint's path.

  ``params_of(state)`` gives the ``{part: params}`` to checkpoint;
  ``evaluate(state, step)`` writes grids and returns held-out metrics.
  Raises `Diverged` on a non-finite loss, after saving.
  """
  writer = MetricWriter(spec.workdir)
  ckpt_dir = os.path.join(spec.workdir, 'checkpoints')
  os.makedirs(ckpt_dir, exist_ok=True)
  last_saved, metrics_now = None, {}

  def save(name: str, step: int) -> str:
    manifest = {**spec.manifest, 'stage': spec.stage, 'step': step}
    manifest['metrics'] = metrics_now
    return checkpoint.save_params(
      os.path.join(ckpt_dir, name), params_of(state), manifest
    )

  pending: list[dict] = []
  timer, timed_steps = time.perf_counter(), 0
  bar = tqdm(
    range(spec.steps),
    desc=spec.stage,
    disable=jax.process_index() != 0,
    dynamic_ncols=True,
  )
  try:
    for step in bar:
      state, metrics = step_fn(state, next(batches))
      pending.append(metrics)
      done = step + 1
      final = done == spec.steps
      if step == 0:
        # The first step includes compilation: timed apart from the rest.
        jax.block_until_ready(metrics)
        writer.write(done, {'first_step_s': time.perf_counter() - timer})
        timer = time.perf_counter()
      else:
        timed_steps += 1
      if done % spec.log_every == 0 or final:
        metrics_now = _mean_metrics(pending)
        pending = []
        loss = metrics_now['loss']
        if not math.isfinite(loss):
          path = save(f'diverged_step_{done:07d}', done)
          raise Diverged(
            f'{spec.stage} stage: loss is {loss} at step {done} (mean of the last '
            f'{spec.log_every} steps); state saved to {path} for inspection; last '
            f'good checkpoint: {last_saved or "none"}; try a smaller '
            f'--config.pretrain.{spec.stage}.lr (now {spec.lr})'
          )
        if timed_steps:
          metrics_now['s_per_step'] = (time.perf_counter() - timer) / timed_steps
        metrics_now['lr'] = float(spec.lr_schedule(done))
        writer.write(done, metrics_now)
        bar.set_postfix(loss=f'{loss:.4f}', refresh=False)
        timer, timed_steps = time.perf_counter(), 0
      if done % spec.sample_every == 0 or final:
        writer.write(done, evaluate(state, done))
        # Evaluation time is not step time.
        timer, timed_steps = time.perf_counter(), 0
      if done % spec.ckpt_every == 0 and not final:
        last_saved = save(f'step_{done:07d}', done)
        _prune(ckpt_dir, spec.keep_checkpoints)
        timer, timed_steps = time.perf_counter(), 0
    return save('final', spec.steps)
  finally:
    bar.close()
    writer.close()
