"""CLIP preprocessing in JAX against CLIPImageProcessor (torchvision and PIL).

Tolerance: PIL computes with 22-bit fixed-point weights and torchvision's
uint8 kernel rounds its own way, so a resized pixel may differ by one uint8
level from PIL (two from torchvision when enlarging); after normalising,
one level is 1 / 255 / std <= 0.0146. Exact where no resize is needed.
"""

import numpy as np
import pytest
from PIL import Image

from varrl_jax.models import clip_preprocess

LEVEL = 1 / 255 / min(clip_preprocess.CLIP_STD)


def _images(shape, seed=0):
  rng = np.random.default_rng(seed)
  noise = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
  # A smooth image too: gradients plus a little noise.
  yy, xx = np.mgrid[: shape[0], : shape[1]]
  smooth = np.stack([xx * 255 / shape[1], yy * 255 / shape[0], (xx + yy) % 256], -1)
  smooth = np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
  return np.stack([noise, smooth])


@pytest.mark.parametrize(
  'shape, size',
  [((256, 256), 224), ((300, 200), 224), ((32, 128), 224), ((97, 61), 224),
   ((224, 300), 224), ((64, 48), 32)],
)  # fmt: skip
def test_matches_clip_image_processors(shape, size):
  from transformers import CLIPImageProcessor
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

  images = _images(shape)
  ours = np.asarray(clip_preprocess.preprocess(images, size))
  assert ours.shape == (2, size, size, 3)
  kw = dict(size={'shortest_edge': size}, crop_size={'height': size, 'width': size})
  for proc, levels, share in (
    (CLIPImageProcessorPil, 1, 5e-3),
    (CLIPImageProcessor, 2, 1e-2),
  ):
    ref = proc(**kw)(images=[Image.fromarray(x) for x in images], return_tensors='np')
    ref = ref['pixel_values'].transpose(0, 2, 3, 1)
    diff = np.abs(ours - ref)
    assert diff.max() <= levels * LEVEL + 1e-5, proc.__name__
    assert (diff > 1e-5).mean() <= share, proc.__name__
    if shape[0] == size or shape[1] == size:  # crop only: exact
      assert diff.max() < 1e-5


def test_pil_matrix_is_pils_resize():
  row = np.arange(256, dtype=np.uint8)[None].repeat(2, 0)
  for n_out in (224, 100, 300):
    ref = np.asarray(Image.fromarray(row).resize((n_out, 2), Image.BICUBIC))[0]
    m = clip_preprocess.pil_bicubic_matrix(256, n_out)
    ours = np.clip(np.floor(m @ row[0].astype(np.float64) + 0.5), 0, 255)
    assert np.abs(ours - ref).max() <= 1 and (ours != ref).mean() < 0.02


def test_resize_shape():
  assert clip_preprocess.resize_shape(300, 200, 224) == (336, 224, 56, 0)
  assert clip_preprocess.resize_shape(32, 128, 224) == (224, 896, 0, 336)
  with pytest.raises(ValueError, match='0x5'):
    clip_preprocess.resize_shape(0, 5, 224)
