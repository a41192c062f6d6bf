"""python -m varrl_jax.export: a bfloat16 copy that loads back as float32."""

import jax
import numpy as np
import pytest

from varrl_jax import checkpoint, export


def test_export_round_trips_through_bfloat16(toy, tmp_path):
  config, model, params = toy
  src = checkpoint.save_params(
    str(tmp_path / 'src'), params, {'command': 'make src', 'config': config.to_dict()}
  )
  export.export(config, src, str(tmp_path / 'dst'), 'bfloat16', {}, 'make dst')
  manifest = checkpoint.read_manifest(str(tmp_path / 'dst'))
  assert manifest['stored_dtype'] == 'bfloat16'
  assert manifest['recreate'] == ['make src', 'make dst']
  loaded = checkpoint.load_params(str(tmp_path / 'dst'), model)
  for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    assert x.dtype == y.dtype  # cast back to the config's dtype on load
    want = np.asarray(y.astype(jax.numpy.bfloat16).astype(y.dtype))
    np.testing.assert_array_equal(np.asarray(x), want)


def test_export_swaps_in_a_fine_tuned_decoder_only(toy, tmp_path):
  config, model, params = toy
  src = checkpoint.save_params(
    str(tmp_path / 'src'), params, {'command': 'make src', 'recipe': ['a', 'b']}
  )
  tok = params['tokenizer']
  decoder = jax.tree.map(lambda x: x + 0.25, tok['params']['decoder'])
  tuned = {**tok, 'params': {**tok['params'], 'decoder': decoder}}
  ft = checkpoint.save_params(
    str(tmp_path / 'ft'), {'tokenizer': tuned}, {'recipe': ['a', 'tune']}
  )
  record = export.export(
    config, src, str(tmp_path / 'dst'), 'float32', {}, 'make dst', tokenizer=ft
  )
  assert record['recreate'] == ['a', 'b', 'tune', 'make dst']
  assert record['decoder_from'] == ft
  loaded = checkpoint.load_params(str(tmp_path / 'dst'), model)
  for got, want in zip(jax.tree.leaves(loaded['tokenizer']), jax.tree.leaves(tuned)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for got, want in zip(
    jax.tree.leaves(loaded['transformer']), jax.tree.leaves(params['transformer'])
  ):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

  # A tokenizer whose codebook moved gives other ids: refused, naming it.
  moved = {
    **tok,
    'params': {**tok['params'], 'codebook': tok['params']['codebook'] + 1},
  }
  bad = checkpoint.save_params(str(tmp_path / 'bad'), {'tokenizer': moved}, {})
  with pytest.raises(checkpoint.CheckpointError, match='codebook'):
    export.export(
      config, src, str(tmp_path / 'dst2'), 'float32', {}, 'x', tokenizer=bad
    )
