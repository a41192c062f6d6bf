r"""Tokenizer stage: the multi-scale residual VQ-VAE on synthetic renders.

For images x in [0, 1] with decoder logits l and the tokenizer's VQ loss,

    L = sum_p w_p BCE(l_p, x_p) / sum_p w_p + L_vq,
    w_p = 1 + lambda |x_p - median(x)|            (lambda = ink_weight)

BCE-with-logits, not MSE: a text image is a flat background with a few %
of ink, and an MSE/sigmoid decoder settled on drawing the background only.
The per-image median is the background colour (light or dark), so w_p
up-weights the ink whatever the colours. L_vq = mean_s [beta ||sg(f_hat_s) -
f||^2 + ||f_hat_s - sg(f)||^2] comes from the tokenizer.

Codebook health. Every step counts which codes the residual quantizer chose
(all scales) and logs ``usage`` (fraction of the V codes chosen in the batch)
and ``perplexity`` = exp(-sum_v p_v log p_v) of the chosen codes. A code not
chosen for ``dead_code_steps`` steps is restarted: set to a random vector the
quantizer was matched against in this batch (the area-resized residual z_s
of some scale), plus a little noise, so it is immediately competitive.

Decoder fine-tuning (``pretrain.tokenizer.trainable='decoder'`` with
``init_from``): only the pixel decoder is differentiated and updated; the
encoder, codebook and phi convolutions (everything that decides the token
ids) stay bit-identical and dead-code restarts are off, so a transformer
trained on the old ids stays valid with the sharper decoder.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from varrl_jax import checkpoint, xla_cpu
from varrl_jax import images as images_lib
from varrl_jax.data import batches as batches_lib
from varrl_jax.data import synthetic
from varrl_jax.models import tokenizer as tok_lib
from varrl_jax.models.family import NextScaleModel, build_model
from varrl_jax.pretrain import loop

TRAINABLE = ('all', 'decoder')


class TokenizerState(NamedTuple):
  params: Any  # the tokenizer's variables, {'params': ...}
  opt_state: Any  # over trainable_part(params)
  last_used: jnp.ndarray  # int32 [V]: last step each code was chosen
  step: jnp.ndarray  # int32 []: updates done


def ink_weights(x_bhwc: jnp.ndarray, ink_weight: float) -> jnp.ndarray:
  """w_p = 1 + lambda |x_p - median(x)| (channel mean), float32 [B, H, W]."""
  b, h, w, c = x_bhwc.shape
  background = jnp.median(x_bhwc.reshape(b, h * w, c), axis=1)[:, None, None, :]
  return 1.0 + ink_weight * jnp.mean(jnp.abs(x_bhwc - background), axis=-1)


def reconstruction_loss(
  logits_bhwc: jnp.ndarray, x_bhwc: jnp.ndarray, ink_weight: float
) -> jnp.ndarray:
  """sum_p w_p BCE(l_p, x_p) / sum_p w_p, BCE averaged over the channels."""
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits_bhwc, x_bhwc), axis=-1)
  w = ink_weights(x_bhwc, ink_weight)
  return jnp.sum(w * bce) / jnp.sum(w)


def code_counts(ids: list[jnp.ndarray], codebook_size: int) -> jnp.ndarray:
  """How often each code was chosen over all scales, int32 [V]."""
  flat = jnp.concatenate([r.reshape(-1) for r in ids])
  return jnp.zeros((codebook_size,), jnp.int32).at[flat].add(1)


def usage_metrics(counts_v: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """usage = |{v : n_v > 0}| / V and perplexity = exp(-sum_v p_v log p_v)."""
  p = counts_v / jnp.maximum(jnp.sum(counts_v), 1)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {'usage': jnp.mean(counts_v > 0), 'perplexity': jnp.exp(entropy)}


def restart_dead_codes(
  codebook_vc: jnp.ndarray,
  last_used_v: jnp.ndarray,
  step: jnp.ndarray,
  pool_nc: jnp.ndarray,
  key: jax.Array,
  threshold: int,
  noise: float,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Re-initialises the codes unused for ``threshold`` steps.

  Code v is dead when ``step - last_used_v >= threshold``; it becomes a
  random row of ``pool_nc`` (vectors the quantizer saw this step) plus
  N(0, (noise * std(pool))^2) noise, and its ``last_used`` becomes ``step``
  so it has ``threshold`` steps to be chosen. Returns the new codebook, the
  new ``last_used`` and the number of codes restarted.
  """
  dead_v = step - last_used_v >= threshold
  k_pick, k_noise = jax.random.split(key)
  pick = jax.random.randint(k_pick, (codebook_vc.shape[0],), 0, pool_nc.shape[0])
  fresh = pool_nc[pick]
  fresh = fresh + noise * jnp.std(pool_nc) * jax.random.normal(k_noise, fresh.shape)
  codebook_vc = jnp.where(dead_v[:, None], fresh.astype(codebook_vc.dtype), codebook_vc)
  last_used_v = jnp.where(dead_v, step, last_used_v)
  return codebook_vc, last_used_v, jnp.sum(dead_v)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key for a bad ``pretrain.tokenizer`` setting."""
  sc = config.pretrain.tokenizer
  if sc.trainable not in TRAINABLE:
    raise ValueError(
      f'config.pretrain.tokenizer.trainable={sc.trainable!r}; expected one of {TRAINABLE}'
    )
  if sc.trainable == 'decoder' and not sc.init_from:
    raise ValueError(
      "config.pretrain.tokenizer.trainable='decoder' fine-tunes a trained decoder: "
      'set config.pretrain.tokenizer.init_from to the tokenizer checkpoint'
    )


def trainable_part(params, trainable: str):
  """The subtree of the tokenizer variables that ``trainable`` updates."""
  return params if trainable == 'all' else params['params']['decoder']


def with_trainable(params, part, trainable: str):
  """``params`` with its trainable subtree replaced by ``part``."""
  if trainable == 'all':
    return part
  return {**params, 'params': {**params['params'], 'decoder': part}}


def make_train_step(
  model: NextScaleModel,
  optimizer: optax.GradientTransformation,
  sc: ml_collections.ConfigDict,
  conv_backend: str | None = None,
):
  """The jitted step ``(state, batch, key) -> (state, metrics)``; donates state.
  Its convolutions run on ``conv_backend`` (`varrl_jax.xla_cpu`)."""
  tokenizer = model.tokenizer
  vocab = tokenizer.codebook_size
  ink_weight = float(sc.ink_weight)
  trainable = sc.trainable
  threshold, noise = int(sc.dead_code_steps), float(sc.restart_noise)
  if trainable != 'all':
    threshold = 0  # a restarted code would change the token ids

  def loss_fn(params, x):
    (logits, vq_loss, ids), inter = tokenizer.apply(
      params, x, mutable=['intermediates']
    )
    recon = reconstruction_loss(logits, x, ink_weight)
    aux = {
      'ids': ids,
      'residuals': inter['intermediates']['residuals'],
      'recon_bce': recon,
      'vq_loss': vq_loss,
      'mae': jnp.mean(jnp.abs(jax.nn.sigmoid(logits) - x)),
    }
    return recon + vq_loss, aux

  def step_fn(state: TokenizerState, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    x = batch['images'].astype(jnp.float32) / 255.0
    part = trainable_part(state.params, trainable)

    def part_loss(part):
      return loss_fn(with_trainable(state.params, part, trainable), x)

    (loss, aux), grads = jax.value_and_grad(part_loss, has_aux=True)(part)
    updates, opt_state = optimizer.update(grads, state.opt_state, part)
    params = with_trainable(state.params, optax.apply_updates(part, updates), trainable)

    counts = code_counts(aux['ids'], vocab)
    last_used = jnp.where(counts > 0, state.step, state.last_used)
    restarted = jnp.zeros((), jnp.int32)
    if threshold > 0:
      pool = jnp.concatenate(
        [z.reshape(-1, z.shape[-1]) for z in aux['residuals']], axis=0
      )
      codebook, last_used, restarted = restart_dead_codes(
        params['params']['codebook'], last_used, state.step, pool, key, threshold, noise
      )
      params = {**params, 'params': {**params['params'], 'codebook': codebook}}
    metrics = {
      'loss': loss,
      'recon_bce': aux['recon_bce'],
      'vq_loss': aux['vq_loss'],
      'mae': aux['mae'],
      'grad_norm': optax.global_norm(grads),
      'restarted': restarted,
      **usage_metrics(counts),
    }
    return TokenizerState(params, opt_state, last_used, state.step + 1), metrics

  options = xla_cpu.program_options(backend=conv_backend)
  return jax.jit(step_fn, donate_argnums=(0,), compiler_options=options)


def reconstruct_by_scale(model: NextScaleModel, tok_params, images_u8) -> jnp.ndarray:
  """uint8 [B, S, H, W, 3]: decodes of f_hat after scales 0..s, s = 0..S-1."""
  params = {'tokenizer': tok_params}
  x = jnp.asarray(images_u8, jnp.float32) / 255.0
  ids = model.tokenizer.apply(
    tok_params, x, method=tok_lib.MultiScaleVQVAE.encode_to_scales
  )
  f_hat, outs = 0.0, []
  for s, r in enumerate(ids):
    f_hat = f_hat + model.scale_residual(params, r, s)
    outs.append(model.decode_fhat(params, f_hat))
  return jnp.stack(outs, axis=1)


def init_state(
  model: NextScaleModel, optimizer, params, trainable: str = 'all'
) -> TokenizerState:
  """The step-0 state around the tokenizer variables ``params``."""
  state = TokenizerState(
    params=params,
    opt_state=optimizer.init(trainable_part(params, trainable)),
    last_used=jnp.zeros((model.tokenizer.codebook_size,), jnp.int32),
    step=jnp.zeros((), jnp.int32),
  )
  # Committed like the step's outputs, so step 2 does not compile again.
  return jax.device_put(state, jax.devices()[0])


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  command: str,
  config_file: str = 'configs/tiny.py',
) -> str:
  """Runs the tokenizer stage in WORKDIR/tokenizer; returns the final checkpoint.

  Raises:
    ValueError: a bad ``pretrain.tokenizer`` setting (`check_config`).
    checkpoint.CheckpointError: ``init_from`` is missing or unusable.
  """
  check_config(config)
  pc, sc = config.pretrain, config.pretrain.tokenizer
  model = build_model(config)
  variety = synthetic.Variety.from_config(config.data)
  stage_dir = os.path.join(workdir, 'tokenizer')
  optimizer, schedule = loop.make_optimizer(sc)
  recipe = []
  if sc.init_from:
    params = checkpoint.load_params(
      sc.init_from, model, ('tokenizer',), config=config.to_dict()
    )['tokenizer']
    recipe = list(
      loop.manifest_recipe(
        checkpoint.read_manifest(sc.init_from), 'tokenizer', workdir, config_file
      )
    )
  else:
    params = model.init_part(jax.random.key(config.seed), 'tokenizer')
  recipe.append(command)
  state = init_state(model, optimizer, params, sc.trainable)
  train_step = make_train_step(model, optimizer, sc)
  base_key = jax.random.key(config.seed)

  batches = batches_lib.prefetch(
    batches_lib.synthetic_batches(
      'train', model.schedule.image_size, pc.data_seed, sc.batch_size, variety=variety
    ),
    pc.prefetch,
  )
  eval_images = next(
    batches_lib.synthetic_batches(
      'heldout',
      model.schedule.image_size,
      pc.data_seed,
      pc.num_samples,
      variety=variety,
    )
  )['images']
  recon_fn = jax.jit(functools.partial(reconstruct_by_scale, model))
  num_scales = model.schedule.num_scales

  def evaluate(state: TokenizerState, step: int) -> dict[str, float]:
    recon = np.asarray(recon_fn(state.params, eval_images))  # [B, S, H, W, 3]
    tiles = np.concatenate([eval_images[:, None], recon], axis=1)
    captions = ['input'] + [f'scales 0..{s}' for s in range(num_scales)]
    images_lib.save_grid(
      os.path.join(stage_dir, 'grids', f'recon_{step:07d}.png'),
      tiles.reshape(-1, *tiles.shape[2:]),
      captions * len(eval_images),
      columns=num_scales + 1,
      scale=2,
      caption_lines=1,
    )
    diff = np.abs(recon[:, -1].astype(np.float32) - eval_images.astype(np.float32))
    return {'eval/mae': float(diff.mean() / 255.0)}

  spec = loop.LoopSpec(
    stage='tokenizer',
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
      'recipe': recipe,
      'data_seed': pc.data_seed,
      'init_from': os.path.abspath(sc.init_from) if sc.init_from else '',
      'trainable': sc.trainable,
    },
  )
  return loop.train_loop(
    spec,
    state,
    lambda state, batch: train_step(state, batch, base_key),
    batches,
    params_of=lambda state: {'tokenizer': state.params},
    evaluate=evaluate,
  )
