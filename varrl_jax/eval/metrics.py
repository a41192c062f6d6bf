"""CVTG-2K text-rendering metrics: Word Accuracy, NED (DESIGN §3 "Metrics") and
CLIPScore.

Words. A *target word* is each whitespace-separated word of each target
string of an image; *recognized words* are the OCR texts split on whitespace.
Both sides are lower-cased unless ``case_sensitive``. Punctuation is kept
(``"sale!"`` ≠ ``"sale"``) unless ``strip_punct``, which strips leading and
trailing Unicode punctuation (categories ``P*``) from every word on both sides
and drops words left empty; inner punctuation (``"don't"``) always stays.

Per image, with target words ``w_1 … w_n`` and recognized words ``R``:

- correct words ``c = Σ_i [w_i ∈ R]``. With ``one_to_one=True`` every
  recognized word can be consumed by one target word only, i.e.
  ``c = Σ_w min(n_T(w), n_R(w))`` over distinct words ``w``.
- word similarity ``s_i = 1 − NED(w_i, r_i)``, ``r_i`` the recognized word
  closest to ``w_i``; ``s_i = 0`` when nothing was recognized. ``nearest``
  picks ``r_i``: ``'difflib'`` (best ``difflib`` ratio, as the official scorer
  does) or ``'edit'`` (smallest NED, so ``s_i = max_r 1 − NED(w_i, r)``).

Pooled over all images of a set (every target word weighs the same):

  ``Word Accuracy = Σ c / Σ n``  and  ``NED = Σ_i s_i / Σ n``.

Both are 0 for a set with no target word. NED is reported as a similarity
(higher is better), as in the CVTG-2K tables.

CLIPScore, CVTG-2K's third metric, is the mean over images of CLIP-S =
2.5 max(cos(image, prompt), 0) (`varrl_jax.rewards.clip`); a summary has it
only when the images were given one (``clipscore`` is None otherwise).

The defaults (``one_to_one=False``, ``nearest='difflib'``) reproduce the
official CVTG-2K scorer (TextCrafter's ``unified_metrics_eval.py``), so numbers
compare with published ones (paper, NextFlow 1024²: base 0.5536 / 0.7816). Two
differences, both tiny: a failed OCR scores 0 for every word, and for an empty
reading we use ``s_i = 0`` where the scorer's ``1 − d/(max+1e-5)`` gives ~1e-5.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Literal

from varrl_jax.rewards.text import similarity
from varrl_jax.rewards.types import OcrResult

Nearest = Literal['difflib', 'edit']


@dataclasses.dataclass(frozen=True)
class MetricConfig:
  """How words are compared; the defaults follow the official CVTG-2K scorer."""

  case_sensitive: bool = False
  strip_punct: bool = False
  one_to_one: bool = False
  nearest: Nearest = 'difflib'


def _strip_punct(word: str) -> str:
  start, end = 0, len(word)
  while start < end and unicodedata.category(word[start]).startswith('P'):
    start += 1
  while end > start and unicodedata.category(word[end - 1]).startswith('P'):
    end -= 1
  return word[start:end]


def split_words(
  texts: Iterable[str], config: MetricConfig = MetricConfig()
) -> list[str]:
  """Whitespace-separated words of ``texts``, normalized as ``config`` says."""
  words = []
  for text in texts:
    for word in text.split():
      if not config.case_sensitive:
        word = word.lower()
      if config.strip_punct:
        word = _strip_punct(word)
      if word:
        words.append(word)
  return words


@dataclasses.dataclass(frozen=True)
class ImageScore:
  """Metric counts of one image.

  ``word_similarity[i] = 1 − NED`` of target word ``i`` to its closest
  recognized word; ``n_words = len(word_similarity)``.
  """

  n_words: int
  n_correct: int
  word_similarity: tuple[float, ...]
  failed: bool = False


def _nearest_similarity(word: str, recognized: list[str], nearest: Nearest) -> float:
  if not recognized:
    return 0.0
  if nearest == 'difflib':
    # cutoff=0 always yields one match; ties go to difflib's own ordering,
    # which is what the official scorer gets.
    (closest,) = difflib.get_close_matches(word, recognized, n=1, cutoff=0.0)
    return similarity(word, closest)
  return max(similarity(word, r) for r in recognized)


def score_image(
  targets: Sequence[str],
  recognized: OcrResult | Sequence[str],
  config: MetricConfig = MetricConfig(),
) -> ImageScore:
  """Counts of one image: target words, correct words, per-word ``1 − NED``.

  ``recognized`` is an :class:`OcrResult` (a failed one reads as nothing) or
  the recognized texts themselves.
  """
  if config.nearest not in ('difflib', 'edit'):
    raise ValueError(f'unknown nearest rule {config.nearest!r}')
  failed = False
  if isinstance(recognized, OcrResult):
    failed = recognized.failed
    texts = [] if failed else recognized.texts
  else:
    texts = list(recognized)
  target_words = split_words(targets, config)
  rec_words = split_words(texts, config)

  if config.one_to_one:
    left = collections.Counter(rec_words)
    n_correct = 0
    for word in target_words:
      if left[word] > 0:
        left[word] -= 1
        n_correct += 1
  else:
    rec_set = set(rec_words)
    n_correct = sum(word in rec_set for word in target_words)

  sims = tuple(_nearest_similarity(w, rec_words, config.nearest) for w in target_words)
  return ImageScore(len(target_words), n_correct, sims, failed)


@dataclasses.dataclass(frozen=True)
class Summary:
  """Pooled metrics of a set of images."""

  word_accuracy: float
  ned: float
  n_images: int
  n_words: int
  n_correct: int
  n_failed: int
  clipscore: float | None = None  # mean CLIP-S of the images; None = not scored

  def as_dict(self, prefix: str = '') -> dict[str, float]:
    return {
      f'{prefix}{k}': float(v)
      for k, v in dataclasses.asdict(self).items()
      if v is not None
    }


@dataclasses.dataclass
class _Totals:
  n_images: int = 0
  n_words: int = 0
  n_correct: int = 0
  n_failed: int = 0
  sim_sum: float = 0.0
  clip_sum: float = 0.0
  n_clip: int = 0

  def add(self, score: ImageScore, clipscore: float | None = None) -> None:
    if clipscore is not None:
      self.clip_sum += float(clipscore)
      self.n_clip += 1
    self.n_images += 1
    self.n_words += score.n_words
    self.n_correct += score.n_correct
    self.n_failed += int(score.failed)
    self.sim_sum += sum(score.word_similarity)

  def summary(self) -> Summary:
    denom = max(self.n_words, 1)
    return Summary(
      word_accuracy=self.n_correct / denom,
      ned=self.sim_sum / denom,
      n_images=self.n_images,
      n_words=self.n_words,
      n_correct=self.n_correct,
      n_failed=self.n_failed,
      clipscore=self.clip_sum / self.n_clip if self.n_clip else None,
    )


def aggregate(scores: Iterable[ImageScore]) -> Summary:
  """Pooled Word Accuracy ``Σc/Σn`` and NED ``Σs/Σn`` of ``scores``."""
  totals = _Totals()
  for score in scores:
    totals.add(score)
  return totals.summary()


class MetricAccumulator:
  """Accumulates per-image scores into overall and grouped summaries.

  Groups are arbitrary: each :meth:`add` may pass ``groups={'regions': 3,
  'subset': 'CVTG'}`` and :meth:`by_group` then reports every value of every
  key (e.g. regions 2–5 and both subsets). For a crossed breakdown pass a
  combined key such as ``{'subset/regions': 'CVTG/3'}``.
  """

  def __init__(self, config: MetricConfig = MetricConfig()):
    self.config = config
    self._overall = _Totals()
    self._groups: dict[str, dict[Hashable, _Totals]] = {}

  def add(
    self,
    targets: Sequence[str],
    recognized: OcrResult | Sequence[str],
    groups: Mapping[str, Hashable] | None = None,
    clipscore: float | None = None,
  ) -> ImageScore:
    """Scores one image, adds it to the totals and returns its score;
    ``clipscore`` is the image's CLIP-S, if it was computed."""
    score = score_image(targets, recognized, self.config)
    self._overall.add(score, clipscore)
    for key, value in (groups or {}).items():
      self._groups.setdefault(key, {}).setdefault(value, _Totals()).add(
        score, clipscore
      )
    return score

  def summary(self) -> Summary:
    return self._overall.summary()

  def by_group(self) -> dict[str, dict[Hashable, Summary]]:
    """``{key: {value: Summary}}``; values sorted when they can be."""
    out = {}
    for key, per_value in self._groups.items():
      try:
        values = sorted(per_value)
      except TypeError:
        values = list(per_value)
      out[key] = {v: per_value[v].summary() for v in values}
    return out

  def as_dict(self) -> dict[str, float]:
    """Flat ``{name: number}`` for metric writers.

    Overall entries are ``word_accuracy``, ``ned``, …; grouped ones are
    ``'{key}={value}/word_accuracy'`` etc.
    """
    out = self.summary().as_dict()
    for key, per_value in self.by_group().items():
      for value, summary in per_value.items():
        out.update(summary.as_dict(prefix=f'{key}={value}/'))
    return out
