"""Rollouts and their rewards for one RL update.

A rollout batch holds P prompts. Each prompt is sampled G times up to the
split scale m (its G prefixes); every prefix is continued by K suffix
branches from the shared KV cache (`Sampler.branch`). Rows are ordered
prompt-major, ``row = (p * G + g) * K + k``. Full-horizon GRPO (m = S - 1)
is the special case K = 1 with no branching.

Rewards overlap sampling: the P prompts are sampled in ``chunks`` equal
parts (static shapes) and each part's images go to the reward
(`rewards.api`: ``submit``) as soon as they exist, while the next part is
sampled with the same parameters (so the rollouts stay exactly on-policy);
the OCR reward reads them in its worker processes meanwhile.

With several processes (`varrl_jax.distributed`) each one scores only the
rows of the images that live on its devices; the per-row rewards (total,
terms, diagnostics) and regions are all-gathered, so every process scores
the whole batch identically. Tokens and log-probs (small) are gathered whole.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from varrl_jax import distributed
from varrl_jax.rewards import api as reward_api
from varrl_jax.sampling import Sampler


@dataclasses.dataclass
class Rollout:
  prompts: list[str]  # per row
  targets: list[tuple[str, ...]]  # per row
  cond: dict  # the family's conditioning of every row, leaves [R, ...]
  tokens: np.ndarray  # [R, L, *dist.token_shape]
  logprobs: np.ndarray  # float32 [R, L]: the sampler's policy log-probs
  images: np.ndarray  # uint8 [R_local, H, W, 3]: this process's rows only
  local_rows: np.ndarray  # int [R_local]: the row numbers of `images`
  shape: tuple[int, int, int]  # (P, G, K)
  sample_seconds: float
  handles: list  # the reward's handles, one per chunk


@dataclasses.dataclass
class Scored:
  rewards: np.ndarray  # float32 [P, G, K]: the weighted total R
  terms: dict[str, np.ndarray]  # unweighted term scores, name -> float32 [P, G, K]
  boxes: list[list] | None  # per row, regions for MP; None: the reward has none
  diagnostics: dict[str, np.ndarray]  # name -> float32 [R]
  counters: dict[str, float]  # summed over chunks and processes
  wait_seconds: float  # blocked in the reward's collect


def _layout(sampler: Sampler, prompts, group_size, num_branches, m, chunks):
  """(K, per_chunk, row_prompts, row_targets) of a rollout batch."""
  num_prompts = len(prompts)
  if num_prompts % chunks:
    raise ValueError(
      f'config.rl.prompts_per_update={num_prompts} must be divisible by '
      f'config.rl.rollout_chunks={chunks}'
    )
  full = m == sampler.model.schedule.num_scales - 1
  k = 1 if full else num_branches
  row_prompts = [p for p, _ in prompts for _ in range(group_size * k)]
  row_targets = [tuple(t) for _, t in prompts for _ in range(group_size * k)]
  return k, num_prompts // chunks, row_prompts, row_targets


def _sample_chunk(sampler, params, prompts, group_size, k, m, key, c, per_chunk):
  """Dispatches chunk ``c``'s sampling (asynchronously: nothing is fetched);
  returns (its cond repeated over the K branches, `SampleOutput`)."""
  chunk = prompts[c * per_chunk : (c + 1) * per_chunk]
  rows = [p for p, _ in chunk for _ in range(group_size)]
  cond = sampler.model.encode_prompts(rows)
  prefix_key, suffix_key = jax.random.split(jax.random.fold_in(key, c))
  if m == sampler.model.schedule.num_scales - 1:
    out = sampler.sample(params, cond, prefix_key)
  else:
    state = sampler.sample_prefix(params, cond, prefix_key, m)
    out = sampler.branch(params, state, suffix_key, m, k)
  return jax.tree.map(lambda x: np.repeat(x, k, axis=0), cond), out


def _submit_chunk(reward, cond, out, c: int, rows_per_chunk: int, rows):
  """Fetches chunk ``c``'s local images and submits them to ``reward``;
  returns (handle, host part)."""
  row_prompts, row_targets = rows
  images, local = distributed.local_rows(out.images)
  index = local + c * rows_per_chunk
  handle = reward.submit(
    images, [row_prompts[i] for i in index], [row_targets[i] for i in index]
  )
  part = (
    cond,
    distributed.to_host(out.tokens),
    distributed.to_host(out.logprobs),
    images,
    index,
  )
  return handle, part


def _assemble(parts, handles, rows, shape, seconds) -> Rollout:
  columns = list(zip(*parts))
  cat = [np.concatenate(x) for x in columns[1:]]
  return Rollout(
    prompts=rows[0],
    targets=rows[1],
    cond=jax.tree.map(lambda *x: np.concatenate(x), *columns[0]),
    tokens=cat[0],
    logprobs=cat[1],
    images=cat[2],
    local_rows=cat[3],
    shape=shape,
    sample_seconds=seconds,
    handles=handles,
  )


def sample(
  sampler: Sampler,
  params: dict,
  prompts: list[tuple[str, tuple[str, ...]]],
  group_size: int,
  num_branches: int,
  m: int,
  key: jax.Array,
  reward,
  chunks: int = 1,
) -> Rollout:
  """Samples P x G x K images (see the module docstring) and submits each
  chunk's local rows, with their prompts and targets, to ``reward``."""
  k, per_chunk, *rows = _layout(sampler, prompts, group_size, num_branches, m, chunks)
  t0 = time.time()
  parts, handles = [], []
  for c in range(chunks):
    cond, out = _sample_chunk(
      sampler, params, prompts, group_size, k, m, key, c, per_chunk
    )
    handle, part = _submit_chunk(reward, cond, out, c, per_chunk * group_size * k, rows)
    handles.append(handle)
    parts.append(part)
  shape = (len(prompts), group_size, k)
  return _assemble(parts, handles, rows, shape, time.time() - t0)


@dataclasses.dataclass
class Dispatched:
  """A rollout batch whose sampling is dispatched but not fetched
  (`dispatch`; `finish` fetches it and submits it to the reward)."""

  chunks: list  # per chunk: (cond repeated over K, SampleOutput on the devices)
  rows: tuple[list, list]  # (row_prompts, row_targets)
  shape: tuple[int, int, int]  # (P, G, K)
  t0: float


def dispatch(
  sampler: Sampler,
  params: dict,
  prompts: list[tuple[str, tuple[str, ...]]],
  group_size: int,
  num_branches: int,
  m: int,
  key: jax.Array,
  chunks: int = 1,
) -> Dispatched:
  """Dispatches the sampling of every chunk of a rollout batch and returns at
  once (JAX's asynchronous dispatch): the same draws as `sample` with the
  same arguments. The devices sample while the host does other work."""
  k, per_chunk, *rows = _layout(sampler, prompts, group_size, num_branches, m, chunks)
  t0 = time.time()
  outs = [
    _sample_chunk(sampler, params, prompts, group_size, k, m, key, c, per_chunk)
    for c in range(chunks)
  ]
  return Dispatched(outs, tuple(rows), (len(prompts), group_size, k), t0)


def finish(d: Dispatched, reward) -> Rollout:
  """Waits for the sampling of ``d``, submits each chunk's local rows to
  ``reward`` (in chunk order, as each is ready) and returns the `Rollout`;
  its ``sample_seconds`` run from the dispatch."""
  p, g, k = d.shape
  handles, parts = [], []
  for c, (cond, out) in enumerate(d.chunks):
    handle, part = _submit_chunk(
      reward, cond, out, c, p // len(d.chunks) * g * k, d.rows
    )
    handles.append(handle)
    parts.append(part)
  return _assemble(parts, handles, d.rows, d.shape, time.time() - d.t0)


def score(rollout: Rollout, reward) -> Scored:
  """Collects the reward of a rollout (``reward``: the one it was submitted to).

  The reward saw this process's rows; the total, the term scores, the
  diagnostics and the regions of all rows come back (all-gathered), the
  counters summed over the processes.
  """
  t0 = time.time()
  local = reward_api.as_output(
    reward.collect(rollout.handles), len(rollout.local_rows), 'the reward'
  )
  wait = time.time() - t0
  index, total = rollout.local_rows, len(rollout.prompts)
  terms, diags = sorted(local.terms), sorted(local.diagnostics)
  columns = np.stack(
    [local.scores]
    + [local.terms[n] for n in terms]
    + [local.diagnostics[n] for n in diags],
    axis=1,
  )
  columns = distributed.allgather_rows(columns, index, total)
  boxes = None
  if local.regions is not None:
    boxes = distributed.allgather_boxes(local.regions, index, total)
  return Scored(
    rewards=columns[:, 0].reshape(rollout.shape),
    terms={n: columns[:, 1 + i].reshape(rollout.shape) for i, n in enumerate(terms)},
    boxes=boxes,
    diagnostics={n: columns[:, 1 + len(terms) + i] for i, n in enumerate(diags)},
    counters=distributed.sum_stats(local.counters),
    wait_seconds=wait,
  )


def reward_metrics(scored: Scored, reward, adv_eps: float) -> dict[str, float]:
  """Total, per-term and diagnostic reward metrics of one update (`rl.loop`):
  ``reward/mean``, ``/std``, per term ``reward/<name>/mean``, ``/std``,
  ``/adv_share`` (its share of the advantage variance over the groups of
  the prompts, `api.advantage_shares`; ``reward``: the weighted reward) and
  ``reward/<diag>`` per diagnostic."""
  p = scored.rewards.shape[0]
  out = {
    'reward/mean': float(scored.rewards.mean()),
    'reward/std': float(scored.rewards.std()),
  }
  shares = reward_api.advantage_shares(
    {n: v.reshape(p, -1) for n, v in scored.terms.items()}, reward.weights, adv_eps
  )
  for name, values in scored.terms.items():
    out[f'reward/{name}/mean'] = float(values.mean())
    out[f'reward/{name}/std'] = float(values.std())
    out[f'reward/{name}/adv_share'] = shares[name]
  for name, values in scored.diagnostics.items():
    out[f'reward/{name}'] = float(values.mean())
  return out
