"""`python -m varrl_jax.convert --family=infinity`: a reduced random Infinity
written as their files (a training checkpoint nesting the transformer under
trainer.gpt_fsdp, the VAE under 'vae', the 8B's sharded safetensors, a tiny
Flan-T5 folder) -> our checkpoint whose parameters equal the originals, the
config read off the shapes, the T5 folder recorded; bad inputs give one line
naming the file and key and leave nothing behind."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.models import t5_fixture
from varrl_jax import checkpoint, cli
from varrl_jax.config import base_config
from varrl_jax.convert import official, torch_io
from varrl_jax.models.family import build_model
from varrl_jax.models.infinity import presets, schedules
from varrl_jax.models.infinity import transformer_weights as tw
from varrl_jax.models.infinity import vae_weights as vw

torch = pytest.importorskip('torch')
safetensors_torch = pytest.importorskip('safetensors.torch')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT_CHANNELS = 128  # = the T5's d_model; their text pool has Ct / 128 heads
CHUNKS = 2  # their block_chunks naming: block_chunks.c.module.j


def _config(patchify: bool):
  """A reduced Infinity: depth 4, width 64, 8 bits a token (8B-like: a 2-bit
  VAE under the 2x2 patchify), VAE ch 32 x (1, 2), their 1:1 '0.06M' grids."""
  c = base_config()
  c.model.family = 'infinity'
  ic = c.model.infinity
  ic.depth, ic.embed_dim, ic.num_heads = 4, 64, 4
  ic.text_channels, ic.text_maxlen, ic.text_len = TEXT_CHANNELS, 8, 8
  ic.spatial_patchify = patchify
  c.tokenizer.channels = (32, 64)
  c.tokenizer.num_res_blocks = 1
  c.tokenizer.latent_dim = 2 if patchify else 8
  c.tokenizer.downsample = 2
  c.scales = schedules.scale_schedule(1.0, '0.06M')
  c.image_size = (16 * (4 if patchify else 2),) * 2
  return c


def _originals(config, seed: int) -> dict:
  """Random float32 parameters of every leaf (shapes from eval_shape)."""
  model = build_model(config)
  shapes = nn.unbox(jax.eval_shape(model.init_boxed, jax.random.key(0)))
  leaves, tree = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  values = [rng.standard_normal(s.shape).astype(np.float32) for s in leaves]
  return jax.tree.unflatten(tree, values)


def _their_state_dicts(config, params):
  """(transformer, vae) state dicts as their code names them, with buffers."""
  model = build_model(config)
  tr = tw.state_dict_from_params(params['transformer'], model.cfg, CHUNKS)
  c = config.model.infinity.embed_dim
  for p in ['text_proj_for_sos.ca.'] + tw.block_prefixes(model.cfg, CHUNKS):
    for part in ('sa.', 'ca.') if p.startswith('block') else ('',):
      tr[p + part + 'zero_k_bias'] = np.zeros(c, np.float32)
  vae = vw.state_dict_from_params(params['tokenizer'], model.tokenizer)
  return tr, vae


def _torch(sd: dict) -> dict:
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('infinity')
  cfg2b, cfg8b = _config(False), _config(True)
  p2b, p8b = _originals(cfg2b, 0), _originals(cfg8b, 1)
  tr, vae = _their_state_dicts(cfg2b, p2b)
  # A full training checkpoint (their save_slim_model reads trainer.gpt_fsdp);
  # the optimizer state beside it must not be read as weights.
  torch.save(
    {
      'trainer': {
        'gpt_fsdp': _torch(tr),
        'gpt_fsdp_opt': {'state': {'0': torch.zeros(3)}},
      },
      'epoch': 3,
      'args': 'their argparse namespace',
    },
    d / 'ar-ckpt-last.pth',
  )
  torch.save(_torch(tr), d / 'infinity_reg.pth')  # as published: flat
  torch.save({'vae': _torch(vae)}, d / 'vae_d8.pth')
  # The 8B: a folder of bfloat16 safetensors shards + model.safetensors.index.json.
  tr8, vae8 = _their_state_dicts(cfg8b, p8b)
  shard_dir = d / 'infinity_8b_weights'
  shard_dir.mkdir()
  keys = sorted(tr8)
  weight_map = {}
  for i, part in enumerate((keys[::2], keys[1::2])):
    name = f'model-0000{i + 1}-of-00002.safetensors'
    safetensors_torch.save_file(
      {k: _torch(tr8)[k].to(torch.bfloat16) for k in part},
      shard_dir / name,
    )
    weight_map.update({k: name for k in part})
  (shard_dir / 'model.safetensors.index.json').write_text(
    json.dumps({'metadata': {}, 'weight_map': weight_map})
  )
  torch.save({'vae': _torch(vae8)}, d / 'vae_d2_patchify.pth')
  bf16 = lambda x: torch.from_numpy(x).to(torch.bfloat16).float().numpy()  # noqa: E731
  p8b_bf16 = {
    'tokenizer': p8b['tokenizer'],
    'transformer': jax.tree.map(bf16, p8b['transformer']),
  }
  return {
    'dir': d,
    'transformer': str(d / 'ar-ckpt-last.pth'),
    'transformer_flat': str(d / 'infinity_reg.pth'),
    'vae': str(d / 'vae_d8.pth'),
    'transformer_8b': str(shard_dir),
    'vae_8b': str(d / 'vae_d2_patchify.pth'),
    't5': t5_fixture.make_folder(d / 'flan-t5', d_model=TEXT_CHANNELS),
    'params_2b': p2b,
    'params_8b': p8b_bf16,
  }


def _assert_params_equal(got, want):
  got_flat = jax.tree_util.tree_flatten_with_path(got)[0]
  want_flat = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  assert len(got_flat) == len(want_flat) > 20
  for path, leaf in got_flat:
    np.testing.assert_array_equal(np.asarray(leaf), want_flat[path], err_msg=str(path))


def _load(out, config):
  return checkpoint.load_params(str(out), build_model(config))


def test_cli_converts_nested_checkpoint_with_inferred_config(files, tmp_path):
  out = tmp_path / 'ckpt'
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  args = [f'--transformer={files["transformer"]}', f'--vae={files["vae"]}']
  args += [f'--text_encoder={files["t5"]}', f'--out={out}']
  proc = subprocess.run(
    [sys.executable, '-m', 'varrl_jax.convert', '--family=infinity', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f'--config.init_checkpoint={out}' in proc.stdout
  assert f'--config.model.infinity.text_encoder={files["t5"]}' in proc.stdout
  m = json.loads((out / 'manifest.json').read_text())
  assert m['family'] == 'infinity' and m['parts'] == ['tokenizer', 'transformer']
  assert '--text_encoder=' in m['command']
  src = m['sources']
  for name in ('transformer', 'vae'):
    assert src[name]['sha256'] == torch_io.sha256_file(files[name])
    assert src[name]['bytes'] == os.path.getsize(files[name])
  t5 = src['text_encoder']
  assert t5['path'] == files['t5']
  assert [os.path.basename(f['path']) for f in t5['files']] == [
    'config.json',
    'spiece.model',
    'model.safetensors',
  ]
  for f in t5['files']:
    assert f['sha256'] == torch_io.sha256_file(f['path'])
  assert t5['bytes'] == sum(f['bytes'] for f in t5['files'])
  ic = m['config']['model']['infinity']
  assert ic['text_encoder'] == files['t5'] and not ic['spatial_patchify']
  assert (ic['preset'], ic['depth'], ic['embed_dim'], ic['num_heads']) == ('', 4, 64, 4)
  assert (ic['text_channels'], ic['text_maxlen'], ic['text_len']) == (128, 8, 8)
  assert m['config']['tokenizer']['channels'] == [32, 64]
  assert m['config']['tokenizer']['latent_dim'] == 8
  _assert_params_equal(_load(out, _config(False)), files['params_2b'])
  assert not [p for p in os.listdir(tmp_path) if 'partial' in p]


def test_sharded_bf16_8b_layout_with_patchify(files, tmp_path):
  """The folder of shards (or its index), the 2x2 patchify read off 4 d = bits."""
  for i, path in enumerate(
    (
      files['transformer_8b'],
      os.path.join(files['transformer_8b'], 'model.safetensors.index.json'),
    )
  ):
    out = tmp_path / f'ckpt{i}'
    m = official.convert(
      'infinity',
      str(out),
      'test',
      transformer=path,
      vae=files['vae_8b'],
      text_encoder=files['t5'],
    )
    ic = m['config']['model']['infinity']
    assert ic['spatial_patchify'] and m['config']['tokenizer']['latent_dim'] == 2
    shards = [os.path.basename(f['path']) for f in m['sources']['transformer']['files']]
    assert shards == [
      'model.safetensors.index.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
    ]
  _assert_params_equal(_load(out, _config(True)), files['params_8b'])


def test_config_given_and_wrong_family(files, tmp_path):
  """A flat state dict (infinity_2b_reg.pth) into the given config."""
  m = official.convert(
    'infinity',
    str(tmp_path / 'ckpt'),
    'test',
    _config(False),
    transformer=files['transformer_flat'],
    vae=files['vae'],
    text_encoder=files['t5'],
  )
  assert tuple(map(tuple, m['config']['scales'])) == schedules.scale_schedule(
    1.0, '0.06M'
  )
  assert m['config']['model']['infinity']['text_encoder'] == files['t5']
  _assert_params_equal(_load(tmp_path / 'ckpt', _config(False)), files['params_2b'])
  var = base_config()
  var.model.family = 'var'
  with pytest.raises(ValueError, match=r'model.family=.var.; --family=infinity'):
    official.convert(
      'infinity',
      str(tmp_path / 'o'),
      't',
      var,
      transformer=files['transformer'],
      vae=files['vae'],
      text_encoder=files['t5'],
    )


# Their model's parameter count (sum of numel of Infinity(...) as
# tools/run_infinity.py builds it, at commit 4c27bbb; VAE: their vae_model).
OFFICIAL_COUNTS = {
  'infinity_2b': (2_204_564_032, 110_118_051),
  'infinity_8b': (8_375_791_824, 81_624_209),
}


@pytest.mark.parametrize('name', ['infinity_2b', 'infinity_8b'])
def test_official_shapes_infer_the_config(name):
  """Their full-size key -> shape maps (nothing allocated: broadcast views)
  give configs/infinity_*.py's model, VAE and schedule back, at their
  parameter counts."""
  config = cli.load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))
  model = build_model(config)
  tr_shapes = tw.expected_state_shapes(model.cfg, 8)
  vae_shapes = vw.expected_state_shapes(model.tokenizer)
  counts = tuple(sum(map(np.prod, s.values())) for s in (tr_shapes, vae_shapes))
  assert counts == OFFICIAL_COUNTS[name]

  def fake(shapes):
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}

  got = presets.infer_from_state_dicts(
    fake(vae_shapes), 'vae.pth', fake(tr_shapes), 'infinity.pth'
  ).to_dict()
  want = config.to_dict()
  runtime = ('dtype', 'remat', 'attention')  # the config's choices, not shapes
  for section in ('image_size', 'scales', 'tokenizer', 'model'):
    a, b = got[section], want[section]
    if isinstance(a, dict):
      a = {k: v for k, v in a.items() if k not in runtime}
      b = {k: v for k, v in b.items() if k not in runtime}
    assert a == b, section
  assert got['sampling'] == presets.official_config(name).to_dict()['sampling']


def _error(files, tmp_path, **changes) -> str:
  paths = dict(
    transformer=files['transformer'], vae=files['vae'], text_encoder=files['t5']
  )
  paths.update(changes)
  with pytest.raises(ValueError) as e:
    official.convert('infinity', str(tmp_path / 'out'), 'test', **paths)
  message = str(e.value)
  assert '\n' not in message
  assert not (tmp_path / 'out').exists()
  return message


def test_errors_are_one_line_naming_file_and_key(files, tmp_path):
  tr, vae = _their_state_dicts(_config(False), files['params_2b'])
  bad = dict(tr)
  del bad['block_chunks.1.module.0.ffn.fc2.weight']
  torch.save(_torch(bad), tmp_path / 'missing.pth')
  msg = _error(files, tmp_path, transformer=str(tmp_path / 'missing.pth'))
  assert 'missing.pth: block_chunks.1.module.0.ffn.fc2.weight: missing' in msg
  bad = dict(tr, **{'block_chunks.0.module.1.sa.extra': np.zeros(3, np.float32)})
  torch.save(_torch(bad), tmp_path / 'extra.pth')
  msg = _error(files, tmp_path, transformer=str(tmp_path / 'extra.pth'))
  assert 'extra.pth: block_chunks.0.module.1.sa.extra: not a parameter' in msg
  bad = dict(vae)
  key = 'decoder.conv_in.conv.weight'
  bad[key] = np.zeros((64, 8, 1, 1), np.float32)
  torch.save({'vae': _torch(bad)}, tmp_path / 'vae_bad.pth')
  msg = _error(files, tmp_path, vae=str(tmp_path / 'vae_bad.pth'))
  assert f'vae_bad.pth: {key}: shape (64, 8, 1, 1), expected (64, 8, 3, 3)' in msg
  data = open(files['transformer'], 'rb').read()
  (tmp_path / 'truncated.pth').write_bytes(data[: len(data) // 2])
  assert 'truncated.pth' in _error(
    files, tmp_path, transformer=str(tmp_path / 'truncated.pth')
  )
  msg = _error(files, tmp_path, text_encoder=str(tmp_path / 'no_t5'))
  assert f'--text_encoder={tmp_path / "no_t5"}: no such directory' in msg
  no_sp = tmp_path / 't5_no_spiece'
  shutil.copytree(files['t5'], no_sp)
  os.remove(no_sp / 'spiece.model')
  msg = _error(files, tmp_path, text_encoder=str(no_sp))
  assert f'{no_sp / "spiece.model"}: no such SentencePiece model file' in msg
  msg = _error(files, tmp_path, text_encoder=None)
  assert msg == '--text_encoder is required for --family=infinity'
  empty = tmp_path / 'empty_folder'
  empty.mkdir()
  assert 'a folder with none of' in _error(files, tmp_path, transformer=str(empty))
  wide = t5_fixture.make_folder(tmp_path / 't5_wide', d_model=256)
  msg = _error(files, tmp_path, text_encoder=wide)
  assert 'config.json: d_model=256, but the transformer takes text_channels=128' in msg
  (tmp_path / 'out').mkdir()
  with pytest.raises(ValueError, match=r'--out=.* exists'):
    official.convert('infinity', str(tmp_path / 'out'), 't', transformer='x', vae='y')
  with pytest.raises(
    ValueError, match=r'--text_encoder is not a source of --family=var'
  ):
    official.convert(
      'var', str(tmp_path / 'o2'), 't', vae='a', transformer='b', text_encoder='c'
    )
