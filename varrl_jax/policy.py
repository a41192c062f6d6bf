"""The policy distribution pi(token | prompt, coarser scales) and its log-probs.

Classifier-free guidance mixes conditional and unconditional logits,

    l_guided = l_uncond + w_s (l_cond - l_uncond),

with ``w_s = w`` (``cfg_schedule='constant'``), ``w_s = 1 + (w - 1) s / (S-1)``
(``'linear'``: our ramp from 1 at the first scale to w at the last) or
``w_s = 1 + w s / (S-1)`` (``'var'``: the official VAR sampler's
``(1 + t) l_cond - t l_uncond`` with ``t = cfg s / (S-1)``, so ``cfg_scale``
is their ``cfg`` and the ramp ends at 1 + w). Which distribution is "the
policy" for RL is the ``policy`` option:

- ``cfg``: log_softmax(l_guided / T), T the rollout temperature: exactly the
  distribution CFG rollouts draw from before truncation (on-policy);
- ``cond``: log_softmax(l_cond / T): conditional logits only, half the cost.

Top-k / top-p truncation is never part of the log-prob: it only decides which
tokens may be drawn. With temperature 0 (greedy) the log-prob uses T = 1.

`logprobs` is the teacher-forced pass: one forward over all scales that must
reproduce the sampler's log-probs of the sampled tokens, which is what makes
the GRPO ratio exactly 1 on the first inner update.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np

from varrl_jax.models.family import Cond, NextScaleModel

CFG_SCHEDULES = ('constant', 'linear', 'var')


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """Rollout and policy settings (hashable; paper rollouts: CFG 5, top-k 2, top-p 0.9)."""

  cfg_scale: float = 1.0
  cfg_schedule: str = 'constant'
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  policy: str = 'cfg'

  def __post_init__(self):
    if self.cfg_schedule not in CFG_SCHEDULES:
      raise ValueError(
        f'config.sampling.cfg_schedule must be one of {CFG_SCHEDULES}, '
        f'got {self.cfg_schedule!r}'
      )
    if self.policy not in ('cfg', 'cond'):
      raise ValueError(
        f"config.sampling.policy must be 'cfg' or 'cond', got {self.policy!r}"
      )
    if self.temperature < 0:
      raise ValueError(
        f'config.sampling.temperature must be >= 0, got {self.temperature}'
      )
    if self.top_k < 0:
      raise ValueError(f'config.sampling.top_k must be >= 0, got {self.top_k}')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'config.sampling.top_p must be in (0, 1], got {self.top_p}')

  @classmethod
  def from_config(cls, sc: ml_collections.ConfigDict) -> SamplingOptions:
    return cls(
      cfg_scale=float(sc.cfg_scale),
      cfg_schedule=sc.cfg_schedule,
      temperature=float(sc.temperature),
      top_k=int(sc.top_k),
      top_p=float(sc.top_p),
      policy=sc.policy,
    )

  @property
  def uses_uncond(self) -> bool:
    """Whether rollouts need the unconditional branch at all."""
    return self.cfg_scale != (0.0 if self.cfg_schedule == 'var' else 1.0)

  @property
  def logprob_temperature(self) -> float:
    return self.temperature if self.temperature > 0 else 1.0

  def guidance(self, s: int, num_scales: int) -> float:
    """w_s of scale s."""
    if self.cfg_schedule == 'var':
      return 1.0 + self.cfg_scale * s / max(num_scales - 1, 1)
    if self.cfg_schedule == 'linear' and num_scales > 1:
      return 1.0 + (self.cfg_scale - 1.0) * s / (num_scales - 1)
    return self.cfg_scale


def guide(logits_cond, logits_uncond, w):
  """l_uncond + w (l_cond - l_uncond)."""
  return logits_uncond + w * (logits_cond - logits_uncond)


def policy_logits(
  model: NextScaleModel, params: dict, cond: Cond, tokens_bl, opts: SamplingOptions
):
  """Teacher-forced policy logits [B, L, ...], already divided by T."""
  inputs = model.teacher_inputs(params, tokens_bl)
  return policy_logits_from_inputs(model, params['transformer'], cond, inputs, opts)


def policy_logits_from_inputs(
  model: NextScaleModel,
  transformer_params,
  cond: Cond,
  inputs_blc,
  opts: SamplingOptions,
):
  """As `policy_logits` from precomputed next-scale inputs [B, L_p, C].

  The inputs depend only on the frozen tokenizer and the tokens, so the RL
  step computes them once per rollout batch and differentiates this part.
  ``L_p`` may be the length of the first scales only (``offsets[s]`` for some
  s): the logits of those scales, which never depend on later tokens
  (block-causal), at the cost of those scales alone.
  """
  sched = model.schedule
  num_scales = scales_of_length(sched, inputs_blc.shape[1])
  if opts.uses_uncond and opts.policy == 'cfg':
    inputs = jnp.concatenate([inputs_blc, inputs_blc], axis=0)
    logits = model.logits(transformer_params, model.with_null(cond), inputs, num_scales)
    cond_logits, uncond = jnp.split(logits, 2, axis=0)
    index = sched.scale_index[: inputs_blc.shape[1]]
    w = jnp.asarray([opts.guidance(s, sched.num_scales) for s in index], jnp.float32)
    w = w.reshape(1, -1, *([1] * (logits.ndim - 2)))
    logits = guide(cond_logits, uncond, w)
  else:
    logits = model.logits(transformer_params, cond, inputs_blc, num_scales)
  return logits / opts.logprob_temperature


def scales_of_length(sched, length: int) -> int:
  """The number of leading scales whose tokens are exactly ``length``."""
  hits = np.flatnonzero(sched.offsets == length)
  if length == 0 or not len(hits):
    raise ValueError(
      f'{length} positions are not whole leading scales of the schedule '
      f'(scale offsets {sched.offsets.tolist()})'
    )
  return int(hits[0])


def logprobs(model: NextScaleModel, params: dict, cond: Cond, tokens_bl, opts):
  """Teacher-forced log pi(token) of every image token, float32 [B, L]."""
  return model.dist.token_logprobs(
    policy_logits(model, params, cond, tokens_bl, opts), tokens_bl
  )
