"""Rollouts and their rewards for one RL update.

A rollout batch holds P prompts. Each prompt is sampled G times up to the
split scale m (its G prefixes); every prefix is continued by K suffix
branches from the shared KV cache (`Sampler.branch`). Rows are ordered
prompt-major, ``row = (p * G + g) * K + k``. Full-horizon GRPO (m = S - 1)
is the special case K = 1 with no branching.

OCR overlaps sampling: the P prompts are sampled in ``chunks`` equal parts
(static shapes) and each part's images go to the OCR pool as soon as they
exist, while the next part is sampled with the same parameters (so the
rollouts stay exactly on-policy).

With several processes (`varrl_jax.distributed`) each one OCRs only the
rows of the images that live on its devices; the per-row rewards and boxes
are all-gathered, so every process scores the whole batch identically.
Tokens and log-probs (small) are gathered whole.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from varrl_jax import distributed
from varrl_jax.rewards import pool as pool_lib
from varrl_jax.rewards import text as reward_lib
from varrl_jax.sampling import Sampler


@dataclasses.dataclass
class Rollout:
  prompts: list[str]  # per row
  targets: list[tuple[str, ...]]  # per row
  cond: dict  # the family's conditioning of every row, leaves [R, ...]
  tokens: np.ndarray  # int32 [R, L]
  logprobs: np.ndarray  # float32 [R, L]: the sampler's policy log-probs
  images: np.ndarray  # uint8 [R_local, H, W, 3]: this process's rows only
  local_rows: np.ndarray  # int [R_local]: the row numbers of `images`
  shape: tuple[int, int, int]  # (P, G, K)
  sample_seconds: float
  futures: list  # OCR futures, one per chunk


@dataclasses.dataclass
class Scored:
  rewards: np.ndarray  # float32 [P, G, K]
  batch: reward_lib.BatchRewards  # per row
  boxes: list[list]  # per row, boxes used by mask propagation
  ocr_stats: dict
  ocr_wait_seconds: float


def sample(
  sampler: Sampler,
  params: dict,
  prompts: list[tuple[str, tuple[str, ...]]],
  group_size: int,
  num_branches: int,
  m: int,
  key: jax.Array,
  pool,
  chunks: int = 1,
) -> Rollout:
  """Samples P x G x K images (see the module docstring) and submits their OCR."""
  num_prompts = len(prompts)
  if num_prompts % chunks:
    raise ValueError(
      f'config.rl.prompts_per_update={num_prompts} must be divisible by '
      f'config.rl.rollout_chunks={chunks}'
    )
  full = m == sampler.model.schedule.num_scales - 1
  k = 1 if full else num_branches
  t0 = time.time()
  per_chunk = num_prompts // chunks
  parts, futures = [], []
  for c in range(chunks):
    chunk = prompts[c * per_chunk : (c + 1) * per_chunk]
    rows = [p for p, _ in chunk for _ in range(group_size)]
    cond = sampler.model.encode_prompts(rows)
    prefix_key, suffix_key = jax.random.split(jax.random.fold_in(key, c))
    if full:
      out = sampler.sample(params, cond, prefix_key)
    else:
      state = sampler.sample_prefix(params, cond, prefix_key, m)
      out = sampler.branch(params, state, suffix_key, m, k)
    images, local = distributed.local_rows(out.images)
    futures.append(pool.submit_batch(images))
    parts.append(
      (
        jax.tree.map(lambda x: np.repeat(x, k, axis=0), cond),
        distributed.to_host(out.tokens),
        distributed.to_host(out.logprobs),
        images,
        local + c * per_chunk * group_size * k,
      )
    )
  row_prompts = [p for p, _ in prompts for _ in range(group_size * k)]
  row_targets = [tuple(t) for _, t in prompts for _ in range(group_size * k)]
  columns = list(zip(*parts))
  cat = [np.concatenate(x) for x in columns[1:]]
  return Rollout(
    prompts=row_prompts,
    targets=row_targets,
    cond=jax.tree.map(lambda *x: np.concatenate(x), *columns[0]),
    tokens=cat[0],
    logprobs=cat[1],
    images=cat[2],
    local_rows=cat[3],
    shape=(num_prompts, group_size, k),
    sample_seconds=time.time() - t0,
    futures=futures,
  )


def score(rollout: Rollout, reward_cfg, box_source: str = 'matched') -> Scored:
  """Waits for the OCR of a rollout and computes rewards and MP boxes.

  The OCR results are this process's rows; rewards and boxes of all rows
  come back (all-gathered), OCR counters summed over the processes.
  """
  if box_source not in ('matched', 'all'):
    raise ValueError(
      f"config.rl.mp.boxes must be 'matched' or 'all', got {box_source!r}"
    )
  t0 = time.time()
  results, stats = pool_lib.collect(rollout.futures)
  wait = time.time() - t0
  index, total = rollout.local_rows, len(rollout.prompts)
  local = reward_lib.rewards_for_batch(
    [rollout.targets[i] for i in index],
    results,
    kind=reward_cfg.kind,
    fallback=reward_cfg.fallback,
  )
  columns = np.stack(
    [local.rewards, local.comp, local.sim, local.pen, local.failed.astype(np.float32)],
    axis=1,
  )
  columns = distributed.allgather_rows(columns, index, total)
  failed = columns[:, 4] > 0
  matched = distributed.allgather_boxes(local.boxes, index, total)
  batch = reward_lib.BatchRewards(
    rewards=columns[:, 0],
    comp=columns[:, 1],
    sim=columns[:, 2],
    pen=columns[:, 3],
    failed=failed,
    boxes=matched,
    num_failed=int(failed.sum()),
  )
  if box_source == 'matched':
    boxes = matched
  else:
    everything = [[w.box for w in r.words] for r in results]
    boxes = distributed.allgather_boxes(everything, index, total)
  return Scored(
    rewards=batch.rewards.reshape(rollout.shape),
    batch=batch,
    boxes=boxes,
    ocr_stats=distributed.sum_stats(stats),
    ocr_wait_seconds=wait,
  )
