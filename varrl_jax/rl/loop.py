"""The host loop: rollouts -> rewards -> advantages / VMR / masks -> GRPO steps.

Phases (DESIGN.md section 3):

- ``full`` (mode 'vanilla', or a split at the last scale): G samples per
  prompt, A from the terminal rewards, every token updated.
- ``prefix``: G prefixes per prompt, K suffix branches each; the prefix's
  return is V_m = eta log mean_k exp(R_k / eta); A from the G values of a
  prompt; only prefix tokens (scales <= m) are updated; the teacher-forced
  pass uses branch 0 (prefix logits never depend on suffix tokens); the MP
  mask comes from the union of the K branches' boxes.
- ``suffix``: the same rollouts; A from the terminal rewards with the group
  ``config.rl.vmr.suffix_group``: 'prompt' (all G K samples of a prompt) or
  'prefix' (the K branches of one prefix); only suffix tokens are updated.

Prefix and suffix updates alternate ``prefix_updates : suffix_updates``
(paper 3:1; Table 4b's coarse schedule is 300:100). The MP mask of a row is
propagated from its reward regions; a prefix row takes the union over its K
branches. A reward without regions (`rewards.api`: None, e.g. JPEG size)
gives all-ones masks, and the run warns once that MP is then a no-op.
PANW weights are normalized over the updated stage.

The reward is a `rewards.api.WeightedReward` (``config.rl.rewards``); every
update logs the total (``reward/mean``, ``reward/std``), each term
(``reward/<name>/mean``, ``/std`` and ``/adv_share``, its share of the
advantage variance, `api.advantage_shares`, over the groups of the prompts),
the terms' diagnostics (``reward/<diag>``, e.g. the OCR's comp/sim/pen) and
counters (``ocr/*``).

Everything runs on the device mesh of ``config.mesh`` (`varrl_jax.parallel`):
parameters and optimizer state sharded by the logical rules, batch rows over
('data', 'fsdp'). With LoRA (``config.rl.lora.rank > 0``, `rl.lora`) the
trainable state is the adapters, the KL reference is the base params held
once, and each rollout samples with ``lora.merge(base, adapters)``, merged
once per update. With several processes every host runs this same loop on
the same prompts; host arrays (prompts, advantages, masks) are identical in
all of them and each process contributes its shards.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from varrl_jax import checkpoint, fs, parallel
from varrl_jax.models.family import NextScaleModel
from varrl_jax.policy import SamplingOptions
from varrl_jax.rewards import api as reward_api
from varrl_jax.rl import adaptive_m, grpo, panw, phase_rows, rollout, vmr
from varrl_jax.rl import lora as lora_lib
from varrl_jax.rl.method import (  # noqa: F401 (the loop's names)
  MODES,
  Method,
  NonFiniteError,
  phase_of,
  update_prompts,
)
from varrl_jax.sampling import Sampler


class Trainer:
  """Owns the policy/reference params, the optimizer state and the step programs.

  ``reward``: a `rewards.api.WeightedReward` (`api.build(config)`), a single
  reward, or an `OcrPool` (then the reward of ``config.rl.rewards`` with this
  pool for its OCR term); the caller closes it. ``mesh``: default
  ``parallel.make_mesh(config.mesh)``. ``params`` may live anywhere (host,
  one device, the mesh); the trainer keeps sharded copies.
  """

  def __init__(self, config, model: NextScaleModel, params: dict, reward, mesh=None):
    self.config, self.model = config, model
    self.reward = reward_api.as_weighted(reward, config)
    self._warned_no_regions = False
    self.mesh = parallel.make_mesh(config.mesh) if mesh is None else mesh
    self.method = Method.from_config(config, model)
    self.opts = SamplingOptions.from_config(config.sampling)
    self.sampler = Sampler(model, self.opts, mesh=self.mesh)
    shardings = parallel.param_shardings(model, self.mesh)
    self.tokenizer_params = parallel.put(params['tokenizer'], shardings['tokenizer'])
    # None at rank 0: full fine-tuning, no adapter is built.
    self.lora = lora_lib.from_config(config.rl.lora, model)
    # The frozen reference of the KL term: the initial policy (a copy: the
    # step donates the state, and the caller keeps its params). With LoRA it
    # is the base the adapters sit on, never donated: no copy.
    self.ref_params = parallel.put(
      params['transformer'], shardings['transformer'], copy=self.lora is None
    )
    # Checked on resume: a train state only continues the run of its reference.
    self.ref_fingerprint = checkpoint.fingerprint(self.ref_params)
    self.optimizer = grpo.make_optimizer(config.rl)
    self.state_shardings = grpo.state_shardings(
      model, self.optimizer, self.mesh, self.lora
    )
    # The optimizer state is created sharded (never whole on one device).
    init = jax.jit(
      lambda p: grpo.init_state(p, self.optimizer), out_shardings=self.state_shardings
    )
    if self.lora is None:
      self._base = ()
      self.state = init(
        parallel.put(params['transformer'], shardings['transformer'], copy=True)
      )
    else:
      self._base = (self.ref_params,)
      self.state = init(lora_lib.init_from_config(self.lora, config.seed, self.mesh))
      self._merge = parallel.mesh_jit(
        self.lora.merge,
        self.mesh,
        in_shardings=(shardings['transformer'], self.lora.shardings(self.mesh)),
        out_shardings=shardings['transformer'],
      )
    self.hp = grpo.GrpoHParams.from_config(config.rl)
    self.step_fn = grpo.make_train_step(
      model,
      self.opts,
      self.hp,
      self.optimizer,
      self.method.alpha,
      mesh=self.mesh,
      lora=self.lora,
    )
    self.logprob_fn = grpo.make_logprob_fn(model, self.opts, mesh=self.mesh)
    self.inputs_fn = parallel.mesh_jit(
      lambda tok, tokens: model.teacher_inputs({'tokenizer': tok}, tokens),
      self.mesh,
      in_shardings=(shardings['tokenizer'], self._rows(2)),
      out_shardings=self._rows(3),
    )
    # The split's controller with config.rl.vmr.m='adaptive', else None.
    self.split = None
    if self.method.adaptive:
      settings = adaptive_m.Settings.from_config(config, model.schedule)
      self.split = adaptive_m.Controller(settings)
    self._stages = {}

  def stages(self, m: int) -> tuple[dict, dict]:
    """`vmr.phase_stages` of split m, cached: each m's programs compile once."""
    if m not in self._stages:
      self._stages[m] = vmr.phase_stages(self.model.schedule, m)
    return self._stages[m]

  @property
  def current_m(self) -> int:
    """The split the next rollout dispatched gets."""
    return self.method.m if self.split is None else self.split.m

  def split_of(self, update: int) -> int:
    """The split of rollout ``update``, fixed when it is first asked for (at
    its dispatch); update ``update`` trains with it (`rl.adaptive_m`)."""
    return self.method.m if self.split is None else self.split.split_for(update)

  def _rows(self, ndim: int):
    return parallel.batch_sharding(self.mesh, ndim)

  def _replicated(self, x):
    return parallel.put(x, parallel.replicated(self.mesh))

  @property
  def params(self) -> dict:
    """The policy's params; with LoRA the base with the adapters merged (a
    new transformer-sized buffer on every call)."""
    return self.policy_params(self.state.params)

  def policy_params(self, trainable) -> dict:
    """The policy's params from trainable params of `self.state`'s layout."""
    if self.lora is None:
      return {'tokenizer': self.tokenizer_params, 'transformer': trainable}
    merged = self._merge(self.ref_params, trainable)
    return {'tokenizer': self.tokenizer_params, 'transformer': merged}

  def checkpoint_parts(self) -> tuple[dict, dict]:
    """(parts, manifest entries) of a parameter checkpoint of the policy:
    the merged params, and with LoRA also the adapters (part 'lora') and
    how to rebuild them (`checkpoint.save_params`, `export --lora`)."""
    if self.lora is None:
      return self.params, {}
    lc = self.config.rl.lora
    record = {
      'rank': self.lora.rank,
      'alpha': self.lora.alpha,
      'targets': lc.targets,
      # '' after a random init: such adapters are only usable merged.
      'base': fs.resolve(base) if (base := self.config.init_checkpoint) else '',
      'base_fingerprint': self.ref_fingerprint,
      'fingerprint_version': checkpoint.FINGERPRINT_VERSION,
    }
    return dict(self.params, lora=self.state.params), {'lora': record}

  def rollout(self, prompts, key, m: int | None = None) -> rollout.Rollout:
    """Samples a rollout batch at split ``m`` (default `current_m`)."""
    rl = self.config.rl
    return rollout.sample(
      self.sampler,
      self.params,
      prompts,
      rl.group_size,
      rl.vmr.num_branches,
      self.current_m if m is None else m,
      key,
      self.reward,
      rl.rollout_chunks,
    )

  def build_batch(
    self,
    ro: rollout.Rollout,
    scored: rollout.Scored,
    phase: str,
    on_policy=True,
    m: int | None = None,
  ):
    """Advantages, masks and weights of one update; returns (batch, stats).

    ``on_policy``: ``ro`` was sampled with the current params (the step then
    takes its own log-probs as log pi_old). Otherwise (`rl.pipeline`) the
    batch's ``behaviour_logp`` is the sampler's record for the decoupled
    objective (`grpo`), or with ``rl.off_policy.objective='behaviour'``
    log pi_old is that record.
    ``m``: the split ``ro`` was sampled at (default `current_m`)."""
    rows, adv, mask, stats = phase_rows.phase_rows(
      self.config, self.method, self.model.schedule, ro.shape, scored, phase
    )
    stage, stage_length = self.stages(self.current_m if m is None else m)
    stage_scales, selector = stage[phase]
    mask = mask * selector[None]
    weights = panw.token_weights(self.model.schedule, self.method.alpha, stage_scales)
    parallel.check_rows(self.mesh, len(rows), f'the {phase} update batch')

    def put_rows(x, dtype=None):
      x = np.asarray(x, dtype)
      return parallel.put(x, self._rows(x.ndim))

    # A prefix update's loss sees scales <= m only, whose logits never depend
    # on later tokens (block-causal): its reference pass and step run on
    # those n positions alone.
    n = stage_length[phase]
    tokens = put_rows(ro.tokens[rows])
    cond = jax.tree.map(lambda x: put_rows(x[rows]), ro.cond)
    inputs = self.inputs_fn(self.tokenizer_params, tokens)
    if n < tokens.shape[1]:
      tokens, inputs = tokens[:, :n], inputs[:, :n]
    batch = {
      'cond': cond,
      'inputs': inputs,
      'tokens': tokens,
      # Unused by a first step that takes its own log-probs (`proximal`).
      'old_logp': put_rows(ro.logprobs[rows][:, :n]),
      'ref_logp': self.logprob_fn(self.ref_params, cond, inputs, tokens),
      'advantages': put_rows(adv, np.float32),
      'mask': put_rows(mask[:, :n], np.float32),
      'weights': self._replicated(np.asarray(weights)[:n]),
      'on_policy': self._replicated(np.float32(self.proximal(on_policy))),
    }
    if not on_policy and self.hp.decoupled:
      batch['behaviour_logp'] = batch['old_logp']
    stats.update(
      {
        'adv/mean': float(adv.mean()),
        'adv/std': float(adv.std()),
        'adv/abs_mean': float(np.abs(adv).mean()),
        # Of the tokens of the updated stage.
        'mask/coverage': float(mask.sum() / (selector.sum() * mask.shape[0])),
      }
    )
    return batch, stats

  def proximal(self, on_policy: bool) -> bool:
    """Does the first step take its own log-probs as log pi_old: on policy,
    and off policy with the decoupled objective."""
    return bool(on_policy or self.hp.decoupled)

  def update(self, batch, on_policy=True, while_stepping=None) -> dict:
    """``config.rl.inner_updates`` GRPO steps on one batch; metrics of the last.

    With a `proximal` first step, its log-probs are log pi_old of the later
    ones; otherwise every step keeps the batch's (the behaviour policy's).
    ``while_stepping()`` runs on the host once the steps are dispatched."""
    metrics = {}
    for inner in range(self.config.rl.inner_updates):
      self.state, metrics, logp = self.step_fn(self.state, batch, *self._base)
      if inner == 0 and self.proximal(on_policy):
        batch = dict(batch, old_logp=logp, on_policy=self._replicated(np.float32(0.0)))
    if while_stepping is not None:
      while_stepping()
    return jax.device_get(metrics)

  def _split_metrics(self, update: int, rewards_pgk, m: int) -> dict[str, float]:
    """``vmr/m`` (this update's split), ``vmr/prefix_share`` (when defined,
    `adaptive_m.prefix_share`) and with adaptive m ``vmr/prefix_share_ema``
    (when defined); feeds the controller, which may move m for later
    rollouts."""
    if not self.method.use_vmr:
      return {}
    out = {'vmr/m': float(m)}
    share = adaptive_m.prefix_share(rewards_pgk)
    if np.isfinite(share):
      out['vmr/prefix_share'] = share
    if self.split is not None:
      ema = self.split.observe(update, share, m)
      if np.isfinite(ema):
        out['vmr/prefix_share_ema'] = ema
    return out

  def run_update(self, update: int, prompts, key):
    """One synchronous outer update: rollout with the current params, then
    `learn`. Returns (flat metrics, rollout, scored, phase)."""
    return self.learn(update, self.rollout(prompts, key, self.split_of(update)))

  def learn(
    self, update: int, ro: rollout.Rollout, on_policy=True, while_stepping=None
  ):
    """Rewards of ``ro`` (submitted), batch and GRPO steps of update ``update``;
    ``on_policy``, ``while_stepping``: `update`. Returns (flat metrics,
    rollout, scored, phase)."""
    rl = self.config.rl
    phase = phase_of(update, self.method, rl.vmr.prefix_updates, rl.vmr.suffix_updates)
    # The split ro was dispatched with: with adaptive m not always the current.
    m = self.method.m if self.split is None else self.split.take(update)
    scored = rollout.score(ro, self.reward)
    if not np.isfinite(scored.rewards).all():
      raise NonFiniteError(f'non-finite reward at update {update}')
    if self.method.use_mp and scored.boxes is None and not self._warned_no_regions:
      self._warned_no_regions = True
      logging.warning(
        'MP: the reward %r gives no regions, so every MP mask is all ones '
        '(config.rl.mode=%r updates like vmr+panw)',
        self.reward.name,
        rl.mode,
      )
    t0 = time.time()
    batch, stats = self.build_batch(ro, scored, phase, on_policy, m=m)
    metrics = self.update(batch, on_policy, while_stepping)
    step_seconds = time.time() - t0
    if not np.isfinite(metrics['loss']):
      raise NonFiniteError(
        f'loss is {metrics["loss"]} at update {update} ({phase} phase)'
      )
    flat = {
      'phase/prefix': float(phase == 'prefix'),
      'phase/suffix': float(phase == 'suffix'),
      **rollout.reward_metrics(scored, self.reward, rl.adv_eps),
      'time/sample_s': ro.sample_seconds,
      'time/reward_wait_s': scored.wait_seconds,
      'time/step_s': step_seconds,
      **stats,
      **scored.counters,
    }
    if self.reward.get('ocr') is not None:  # the name benchmarks read
      flat['time/ocr_wait_s'] = scored.wait_seconds
    flat.update(self._split_metrics(update, scored.rewards, m))
    for name, value in metrics.items():
      value = np.asarray(value)
      if value.ndim == 0:
        flat[f'train/{name}'] = float(value)
      else:
        base = name.split('/', 1)[1]
        for s, v in enumerate(value):
          flat[f'scale{s}/{base}'] = float(v)
    return flat, ro, scored, phase
