"""Generate images for a prompt set, OCR them, score Word Accuracy and NED
(and CLIPScore, given a CLIP model).

Sampling uses ``config.sampling`` (so the paper's rollout settings and
greedy / low-temperature settings are one override apart) with a fixed seed:
batch i draws with ``fold_in(key(config.eval.seed), i)``, so a run is
deterministic. OCR of batch i runs in the worker pool while batch i + 1 is
sampled. The last batch is padded to the static batch size with copies of
its last prompt; the copies are dropped before scoring.

``source`` picks what is scored: ``samples`` (the model's images), or, for
synthetic prompt sets, ``renders`` (the ground-truth renders: the OCR
ceiling) or ``reconstructions`` (renders passed through the tokenizer: what
the tokenizer keeps legible). The three share prompts, OCR and scorer, so
their ratios are like for like.

With a ``clip`` reward (`varrl_jax.rewards.clip.ClipScore`, built from
``config.rewards.clip`` by the CLI when its path is set), each batch's
CLIP-S against its prompt is dispatched to the device as the batch is made
and collected at the end; the report then has CLIPScore overall and per
group, beside Word Accuracy and NED.

With a device ``mesh`` the sampler is sharded (`sampling.Sampler`) when the
batch size divides over data x fsdp; with several processes every process
gets all images and scores them (the same report everywhere).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import tqdm

from varrl_jax import distributed, parallel, sampling
from varrl_jax.data import synthetic
from varrl_jax.eval import metrics as metrics_lib
from varrl_jax.eval.prompt_sets import EvalPrompt
from varrl_jax.models import text as text_lib
from varrl_jax.policy import SamplingOptions
from varrl_jax.rewards import pool as pool_lib


@dataclasses.dataclass
class EvalReport:
  summary: metrics_lib.Summary
  by_group: dict
  flat: dict  # flat metric dict (overall + per group), JSON-ready
  records: list[dict]  # per image: key, prompt, targets, ocr, correct, failed
  grid_images: np.ndarray  # uint8 [N, H, W, 3], the first N images
  seconds: float
  ocr_stats: dict


truncate = text_lib.truncate


def encode_prompts(model, prompts: list[EvalPrompt], truncate_long: bool = False):
  """The family's conditioning of every prompt (host arrays [N, ...]); a bad
  prompt raises PromptError naming its key. ``truncate_long`` cuts prompts
  the family cannot take whole (`NextScaleModel.truncate_prompt`)."""
  texts = [
    model.truncate_prompt(p.prompt) if truncate_long else p.prompt for p in prompts
  ]
  for p, t in zip(prompts, texts):
    try:
      model.encode_prompts([t])
    except text_lib.PromptError as e:
      hint = (
        ' (or set --config.eval.truncate_prompts=True)' if 'too long' in str(e) else ''
      )
      msg = str(e).replace('prompt 0 ', 'prompt ')
      raise text_lib.PromptError(f'{p.key}: {msg}{hint}') from None
  return model.encode_prompts(texts)


SOURCES = ('samples', 'renders', 'reconstructions')


def render_batch(prompts: list[EvalPrompt], image_size) -> np.ndarray:
  """Ground-truth renders uint8 [B, H, W, 3] of synthetic prompts."""
  missing = [p.key for p in prompts if p.example is None]
  if missing:
    raise ValueError(
      f'renders and reconstructions need synthetic prompts; {missing[0]} has no '
      'ground-truth render (use --split=heldout or heldout_words)'
    )
  out = []
  for p in prompts:
    split, seed, index, variety = p.example
    ex = synthetic.SyntheticTextDataset(split, image_size, seed, variety=variety)[index]
    if ex.prompt != p.prompt:
      raise ValueError(f'{p.key}: prompt does not match its synthetic example')
    out.append(ex.image)
  return np.stack(out)


def evaluate(
  model,
  params,
  config,
  prompts: list[EvalPrompt],
  pool,
  progress=True,
  source: str = 'samples',
  mesh=None,
  clip=None,
) -> EvalReport:
  """Scores ``prompts`` (see ``source`` above); ``pool`` is an `OcrPool`;
  ``clip`` a reward with ``submit``/``collect`` giving CLIP-S, or None."""
  if not prompts:
    raise ValueError('the prompt set is empty')
  if source not in SOURCES:
    raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
  ec = config.eval
  items = [p for p in prompts for _ in range(ec.images_per_prompt)]
  cond = encode_prompts(model, items, ec.truncate_prompts)
  bs = ec.batch_size
  if mesh is not None and bs % parallel.data_rows(mesh) == 0:
    params = parallel.put(params, parallel.param_shardings(model, mesh))
  else:
    mesh = None
  opts = SamplingOptions.from_config(config.sampling)
  sampler = sampling.Sampler(model, opts, mesh=mesh)
  recon = jax.jit(lambda p, x: model.decode_tokens(p, model.encode_images(p, x)))
  key = jax.random.key(ec.seed)
  t0 = time.time()
  futures, grid, clip_handles = [], [], []
  starts = range(0, len(items), bs)
  for i, start in enumerate(tqdm.tqdm(starts, desc='eval', disable=not progress)):
    n = min(bs, len(items) - start)
    take = np.minimum(np.arange(start, start + bs), start + n - 1)
    if source == 'samples':
      rows = jax.tree.map(lambda x, take=take: x[take], cond)
      out = sampler.sample(params, rows, jax.random.fold_in(key, i))
      images = distributed.to_host(out.images)[:n]
    else:
      images = render_batch([items[j] for j in take], model.schedule.image_size)
      if source == 'reconstructions':
        images = np.asarray(jax.device_get(recon(params, images)))
      images = images[:n]
    if sum(len(g) for g in grid) < ec.grid_images:
      grid.append(images)
    futures.append(pool.submit_batch(images))
    if clip is not None:
      batch = items[start : start + n]
      clip_handles.append(
        clip.submit(images, [p.prompt for p in batch], [p.targets for p in batch])
      )

  acc = metrics_lib.MetricAccumulator(
    metrics_lib.MetricConfig(case_sensitive=ec.case_sensitive)
  )
  records = []
  results, stats = pool_lib.collect(futures)
  clip_scores = [None] * len(items)
  if clip is not None:
    clip_scores = [float(x) for x in clip.collect(clip_handles).scores]
  for item, result, clip_s in zip(items, results, clip_scores):
    score = acc.add(list(item.targets), result, groups=item.groups, clipscore=clip_s)
    records.append(
      {
        'key': item.key,
        'prompt': item.prompt,
        'targets': list(item.targets),
        'ocr': result.texts,
        'n_words': score.n_words,
        'n_correct': score.n_correct,
        # Sum over the target words of 1 - NED: the image's NED numerator.
        'similarity': float(sum(score.word_similarity)),
        'failed': result.failed,
        **({} if clip_s is None else {'clipscore': clip_s}),
      }
    )
  grid_images = np.concatenate(grid)[: ec.grid_images]
  return EvalReport(
    summary=acc.summary(),
    by_group=acc.by_group(),
    flat=acc.as_dict(),
    records=records,
    grid_images=grid_images,
    seconds=time.time() - t0,
    ocr_stats=stats,
  )


def grid_captions(records: list[dict], n: int) -> list[str]:
  return [
    f'T: {" | ".join(r["targets"])}\nOCR: {" | ".join(r["ocr"]) or "-"}'
    for r in records[:n]
  ]
