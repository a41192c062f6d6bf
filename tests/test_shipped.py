"""The shipped tiny checkpoint: it loads, samples deterministically, and draws
text that OCR reads; its export round-trips; a broken copy fails clearly."""

import os
import shutil

import jax
import numpy as np
import pytest

from varrl_jax import checkpoint, cli, sampling
from varrl_jax.data import synthetic
from varrl_jax.models.family import build_model
from varrl_jax.policy import SamplingOptions
from varrl_jax.weights import SHIPPED_TINY, load_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The shipped checkpoint is package data; a source tree without it (a partial
# copy) skips these tests rather than failing on a missing asset.
pytestmark = pytest.mark.skipif(
  not os.path.isdir(SHIPPED_TINY), reason=f'no shipped checkpoint at {SHIPPED_TINY}'
)


def _tiny():
  return cli.load_config_file(os.path.join(ROOT, 'configs', 'tiny.py'))


def test_tiny_config_loads_the_shipped_checkpoint():
  config = _tiny()
  assert config.init_checkpoint == SHIPPED_TINY
  manifest = checkpoint.read_manifest(SHIPPED_TINY)
  assert manifest['parts'] == ['tokenizer', 'transformer']
  # The recipe: tokenizer stage, transformer stage(s) (continuations chain
  # with init_from), decoder fine-tunes (token ids unchanged), export.
  recipe = manifest['recreate']
  assert [c.split()[2] for c in recipe] == [
    *['varrl_jax.pretrain'] * (len(recipe) - 1),
    'varrl_jax.export',
  ]
  assert '--stage=tokenizer' in recipe[0] and 'trainable=decoder' not in recipe[0]
  middle = recipe[1:-1]
  assert any('--stage=transformer' in c for c in middle)
  assert all('--stage=transformer' in c or 'trainable=decoder' in c for c in middle)
  if any('trainable=decoder' in c for c in middle):
    assert '--tokenizer=' in recipe[-1] and manifest['decoder_from']
  size = sum(
    os.path.getsize(os.path.join(d, f))
    for d, _, fs in os.walk(SHIPPED_TINY)
    for f in fs
  )
  assert size < 12 * 2**20, f'shipped checkpoint is {size / 2**20:.1f} MiB'


@pytest.fixture(scope='module')
def shipped_samples():
  config = _tiny()
  model = build_model(config)
  params, _ = load_weights(config, model)
  variety = synthetic.Variety.from_config(config.data)
  # 32 prompts: at the shipped model's held-out Word Accuracy (~0.16 with the
  # config's sampling) a batch this size misses every word with p < 0.5 %.
  prompts = synthetic.prompts('heldout', 32, seed=0, variety=variety)
  cond = model.encode_prompts([p.prompt for p in prompts])
  sampler = sampling.Sampler(model, SamplingOptions.from_config(config.sampling))
  key = jax.random.key(7)
  a = np.asarray(sampler.sample(params, cond, key).images)
  b = np.asarray(sampler.sample(params, cond, key).images)
  return config, prompts, a, b


def test_shipped_samples_shapes_and_determinism(shipped_samples):
  config, prompts, a, b = shipped_samples
  assert a.shape == (len(prompts), *config.image_size, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  # Not a constant image: the model draws something.
  assert a.std() > 10


def test_ocr_reads_a_target_word_in_shipped_samples(shipped_samples):
  from varrl_jax.rewards import ocr

  _, prompts, images, _ = shipped_samples
  engine = ocr.EasyOcrEngine()
  read = [{w.text.upper() for w in engine.read(img).words} for img in images]
  hits = [t for p, r in zip(prompts, read) for t in p.targets if t in r]
  assert hits, f'OCR read none of the targets: {read}'


def test_corrupt_shipped_copy_names_file_and_recipe(tmp_path):
  config = _tiny()
  broken = tmp_path / 'tiny'
  shutil.copytree(SHIPPED_TINY, broken)
  # Truncate every data file of the transformer.
  for d, _, fs in os.walk(broken / 'transformer'):
    for f in fs:
      if f not in ('_METADATA', '_CHECKPOINT_METADATA'):
        open(os.path.join(d, f), 'wb').close()
  model = build_model(config)
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_params(str(broken), model)
  msg = str(e.value)
  assert str(broken) in msg and '\n' not in msg
  assert 'varrl_jax.export' in msg and '--stage=tokenizer' in msg
  os.remove(broken / 'manifest.json')
  with pytest.raises(checkpoint.CheckpointError, match='manifest'):
    checkpoint.load_params(str(broken), model)
