"""Plain data types shared by the OCR engine, the worker pool and the rewards.

Boxes are axis-aligned ``(x0, y0, x1, y1)`` in pixels of the image that was
given to the engine (the sampler's output size, before any OCR upscaling),
with ``x0 <= x1`` and ``y0 <= y1``; x is the column, y the row.
"""

from __future__ import annotations

import dataclasses

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class OcrWord:
  """One recognized word (or text line) with its box and confidence."""

  text: str
  box: Box
  confidence: float


@dataclasses.dataclass(frozen=True)
class OcrResult:
  """Everything the engine read in one image.

  ``failed`` is True when the engine could not produce a result for this
  image (worker crash, timeout, invalid image); ``error`` then says why and
  ``words`` is empty. Rewards map a failed result to the configured fallback.
  """

  words: tuple[OcrWord, ...] = ()
  failed: bool = False
  error: str = ''

  @property
  def texts(self) -> list[str]:
    return [w.text for w in self.words]
