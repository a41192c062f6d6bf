"""How an RL update's parts are scheduled: ``config.rl.pipeline``.

An update has three parts: sampling the rollouts (devices), reading their
rewards (OCR worker processes on the hosts) and the GRPO step (devices).

``sync``: update u samples with the current parameters theta_u, waits for
its rewards, then steps. Rewards of a rollout chunk are read while the next
chunk is sampled (`rl.rollout`), but the step and the next update's
sampling wait for the last reward: an update costs about the sum of its
parts.

``overlap``: update u+1's rollouts are sampled while update u's rewards are
read and its step runs. Per update u, on one host thread (so that every
process of a pod dispatches the same programs in the same order):

  1. dispatch the sampling of rollout u+1 with theta_u (a copy: the step
     donates the state) -- asynchronous, the host goes on at once;
  2. wait for the rewards of rollout u (submitted during update u-1);
  3. dispatch the reference log-prob pass and the GRPO step(s) of update u;
  4. fetch rollout u+1's images (its sampling ran first on the devices) and
     submit them to the reward, whose workers read them while the step runs
     and while rollout u+2 is sampled;
  5. fetch the step's metrics.

So the devices alternate sampling and stepping without waiting for the
hosts, the OCR workers read continuously, and an update costs about
max(sampling + step, reward reading) instead of their sum.

Correctness. Rollout u was sampled with the behaviour parameters
theta_{u-1}, one update behind the parameters theta_u that the step
updates (only a fresh run's first rollout is sampled with theta_0 itself;
a resumed run's first rollout is resampled from the saved theta_{u-1}, as
the uninterrupted run drew it). The sampler records each token's log-prob
at sampling time, log pi_behaviour, and the step corrects for it exactly
(`rl.grpo`, ``config.rl.off_policy.objective``):

- ``decoupled`` (default): the clipped ratio is taken to the params before
  the update, theta_u (the first inner update takes its own log-probs, as
  in ``sync``), and each token's surrogate is weighted by
  pi_theta_u / pi_behaviour. The trust region is the same as sync's; only
  the sampling distribution is corrected.
- ``behaviour``: log pi_old is the sampler's record itself (``on_policy``
  0), so rho = pi_theta / pi_behaviour and the clip bounds the deviation
  from the behaviour policy, as PPO does for its own sampler. Measured on
  the tiny config this learned more slowly than sync: tokens whose ratio
  the previous update already moved past 1 + epsilon give no gradient.

The KL term is unchanged (it compares theta with the frozen reference on
the sampled tokens).

Exact resume: a train state of an overlap run holds theta_{u+1} and the
behaviour parameters theta_u with which rollout u+1 is sampled (with LoRA,
the adapters only). A resumed run samples rollout u+1 again from them with
the same key and prompts: the same rollout, hence the same run as without
the interruption. With ``rl.vmr.m='adaptive'`` rollout u+1 is dispatched
with the split in force before update u's rewards move it, and update u+1
trains with that split; the run record keeps it for a resume
(`rl.adaptive_m`). Memory: overlap keeps one more copy of the trainable
parameters (theta_u) on the devices, and a rollout batch in flight.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from varrl_jax.rl import rollout

PIPELINES = ('sync', 'overlap')


def check(config) -> str:
  """``config.rl.pipeline``, checked."""
  name = config.rl.pipeline
  if name not in PIPELINES:
    raise ValueError(
      f'config.rl.pipeline must be one of {list(PIPELINES)}, got {name!r}'
    )
  return name


class Sync:
  """Each update samples with the current params, then learns (`loop.Trainer`)."""

  name = 'sync'

  def __init__(self, trainer, prompts_of, key, num_updates: int):
    self.trainer, self.prompts_of, self.key = trainer, prompts_of, key
    del num_updates

  def run(self, update: int):
    """Update ``update``; returns (flat metrics, rollout, scored, phase)."""
    t0 = time.time()
    out = self.trainer.run_update(
      update, self.prompts_of(update), jax.random.fold_in(self.key, update)
    )
    out[0]['time/update_s'] = time.time() - t0
    return out

  def saved(self):
    """The pytree a train checkpoint holds."""
    return self.trainer.state

  def restore(self, tree) -> None:
    self.trainer.state = tree


class Overlap:
  """Samples update u+1's rollouts while update u learns (module docstring)."""

  name = 'overlap'

  def __init__(self, trainer, prompts_of, key, num_updates: int):
    self.trainer, self.prompts_of, self.key = trainer, prompts_of, key
    self.num_updates = num_updates
    # The trainable params the next rollout is (or will be) sampled with;
    # None until the first update copies the state's.
    self.behaviour = None
    self.pending = None  # (update, Rollout submitted to the reward)

  def _copy(self, tree):
    return jax.tree.map(jnp.copy, tree)

  def _dispatch(self, update: int, trainable) -> rollout.Dispatched:
    t, rl = self.trainer, self.trainer.config.rl
    return rollout.dispatch(
      t.sampler,
      t.policy_params(trainable),
      self.prompts_of(update),
      rl.group_size,
      rl.vmr.num_branches,
      # With adaptive m: the m in force now, which update ``update`` then
      # trains with (`loop.Trainer.split_of`, `rl.adaptive_m`).
      t.split_of(update),
      jax.random.fold_in(self.key, update),
      rl.rollout_chunks,
    )

  def run(self, update: int):
    """Update ``update``; returns (flat metrics, rollout, scored, phase)."""
    t0 = time.time()
    t = self.trainer
    if self.pending is not None and self.pending[0] == update:
      ro = self.pending[1]
    else:
      # The run's (or the resumed run's) first update: nothing in flight.
      if self.behaviour is None:
        self.behaviour = self._copy(t.state.params)
      ro = rollout.finish(self._dispatch(update, self.behaviour), t.reward)
    self.pending = None
    following = update + 1
    # theta_u: the next rollout's behaviour params. The previous copy is
    # dropped now, so the step runs beside one extra copy, not two.
    self.behaviour = self._copy(t.state.params)
    nxt = (
      self._dispatch(following, self.behaviour)
      if following < self.num_updates
      else None
    )
    fetched = {}

    def while_stepping():
      if nxt is not None:
        fetched['ro'] = rollout.finish(nxt, t.reward)

    out = t.learn(update, ro, on_policy=False, while_stepping=while_stepping)
    if nxt is not None:
      self.pending = (following, fetched['ro'])
    out[0]['time/update_s'] = time.time() - t0
    return out

  def saved(self):
    """The pytree a train checkpoint holds: the state and the behaviour params."""
    behaviour = self.trainer.state.params if self.behaviour is None else self.behaviour
    return {'state': self.trainer.state, 'behaviour': behaviour}

  def restore(self, tree) -> None:
    self.trainer.state, self.behaviour = tree['state'], tree['behaviour']
    self.pending = None


def build(config, trainer, prompts_of, key):
  """The pipeline of ``config.rl.pipeline`` over ``trainer`` (`loop.Trainer`);
  ``prompts_of(update)``: the update's (prompt, targets); ``key``: the run's
  rollout key (update u samples with ``fold_in(key, u)``)."""
  cls = {'sync': Sync, 'overlap': Overlap}[check(config)]
  return cls(trainer, prompts_of, key, config.rl.num_updates)
