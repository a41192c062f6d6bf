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
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from varrl_jax.models import text as text_lib
from varrl_jax.rewards import pool as pool_lib
from varrl_jax.rewards import text as reward_lib
from varrl_jax.sampling import Sampler


@dataclasses.dataclass
class Rollout:
  prompts: list[str]  # per row
  targets: list[tuple[str, ...]]  # per row
  text_ids: np.ndarray  # int32 [R, T_t]
  text_mask: np.ndarray  # bool [R, T_t]
  tokens: np.ndarray  # int32 [R, L]
  logprobs: np.ndarray  # float32 [R, L]: the sampler's policy log-probs
  images: np.ndarray  # uint8 [R, H, W, 3]
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
  text_len: int,
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
    ids, mask = text_lib.encode(rows, text_len)
    prefix_key, suffix_key = jax.random.split(jax.random.fold_in(key, c))
    if full:
      out = sampler.sample(params, ids, mask, prefix_key)
    else:
      state = sampler.sample_prefix(params, ids, mask, prefix_key, m)
      out = sampler.branch(params, state, suffix_key, m, k)
    images = np.asarray(jax.device_get(out.images))
    futures.append(pool.submit_batch(images))
    parts.append(
      (
        np.repeat(ids, k, axis=0),
        np.repeat(mask, k, axis=0),
        np.asarray(out.tokens),
        np.asarray(out.logprobs),
        images,
      )
    )
  row_prompts = [p for p, _ in prompts for _ in range(group_size * k)]
  row_targets = [tuple(t) for _, t in prompts for _ in range(group_size * k)]
  cat = [np.concatenate(x) for x in zip(*parts)]
  return Rollout(
    prompts=row_prompts,
    targets=row_targets,
    text_ids=cat[0],
    text_mask=cat[1],
    tokens=cat[2],
    logprobs=cat[3],
    images=cat[4],
    shape=(num_prompts, group_size, k),
    sample_seconds=time.time() - t0,
    futures=futures,
  )


def score(rollout: Rollout, reward_cfg, box_source: str = 'matched') -> Scored:
  """Waits for the OCR of a rollout and computes rewards and MP boxes."""
  t0 = time.time()
  results, stats = pool_lib.collect(rollout.futures)
  wait = time.time() - t0
  batch = reward_lib.rewards_for_batch(
    rollout.targets, results, kind=reward_cfg.kind, fallback=reward_cfg.fallback
  )
  if box_source == 'matched':
    boxes = batch.boxes
  elif box_source == 'all':
    boxes = [[w.box for w in r.words] for r in results]
  else:
    raise ValueError(
      f"config.rl.mp.boxes must be 'matched' or 'all', got {box_source!r}"
    )
  return Scored(
    rewards=batch.rewards.reshape(rollout.shape),
    batch=batch,
    boxes=boxes,
    ocr_stats=stats,
    ocr_wait_seconds=wait,
  )
