"""KV-cached next-scale sampler.

One jitted program per call shape: prefill the prompt (and the null prompt
when CFG is on: one row of it, repeated, where the family's null rows are all
alike) into a KV cache, then unroll all scales with static per-scale
shapes. At scale s the input is f_hat (scales < s) area-resized to
(h_s, w_s); the scale's logits come from one transformer pass over its n_s
tokens against the cache; tokens are drawn from the guided logits at the
rollout temperature after top-k / top-p truncation; the log-prob of every
drawn token under the policy (`policy.py`) is kept; f_hat accumulates
phi_s(bicubic(E[ids])).

`sample_prefix` stops after scale m and returns the sampler state;
`branch` repeats it K times (K copies of the prefix's KV cache, computed
once) and continues the suffix: this is how VMR gets K suffix rollouts of
one prefix.
`sample_recompute` is the same sampler without a cache (the whole prefix is
re-run at every scale); it is the reference for tests and benchmarks.

Randomness: scale s draws with ``fold_in(key, s)``, so the same key gives the
same images, and a prefix sampled once continues identically.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from varrl_jax import parallel, xla_cpu
from varrl_jax import policy as policy_lib
from varrl_jax.models.distributions import draw, filter_logits  # noqa: F401
from varrl_jax.models.family import Cond, NextScaleModel
from varrl_jax.policy import SamplingOptions


class SamplerState(NamedTuple):
  """Everything needed to continue sampling after some scales."""

  cache: dict  # leaves [layers, nb * B, ...]; nb = 2 with CFG
  ctx: dict  # the family's per-row context for `step`, leaves [nb * B, ...]
  f_hat: jnp.ndarray  # [B, h, w, C], sum of h_s over the scales done
  tokens: jnp.ndarray  # [B, L, *dist.token_shape]; zeros past the scales done
  logprobs: jnp.ndarray  # float32 [B, L]; policy log-probs of `tokens`


class SampleOutput(NamedTuple):
  tokens: jnp.ndarray  # [B, L, *dist.token_shape] (int32 ids for a categorical)
  logprobs: jnp.ndarray  # float32 [B, L]
  scale_index: np.ndarray  # int32 [L] (host constant)
  images: jnp.ndarray  # uint8 [B, H, W, 3]


def _repeat_rows(x, k: int, groups: int, axis: int):
  """Repeats each of B rows k times along `axis` inside each of `groups` blocks."""
  shape = x.shape
  x = x.reshape(*shape[:axis], groups, shape[axis] // groups, *shape[axis + 1 :])
  x = jnp.repeat(x, k, axis=axis + 1)
  return x.reshape(*shape[:axis], shape[axis] * k, *shape[axis + 1 :])


class Sampler:
  """Jitted sampling programs for one model and one set of options.

  Each public method is compiled once per input shape (and per static m / K);
  calling it again with the same shapes never retraces.

  With a ``mesh``, every program has explicit shardings: params by the
  logical rules (`parallel.param_shardings`), prompts, tokens, log-probs,
  images and the sampler state by rows over ('data', 'fsdp') (the KV cache
  on its batch axis), the key replicated; the batch must divide over
  data x fsdp. Inputs are placed on the mesh by the public methods (host
  arrays must then be the same in every process).

  On CPU the programs' convolutions (the decode, the scale residuals) run on
  XLA's own kernels, ``conv_backend`` 'xla' (`varrl_jax.xla_cpu`; default:
  ``VARRL_CPU_CONV``, else 'xla'); 'ynn' keeps XLA:CPU's default.
  """

  def __init__(
    self,
    model: NextScaleModel,
    opts: SamplingOptions,
    cache_dtype=None,
    mesh: Mesh | None = None,
    conv_backend: str | None = None,
  ):
    self.model = model
    self.opts = opts
    self.cache_dtype = cache_dtype
    self.mesh = mesh
    self.trace_count = 0  # incremented at trace time; tests use it
    # The programs' convolutions (decode, scale residuals) on XLA:CPU's own
    # kernels where they run on CPU (`varrl_jax.xla_cpu`).
    options = xla_cpu.program_options(
      None if mesh is None else mesh.devices.flat, backend=conv_backend
    )
    if mesh is None:
      jit = functools.partial(jax.jit, compiler_options=options)
      self._sample = jit(self._sample_impl)
      self._prefix = jit(self._prefix_impl, static_argnums=(3,))
      self._branch = jit(self._branch_impl, static_argnums=(3, 4))
      self._recompute = jit(self._recompute_impl)
      return
    self._params_sh = parallel.param_shardings(model, mesh)
    self._rep = parallel.replicated(mesh)
    row = functools.partial(parallel.batch_sharding, mesh)
    cache = NamedSharding(mesh, PartitionSpec(None, ('data', 'fsdp')))
    self._cond_sh = parallel.rows_like(mesh, model.cond_spec(1))
    abstract = jax.eval_shape(self._start, *self._abstract_start())
    self.trace_count = 0
    self._state_sh = SamplerState(
      cache=jax.tree.map(lambda _: cache, abstract.cache),
      ctx=parallel.rows_like(mesh, abstract.ctx),
      f_hat=row(4),
      tokens=row(2),
      logprobs=row(2),
    )
    start = (self._params_sh, self._cond_sh, self._rep)
    out = (row(2), row(2), row(4))
    jit = functools.partial(parallel.mesh_jit, mesh=mesh, compiler_options=options)
    self._sample = jit(self._sample_impl, in_shardings=start, out_shardings=out)
    self._prefix = jit(
      self._prefix_impl,
      static_argnums=(3,),
      in_shardings=start,
      out_shardings=self._state_sh,
    )
    self._branch = jit(
      self._branch_impl,
      static_argnums=(3, 4),
      in_shardings=(self._params_sh, self._state_sh, self._rep),
      out_shardings=out,
    )
    self._recompute = jit(self._recompute_impl, in_shardings=start, out_shardings=out)

  def _abstract_start(self):
    """Abstract (params, cond) of one row: traced once for the state's tree."""
    params = jax.eval_shape(self.model.init_boxed, jax.random.key(0))
    return nn.unbox(params), self.model.cond_spec(1)

  def _place(self, params, cond, key):
    """The arguments on the mesh (a no-op for arrays already placed so)."""
    if self.mesh is None:
      return params, cond, key
    rows = jax.tree.leaves(cond)[0].shape[0]
    parallel.check_rows(self.mesh, rows, 'Sampler batch')
    return (
      parallel.put(params, self._params_sh),
      parallel.put(cond, self._cond_sh),
      parallel.put(key, self._rep),
    )

  # -- public API -------------------------------------------------------------

  def sample(self, params, cond: Cond, key) -> SampleOutput:
    """Samples all scales and decodes: tokens, log-probs, images.

    ``cond``: the family's conditioning of B rows (`encode_prompts`).
    """
    args = self._place(params, cond, key)
    tokens, logps, images = self._sample(*args)
    return SampleOutput(tokens, logps, self.model.schedule.scale_index, images)

  def sample_prefix(self, params, cond: Cond, key, m: int) -> SamplerState:
    """Samples scales 0..m (inclusive) and returns the state to continue from."""
    self._check_split(m)
    return self._prefix(*self._place(params, cond, key), m)

  def branch(self, params, state: SamplerState, key, m: int, num_branches: int):
    """K suffix rollouts (scales m+1..S-1) of every prefix in ``state``.

    Rows come out grouped by prefix: row ``b * K + k`` is branch k of prefix b.
    All branches share the prefix tokens and log-probs; each continues from a
    copy of the prefix's KV cache.
    """
    self._check_split(m)
    if num_branches < 1:
      raise ValueError(f'num_branches must be >= 1, got {num_branches}')
    if self.mesh is not None:
      params = parallel.put(params, self._params_sh)
      state, key = parallel.put(state, self._state_sh), parallel.put(key, self._rep)
    tokens, logps, images = self._branch(params, state, key, m, num_branches)
    return SampleOutput(tokens, logps, self.model.schedule.scale_index, images)

  def sample_recompute(self, params, cond: Cond, key) -> SampleOutput:
    """The same sampler without a KV cache (reference for tests/benchmarks)."""
    args = self._place(params, cond, key)
    tokens, logps, images = self._recompute(*args)
    return SampleOutput(tokens, logps, self.model.schedule.scale_index, images)

  def program(self, name: str):
    """The jitted function behind 'sample' or 'recompute' (for AOT lower/compile)."""
    return {'sample': self._sample, 'recompute': self._recompute}[name]

  # -- programs ---------------------------------------------------------------

  def _check_split(self, m: int) -> None:
    num = self.model.schedule.num_scales
    if not 0 <= m < num:
      raise ValueError(f'split scale m={m} out of range [0, {num - 1}]')

  def _start(self, params, cond) -> SamplerState:
    self.trace_count += 1
    model, opts = self.model, self.opts
    b = jax.tree.leaves(cond)[0].shape[0]
    if opts.uses_uncond and model.shared_null_prefill:
      ctx, cache = self._prefill_shared_null(params['transformer'], cond, b)
    else:
      if opts.uses_uncond:
        cond = model.with_null(cond)
      rows = jax.tree.leaves(cond)[0].shape[0]
      cache = model.init_cache(rows, self.cache_dtype)
      ctx, cache = model.prefill(params['transformer'], cond, cache)
    sched = model.schedule
    return SamplerState(
      cache=cache,
      ctx=ctx,
      f_hat=model.zero_fhat(b),
      tokens=model.empty_tokens(b),
      logprobs=jnp.zeros((b, sched.num_tokens), jnp.float32),
    )

  def _prefill_shared_null(self, transformer_params, cond, b: int):
    """(ctx, cache) of [cond; null] with the null prefix prefilled once.

    Every null row of a CFG batch holds the same prompt: its prefix is
    computed for one row and repeated (at VAR-d16 size with CFG, 3/8 of the
    prefill's FLOPs saved: B + 1 rows instead of 2B).
    """
    model = self.model
    ctx, cache = model.prefill(
      transformer_params, cond, model.init_cache(b, self.cache_dtype)
    )
    null = jax.tree.map(jnp.asarray, model.null_cond(1))
    null_ctx, null_cache = model.prefill(
      transformer_params, null, model.init_cache(1, self.cache_dtype)
    )

    def stack(x, one, axis):
      shape = (*one.shape[:axis], b, *one.shape[axis + 1 :])
      return jnp.concatenate([x, jnp.broadcast_to(one, shape)], axis=axis)

    cache = jax.tree.map(lambda c, n: stack(c, n, 1), cache, null_cache)
    ctx = jax.tree.map(lambda c, n: stack(c, n, 0), ctx, null_ctx)
    return ctx, cache

  def _scale_logits(self, logits_nbv, s: int):
    """(guided logits to draw from, policy logits / T) of one scale."""
    opts = self.opts
    if not opts.uses_uncond:
      return logits_nbv, logits_nbv / opts.logprob_temperature
    cond, uncond = jnp.split(logits_nbv, 2, axis=0)
    guided = policy_lib.guide(
      cond, uncond, opts.guidance(s, self.model.schedule.num_scales)
    )
    pol = guided if opts.policy == 'cfg' else cond
    return guided, pol / opts.logprob_temperature

  def _emit(self, state: SamplerState, params, s: int, key, logits_nbv, cache):
    """Draws scale s from its logits and updates tokens, log-probs and f_hat."""
    model = self.model
    guided, pol = self._scale_logits(logits_nbv, s)
    ids = model.dist.draw(jax.random.fold_in(key, s), guided, self.opts)
    logp = model.dist.token_logprobs(pol, ids)
    start, _ = model.schedule.span(s)
    b = ids.shape[0]
    grid = ids.reshape(b, *model.schedule.grids[s], *model.dist.token_shape)
    f_hat = state.f_hat + model.scale_residual(params, grid, s)
    return state._replace(
      cache=cache,
      f_hat=f_hat,
      tokens=jax.lax.dynamic_update_slice(
        state.tokens, ids.astype(state.tokens.dtype), (0, start) + (0,) * (ids.ndim - 2)
      ),
      logprobs=jax.lax.dynamic_update_slice(state.logprobs, logp, (0, start)),
    )

  def _inputs(self, state: SamplerState, s: int):
    x = self.model.next_input(state.f_hat, s)
    return jnp.concatenate([x, x], axis=0) if self.opts.uses_uncond else x

  def _run(self, params, state: SamplerState, key, first: int, last: int):
    for s in range(first, last):
      logits, cache = self.model.step(
        params['transformer'], self._inputs(state, s), s, state.ctx, state.cache
      )
      state = self._emit(state, params, s, key, logits, cache)
    return state

  def _finish(self, params, state: SamplerState):
    return state.tokens, state.logprobs, self.model.decode_fhat(params, state.f_hat)

  def _sample_impl(self, params, cond, key):
    state = self._start(params, cond)
    state = self._run(params, state, key, 0, self.model.schedule.num_scales)
    return self._finish(params, state)

  def _prefix_impl(self, params, cond, key, m):
    state = self._start(params, cond)
    return self._run(params, state, key, 0, m + 1)

  def _branch_impl(self, params, state: SamplerState, key, m, k):
    self.trace_count += 1
    groups = 2 if self.opts.uses_uncond else 1
    state = SamplerState(
      cache=jax.tree.map(lambda c: _repeat_rows(c, k, groups, axis=1), state.cache),
      ctx=jax.tree.map(lambda c: _repeat_rows(c, k, groups, axis=0), state.ctx),
      f_hat=jnp.repeat(state.f_hat, k, axis=0),
      tokens=jnp.repeat(state.tokens, k, axis=0),
      logprobs=jnp.repeat(state.logprobs, k, axis=0),
    )
    state = self._run(params, state, key, m + 1, self.model.schedule.num_scales)
    return self._finish(params, state)

  def _recompute_impl(self, params, cond, key):
    self.trace_count += 1
    model, opts = self.model, self.opts
    sched = model.schedule
    b = jax.tree.leaves(cond)[0].shape[0]
    if opts.uses_uncond:
      cond = model.with_null(cond)
    state = SamplerState(
      cache=None,
      ctx=None,
      f_hat=model.zero_fhat(b),
      tokens=model.empty_tokens(b),
      logprobs=jnp.zeros((b, sched.num_tokens), jnp.float32),
    )
    pieces = []
    for s in range(sched.num_scales):
      pieces.append(self._inputs(state, s))
      start, _ = sched.span(s)
      logits = model.logits(
        params['transformer'], cond, jnp.concatenate(pieces, axis=1), s + 1
      )
      state = self._emit(state, params, s, key, logits[:, start:], None)
    return self._finish(params, state)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _logprobs_jit(model, params, cond, tokens, opts):
  return policy_lib.logprobs(model, params, cond, tokens, opts)


def logprobs(model: NextScaleModel, params, cond: Cond, tokens, opts: SamplingOptions):
  """Teacher-forced policy log-probs of ``tokens`` (jitted), float32 [B, L]."""
  return _logprobs_jit(model, params, cond, tokens, opts)
