"""python -m varrl_jax.export: a bfloat16 copy that loads back as float32."""

import jax
import numpy as np

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
