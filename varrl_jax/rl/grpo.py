"""GRPO for next-scale prediction: advantages, per-token loss, the jitted step.

Group advantages (G samples of one prompt):

    A_j = (R_j - mean_g R) / (std_g R + eps)

Per token i of sample j, with log-probs of the policy (`varrl_jax.policy`):

    rho_i  = exp(log pi(a_i) - log pi_old(a_i))
    surr_i = min(rho_i A_j, clip(rho_i, 1 - epsilon, 1 + epsilon) A_j)
    kl_i   = exp(r_i) - r_i - 1,   r_i = log pi_ref(a_i) - log pi(a_i)     (k3)
    l_i    = -surr_i + beta kl_i

reduced with PANW weights and the token mask (MP mask x stage selector):
``loss = mean_j sum_i w_i mask_ji l_ji`` (`panw.weighted_sum`).

log pi_old is the teacher-forced log-prob before the update. On the first
inner update of a rollout batch (``batch['on_policy'] = 1``) the step uses its
own log-probs, stop-gradient, as log pi_old, so rho = 1 exactly; it returns
them (``aux['logp']``) for the later inner updates of the same batch.

Off-policy rollouts (``rl.pipeline='overlap'``: sampled with the behaviour
params one update behind) take the decoupled objective
(``rl.off_policy.objective='decoupled'``, ``GrpoHParams.decoupled``): the
batch also holds ``behaviour_logp``, the sampler's record, and log pi_old is
the proximal policy as above (the params before this update), so

    surr_i = w_i min(rho_i A_j, clip(rho_i, 1 - epsilon, 1 + epsilon) A_j)
    w_i    = pi_old(a_i) / pi_behaviour(a_i)   (stop-gradient; <= iw_cap if > 0)

The clip's trust region is centred on the current params, as in sync, and
w corrects for the sampling distribution (Hilton et al. 2021, "Batch
size-invariance for policy optimization"; AReaL, Fu et al. 2025). With
``objective='behaviour'`` log pi_old is the behaviour log-prob itself
(``on_policy`` 0), as PPO treats its own sampler.

With LoRA (``config.rl.lora.rank > 0``, `rl.lora`) the trainable params of
the `TrainState` are the adapters; the step takes the frozen base
transformer params as a third argument and differentiates
``loss(lora.merge(base, adapters))`` with respect to the adapters only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from varrl_jax import parallel, xla_cpu
from varrl_jax import policy as policy_lib
from varrl_jax.models import rows as rows_lib
from varrl_jax.models.family import NextScaleModel
from varrl_jax.policy import SamplingOptions
from varrl_jax.rl import lora as lora_lib
from varrl_jax.rl import panw


def group_advantages(rewards, eps: float = 1e-4) -> np.ndarray:
  """A = (R - mean) / (std + eps) over the last axis (one group per row).

  Host-side, in float64: with eps = 1e-4, float32 rounding of the mean of
  equal rewards would otherwise turn "no signal" into advantages of ~1e-3.
  """
  rewards = np.asarray(rewards, np.float64)
  mean = rewards.mean(axis=-1, keepdims=True)
  std = rewards.std(axis=-1, keepdims=True)
  return ((rewards - mean) / (std + eps)).astype(np.float32)


def token_terms(logp, old_logp, ref_logp, adv_b, clip_eps: float, iw=None):
  """Per-token (surrogate, kl, ratio, clipped) [B, L] of the GRPO objective;
  ``iw`` [B, L]: the decoupled objective's behaviour weights (None: 1)."""
  ratio = jnp.exp(logp - old_logp)
  adv = adv_b[:, None]
  unclipped = ratio * adv
  clipped_ratio = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  surrogate = jnp.minimum(unclipped, clipped_ratio * adv)
  if iw is not None:
    surrogate = iw * surrogate
  r = ref_logp - logp
  kl = jnp.exp(r) - r - 1.0
  clipped = (clipped_ratio * adv < unclipped).astype(jnp.float32)
  return surrogate, kl, ratio, clipped


def per_token_loss(
  logp, old_logp, ref_logp, adv_b, clip_eps: float, kl_beta: float, iw=None
):
  """l_i = -surr_i + beta kl_i, [B, L]."""
  surrogate, kl, _, _ = token_terms(logp, old_logp, ref_logp, adv_b, clip_eps, iw)
  return -surrogate + kl_beta * kl


def behaviour_weights(old_logp, behaviour_logp, cap: float = 0.0):
  """w = pi_old / pi_behaviour per token, stop-gradient, at most ``cap`` (> 0)."""
  w = jnp.exp(jax.lax.stop_gradient(old_logp - behaviour_logp))
  return jnp.minimum(w, cap) if cap > 0 else w


@flax.struct.dataclass
class TrainState:
  """The trainable transformer params, their optimizer state and the step."""

  step: jnp.ndarray
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class GrpoHParams:
  clip_eps: float = 0.2
  kl_beta: float = 0.04
  # Rows per sequential micro-batch of a step, whose gradients add up (the
  # same update with the activations of micro_rows rows at a time); 0 = one
  # pass. Fixed in rows, so a suffix step (K times the rows of a prefix
  # step) runs K times as many micro-batches at the same peak memory.
  micro_rows: int = 0
  # Off-policy batches (`rl.pipeline`): the decoupled objective (module
  # docstring); the batch then carries ``behaviour_logp``. iw_cap > 0
  # truncates its weights.
  decoupled: bool = False
  iw_cap: float = 0.0

  @classmethod
  def from_config(cls, rl: ml_collections.ConfigDict) -> GrpoHParams:
    """``config.rl.train_microbatches`` = M splits a prefix-phase step's
    P G rows into M micro-batches: micro_rows = P G / M."""
    m = int(rl.train_microbatches)
    rows = int(rl.prompts_per_update) * int(rl.group_size)
    if m < 1 or rows % m:
      raise ValueError(
        f'config.rl.train_microbatches={m} must be >= 1 and divide '
        f'config.rl.prompts_per_update x config.rl.group_size = {rows} rows'
      )
    micro = rows // m if m > 1 else 0
    objective = off_policy_objective(rl)
    return cls(
      clip_eps=float(rl.clip_eps),
      kl_beta=float(rl.kl_beta),
      micro_rows=micro,
      decoupled=rl.pipeline == 'overlap' and objective == 'decoupled',
      iw_cap=float(rl.off_policy.iw_cap),
    )


OFF_POLICY_OBJECTIVES = ('decoupled', 'behaviour')


def off_policy_objective(rl: ml_collections.ConfigDict) -> str:
  """``config.rl.off_policy.objective``, checked."""
  name = rl.off_policy.objective
  if name not in OFF_POLICY_OBJECTIVES:
    raise ValueError(
      f'config.rl.off_policy.objective must be one of {list(OFF_POLICY_OBJECTIVES)}, '
      f'got {name!r}'
    )
  if float(rl.off_policy.iw_cap) < 0:
    raise ValueError(
      f'config.rl.off_policy.iw_cap must be >= 0 (0: no cap), got {rl.off_policy.iw_cap}'
    )
  return name


def make_optimizer(rl: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW (lr, b1, b2, wd on kernels only) after global-norm clipping."""
  lr = rl.lr
  if rl.warmup_steps > 0:
    lr = optax.linear_schedule(0.0, rl.lr, rl.warmup_steps)

  # LoRA adapters (`rl.lora`) are factors of kernels: decayed like them.
  decayed = ('kernel', 'lora_a', 'lora_b')

  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) in decayed, params
    )

  chain = [optax.clip_by_global_norm(rl.grad_clip)] if rl.grad_clip > 0 else []
  chain.append(
    optax.adamw(lr, b1=rl.b1, b2=rl.b2, weight_decay=rl.weight_decay, mask=decay_mask)
  )
  return optax.chain(*chain)


def init_state(transformer_params, optimizer) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=transformer_params,
    opt_state=optimizer.init(transformer_params),
  )


def _per_scale(x_bl, w_bl, onehot_ls):
  """Weighted mean of x within each scale, [S]."""
  num = (x_bl * w_bl).sum(0) @ onehot_ls
  den = w_bl.sum(0) @ onehot_ls
  return num / jnp.maximum(den, 1e-12)


def make_train_step(
  model: NextScaleModel,
  opts: SamplingOptions,
  hp: GrpoHParams,
  optimizer: optax.GradientTransformation,
  alpha: float,
  mesh: Mesh | None = None,
  lora: lora_lib.Lora | None = None,
  dot_backend: str | None = None,
):
  """The jitted ``train_step(state, batch) -> (state, metrics, logp)``.

  With ``lora``: ``train_step(state, batch, base)``, ``state.params`` the
  adapters and ``base`` the frozen transformer params (not donated).

  ``batch``: cond (the family's conditioning, leaves [B, ...]), inputs
  [B, L, C] (`NextScaleModel.teacher_inputs`), tokens [B, L, *token_shape],
  old_logp [B, L], ref_logp
  [B, L], advantages [B], mask [B, L] (MP mask x stage selector), weights
  [L] (`panw.token_weights` of the stage), on_policy [] (1.0 on the first
  inner update). The state is donated.

  With a ``mesh`` the step has explicit shardings: the state as
  `state_shardings` says, the batch's rows over ('data', 'fsdp') and its
  weights and on_policy replicated (`batch_shardings`); out: the same state
  shardings, replicated metrics, logp by rows. Inputs must carry these
  shardings (or be uncommitted). Without a mesh it is jitted plainly (one
  device, or shardings inferred from the inputs).

  On CPU its dots run on XLA's own kernels unless ``dot_backend`` (or
  ``VARRL_CPU_DOT``) says 'ynn' (`xla_cpu.program_options`).
  """
  sched = model.schedule
  onehot = jnp.asarray(np.eye(sched.num_scales, dtype=np.float32)[sched.scale_index])
  k_s = jnp.asarray(panw.scale_weights(sched, alpha))

  def logp_and_entropy(params, batch):
    logits = policy_lib.policy_logits_from_inputs(
      model, params, batch['cond'], batch['inputs'], opts
    )
    return model.dist.logprobs_and_entropy(logits, batch['tokens'])

  def iw_of(old_logp, batch):
    if not hp.decoupled:
      return None
    return behaviour_weights(old_logp, batch['behaviour_logp'], hp.iw_cap)

  def reduce(logp, old_logp, batch):
    ell = per_token_loss(
      logp,
      old_logp,
      batch['ref_logp'],
      batch['advantages'],
      hp.clip_eps,
      hp.kl_beta,
      iw_of(old_logp, batch),
    )
    return panw.weighted_sum(ell, batch['weights'], batch['mask'])

  def loss_fn(params, batch, base=None):
    if lora is not None:
      params = lora.merge(base, params)
    logp, entropy = logp_and_entropy(params, batch)
    old_logp = jnp.where(
      batch['on_policy'] > 0, jax.lax.stop_gradient(logp), batch['old_logp']
    )
    return reduce(logp, old_logp, batch), (logp, old_logp, entropy)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated(params, batch, base):
    """`grad_fn` over k = rows / ``hp.micro_rows`` strided row blocks (row r
    goes to block r mod k, so every block spans every device's rows). The
    loss is a mean over rows of per-row sums, so the mean of the blocks'
    losses and gradients is the full batch's."""
    rows = batch['advantages'].shape[0]
    if rows % hp.micro_rows:
      raise ValueError(
        f'{rows} rows do not split into micro-batches of {hp.micro_rows} rows '
        '(config.rl.train_microbatches)'
      )
    k = rows // hp.micro_rows
    shared = {'weights', 'on_policy'}
    split = {
      key: jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(rows // k, k, *x.shape[1:]), 0, 1), v
      )
      for key, v in batch.items()
      if key not in shared
    }

    if mesh is not None:
      # Keep every micro-batch's rows spread over the data axes (the
      # propagation through the strided reshape need not find it).
      split = jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(
          x, NamedSharding(mesh, PartitionSpec(None, ('data', 'fsdp')))
        ),
        split,
      )

    def body(acc, part):
      if mesh is not None:
        part = jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(
            x, parallel.batch_sharding(mesh, x.ndim)
          ),
          part,
        )
      micro = dict(part, **{key: batch[key] for key in shared})
      (loss, aux), grads = grad_fn(params, micro, base)
      acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc, grads)
      return acc, (loss, aux)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    total, (losses, aux) = jax.lax.scan(body, zeros, split)
    grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), total, params)
    # [k, B/k, ...] back to the rows' order.
    aux = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(rows, *x.shape[2:]), aux)
    return (losses.mean(), aux), grads

  def train_step(state: TrainState, batch, base=None):
    if hp.micro_rows and batch['advantages'].shape[0] > hp.micro_rows:
      out = accumulated(state.params, batch, base)
    else:
      out = grad_fn(state.params, batch, base)
    (loss, (logp, old_logp, entropy)), grads = out
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient leaves the state as it was (the host then
    # stops the run and saves these last finite parameters).
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = TrainState(
      step=state.step + finite.astype(jnp.int32),
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
    )

    # Diagnostics (no gradient): per-scale KL, entropy, ratio, clipping,
    # the share of |dloss/dlogp| per scale, mask coverage.
    logp = jax.lax.stop_gradient(logp)
    iw = iw_of(old_logp, batch)
    surrogate, kl, ratio, clipped = token_terms(
      logp, old_logp, batch['ref_logp'], batch['advantages'], hp.clip_eps, iw
    )
    dlogp = jax.grad(reduce)(logp, old_logp, batch)
    # A prefix-phase batch holds the first L_p positions only (`rl.loop`):
    # scales past them report 0.
    per_scale = onehot[: logp.shape[1]]
    abs_share = jnp.abs(dlogp).sum(0) @ per_scale
    w = batch['mask'] * (batch['weights'][None] > 0)
    ones = jnp.ones_like(logp)
    metrics = {
      'loss': loss,
      'grad_norm': optax.global_norm(grads),
      'kl': (kl * w).sum() / jnp.maximum(w.sum(), 1e-12),
      'ratio': (ratio * w).sum() / jnp.maximum(w.sum(), 1e-12),
      'clip_frac': (clipped * w).sum() / jnp.maximum(w.sum(), 1e-12),
      'entropy': (entropy * w).sum() / jnp.maximum(w.sum(), 1e-12),
      'surrogate': (surrogate * w).sum() / jnp.maximum(w.sum(), 1e-12),
      'scale/kl': _per_scale(kl, w, per_scale),
      'scale/entropy': _per_scale(entropy, ones, per_scale),
      'scale/ratio': _per_scale(ratio, w, per_scale),
      'scale/clip_frac': _per_scale(clipped, w, per_scale),
      'scale/grad_share': abs_share / jnp.maximum(abs_share.sum(), 1e-12),
      'scale/mask_coverage': _per_scale(batch['mask'], ones, per_scale),
      'scale/panw_weight': k_s,
    }
    if iw is not None:
      metrics['off_policy/iw'] = (iw * w).sum() / jnp.maximum(w.sum(), 1e-12)
      metrics['off_policy/iw_max'] = jnp.max(jnp.where(w > 0, iw, 0.0))
      # Mean log(pi_old / pi_behaviour) of the sampled tokens.
      metrics['off_policy/log_iw'] = (
        (old_logp - batch['behaviour_logp']) * w
      ).sum() / jnp.maximum(w.sum(), 1e-12)
    return new_state, metrics, logp

  options = _train_options(mesh, dot_backend)
  # Weight gradients in the form that suits the dots' kernels (`models.rows`).
  train_step = rows_lib.traced_for_program(train_step, options)
  if mesh is None:
    return jax.jit(train_step, donate_argnums=(0,), compiler_options=options)
  state_sh = state_shardings(model, optimizer, mesh, lora)
  rows = parallel.batch_sharding(mesh, 1)
  in_sh = (state_sh, batch_shardings(mesh, model, hp.decoupled))
  if lora is not None:
    in_sh += (parallel.param_shardings(model, mesh)['transformer'],)
  return parallel.mesh_jit(
    train_step,
    mesh,
    in_shardings=in_sh,
    out_shardings=(state_sh, parallel.replicated(mesh), rows),
    donate_argnums=(0,),
    compiler_options=options,
  )


def _train_options(mesh: Mesh | None, dot_backend: str | None):
  """A teacher-forced program's XLA:CPU options (`xla_cpu.program_options`)."""
  return xla_cpu.program_options(
    None if mesh is None else mesh.devices.flat, dots=dot_backend, train=True
  )


def batch_shardings(mesh: Mesh, model: NextScaleModel, decoupled: bool = False) -> dict:
  """Shardings of a train-step batch: rows over ('data', 'fsdp'), the per-token
  weights [L] and the scalar on_policy replicated; ``decoupled``: with
  ``behaviour_logp`` (`GrpoHParams.decoupled`)."""
  ndim = {
    'inputs': 3,
    'tokens': 2 + len(model.dist.token_shape),
    'old_logp': 2,
    'ref_logp': 2,
    'advantages': 1,
    'mask': 2,
  }
  if decoupled:
    ndim['behaviour_logp'] = 2
  out = {k: parallel.batch_sharding(mesh, n) for k, n in ndim.items()}
  return dict(
    out,
    cond=parallel.rows_like(mesh, model.cond_spec(1)),
    weights=parallel.replicated(mesh),
    on_policy=parallel.replicated(mesh),
  )


def state_shardings(
  model: NextScaleModel, optimizer, mesh: Mesh, lora: lora_lib.Lora | None = None
) -> TrainState:
  """Shardings of the `TrainState`: params (the transformer's, or with
  ``lora`` the adapters) by the logical rules, the optimizer's moments like
  their params, counts replicated."""
  if lora is None:
    params = jax.eval_shape(model.init_boxed, jax.random.key(0))['transformer']
    shardings = nn.unbox(parallel.logical_shardings(mesh, params))
  else:
    params = jax.eval_shape(lora.init_boxed, jax.random.key(0))
    shardings = lora.shardings(mesh)
  params = nn.unbox(params)
  abstract = jax.eval_shape(lambda p: init_state(p, optimizer), params)
  return TrainState(
    step=parallel.replicated(mesh),
    params=shardings,
    opt_state=parallel.like_params(abstract.opt_state, params, shardings, mesh),
  )


def make_logprob_fn(
  model: NextScaleModel,
  opts: SamplingOptions,
  mesh: Mesh | None = None,
  dot_backend: str | None = None,
  nestable: bool = False,
):
  """Jitted teacher-forced log-probs from precomputed inputs (reference policy).

  ``fn(transformer_params, cond, inputs [B, L, C], tokens [B, L, ...]) -> logp
  [B, L]``. With a ``mesh``: params by the logical rules, every other
  argument and the output by rows. On CPU its dots run on XLA's own
  kernels as `make_train_step`'s do, unless ``dot_backend`` (or
  ``VARRL_CPU_DOT``) says 'ynn'; ``nestable=True`` compiles it without
  compiler options, so that it can be called inside another jit.
  """

  def fn(transformer_params, cond, inputs, tokens):
    logits = policy_lib.policy_logits_from_inputs(
      model, transformer_params, cond, inputs, opts
    )
    return model.dist.token_logprobs(logits, tokens)

  # jax refuses compiler options on a jit called inside another jit.
  options = None if nestable else _train_options(mesh, dot_backend)
  if mesh is None:
    return jax.jit(fn, compiler_options=options)
  params = parallel.param_shardings(model, mesh)['transformer']
  row = functools.partial(parallel.batch_sharding, mesh)
  return parallel.mesh_jit(
    fn,
    mesh,
    in_shardings=(
      params,
      parallel.rows_like(mesh, model.cond_spec(1)),
      row(3),
      row(2),
    ),
    out_shardings=row(2),
    compiler_options=options,
  )
