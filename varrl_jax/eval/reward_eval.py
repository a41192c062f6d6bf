"""Held-out evaluation by the configured reward (no OCR metrics needed).

What `varrl_jax.train` reports before and after RL when Word Accuracy does
not apply (no ``ocr`` term, or class-id prompts): the images of the
held-out prompts, sampled as `eval.evaluator` does (``config.sampling``,
batch i drawn with ``fold_in(key(config.eval.seed), i)``, the last batch
padded with copies of its last prompt, dropped before scoring), scored by
the reward; the summary is the mean and standard deviation of the weighted
total and of every term over the images. The reward of batch i works while
batch i + 1 is sampled. With several processes every process scores every
image (the same report everywhere).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from varrl_jax import distributed, parallel, sampling
from varrl_jax.eval import evaluator
from varrl_jax.eval.prompt_sets import EvalPrompt
from varrl_jax.policy import SamplingOptions
from varrl_jax.rewards import api as reward_api


@dataclasses.dataclass(frozen=True)
class RewardSummary:
  """Mean and std over the images of the total reward and of each term."""

  mean: float
  std: float
  terms: dict[str, tuple[float, float]]  # name -> (mean, std), unweighted
  n_images: int

  def line(self) -> str:
    """``reward 1.234 ± 0.100 (jpeg_compressibility -12.300 ± 0.400)``."""
    terms = ', '.join(f'{k} {m:.4g} ± {s:.3g}' for k, (m, s) in self.terms.items())
    return f'reward {self.mean:.4g} ± {self.std:.3g} ({terms})'

  def change(self, after: RewardSummary) -> str:
    """``reward 1.234 -> 1.300 (term a -> b, ...)``."""
    terms = ', '.join(
      f'{k} {m:.4g} -> {after.terms[k][0]:.4g}' for k, (m, _) in self.terms.items()
    )
    return f'reward {self.mean:.4g} -> {after.mean:.4g} ({terms})'


@dataclasses.dataclass
class RewardReport:
  summary: RewardSummary
  flat: dict  # JSON-ready metrics
  records: list[dict]  # per image: key, prompt, targets, reward, terms
  grid_images: np.ndarray  # uint8 [N, H, W, 3], the first N images
  seconds: float
  counters: dict


def summarize(output: reward_api.RewardOutput) -> RewardSummary:
  def stat(x) -> tuple[float, float]:
    return float(np.mean(x)), float(np.std(x))

  mean, std = stat(output.scores)
  terms = {k: stat(v) for k, v in output.terms.items()}
  return RewardSummary(mean, std, terms, len(output))


def evaluate(
  model, params, config, prompts: list[EvalPrompt], reward, mesh=None
) -> RewardReport:
  """Samples ``prompts`` (``config.eval.images_per_prompt`` each) and scores
  them with ``reward`` (a `rewards.api.WeightedReward` or any reward)."""
  if not prompts:
    raise ValueError('the prompt set is empty')
  reward = reward_api.as_weighted(reward, config)
  ec = config.eval
  items = [p for p in prompts for _ in range(ec.images_per_prompt)]
  cond = evaluator.encode_prompts(model, items, ec.truncate_prompts)
  bs = ec.batch_size
  if mesh is not None and bs % parallel.data_rows(mesh) == 0:
    params = parallel.put(params, parallel.param_shardings(model, mesh))
  else:
    mesh = None
  sampler = sampling.Sampler(
    model, SamplingOptions.from_config(config.sampling), mesh=mesh
  )
  key = jax.random.key(ec.seed)
  t0 = time.time()
  handles, grid = [], []
  for i, start in enumerate(range(0, len(items), bs)):
    n = min(bs, len(items) - start)
    take = np.minimum(np.arange(start, start + bs), start + n - 1)
    rows = jax.tree.map(lambda x, take=take: x[take], cond)
    out = sampler.sample(params, rows, jax.random.fold_in(key, i))
    images = distributed.to_host(out.images)[:n]
    if sum(len(g) for g in grid) < ec.grid_images:
      grid.append(images)
    batch = items[start : start + n]
    handles.append(
      reward.submit(images, [p.prompt for p in batch], [p.targets for p in batch])
    )
  output = reward_api.as_output(reward.collect(handles), len(items), reward.name)
  summary = summarize(output)
  records = [
    {
      'key': item.key,
      'prompt': item.prompt,
      'targets': list(item.targets),
      'reward': float(output.scores[j]),
      'terms': {k: float(v[j]) for k, v in output.terms.items()},
    }
    for j, item in enumerate(items)
  ]
  flat = {'reward/mean': summary.mean, 'reward/std': summary.std}
  for k, (m, s) in summary.terms.items():
    flat[f'reward/{k}/mean'], flat[f'reward/{k}/std'] = m, s
  for k, v in output.diagnostics.items():
    flat[f'reward/{k}'] = float(np.mean(v))
  return RewardReport(
    summary=summary,
    flat={**flat, 'n_images': len(items)},
    records=records,
    grid_images=np.concatenate(grid)[: ec.grid_images],
    seconds=time.time() - t0,
    counters=output.counters,
  )


def grid_captions(records: list[dict], n: int) -> list[str]:
  """Prompt, total reward and (with several terms) the term scores."""
  out = []
  for r in records[:n]:
    terms = r['terms'] if len(r['terms']) > 1 else {}
    out.append(
      f'{r["prompt"][:40]}\nR {r["reward"]:.4g}\n'
      + ' '.join(f'{k[:10]} {v:.3g}' for k, v in terms.items())
    )
  return out
