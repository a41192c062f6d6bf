r"""Transformer stage: next-scale prediction by teacher forcing on a frozen tokenizer.

Each step encodes the rendered images to token ids r (the tokenizer's
residual quantization, [B, L]), builds every token's next-scale input from
the ids (`NextScaleModel.teacher_inputs`) and minimises the cross entropy of all
image tokens,

    L = -(1 / (B L)) sum_b sum_i log p(r_{b,i} | prompt_b, r_{b, scales < s(i)}).

Prompt dropout: with probability p (``prompt_dropout``) a prompt is replaced
by the null prompt (`text.null_prompt`), so one model gives both the
conditional and the unconditional logits that classifier-free guidance mixes.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from varrl_jax import checkpoint, sampling, xla_cpu
from varrl_jax import images as images_lib
from varrl_jax.data import batches as batches_lib
from varrl_jax.data import synthetic
from varrl_jax.models import rows as rows_lib
from varrl_jax.models import text as text_lib
from varrl_jax.models.family import NextScaleModel, build_model
from varrl_jax.policy import SamplingOptions
from varrl_jax.pretrain import loop


class TransformerState(NamedTuple):
  params: Any  # the transformer's variables, {'params': ...}
  opt_state: Any
  step: jnp.ndarray  # int32 []


def drop_prompts(key: jax.Array, text_ids, text_mask, p: float):
  """Replaces each prompt by the null prompt with probability p: [B, T_t] each."""
  b, t = text_ids.shape
  null_ids, null_mask = text_lib.null_prompt(b, t)
  drop_b = jax.random.bernoulli(key, p, (b,))[:, None]
  return (
    jnp.where(drop_b, jnp.asarray(null_ids), text_ids),
    jnp.where(drop_b, jnp.asarray(null_mask), text_mask),
  )


def teacher_forcing_loss(
  model: NextScaleModel, params: dict, tokens_bl, text_ids, text_mask
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Mean cross entropy of all image tokens, plus per-scale CE and accuracy."""
  inputs = model.teacher_inputs(params, tokens_bl)
  logits = model.transformer.apply(params['transformer'], text_ids, text_mask, inputs)
  ce_bl = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_bl)
  metrics = {
    'accuracy': jnp.mean(jnp.argmax(logits, axis=-1) == tokens_bl),
  }
  ce_l = jnp.mean(ce_bl, axis=0)
  for s in range(model.schedule.num_scales):
    start, end = model.schedule.span(s)
    metrics[f'ce/scale{s}'] = jnp.mean(ce_l[start:end])
  return jnp.mean(ce_bl), metrics


def make_train_step(
  model: NextScaleModel,
  optimizer: optax.GradientTransformation,
  sc: ml_collections.ConfigDict,
):
  """Jitted ``(state, tok_params, batch, key) -> (state, metrics)``; donates state."""
  p_drop = float(sc.prompt_dropout)

  def step_fn(state: TransformerState, tok_params, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    # The tokenizer is frozen: ids and inputs carry no gradient.
    tokens = model.encode_images({'tokenizer': tok_params}, batch['images'])
    text_ids, text_mask = drop_prompts(
      key, batch['text_ids'], batch['text_mask'], p_drop
    )

    def loss_fn(tr_params):
      params = {'tokenizer': tok_params, 'transformer': tr_params}
      return teacher_forcing_loss(model, params, tokens, text_ids, text_mask)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.global_norm(grads)}
    return TransformerState(params, opt_state, state.step + 1), metrics

  # XLA:CPU's own kernels for its dots and the tokenizer's convolutions, and
  # the weight gradients that suit those dots (`models.rows`).
  options = xla_cpu.program_options(train=True)
  step_fn = rows_lib.traced_for_program(step_fn, options)
  return jax.jit(step_fn, donate_argnums=(0,), compiler_options=options)


def tokenizer_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the stage reads its tokenizer (config, else the tokenizer stage's output)."""
  return config.pretrain.transformer.tokenizer_checkpoint or os.path.join(
    workdir, 'tokenizer', 'checkpoints', 'final'
  )


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  command: str,
  config_file: str = 'configs/tiny.py',
) -> str:
  """Runs the transformer stage in WORKDIR/transformer; returns the final checkpoint.

  Raises:
    checkpoint.CheckpointError: no usable tokenizer checkpoint.
  """
  pc, sc = config.pretrain, config.pretrain.transformer
  model = build_model(config)
  tok_path = tokenizer_path(config, workdir)
  tok_params = checkpoint.load_params(
    tok_path,
    model,
    ('tokenizer',),
    recreate=checkpoint.recreate_command('tokenizer', workdir, config_file),
    config=config.to_dict(),
  )['tokenizer']
  stage_dir = os.path.join(workdir, 'transformer')
  optimizer, schedule = loop.make_optimizer(sc)
  recipe = list(
    loop.manifest_recipe(
      checkpoint.read_manifest(tok_path), 'tokenizer', workdir, config_file
    )
  )
  if sc.init_from:
    params = checkpoint.load_params(
      sc.init_from, model, ('transformer',), config=config.to_dict()
    )['transformer']
    before = loop.manifest_recipe(
      checkpoint.read_manifest(sc.init_from), 'transformer', workdir, config_file
    )
    recipe += [c for c in before if c not in recipe]
  else:
    params = model.init_part(jax.random.key(config.seed), 'transformer')
  recipe.append(command)
  state = TransformerState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
  # Committed like the step's outputs, so step 2 does not compile again.
  state = jax.device_put(state, jax.devices()[0])
  train_step = make_train_step(model, optimizer, sc)
  base_key = jax.random.key(config.seed)

  text_len = config.model.text_len
  variety = synthetic.Variety.from_config(config.data)
  batches = batches_lib.prefetch(
    batches_lib.synthetic_batches(
      'train',
      model.schedule.image_size,
      pc.data_seed,
      sc.batch_size,
      text_len,
      variety=variety,
    ),
    pc.prefetch,
  )
  # Held-out prompts (templates/combinations never trained on) for the grids.
  eval_batch = next(
    batches_lib.synthetic_batches(
      'heldout',
      model.schedule.image_size,
      pc.data_seed,
      pc.num_samples,
      text_len,
      variety=variety,
    )
  )
  eval_targets = [
    ' / '.join(p.targets)
    for p in synthetic.prompts('heldout', pc.num_samples, pc.data_seed, variety=variety)
  ]
  sampler = sampling.Sampler(model, SamplingOptions.from_config(config.sampling))

  @jax.jit
  def eval_loss(tr_params, batch):
    params = {'tokenizer': tok_params, 'transformer': tr_params}
    tokens = model.encode_images(params, batch['images'])
    return teacher_forcing_loss(
      model, params, tokens, batch['text_ids'], batch['text_mask']
    )

  def evaluate(state: TransformerState, step: int) -> dict[str, float]:
    params = {'tokenizer': tok_params, 'transformer': state.params}
    out = sampler.sample(
      params,
      {'text_ids': eval_batch['text_ids'], 'text_mask': eval_batch['text_mask']},
      jax.random.fold_in(jax.random.key(config.seed + 1), step),
    )
    images_lib.save_grid(
      os.path.join(stage_dir, 'grids', f'samples_{step:07d}.png'),
      np.asarray(out.images),
      eval_targets,
      columns=4,
      scale=2,
      caption_lines=1,
    )
    loss, metrics = jax.device_get(eval_loss(state.params, eval_batch))
    # The same images with each row given another row's prompt: how much the
    # model uses the prompt (0 = it ignores which word was asked for).
    other = {
      **eval_batch,
      'text_ids': np.roll(eval_batch['text_ids'], 1, axis=0),
      'text_mask': np.roll(eval_batch['text_mask'], 1, axis=0),
    }
    other_loss, _ = jax.device_get(eval_loss(state.params, other))
    return {
      'eval/loss': float(loss),
      'eval/accuracy': float(metrics['accuracy']),
      'eval/prompt_gain': float(other_loss) - float(loss),
    }

  spec = loop.LoopSpec(
    stage='transformer',
    workdir=stage_dir,
    steps=sc.steps,
    log_every=sc.log_every,
    sample_every=sc.sample_every,
    ckpt_every=sc.ckpt_every,
    keep_checkpoints=pc.keep_checkpoints,
    lr=sc.lr,
    lr_schedule=schedule,
    manifest={
      'config': config.to_dict(),
      'command': command,
      'data_seed': pc.data_seed,
      'tokenizer_checkpoint': os.path.abspath(tok_path),
      'init_from': os.path.abspath(sc.init_from) if sc.init_from else '',
      # Every command from nothing to this checkpoint, in order.
      'recipe': recipe,
      'tokenizer_manifest': {
        k: v
        for k, v in checkpoint.read_manifest(tok_path).items()
        if k in ('command', 'step', 'metrics', 'data_seed', 'saved_at')
      },
    },
  )
  return loop.train_loop(
    spec,
    state,
    lambda state, batch: train_step(state, tok_params, batch, base_key),
    batches,
    # The tokenizer ships with the transformer: one directory is a whole model.
    params_of=lambda state: {'tokenizer': tok_params, 'transformer': state.params},
    evaluate=evaluate,
  )
