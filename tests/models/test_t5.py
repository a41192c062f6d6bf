"""The Flax T5 encoder, its loader, tokenizer and prompt cache against
transformers (run here on tiny random models saved with ``save_pretrained``)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.t5_fixture import hf_config as _hf_config
from tests.models.t5_fixture import train_spiece as _train_spiece
from varrl_jax.models import t5 as t5_lib
from varrl_jax.models import t5_embedder, t5_tokenizer, t5_weights
from varrl_jax.models.var_official.errors import ConversionError

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
spm = pytest.importorskip('sentencepiece')

PROMPTS = [
  'A sign that says "OPEN"',
  'Hello,  world!  ',
  '"quoted" text: \'x\' - é ü 中 ＡＢＣ',
  '',
  '  leading\tand\ntrailing  ',
  'neon </s> <unk> <extra_id_0> x <extra_id_12>',
  'a poster reading "SALE 50% OFF", with "NEW" below it.',
]


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """{'gated': full T5ForConditionalGeneration + spiece.model, 'relu': an
  encoder-only T5 1.0 with few buckets (the log-bucket cap is reached)}."""
  root = tmp_path_factory.mktemp('t5')
  torch.manual_seed(0)
  gated = transformers.T5ForConditionalGeneration(_hf_config()).eval()
  gated.save_pretrained(root / 'gated')
  _train_spiece(root / 'gated' / 'spiece.model')
  relu_cfg = _hf_config(
    feed_forward_proj='relu',
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
    tie_word_embeddings=True,
  )
  relu = transformers.T5EncoderModel(relu_cfg).eval()
  relu.save_pretrained(root / 'relu')
  return {'gated': (root / 'gated', gated), 'relu': (root / 'relu', relu)}


def _hf_forward(model, ids, mask):
  with torch.no_grad():
    out = model.encoder(  # T5Stack of T5ForConditionalGeneration / T5EncoderModel
      input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)
    )
  return out.last_hidden_state.float().numpy()


def _random_batch(seed=0, b=3, length=24, vocab=220):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, size=(b, length)).astype(np.int32)
  lengths = np.array([length, 5, 17])[:b]
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return ids * mask, mask


# --- model ----------------------------------------------------------------------


@pytest.mark.parametrize('buckets, distance', [(32, 128), (8, 12), (16, 20), (10, 17)])
def test_relative_position_buckets_match_transformers(buckets, distance):
  ours = t5_lib.relative_position_buckets(300, 300, buckets, distance)
  rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
  theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
    rel, bidirectional=True, num_buckets=buckets, max_distance=distance
  )
  np.testing.assert_array_equal(ours, theirs.numpy())


@pytest.mark.parametrize('variant', ['gated', 'relu'])
def test_encoder_matches_transformers(folders, variant):
  folder, model = folders[variant]
  cfg, params = t5_weights.load_t5_encoder(folder)
  assert cfg.feed_forward_proj == ('gated-gelu' if variant == 'gated' else 'relu')
  ids, mask = _random_batch()
  ours = t5_lib.T5Encoder(cfg).apply({'params': params}, ids, mask)
  theirs = _hf_forward(model, ids, mask)
  assert ours.dtype == jnp.float32
  # Padded positions too: transformers computes them the same way.
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
  assert np.abs(theirs).max() > 0.1  # not a trivially small output


def test_padding_does_not_change_real_tokens(folders):
  cfg, params = t5_weights.load_t5_encoder(folders['gated'][0])
  enc = t5_lib.T5Encoder(cfg)
  ids, mask = _random_batch(b=2, length=12)
  short = enc.apply({'params': params}, ids[:, :12], mask[:, :12])
  ids40, mask40 = (np.pad(a, ((0, 0), (0, 28))) for a in (ids, mask))
  long = enc.apply({'params': params}, ids40, mask40)
  for b, n in enumerate(mask.sum(1)):
    np.testing.assert_allclose(long[b, :n], short[b, :n], atol=1e-5)


def test_bfloat16_compute_stays_close(folders):
  folder, model = folders['gated']
  cfg, params = t5_weights.load_t5_encoder(folder, dtype=jnp.bfloat16)
  ids, mask = _random_batch()
  ours = np.asarray(t5_lib.T5Encoder(cfg).apply({'params': params}, ids, mask))
  theirs = _hf_forward(model, ids, mask)
  valid = mask.astype(bool)
  assert np.abs(ours[valid] - theirs[valid]).max() < 0.1


def test_params_have_logical_axes():
  cfg = t5_lib.T5Config(
    vocab_size=16, d_model=8, d_kv=2, d_ff=12, num_layers=1, num_heads=4
  )
  ids = jnp.zeros((1, 4), jnp.int32)
  boxed = t5_lib.T5Encoder(cfg).init(jax.random.key(0), ids)['params']
  specs = jax.tree.map(lambda x: x.names, boxed, is_leaf=lambda x: hasattr(x, 'names'))
  assert specs['token_embed'] == ('text_vocab', 'embed')
  assert specs['block_0']['attn']['q']['kernel'] == ('embed', 'heads', 'kv')
  assert specs['block_0']['attn']['o']['kernel'] == ('heads', 'kv', 'embed')
  assert specs['block_0']['mlp']['wo']['kernel'] == ('mlp', 'embed')


# --- loader -----------------------------------------------------------------------


def test_other_checkpoint_formats_load_the_same(folders, tmp_path):
  folder, model = folders['gated']
  _, ref = t5_weights.load_t5_encoder(folder)
  sharded = tmp_path / 'sharded'
  model.save_pretrained(sharded, max_shard_size='20KB')
  assert os.path.exists(sharded / 'model.safetensors.index.json')
  binary = tmp_path / 'bin'
  binary.mkdir()
  shutil.copy(folder / 'config.json', binary)
  torch.save(model.state_dict(), binary / 'pytorch_model.bin')
  for other in (sharded, binary):
    _, params = t5_weights.load_t5_encoder(other)
    jax.tree.map(np.testing.assert_array_equal, params, ref)


def _folder_with(tmp_path, folders, edit):
  """A copy of the gated folder whose state dict went through ``edit``."""
  from safetensors.numpy import load_file, save_file

  src = folders['gated'][0]
  dst = tmp_path / 'edited'
  shutil.copytree(src, dst)
  sd = load_file(dst / 'model.safetensors')
  edit(sd)
  save_file(sd, dst / 'model.safetensors')
  return dst


_Q0 = 'encoder.block.0.layer.0.SelfAttention.q.weight'


@pytest.mark.parametrize(
  'edit, match',
  [
    (
      lambda sd: sd.update({_Q0: np.zeros((32, 31), np.float32)}),
      rf'{_Q0}: shape \(32, 31\), expected \(32, 32\)',
    ),
    (lambda sd: sd.pop(_Q0), rf'{_Q0}: missing'),
    (
      lambda sd: sd.update({'encoder.extra.weight': np.zeros(2, np.float32)}),
      'encoder.extra.weight: not a parameter',
    ),
    (lambda sd: sd.pop('shared.weight'), 'shared.weight: missing'),
  ],
)
def test_bad_state_dict_is_one_line_naming_file_and_key(tmp_path, folders, edit, match):
  folder = _folder_with(tmp_path, folders, edit)
  with pytest.raises(ConversionError, match=match) as e:
    t5_weights.load_t5_encoder(folder)
  assert str(e.value).startswith(str(folder / 'model.safetensors'))
  assert '\n' not in str(e.value)


def test_missing_files(tmp_path, folders):
  with pytest.raises(ConversionError, match='nope: folder: no such directory'):
    t5_weights.load_t5_encoder(tmp_path / 'nope')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ConversionError, match='config.json: no such file'):
    t5_weights.load_t5_encoder(empty)
  shutil.copy(folders['gated'][0] / 'config.json', empty)
  with pytest.raises(ConversionError, match='weights: none of model.safetensors'):
    t5_weights.load_t5_encoder(empty)
  with pytest.raises(FileNotFoundError, match='spiece.model: no such'):
    t5_tokenizer.T5Tokenizer.from_folder(empty)


def test_bad_config_field(tmp_path, folders):
  folder = tmp_path / 'cfg'
  shutil.copytree(folders['gated'][0], folder)
  d = json.loads((folder / 'config.json').read_text())
  d['feed_forward_proj'] = 'gated-silu'
  (folder / 'config.json').write_text(json.dumps(d))
  with pytest.raises(
    ConversionError, match='config.json: feed_forward_proj:.*gated-silu'
  ):
    t5_weights.load_t5_encoder(folder)


# --- tokenizer ----------------------------------------------------------------------


def test_tokenizer_matches_transformers(folders):
  folder = folders['gated'][0]
  theirs = transformers.T5Tokenizer.from_pretrained(str(folder), legacy=True)
  ours = t5_tokenizer.T5Tokenizer.from_folder(folder)
  assert ours.vocab_size == len(theirs)
  for p in PROMPTS:
    assert ours.encode(p) == theirs(p)['input_ids'], p
  # Infinity's call, at max_length 8 so that long prompts are truncated.
  want = theirs(PROMPTS, max_length=8, padding='max_length', truncation=True)
  ids, mask = ours(PROMPTS, max_length=8)
  np.testing.assert_array_equal(ids, want['input_ids'])
  np.testing.assert_array_equal(mask, want['attention_mask'])


# --- prompt cache -------------------------------------------------------------------


def test_prompt_embedder_matches_the_infinity_pipeline(folders):
  """Their tokenizer (max_length padding) + their encoder vs ours, cached."""
  folder, model = folders['gated']
  emb = t5_embedder.PromptEmbedder.from_folder(folder, max_length=32)
  theirs_tok = transformers.T5Tokenizer.from_pretrained(str(folder), legacy=True)
  tok = theirs_tok(
    PROMPTS, max_length=32, padding='max_length', truncation=True, return_tensors='np'
  )
  want = _hf_forward(model, tok['input_ids'], tok['attention_mask'])
  lens = tok['attention_mask'].sum(1)

  out = emb(PROMPTS)
  assert out.embeddings.shape == (len(PROMPTS), 32, 32)
  np.testing.assert_array_equal(out.lengths, lens)
  np.testing.assert_array_equal(out.mask, tok['attention_mask'].astype(bool))
  for b, n in enumerate(lens):
    np.testing.assert_allclose(out.embeddings[b, :n], want[b, :n], atol=1e-4, rtol=0)
    assert not out.embeddings[b, n:].any()
  count = len(PROMPTS)  # distinct prompts: one encoder run each
  assert (emb.encoder_calls, emb.encoded_prompts) == (count, count)

  again = emb(PROMPTS[::-1] + PROMPTS[:2])
  assert emb.encoder_calls == count  # all cached: the encoder did not run
  np.testing.assert_array_equal(again.embeddings[: len(PROMPTS)], out.embeddings[::-1])

  emb(['a brand new prompt', PROMPTS[0]])
  assert (emb.encoder_calls, emb.encoded_prompts) == (count + 1, count + 1)

  kv, lens_c, cu, ltext = t5_embedder.to_compact(out)
  assert kv.shape == (lens.sum(), 32) and ltext == lens.max() and lens_c == list(lens)
  np.testing.assert_array_equal(cu, np.concatenate([[0], np.cumsum(lens)]))
  np.testing.assert_array_equal(kv[cu[2] : cu[3]], out.embeddings[2, : lens[2]])


def test_prompt_embedder_lru_and_length(folders):
  emb = t5_embedder.PromptEmbedder.from_folder(
    folders['gated'][0], max_length=16, cache_size=2
  )
  first = emb(['a', 'b'], length=10)
  assert first.embeddings.shape[1] == 10
  emb(['c'])  # evicts 'a', the least recently used
  assert len(emb) == 2
  calls = emb.encoder_calls
  again = emb(['b'], length=10)
  assert emb.encoder_calls == calls
  np.testing.assert_array_equal(again.embeddings[0], first.embeddings[1])
  emb(['a'])
  assert emb.encoder_calls == calls + 1
  with pytest.raises(ValueError, match='tokens > length 3'):
    emb(['a longer prompt with many words'], length=3)
