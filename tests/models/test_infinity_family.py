"""The infinity family through the family interface: Flan-T5 prompts, bitwise
tokens, CFG with the learned null text, the sampler's log-probs against
teacher forcing, and the paper's method through `varrl_jax.train` (a tiny
random model; the parts' parity with the official code is in
test_infinity_transformer.py / test_infinity_vae.py / test_t5.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models import t5_fixture
from varrl_jax import sampling
from varrl_jax.config import base_config
from varrl_jax.models.family import build_model
from varrl_jax.models.infinity import family as inf_family
from varrl_jax.policy import SamplingOptions
from varrl_jax.rl import lora as lora_lib
from varrl_jax.writers import read_jsonl

PROMPTS = ['a sign that says "OPEN"', 'a red fox', 'a poster reading "SALE"']


@pytest.fixture(scope='module')
def t5_folder(tmp_path_factory):
  return t5_fixture.make_folder(tmp_path_factory.mktemp('t5') / 'flan', d_model=128)


def _config(t5_folder: str):
  c = base_config()
  c.model.family = 'infinity'
  c.image_size = (64, 64)
  c.scales = ((1, 1), (2, 2), (4, 4))  # their 1:1 grids, up to 64 / 16
  c.tokenizer.downsample = 16
  c.tokenizer.channels = (32,) * 5
  c.tokenizer.num_res_blocks = 1
  c.tokenizer.latent_dim = 8  # bits per token
  c.model.infinity.depth = 2
  c.model.infinity.embed_dim = 64
  c.model.infinity.num_heads = 4
  c.model.infinity.text_encoder = t5_folder
  c.model.infinity.text_channels = 128
  c.model.infinity.text_len = 16
  c.model.infinity.text_maxlen = 16
  return c


@pytest.fixture(scope='module')
def model_params(t5_folder):
  model = build_model(_config(t5_folder))
  return model, model.init(jax.random.key(0))


def test_prompts_become_t5_embeddings_and_null_rows_keep_their_length(model_params):
  model, params = model_params
  cond = model.encode_prompts(PROMPTS)
  assert cond['text'].shape == (3, 16, 128) and cond['mask'].dtype == bool
  lengths = cond['mask'].sum(1)
  assert len(set(lengths.tolist())) > 1  # prompts of different lengths
  assert not cond['null'].any()
  # Padding positions are zero, valid ones are the encoder's output.
  assert np.all(cond['text'][~cond['mask']] == 0)
  assert model.embedder.encoder_calls == 3
  model.encode_prompts(PROMPTS[:2])  # cached: no second encoder run
  assert model.embedder.encoder_calls == 3
  # Encoded alone, a prompt gets the very same numbers (resume after a restart).
  fresh = build_model(_config(model.text_encoder))
  np.testing.assert_array_equal(
    fresh.encode_prompts(PROMPTS[1:2])['text'][0], cond['text'][1]
  )

  both = model.with_null(cond)
  np.testing.assert_array_equal(both['mask'][3:], cond['mask'])
  np.testing.assert_array_equal(np.asarray(both['null']), [0, 0, 0, 1, 1, 1])
  # A null row is their cfg_uncond[:len] over the prompt's valid tokens.
  tr = params['transformer']
  inputs = model.teacher_inputs(params, model.empty_tokens(6))
  got = model.logits(tr, both, inputs)
  null_text = model.transformer.apply(
    tr, jnp.asarray(cond['mask']), method=model.transformer.null_text
  )
  want = model.transformer.apply(tr, null_text, jnp.asarray(cond['mask']), inputs[3:])
  np.testing.assert_allclose(got[3:], want, atol=1e-5)
  assert not np.allclose(got[:3], got[3:], atol=1e-3)


def test_missing_text_encoder_is_one_error_naming_the_key(t5_folder):
  c = _config(t5_folder)
  c.model.infinity.text_encoder = ''
  with pytest.raises(inf_family.TextEncoderError, match='model.infinity.text_encoder'):
    build_model(c).encode_prompts(['x'])
  c.model.infinity.text_encoder = '/no/such/flan'
  with pytest.raises(inf_family.TextEncoderError, match='/no/such/flan'):
    build_model(c).encode_prompts(['x'])


@pytest.mark.parametrize('cfg_scale', [1.0, 3.0])
def test_sampler_logprobs_equal_teacher_forcing(model_params, cfg_scale):
  model, params = model_params
  opts = SamplingOptions(cfg_scale=cfg_scale, temperature=0.5, top_k=900, top_p=0.97)
  cond = model.encode_prompts(PROMPTS)
  out = sampling.Sampler(model, opts).sample(params, cond, jax.random.key(1))
  assert out.tokens.shape == (3, 21, 8) and out.tokens.dtype == jnp.int8
  assert set(np.unique(np.asarray(out.tokens))) <= {0, 1}
  assert out.images.shape == (3, 64, 64, 3) and out.images.dtype == jnp.uint8
  teacher = sampling.logprobs(model, params, cond, out.tokens, opts)
  np.testing.assert_allclose(out.logprobs, teacher, atol=1e-4)
  # A token's log-prob is the sum of its 8 bits': well below one bit's.
  assert float(jnp.min(out.logprobs)) < np.log(0.5)


def test_tokens_follow_the_tokenizer_scale_by_scale(model_params):
  """The family's flat [B, L, d] tokens are the BSQ VAE's per-scale bits in
  schedule order, and decode to the VAE's own picture of them."""
  from varrl_jax.models.infinity import bsq_quantizer as bq
  from varrl_jax.models.infinity import bsq_vae

  model, params = model_params
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
  tokens = model.encode_images(params, images)
  assert tokens.shape == (2, 21, 8) and tokens.dtype == jnp.int8
  x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
  bits, _, _ = model.tokenizer.apply(
    params['tokenizer'],
    x,
    model.schedule.grids,
    method=bsq_vae.BSQVAE.encode_to_tokens,
  )
  for s, want in enumerate(bits):
    np.testing.assert_array_equal(model.scale_ids(tokens, s), want)
  img = model.tokenizer.apply(
    params['tokenizer'], bits, method=bsq_vae.BSQVAE.decode_tokens
  )
  np.testing.assert_array_equal(model.decode_tokens(params, tokens), bq.to_uint8(img))


@pytest.mark.parametrize('lora_rank', [0, 4])
def test_the_full_method_trains_through_train(t5_folder, tmp_path, lora_rank):
  from varrl_jax import checkpoint, train

  c = _config(t5_folder)
  c.rl.lora.rank = lora_rank
  c.rl.prompts = 'generated:n=40,regions=2..3,seed=0'
  c.rl.rewards = 'jpeg_compressibility'
  c.rl.mode = 'full'
  c.rl.prompts_per_update = 2
  c.rl.group_size = 2
  c.rl.rollout_chunks = 1
  c.rl.vmr.m = '1'
  c.rl.vmr.num_branches = 2
  c.rl.vmr.prefix_updates, c.rl.vmr.suffix_updates = 1, 1
  c.rl.num_updates = 2
  c.rl.lr = 1e-3
  c.rl.heldout_prompts = 4
  c.sampling.cfg_scale = 3.0
  c.sampling.temperature = 0.5
  c.eval.num_prompts = 2
  c.eval.batch_size = 2
  c.eval.grid_images = 2
  result = train.train(c, str(tmp_path))
  records = read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert [r['phase/prefix'] for r in records] == [1.0, 0.0]
  for r in records:
    assert np.isfinite(r['train/loss']) and r['reward/std'] > 0
    assert {f'scale{s}/kl' for s in range(3)} <= set(r)
  assert result['after'].n_images == 2
  manifest = checkpoint.read_manifest(str(tmp_path / 'checkpoints' / 'final'))
  if lora_rank:
    # The default targets adapt Infinity's attention and MLP kernels.
    assert manifest['lora']['rank'] == 4 and 'lora' in manifest['parts']
    model = build_model(c)
    lora = lora_lib.for_model(model, 4, 16.0, c.rl.lora.targets)
    assert {'/'.join(t.path[2:]) for t in lora.targets} == {
      'sa/qkv/kernel', 'sa/proj/kernel', 'ca/q/kernel', 'ca/kv_proj/kernel',
      'ca/proj/kernel', 'fc1/kernel', 'fc2/kernel',
    }  # fmt: skip
  else:
    assert 'lora' not in manifest['parts']


def test_text_encoder_is_found_along_the_checkpoint_lineage(t5_folder, tmp_path):
  """An RL checkpoint of a run that relied on the converted checkpoint's
  recorded Flan-T5 folder still finds it (one manifest further back)."""
  import json

  def manifest(name: str, text_encoder: str, init: str = '') -> str:
    path = tmp_path / name
    path.mkdir()
    config = {'model': {'infinity': {'text_encoder': text_encoder}}}
    config['init_checkpoint'] = init
    (path / 'manifest.json').write_text(json.dumps({'parts': [], 'config': config}))
    return str(path)

  converted = manifest('converted', t5_folder)
  rl_run = manifest('rl_final', '', init=converted)
  c = _config('')
  c.init_checkpoint = rl_run
  assert build_model(c)._converted_text_encoder() == t5_folder
  c.init_checkpoint = manifest('orphan', '')
  with pytest.raises(inf_family.TextEncoderError, match='text_encoder is empty'):
    build_model(c).encode_prompts(['x'])
