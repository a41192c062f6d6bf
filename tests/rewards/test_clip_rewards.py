"""CLIPScore and preference rewards against transformers / open_clip scores.

Tiny random models (tests/models/clip_fixture.py). Images already at the
model's 32 x 32 pass unresized, so scores match the references to 1e-4;
larger images go through our resize, compared with CLIPImageProcessorPil's
pixels at a looser tolerance (one uint8 level on a few pixels).
"""

import numpy as np
import pytest
import torch

from tests.models import clip_fixture as fx
from varrl_jax.config import base_config
from varrl_jax.models.clip_weights import ClipWeightsError
from varrl_jax.rewards import api
from varrl_jax.rewards import clip as clip_rewards

PROMPTS = fx.PROMPTS + fx.PROMPTS[:1]  # a repeated prompt


def _images(n, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _config(clip_path, **kw):
  c = base_config()
  c.rewards.clip.path = clip_path
  c.rewards.clip.batch_size = 2
  for k, v in kw.items():
    setattr(c.rewards.preference, k, v)
  return c


def _hf_reference(folder, model, images):
  from PIL import Image
  from transformers import CLIPTokenizer
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

  proc = CLIPImageProcessorPil(
    size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32}
  )
  pixels = proc(images=[Image.fromarray(x) for x in images], return_tensors='pt')
  ids = CLIPTokenizer.from_pretrained(folder)(
    PROMPTS, padding=True, return_tensors='pt'
  )
  with torch.no_grad():
    out = model(input_ids=ids['input_ids'], pixel_values=pixels['pixel_values'])
  cos = (out.image_embeds * out.text_embeds).sum(-1).numpy()
  return cos, out.logits_per_image.diagonal().numpy()


@pytest.mark.parametrize('size, tol', [((32, 32), 1e-4), ((48, 40), 2e-2)])
def test_clipscore_and_pickscore_match_transformers(tmp_path, size, tol):
  ref_model = fx.hf_tiny(str(tmp_path))
  images = _images(len(PROMPTS), *size)
  cos, logits = _hf_reference(str(tmp_path), ref_model, images)
  assert cos.std() > 0.01  # images and prompts tell apart
  config = _config(str(tmp_path), path=str(tmp_path), kind='pickscore')
  config.rl.rewards = 'clipscore,preference:0.5'
  with api.build(config) as reward:
    out = reward(images, PROMPTS, [()] * len(PROMPTS))
  np.testing.assert_allclose(out.terms['clipscore'], 2.5 * np.maximum(cos, 0), atol=tol)
  np.testing.assert_allclose(out.terms['preference'], logits, atol=tol * 10)
  np.testing.assert_allclose(
    out.scores, out.terms['clipscore'] + 0.5 * out.terms['preference'], rtol=1e-6
  )


def test_hpsv2_is_the_cosine_of_open_clip(tmp_path):
  ref = fx.open_clip_tiny(str(tmp_path))
  config = _config(
    '',
    path=str(tmp_path / 'model.pt'),
    kind='hpsv2',
    arch=str(tmp_path / 'model.json'),
    tokenizer=str(tmp_path / 'bpe.txt.gz'),
  )
  reward = clip_rewards.from_config(config, 'preference')
  images = _images(len(PROMPTS), 32, 32, seed=3)
  scores = reward.score(images, PROMPTS, [()] * len(PROMPTS))
  from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
  from open_clip.tokenizer import SimpleTokenizer

  ids = SimpleTokenizer(str(tmp_path / 'bpe.txt.gz'))(PROMPTS)
  # 32 x 32 images need no resize: ToTensor and Normalize of open_clip's transform.
  x = (images / 255.0 - np.array(OPENAI_DATASET_MEAN)) / np.array(OPENAI_DATASET_STD)
  with torch.no_grad():
    f_i = ref.encode_image(
      torch.from_numpy(x.transpose(0, 3, 1, 2)).float(), normalize=True
    )
    f_t = ref.encode_text(ids, normalize=True)
  np.testing.assert_allclose(scores, (f_i * f_t).sum(-1).numpy(), atol=1e-4)


def test_clip_s_clamps_negative_cosines():
  np.testing.assert_allclose(
    clip_rewards.ClipScore.transform(None, np.array([-0.3, 0.0, 0.32])), [0, 0, 0.8]
  )


def test_batching_padding_and_the_prompt_cache(tmp_path):
  fx.hf_tiny(str(tmp_path))
  images = _images(5, 32, 32, seed=1)
  prompts = ['a sign', 'the door', 'a sign', 'hello', 'a sign']
  by_batch = {}
  for bs in (2, 8):
    c = _config(str(tmp_path))
    c.rewards.clip.batch_size = bs
    reward = clip_rewards.from_config(c, 'clipscore')
    by_batch[bs] = reward.score(images, prompts, [()] * 5)
    assert len(reward.embedder._cache) == 3  # pylint: disable=protected-access
  np.testing.assert_allclose(by_batch[2], by_batch[8], atol=1e-6)
  # submit / collect over two chunks = one call.
  h1 = reward.submit(images[:2], prompts[:2], [()] * 2)
  h2 = reward.submit(images[2:], prompts[2:], [()] * 3)
  np.testing.assert_allclose(reward.collect([h1, h2]).scores, by_batch[8], atol=1e-6)
  texts = reward.embedder.texts(prompts)
  np.testing.assert_allclose(np.linalg.norm(texts, axis=-1), 1, atol=1e-5)


def test_config_errors_name_the_key(tmp_path):
  c = base_config()
  c.rl.rewards = 'ocr:1,clipscore:0.2'
  with pytest.raises(ValueError, match='^config.rewards.clip.path is empty'):
    api.build(c)
  c.rl.rewards = 'preference'
  c.rewards.preference.kind = 'hps'
  with pytest.raises(ValueError, match='config.rewards.preference.kind must be one of'):
    api.build(c)
  c.rewards.preference.kind = 'hpsv2'
  c.rewards.preference.path = str(tmp_path / 'missing')
  with pytest.raises(
    ClipWeightsError, match=f'^config.rewards.preference: {tmp_path}/missing: no such'
  ):
    api.build(c)
  fx.hf_tiny(str(tmp_path))
  reward = clip_rewards.from_config(_config(str(tmp_path)), 'clipscore')
  with pytest.raises(ValueError, match=r'images must be uint8 \[N, H, W, 3\]'):
    reward.score(np.zeros((1, 8, 8), np.uint8), ['a'], [()])
