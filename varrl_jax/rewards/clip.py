"""CLIP rewards from local weights: CLIPScore and a preference model.

- ``clipscore``: CLIP-S of Hessel et al. (2021),
  ``w max(cos(f_I, f_T), 0)`` with w = 2.5, f_I / f_T the CLIP image and
  prompt features (`varrl_jax.models.clip`). This is the scale of CVTG-2K's
  CLIPScore column (~0.8 for good text-to-image models). Weights:
  ``config.rewards.clip`` (e.g. OpenAI CLIP ViT-L/14 as a Hugging Face folder).
- ``preference``: a CLIP-H preference model, ``config.rewards.preference``:
  kind 'pickscore' (PickScore, Kirstain et al. 2023) scores
  ``exp(logit_scale) cos`` (~20; a Hugging Face folder), kind 'hpsv2'
  (HPS-v2, Wu et al. 2023) scores ``cos`` (~0.27; open_clip ViT-H-14
  checkpoint ``HPS_v2_compressed.pt``). Any CLIP-style scorer with the same
  two towers loads the same way.

Where it runs: in the training process, in JAX, jitted, on the default
device (the accelerator on TPU/GPU). uint8 images go to the device as they
are; resizing, cropping and normalising (`models.clip_preprocess`) run there
in fixed batches of ``batch_size`` (the last one padded). ``submit`` only
dispatches that work (JAX runs it asynchronously), ``collect`` waits for it.
Prompt features are cached (a prompt recurs G times per update and across
updates), so the text tower runs once per new prompt. A host worker pool
would run the same numbers on CPU cores, competing with the OCR workers;
benchmarks/rewards.py measures both towers on CPU.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from varrl_jax.models import clip as clip_lib
from varrl_jax.models import clip_weights
from varrl_jax.models.clip_preprocess import preprocess
from varrl_jax.rewards import api

CLIP_S_WEIGHT = 2.5  # w of CLIP-S (Hessel et al. 2021)
PREFERENCE_KINDS = ('pickscore', 'hpsv2')


class ClipEmbedder:
  """A loaded CLIP, jitted: unit-norm image features of uint8 images [N, D]
  and unit-norm (cached) prompt features [N, D]."""

  def __init__(
    self,
    loaded: clip_weights.LoadedClip,
    batch_size: int = 16,
    dtype: str = 'float32',
    cache_size: int = 4096,
  ):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    cfg = loaded.config.replace(dtype=dtype)
    self.config, self.tokenizer, self.batch_size = cfg, loaded.tokenizer, batch_size
    self.source = loaded.source
    self.logit_scale = float(np.exp(loaded.params['logit_scale']))
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), loaded.params)
    params['logit_scale'] = jnp.asarray(loaded.params['logit_scale'], jnp.float32)
    self.params = jax.device_put(params)
    model = clip_lib.ClipModel(cfg)

    def embed_images(params, images_nhwc):
      pixels = preprocess(images_nhwc, cfg.image_size, cfg.image_mean, cfg.image_std)
      f = model.apply({'params': params}, pixels, method='encode_image')
      return clip_lib.normalize(f)

    def embed_texts(params, ids_bl):
      return clip_lib.normalize(
        model.apply({'params': params}, ids_bl, method='encode_text')
      )

    self._images = jax.jit(embed_images)
    self._texts = jax.jit(embed_texts)
    self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self.cache_size = cache_size

  def _chunks(self, x: np.ndarray):
    b = self.batch_size
    for start in range(0, len(x), b):
      part = x[start : start + b]
      n = len(part)
      if n < b:  # pad with copies of the last row: one static shape
        part = np.concatenate([part, np.repeat(part[-1:], b - n, 0)])
      yield part, n

  def dispatch_images(self, images_nhwc: np.ndarray) -> list:
    """Starts the image tower on uint8 [N, H, W, 3]; `gather` the result."""
    images = np.asarray(images_nhwc)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(
        f'images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}'
      )
    return [(self._images(self.params, part), n) for part, n in self._chunks(images)]

  @staticmethod
  def gather(pending: list) -> np.ndarray:
    parts = [np.asarray(jax.device_get(f))[:n] for f, n in pending]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

  def images(self, images_nhwc: np.ndarray) -> np.ndarray:
    """Unit-norm image features float32 [N, D]."""
    return self.gather(self.dispatch_images(images_nhwc))

  def texts(self, prompts: Sequence[str]) -> np.ndarray:
    """Unit-norm prompt features float32 [N, D]; new prompts are embedded once."""
    new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
    if new:
      ids = self.tokenizer(new)
      feats = self.gather(
        [(self._texts(self.params, part), n) for part, n in self._chunks(ids)]
      )
      for p, f in zip(new, feats):
        self._cache[p] = f
    out = []
    for p in prompts:
      self._cache.move_to_end(p)
      out.append(self._cache[p])
    while len(self._cache) > self.cache_size:
      self._cache.popitem(last=False)
    return np.stack(out) if out else np.zeros((0, self.config.embed_dim), np.float32)


class _ClipReward(api.Reward):
  """Scores from ``cos(f_I, f_T)`` of each image and its prompt."""

  def __init__(self, embedder: ClipEmbedder):
    self.embedder = embedder

  def transform(self, cos_n: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def submit(self, images, prompts, targets):
    del targets
    if len(prompts) != len(images):
      raise ValueError(
        f'reward {self.name}: {len(images)} images, {len(prompts)} prompts'
      )
    return self.embedder.dispatch_images(images), list(prompts)

  def collect(self, handles) -> api.RewardOutput:
    images = np.concatenate([self.embedder.gather(h[0]) for h in handles])
    texts = self.embedder.texts([p for h in handles for p in h[1]])
    cos = np.sum(images * texts, axis=-1)
    return api.RewardOutput(scores=self.transform(cos).astype(np.float32))

  def score(self, images, prompts, targets) -> np.ndarray:
    return self.collect([self.submit(images, prompts, targets)]).scores


class ClipScore(_ClipReward):
  """CLIP-S = 2.5 max(cos, 0) (Hessel et al. 2021)."""

  name = 'clipscore'

  def transform(self, cos_n):
    return CLIP_S_WEIGHT * np.maximum(cos_n, 0.0)


def _check_kind(kind: str) -> str:
  if kind not in PREFERENCE_KINDS:
    raise ValueError(
      f'config.rewards.preference.kind must be one of {PREFERENCE_KINDS}, got {kind!r}'
    )
  return kind


class PreferenceScore(_ClipReward):
  """PickScore ``exp(logit_scale) cos`` or HPS-v2 ``cos``."""

  name = 'preference'

  def __init__(self, embedder: ClipEmbedder, kind: str):
    _check_kind(kind)
    super().__init__(embedder)
    self.kind = kind

  def transform(self, cos_n):
    return cos_n * (self.embedder.logit_scale if self.kind == 'pickscore' else 1.0)


def embedder_from_config(config, section: str) -> ClipEmbedder:
  """The model of ``config.rewards.<section>`` ('clip' | 'preference')."""
  block = config.rewards[section]
  key = f'config.rewards.{section}'
  if not block.path:
    raise ValueError(
      f'{key}.path is empty: set it to a local CLIP (a Hugging Face CLIPModel '
      'folder or an open_clip checkpoint file); nothing is downloaded'
    )
  try:
    loaded = clip_weights.load(block.path, block.format, block.arch, block.tokenizer)
  except clip_weights.ClipWeightsError as e:
    raise clip_weights.ClipWeightsError(f'{key}: {e}') from None
  return ClipEmbedder(loaded, block.batch_size, block.dtype)


def from_config(config, name: str) -> _ClipReward:
  """The registered reward ``name`` ('clipscore' | 'preference') of ``config``."""
  if name == 'clipscore':
    return ClipScore(embedder_from_config(config, 'clip'))
  if name == 'preference':
    kind = _check_kind(config.rewards.preference.kind)  # before minutes of loading
    return PreferenceScore(embedder_from_config(config, 'preference'), kind)
  raise ValueError(f'unknown CLIP reward {name!r}')
