"""The reward interface, the registry of rewards and their weighted sum.

A reward scores a batch of images given their prompts and targets:

  ``submit(images_nhw3, prompts, targets) -> handle``, then
  ``collect([handle, ...]) -> RewardOutput`` of all the submitted images in
  submission order.

``images`` are uint8 [N, H, W, 3]; ``prompts`` N strings; ``targets`` N
tuples of strings (the texts an image should show; may be empty). The two
steps let slow rewards work while the sampler draws the next chunk (the OCR
reward reads in worker processes); a host reward may do all its work in
``submit``. `Reward` implements both from one ``score`` method, so a
synchronous reward writes only ``score``.

`RewardOutput`: per-image float32 ``scores`` [N]; ``regions``, per image a
list of `types.Box` (pixels) for Mask Propagation, or None when the reward
has no notion of where in the image it looked; ``diagnostics``, its own
per-image float arrays [N] (logged as ``reward/<name>`` means; names must
differ between the terms of one run); ``counters``, floats that add up over
chunks and processes (e.g. ``ocr/images``).

``config.rl.rewards`` configures a weighted sum, ``R = sum_i w_i r_i``
(`build`, `WeightedReward`): comma-separated items

  ``NAME`` or ``NAME:WEIGHT``           a registered reward (`known_names`);
  ``MODULE:ATTR`` or ``MODULE:ATTR:WEIGHT``  your own (imported), where
      ``MODULE.ATTR`` is a `Reward` subclass or any class with ``submit`` and
      ``collect`` (constructed with no arguments), such an instance, or a
      plain function ``fn(images, prompts, targets) -> scores [N]``.

A weight left out is 1. The last ``:``-field is a weight exactly when it
parses as a number (an attribute name never does), so the two forms cannot
be confused: ``ocr:0.5,jpeg_compressibility:0.2``,
``my_pkg.rewards:Aesthetic:2``. A user term is named by its ``name``
attribute when it has one, else by ATTR.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from varrl_jax.rewards.types import Box

Handle = Any
Regions = list[list[Box]]


@dataclasses.dataclass
class RewardOutput:
  """A reward's result for N images (see the module docstring).

  ``terms``: a `WeightedReward`'s unweighted term scores (name -> [N]); empty
  for a single reward.
  """

  scores: np.ndarray
  regions: Regions | None = None
  diagnostics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  counters: dict[str, float] = dataclasses.field(default_factory=dict)
  terms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.scores)

  @classmethod
  def concat(cls, outputs: Sequence[RewardOutput]) -> RewardOutput:
    """Outputs of consecutive chunks as one; counters add up."""
    if not outputs:
      raise ValueError('no reward outputs to concatenate')
    if len({o.regions is None for o in outputs}) > 1:
      raise ValueError('a reward gave regions for some chunks and None for others')
    counters: dict[str, float] = {}
    for o in outputs:
      for k, v in o.counters.items():
        counters[k] = counters.get(k, 0.0) + float(v)

    def cat(field: str) -> dict[str, np.ndarray]:
      return {
        k: np.concatenate([getattr(o, field)[k] for o in outputs])
        for k in getattr(outputs[0], field)
      }

    regions = None
    if outputs[0].regions is not None:
      regions = [list(r) for o in outputs for r in o.regions]
    return cls(
      scores=np.concatenate([o.scores for o in outputs]),
      regions=regions,
      diagnostics=cat('diagnostics'),
      counters=counters,
      terms=cat('terms'),
    )


def as_output(value: Any, n: int, who: str) -> RewardOutput:
  """A `RewardOutput` (or bare scores [n]) checked for shape; float32 arrays."""
  out = value if isinstance(value, RewardOutput) else RewardOutput(scores=value)

  def column(x, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.shape != (n,):
      raise ValueError(f'reward {who}: {what} has shape {x.shape}; expected ({n},)')
    return x

  regions = out.regions
  if regions is not None:
    if len(regions) != n:
      raise ValueError(f'reward {who}: {len(regions)} region lists for {n} images')
    regions = [[tuple(float(v) for v in box) for box in r] for r in regions]
  return RewardOutput(
    scores=column(out.scores, 'scores'),
    regions=regions,
    diagnostics={k: column(v, f'diagnostic {k!r}') for k, v in out.diagnostics.items()},
    counters={k: float(v) for k, v in out.counters.items()},
    terms={k: column(v, f'term {k!r}') for k, v in out.terms.items()},
  )


class Reward:
  """Base of rewards: override ``score`` (synchronous) or ``submit``/``collect``.

  ``close`` frees what the reward owns (worker processes); rewards are
  context managers.
  """

  name: str = ''

  def score(self, images: np.ndarray, prompts: Sequence[str], targets: Sequence):
    """Scores [N] or a `RewardOutput`, computed now."""
    raise NotImplementedError(
      f'{type(self).__name__} implements neither score nor submit'
    )

  def submit(self, images, prompts: Sequence[str], targets: Sequence) -> Handle:
    images = np.asarray(images)
    return as_output(
      self.score(images, list(prompts), list(targets)), len(images), self.name
    )

  def collect(self, handles: Sequence[Handle]) -> RewardOutput:
    return RewardOutput.concat(list(handles))

  def __call__(self, images, prompts, targets) -> RewardOutput:
    """Submit and collect one batch."""
    return as_output(
      self.collect([self.submit(images, prompts, targets)]), len(images), self.name
    )

  def close(self) -> None:
    pass

  def __enter__(self) -> Reward:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class FunctionReward(Reward):
  """A plain function ``fn(images, prompts, targets) -> scores [N]`` as a reward."""

  def __init__(self, fn: Callable, name: str):
    self.fn, self.name = fn, name

  def score(self, images, prompts, targets):
    return self.fn(images, prompts, targets)


@dataclasses.dataclass(frozen=True)
class Term:
  name: str
  weight: float
  reward: Any  # a Reward, or an object with submit/collect


class WeightedReward(Reward):
  """``R = sum_i w_i r_i`` over its terms; itself a `Reward`.

  Its output's ``terms`` holds each r_i, ``regions`` the union (per image, in
  term order) of the terms that give regions (None when none does),
  ``diagnostics`` and ``counters`` those of all terms (counters of the same
  name add up).
  """

  def __init__(self, terms: Sequence[Term]):
    if not terms:
      raise ValueError('a weighted reward needs at least one term')
    self.terms = list(terms)
    self.name = '+'.join(t.name for t in self.terms)

  @property
  def weights(self) -> dict[str, float]:
    return {t.name: t.weight for t in self.terms}

  def get(self, name: str):
    """The reward of term ``name``, or None."""
    return next((t.reward for t in self.terms if t.name == name), None)

  def submit(self, images, prompts, targets) -> Handle:
    return len(images), [t.reward.submit(images, prompts, targets) for t in self.terms]

  def collect(self, handles: Sequence[Handle]) -> RewardOutput:
    n = sum(h[0] for h in handles)
    total = np.zeros(n, np.float32)
    out = RewardOutput(scores=total)
    owner: dict[str, str] = {}
    for i, term in enumerate(self.terms):
      part = as_output(term.reward.collect([h[1][i] for h in handles]), n, term.name)
      out.terms[term.name] = part.scores
      # float32 throughout: a single term of weight 1 is its scores exactly.
      total += np.float32(term.weight) * part.scores
      if part.regions is not None:
        if out.regions is None:
          out.regions = [[] for _ in range(n)]
        for row, boxes in zip(out.regions, part.regions):
          row.extend(boxes)
      for k, v in part.diagnostics.items():
        if k in owner:
          raise ValueError(
            f'rewards {owner[k]!r} and {term.name!r} both report diagnostic {k!r}'
          )
        owner[k] = term.name
        out.diagnostics[k] = v
      for k, v in part.counters.items():
        out.counters[k] = out.counters.get(k, 0.0) + v
    return out

  def close(self) -> None:
    for t in self.terms:
      if hasattr(t.reward, 'close'):
        t.reward.close()


def advantage_shares(
  terms_gn: dict[str, np.ndarray], weights: dict[str, float], eps: float
) -> dict[str, float]:
  """Each term's share of the variance of the GRPO advantage.

  Groups are rows g of [G_groups, N] arrays. With R = sum_i w_i r_i and the
  group advantage A = (R - mean_g R) / (std_g R + eps), A splits exactly
  into per-term parts A_i = w_i (r_i - mean_g r_i) / (std_g R + eps), and
  ``share_i = <A_i, A> / <A, A>`` (sums over all rows: the covariance
  decomposition Var(A) = sum_i Cov(A_i, A)). The shares sum to 1; a term
  that works against the others has a negative share; all 0 when A = 0.
  """
  total = sum(
    np.float64(weights[k]) * np.asarray(v, np.float64) for k, v in terms_gn.items()
  )
  scale = total.std(-1, keepdims=True) + eps
  adv = (total - total.mean(-1, keepdims=True)) / scale
  norm = float((adv * adv).sum())
  out = {}
  for k, v in terms_gn.items():
    v = np.float64(weights[k]) * np.asarray(v, np.float64)
    part = (v - v.mean(-1, keepdims=True)) / scale
    out[k] = float((part * adv).sum()) / norm if norm > 0 else 0.0
  return out


# -- registry and config ------------------------------------------------------

# name -> factory(config, pool) -> Reward; ``pool`` is an injected OcrPool
# (tests) or None, ignored by rewards that do not OCR.
_REGISTRY: dict[str, Callable[[Any, Any], Any]] = {}


def register(name: str, factory: Callable[[Any, Any], Any]) -> None:
  """Makes ``name`` usable in ``config.rl.rewards``."""
  if not name.isidentifier():
    raise ValueError(f'reward names are identifiers, got {name!r}')
  _REGISTRY[name] = factory


def known_names() -> list[str]:
  return sorted(_REGISTRY)


def _ocr(config, pool):
  from varrl_jax.rewards import service

  return service.OcrReward.from_config(config, pool)


def _jpeg(sign: float):
  def factory(config, pool):
    del config, pool
    from varrl_jax.rewards import image

    return image.JpegSize(sign)

  return factory


def _clip(name: str):
  def factory(config, pool):
    del pool
    from varrl_jax.rewards import clip

    return clip.from_config(config, name)

  return factory


register('ocr', _ocr)
register('jpeg_compressibility', _jpeg(-1.0))
register('jpeg_incompressibility', _jpeg(+1.0))
register('clipscore', _clip('clipscore'))  # config.rewards.clip
register('preference', _clip('preference'))  # config.rewards.preference


@dataclasses.dataclass(frozen=True)
class TermSpec:
  """One parsed item of ``config.rl.rewards``."""

  name: str  # logged as reward/<name>/...
  weight: float
  registered: str = ''  # a registered name, or
  obj: Any = None  # the imported user object


def _weight(text: str) -> float | None:
  try:
    w = float(text)
  except ValueError:
    return None
  return w


def _import(module: str, attr: str, fail: Callable[[str], ValueError]):
  if not all(p.isidentifier() for p in module.split('.')) or not attr.isidentifier():
    raise fail(f'{module}:{attr} is not MODULE:ATTR')
  try:
    mod = importlib.import_module(module)
  except ImportError as e:
    raise fail(f'cannot import {module}: {e}') from None
  if not hasattr(mod, attr):
    raise fail(f'module {module} has no attribute {attr!r}')
  return getattr(mod, attr)


def parse(spec: str) -> list[TermSpec]:
  """Parses and checks ``config.rl.rewards`` (imports user rewards); ValueError
  naming the bad item otherwise."""

  def fail(item: str, why: str) -> ValueError:
    return ValueError(
      f'config.rl.rewards={spec!r}: {item!r}: {why} (known rewards: '
      f'{", ".join(known_names())}; your own: MODULE:ATTR[:WEIGHT])'
    )

  if not isinstance(spec, str) or not spec.strip():
    raise fail(str(spec), 'no reward given')
  out: list[TermSpec] = []
  for item in (x.strip() for x in spec.split(',')):
    parts = item.split(':')
    weight = 1.0
    if len(parts) > 1 and _weight(parts[-1]) is not None:
      weight = _weight(parts.pop())
    elif len(parts) > 1 and parts[0] in _REGISTRY:
      raise fail(item, f'weight {parts[-1]!r} is not a number')
    if not math.isfinite(weight):
      raise fail(item, f'weight {weight} is not finite')
    if not item:
      raise fail(item, 'empty item')
    if len(parts) == 1:
      if parts[0] not in _REGISTRY:
        raise fail(item, f'unknown reward {parts[0]!r}')
      out.append(TermSpec(parts[0], weight, registered=parts[0]))
    elif len(parts) == 2:
      obj = _import(*parts, fail=lambda why, item=item: fail(item, why))
      name = (
        getattr(obj, 'name', '') if isinstance(getattr(obj, 'name', ''), str) else ''
      )
      out.append(TermSpec(name or parts[1], weight, obj=obj))
    else:
      raise fail(item, 'expected NAME[:WEIGHT] or MODULE:ATTR[:WEIGHT]')
  names = [t.name for t in out]
  for name in names:
    if names.count(name) > 1:
      raise fail(name, 'named twice')
  if all(t.weight == 0 for t in out):
    raise fail(spec, 'every weight is 0: the reward would be constant')
  return out


def _instantiate(spec: TermSpec) -> Any:
  obj = spec.obj
  if inspect.isclass(obj):
    obj = obj()
  if hasattr(obj, 'submit') and hasattr(obj, 'collect'):
    return obj
  if callable(obj):
    return FunctionReward(obj, spec.name)
  raise ValueError(
    f'config.rl.rewards: {spec.name!r} is neither a reward (submit/collect) nor a function'
  )


def build(config, pool=None) -> WeightedReward:
  """The weighted reward of ``config.rl.rewards``.

  ``pool``: an `OcrPool` for the ``ocr`` term instead of one made from
  ``config.ocr`` (the caller keeps owning it); unused without an ``ocr`` term.
  """
  terms = []
  try:
    for spec in parse(config.rl.rewards):
      if spec.registered:
        reward = _REGISTRY[spec.registered](config, pool)
      else:
        reward = _instantiate(spec)
      terms.append(Term(spec.name, spec.weight, reward))
  except BaseException:
    for t in terms:  # e.g. an OCR pool already started
      if hasattr(t.reward, 'close'):
        t.reward.close()
    raise
  return WeightedReward(terms)


def as_weighted(reward, config) -> WeightedReward:
  """A `WeightedReward` from what a caller passes: one already, a single
  reward (weight 1), or an `OcrPool` (the configured reward, with this pool
  for its ``ocr`` term)."""
  if isinstance(reward, WeightedReward):
    return reward
  if hasattr(reward, 'submit_batch'):  # an OcrPool
    return build(config, pool=reward)
  return WeightedReward([Term(getattr(reward, 'name', '') or 'reward', 1.0, reward)])
