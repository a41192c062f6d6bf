"""`python -m varrl_jax.convert --family=var`: official state_dicts saved by
torch -> our checkpoint that `--config.init_checkpoint` loads, with a manifest;
bad files give one ``error:`` line naming the file and key, exit 2, and leave
nothing behind."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from tests.models import var_fixture
from varrl_jax import checkpoint
from varrl_jax.convert import official as convert_main
from varrl_jax.convert import torch_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = """
from tests.models import var_fixture


def get_config(arg=None):
  return var_fixture.config(arg == 'shared')
"""


def _save(sd: dict, path) -> str:
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, str(path))
  return str(path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Their reduced VAR as torch.save writes it (buffers included) + a config file."""
  d = tmp_path_factory.mktemp('official')
  vae, var = var_fixture.state_dicts()
  (d / 'var_config.py').write_text(CONFIG_FILE)
  return {
    'vae': _save(vae, d / 'vae.pth'),
    'transformer': _save(var, d / 'var_d2.pth'),
    'config': str(d / 'var_config.py'),
    'dir': d,
  }


def _run(*args, module='varrl_jax.convert'):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  family = ['--family=var'] if module == 'varrl_jax.convert' else []
  return subprocess.run(
    [sys.executable, '-m', module, *family, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_cli_converts_and_the_checkpoint_loads(files, tmp_path):
  out = tmp_path / 'ckpt'
  proc = _run(
    f'--vae={files["vae"]}',
    f'--transformer={files["transformer"]}',
    f'--out={out}',
    f'--config={files["config"]}',
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f'--config.init_checkpoint={out}' in proc.stdout
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['family'] == 'var' and manifest['parts'] == [
    'tokenizer',
    'transformer',
  ]
  assert manifest['sources']['transformer']['sha256'] == torch_io.sha256_file(
    files['transformer']
  )
  assert manifest['config']['model']['var']['depth'] == 2
  model, want = var_fixture.model_and_params()
  got = checkpoint.load_params(str(out), model, config=var_fixture.config().to_dict())
  flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
  flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  assert len(flat_got) == len(flat_want)
  for path, leaf in flat_got:
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_want[path]))
  assert not [p for p in os.listdir(tmp_path) if 'partial' in p]


def test_config_inferred_from_official_shapes():
  """d16 and d36-s shapes give configs/var.py's presets (no --config needed)."""
  from varrl_jax.models.family import build_model
  from varrl_jax.models.var_official import presets, weights

  for depth in (16, 36):
    want = presets.official_config(depth)
    model = build_model(want)
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0)))
    fake = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    vae, var = weights.state_dicts_from_params(model, fake)
    got = presets.infer_from_state_dicts(vae, 'vae.pth', var, f'var_d{depth}.pth')
    for section in ('image_size', 'scales', 'tokenizer', 'model'):
      assert got.to_dict()[section] == want.to_dict()[section] or (
        section == 'model'
        and {**got.model.var.to_dict(), 'embed_dim': 0, 'num_heads': 0}
        == want.model.var.to_dict()
      ), section


def _convert(files, out, **changes):
  return convert_main.convert(
    'var',
    str(out),
    'test',
    var_fixture.config(),
    vae=changes.get('vae', files['vae']),
    transformer=changes.get('transformer', files['transformer']),
  )


def test_missing_key_names_file_and_key(files, tmp_path):
  _, var = var_fixture.state_dicts()
  del var['blocks.1.attn.proj.weight']
  bad = _save(var, tmp_path / 'var_missing.pth')
  with pytest.raises(
    ValueError, match=r'var_missing.pth: blocks.1.attn.proj.weight: missing'
  ):
    _convert(files, tmp_path / 'out', transformer=bad)
  assert os.listdir(tmp_path) == ['var_missing.pth']


def test_wrong_shape_and_unexpected_key(files, tmp_path):
  vae, _ = var_fixture.state_dicts()
  vae['quant_conv.weight'] = np.zeros((32, 32, 1, 1), np.float32)
  bad = _save(vae, tmp_path / 'vae_bad.pth')
  with pytest.raises(ValueError, match=r'vae_bad.pth: quant_conv.weight: shape'):
    _convert(files, tmp_path / 'out', vae=bad)
  _, var = var_fixture.state_dicts()
  var['blocks.0.attn.extra'] = np.zeros(3, np.float32)
  bad = _save(var, tmp_path / 'var_extra.pth')
  with pytest.raises(
    ValueError, match=r'var_extra.pth: blocks.0.attn.extra: not a parameter'
  ):
    _convert(files, tmp_path / 'out', transformer=bad)


def test_cli_errors_are_one_line_exit_2_and_leave_nothing(files, tmp_path):
  data = open(files['transformer'], 'rb').read()
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(data[: len(data) // 2])
  text = tmp_path / 'notes.txt'
  text.write_text('not a checkpoint\n')
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'keep.txt').write_text('mine')
  cases = [
    ([f'--transformer={truncated}', f'--out={tmp_path / "o1"}'], 'truncated.pth'),
    ([f'--transformer={text}', f'--out={tmp_path / "o2"}'], 'notes.txt'),
    ([f'--transformer={files["transformer"]}', f'--out={existing}'], 'exists'),
  ]
  for args, needle in cases:
    proc = _run(f'--vae={files["vae"]}', f'--config={files["config"]}', *args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
  assert sorted(os.listdir(tmp_path)) == ['existing', 'notes.txt', 'truncated.pth']
  assert os.listdir(existing) == ['keep.txt']


def test_sample_class_ids_from_converted_checkpoint(files, tmp_path):
  """convert, then `varrl_jax.sample --prompt=207 --prompt=3`: samples.npz
  holds every image's token ids in schedule order, which decode to its image."""
  out = tmp_path / 'ckpt'
  assert (
    _run(
      f'--vae={files["vae"]}',
      f'--transformer={files["transformer"]}',
      f'--out={out}',
      f'--config={files["config"]}',
    ).returncode
    == 0
  )
  work = tmp_path / 'samples'
  args = (f'--config={files["config"]}', f'--config.init_checkpoint={out}')
  proc = _run(
    *args,
    '--prompt=207',
    '--prompt=3',
    '--num_per_prompt=2',
    '--ocr=none',
    f'--workdir={work}',
    module='varrl_jax.sample',
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  with np.load(work / 'samples.npz') as z:
    tokens, images, prompts = z['tokens'], z['images'], z['prompts']
    np.testing.assert_array_equal(
      z['scale_index'],
      [0] + [1] * 4 + [2] * 9 + [3] * 16 + [4] * 25 + [5] * 36 + [6] * 64,
    )
  assert tokens.shape == (4, 155) and images.shape == (4, 128, 128, 3)
  assert list(prompts) == ['207', '207', '3', '3']
  model, params = var_fixture.model_and_params()
  with jax.default_matmul_precision('highest'):
    decoded = np.asarray(model.decode_tokens(params, tokens))
  assert np.abs(decoded.astype(int) - images.astype(int)).max() <= 1
  assert (work / 'samples.png').exists()
  bad = _run(
    *args,
    '--prompt=goldfish',
    '--ocr=none',
    f'--workdir={work}',
    module='varrl_jax.sample',
  )
  errors = [line for line in bad.stderr.splitlines() if line.startswith('error:')]
  assert bad.returncode == 2 and len(errors) == 1 and 'not a class id' in errors[0]
