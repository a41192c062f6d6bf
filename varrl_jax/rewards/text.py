"""Text-rendering rewards: pure functions of the target strings and one OCR result.

Two rewards (DESIGN §3 "Reward"), both returned as a :class:`TextReward`:

- ``comp_sim_pen``, the paper's reward ``R = Comp + Sim − Pen``:

  * ``Comp = |M| / N`` with ``N`` targets and ``M`` the largest set of targets
    that are *read exactly* at the same time (rule below);
  * ``Sim = (1/N) Σ_t max_c (1 − NED(t, c))`` over candidate readings ``c``;
  * ``Pen = λ · |C_T ⊖ C_R| / |C_T|`` with ``λ = 0.6``, ``C_T`` the multiset of
    non-whitespace characters of all targets, ``C_R`` that of everything the
    OCR read in the image and ``⊖`` the multiset symmetric difference
    ``Σ_ch |n_T(ch) − n_R(ch)|``. Extra, repeated or missing characters all
    count. It is not capped, so ``R ∈ (−∞, 2]``.

- ``one_minus_ned``: ``R = Sim`` (mean over targets of the best ``1 − NED``).
  Comp and Pen are still computed and returned for logging.

Normalization. Both sides are stripped and inner whitespace runs collapse to a
single space; unless ``case_sensitive``, both are lower-cased (``str.lower``).
Targets left empty are dropped; ``N`` counts the others. Punctuation is kept.

Exact-read rule (Comp). OCR engines return a mix of single words and whole
lines ("HELLO WORLD" or "HELLO", "WORLD"), in an order that is not reliably the
reading order. So every OCR text is split on whitespace into tokens, and a
target of words ``w_1 … w_n`` is read exactly when each ``w_i`` equals a distinct
OCR token (word order is not required). Tokens are consumed one-to-one across
the targets of one image, so one rendered "SALE" cannot satisfy two "SALE"
targets; ``M`` is the largest such set (exact search over subsets, which is
tiny for the 2–5 regions of CVTG-2K; greedy, shortest targets first, beyond
:data:`_EXACT_SEARCH_MAX_TARGETS`).

Candidate readings (Sim). For a target of ``n`` words, the candidates are every
whole OCR text and every run of ``n`` consecutive OCR tokens (in the engine's
output order) joined by one space. The first candidate with the best score
wins ties; whole texts come before token runs.

Matched boxes (for Mask Propagation). The boxes of the OCR entries whose tokens
were consumed by exactly-read targets, plus those of every target's best
candidate when its ``1 − NED ≥ box_min_similarity`` (default 0.5). Each box
appears once, in OCR order.

Failures. A failed :class:`OcrResult`, or invalid input (targets not a sequence
of strings, no non-empty target, OCR texts that are not strings) gives
``reward = fallback`` with zero components, no boxes and ``failed=True``;
these functions never raise on per-image input.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from rapidfuzz.distance import Levenshtein

from varrl_jax.rewards.types import Box, OcrResult, OcrWord

RewardKind = Literal['comp_sim_pen', 'one_minus_ned']

# 2**12 subset checks is still well under a millisecond per image.
_EXACT_SEARCH_MAX_TARGETS = 12


# ---------------------------------------------------------------------------
# Edit distance.
# ---------------------------------------------------------------------------

# Every edit distance here goes through this one name (rapidfuzz's C++
# bit-parallel Levenshtein, unit costs, exact ints): tests and
# benchmarks/edit_distance.py swap in a reference to compare.
_lev_distance = Levenshtein.distance


def levenshtein(a: str, b: str) -> int:
  """Levenshtein distance: fewest single-character insertions, deletions and
  substitutions turning ``a`` into ``b`` (rapidfuzz's C++ bit-parallel one)."""
  return _lev_distance(a, b)


def ned(a: str, b: str) -> float:
  """Normalized edit distance ``NED(a, b) = lev(a, b) / max(|a|, |b|)``.

  In ``[0, 1]``; 0 for two empty strings (they are equal). rapidfuzz divides
  the integer distance in double precision, exactly as Python's ``/`` does.
  """
  return Levenshtein.normalized_distance(a, b)


def similarity(a: str, b: str) -> float:
  """``1 − NED(a, b)``, in ``[0, 1]``; 1 means equal."""
  return Levenshtein.normalized_similarity(a, b)


def normalize_text(text: str, *, case_sensitive: bool = False) -> str:
  """Strip, collapse whitespace runs to one space, lower-case unless asked not."""
  text = ' '.join(text.split())
  return text if case_sensitive else text.lower()


# ---------------------------------------------------------------------------
# Result types.
# ---------------------------------------------------------------------------


class TextReward(NamedTuple):
  """The reward of one image and its parts.

  ``reward`` is ``comp + sim − pen`` or ``sim`` depending on the reward kind,
  or the fallback when ``failed``. ``matched_boxes`` feed Mask Propagation.
  """

  reward: float
  comp: float
  sim: float
  pen: float
  matched_boxes: list[Box]
  failed: bool = False
  error: str = ''


class BatchRewards(NamedTuple):
  """Rewards of a batch of ``B`` images (float32 ``[B]`` arrays)."""

  rewards: np.ndarray
  comp: np.ndarray
  sim: np.ndarray
  pen: np.ndarray
  failed: np.ndarray  # bool [B]
  boxes: list[list[Box]]
  num_failed: int


# ---------------------------------------------------------------------------
# Internals.
# ---------------------------------------------------------------------------


class _Invalid(ValueError):
  pass


def _check_inputs(
  targets: Sequence[str], ocr: OcrResult, case_sensitive: bool
) -> tuple[list[str], list[str]]:
  """Returns (normalized non-empty targets, normalized OCR texts) or raises _Invalid."""
  if not isinstance(ocr, OcrResult):
    raise _Invalid(f'expected an OcrResult, got {type(ocr).__name__}')
  if ocr.failed:
    raise _Invalid(f'OCR failed: {ocr.error or "no reason given"}')
  if isinstance(targets, str) or not isinstance(targets, Sequence):
    raise _Invalid(
      f'targets must be a sequence of strings, got {type(targets).__name__}'
    )
  if not all(isinstance(t, str) for t in targets):
    raise _Invalid('targets must all be strings')
  norm_targets = [normalize_text(t, case_sensitive=case_sensitive) for t in targets]
  norm_targets = [t for t in norm_targets if t]
  if not norm_targets:
    raise _Invalid('no non-empty target string')
  if not isinstance(ocr.words, Sequence) or not all(
    isinstance(w, OcrWord) and isinstance(w.text, str) for w in ocr.words
  ):
    raise _Invalid('OCR words must be OcrWord with string texts')
  texts = [normalize_text(w.text, case_sensitive=case_sensitive) for w in ocr.words]
  return norm_targets, texts


def _exact_reads(
  target_words: list[list[str]], tokens: list[tuple[str, int]]
) -> tuple[list[bool], set[int]]:
  """Largest set of targets whose words are distinct OCR tokens at once.

  Returns (read exactly per target, indices of OCR entries whose tokens were used).
  """
  available = collections.Counter(tok for tok, _ in tokens)
  needs = [collections.Counter(words) for words in target_words]
  # A target that cannot be read even alone never joins the set.
  feasible = [i for i, need in enumerate(needs) if need <= available]
  chosen: tuple[int, ...] = ()
  if len(feasible) <= _EXACT_SEARCH_MAX_TARGETS:
    for size in range(len(feasible), 0, -1):
      for combo in itertools.combinations(feasible, size):
        need = collections.Counter()
        for i in combo:
          need.update(needs[i])
        if need <= available:
          chosen = combo
          break
      if chosen:
        break
  else:
    left = available.copy()
    picked = []
    for i in sorted(feasible, key=lambda i: (len(target_words[i]), i)):
      if needs[i] <= left:
        left.subtract(needs[i])
        picked.append(i)
    chosen = tuple(sorted(picked))

  read = [False] * len(target_words)
  used_positions: set[int] = set()
  entries: set[int] = set()
  for i in chosen:
    read[i] = True
    for word in target_words[i]:
      # The first unused token with this text: deterministic and always found
      # because the multiset containment was checked above.
      pos = next(
        p
        for p, (tok, _) in enumerate(tokens)
        if tok == word and p not in used_positions
      )
      used_positions.add(pos)
      entries.add(tokens[pos][1])
  return read, entries


def _best_reading(
  target: str, n_words: int, texts: list[str], tokens: list[tuple[str, int]]
) -> tuple[float, tuple[int, ...]]:
  """Best ``1 − NED`` of ``target`` over the candidate readings, and their entries."""
  candidates: dict[str, tuple[int, ...]] = {}
  for i, text in enumerate(texts):
    candidates.setdefault(text, (i,))
  for start in range(len(tokens) - n_words + 1):
    span = tokens[start : start + n_words]
    text = ' '.join(tok for tok, _ in span)
    candidates.setdefault(text, tuple(sorted({e for _, e in span})))

  best, best_entries = 0.0, ()
  for text, entries in candidates.items():
    longest = max(len(target), len(text))
    if longest == 0:
      continue
    # |len(a) − len(b)| lower-bounds the edit distance: skip hopeless candidates.
    if 1.0 - abs(len(target) - len(text)) / longest <= best:
      continue
    score = 1.0 - _lev_distance(target, text) / longest
    if score > best:
      best, best_entries = score, entries
      if best == 1.0:
        break
  return best, best_entries


def char_mismatch(targets: Sequence[str], recognized: Sequence[str]) -> tuple[int, int]:
  """``(|C_T ⊖ C_R|, |C_T|)`` over non-whitespace characters.

  ``C_T`` and ``C_R`` are the character multisets of all targets and of all
  recognized texts; ``⊖`` is the multiset symmetric difference
  ``Σ_ch |n_T(ch) − n_R(ch)|``. Inputs are used as given (normalize first).
  """
  c_t = collections.Counter(ch for t in targets for ch in t if not ch.isspace())
  c_r = collections.Counter(ch for t in recognized for ch in t if not ch.isspace())
  mismatch = sum(((c_t - c_r) + (c_r - c_t)).values())
  return mismatch, sum(c_t.values())


def _fallback(fallback: float, error: str) -> TextReward:
  return TextReward(float(fallback), 0.0, 0.0, 0.0, [], failed=True, error=error)


def text_reward(
  targets: Sequence[str],
  ocr: OcrResult,
  *,
  kind: RewardKind = 'comp_sim_pen',
  case_sensitive: bool = False,
  pen_weight: float = 0.6,
  box_min_similarity: float = 0.5,
  fallback: float = 0.0,
) -> TextReward:
  """Reward of one image; see the module docstring for the exact rules.

  ``comp_sim_pen``: ``R = Comp + Sim − λ·|C_T ⊖ C_R| / |C_T|`` (λ = ``pen_weight``).
  ``one_minus_ned``: ``R = Sim = (1/N) Σ_t max_c (1 − NED(t, c))``.
  """
  if kind not in ('comp_sim_pen', 'one_minus_ned'):
    # A wrong kind is a programming error, not bad per-image data.
    raise ValueError(f'unknown reward kind {kind!r}')
  try:
    norm_targets, texts = _check_inputs(targets, ocr, case_sensitive)
  except _Invalid as e:
    return _fallback(fallback, str(e))

  tokens = [(tok, i) for i, text in enumerate(texts) for tok in text.split()]
  target_words = [t.split() for t in norm_targets]

  read, entries = _exact_reads(target_words, tokens)
  sims = []
  for target, words in zip(norm_targets, target_words):
    score, best_entries = _best_reading(target, len(words), texts, tokens)
    sims.append(score)
    if best_entries and score >= box_min_similarity:
      entries.update(best_entries)

  n = len(norm_targets)
  comp = sum(read) / n
  sim = sum(sims) / n
  mismatch, total = char_mismatch(norm_targets, texts)
  pen = pen_weight * mismatch / total
  reward = comp + sim - pen if kind == 'comp_sim_pen' else sim
  boxes = [ocr.words[i].box for i in sorted(entries)]
  return TextReward(float(reward), float(comp), float(sim), float(pen), boxes)


def comp_sim_pen_reward(
  targets: Sequence[str], ocr: OcrResult, **kwargs: object
) -> TextReward:
  """The paper's ``R = Comp + Sim − Pen``; keyword options as :func:`text_reward`."""
  return text_reward(targets, ocr, kind='comp_sim_pen', **kwargs)


def one_minus_ned_reward(
  targets: Sequence[str], ocr: OcrResult, **kwargs: object
) -> TextReward:
  """``R = (1/N) Σ_t max_c (1 − NED(t, c))``; keyword options as :func:`text_reward`."""
  return text_reward(targets, ocr, kind='one_minus_ned', **kwargs)


def rewards_for_batch(
  targets_per_image: Sequence[Sequence[str]],
  ocr_results: Sequence[OcrResult],
  kind: RewardKind = 'comp_sim_pen',
  *,
  case_sensitive: bool = False,
  pen_weight: float = 0.6,
  box_min_similarity: float = 0.5,
  fallback: float = 0.0,
) -> BatchRewards:
  """Rewards of ``B`` images as float32 ``[B]`` arrays, boxes, and the failure count.

  Image ``b`` gets :func:`text_reward` of ``(targets_per_image[b], ocr_results[b])``.
  Failed or invalid images get ``fallback`` and count in ``num_failed``. Raises
  ``ValueError`` only when the two sequences differ in length (a caller bug).
  """
  if len(targets_per_image) != len(ocr_results):
    raise ValueError(
      f'{len(targets_per_image)} target lists for {len(ocr_results)} OCR results'
    )
  results = [
    text_reward(
      targets,
      ocr,
      kind=kind,
      case_sensitive=case_sensitive,
      pen_weight=pen_weight,
      box_min_similarity=box_min_similarity,
      fallback=fallback,
    )
    for targets, ocr in zip(targets_per_image, ocr_results)
  ]

  def column(name: str) -> np.ndarray:
    return np.asarray([getattr(r, name) for r in results], dtype=np.float32)

  failed = np.asarray([r.failed for r in results], dtype=bool)
  return BatchRewards(
    rewards=column('reward'),
    comp=column('comp'),
    sim=column('sim'),
    pen=column('pen'),
    failed=failed,
    boxes=[r.matched_boxes for r in results],
    num_failed=int(failed.sum()),
  )
