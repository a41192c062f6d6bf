"""The reduced official VAR of ``data/var_reference.npz`` (tools/var_reference.py):
its config, its weights (regenerated from the recorded shapes by
`random_state_dict`, seed 0) converted to our params, and the reference.

``VARRL_VAR_REFERENCE=PATH`` adds another reference file written by the same
tool (e.g. ``--full``, the official d16 size) to the parity tests."""

from __future__ import annotations

import functools
import json
import os
import pathlib

import numpy as np

from varrl_jax.config import base_config
from varrl_jax.convert.random_state import random_state_dict
from varrl_jax.models.family import build_model
from varrl_jax.models.var_official import weights

REF_PATH = str(pathlib.Path(__file__).parent / 'data' / 'var_reference.npz')
REFERENCES = [REF_PATH] + (
  [os.environ['VARRL_VAR_REFERENCE']] if os.environ.get('VARRL_VAR_REFERENCE') else []
)


@functools.cache
def reference(path: str = REF_PATH) -> dict:
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def config(shared: bool = False, path: str = REF_PATH):
  """Our config of the reference's VAR (reduced: 7 scales at 128^2, depth 2)."""
  ref = json.loads(str(reference(path)['config']))
  vae, var = ref['vae'], ref['varshared' if shared else 'var']
  c = base_config()
  c.model.family = 'var'
  c.image_size = (ref['image_size'],) * 2
  c.scales = tuple((p, p) for p in vae['v_patch_nums'])
  c.tokenizer.downsample = 16
  c.tokenizer.channels = tuple(vae['ch'] * m for m in (1, 1, 2, 2, 4))
  c.tokenizer.num_res_blocks = 2
  c.tokenizer.latent_dim = vae['z_channels']
  c.tokenizer.codebook_size = vae['vocab_size']
  c.tokenizer.phi_count = vae['share_quant_resi']
  c.tokenizer.phi_ratio = 0.5
  c.model.var.depth = var['depth']
  c.model.var.embed_dim = var['embed_dim']
  c.model.var.num_heads = var['num_heads']
  c.model.var.mlp_ratio = var['mlp_ratio']
  c.model.var.num_classes = var['num_classes']
  c.model.var.shared_aln = var['shared_aln']
  return c


def state_dicts(shared: bool = False, path: str = REF_PATH) -> tuple[dict, dict]:
  """Their two state_dicts (parameters by the recipe, buffers as recorded)."""
  ref = reference(path)

  def shapes(name):
    return {k: tuple(v[0]) for k, v in json.loads(str(ref[name])).items()}

  vae = random_state_dict(shapes('param_shapes_vae'), seed=0)
  var = random_state_dict(shapes(f'param_shapes_{"varshared" if shared else "var"}'), 0)
  for key, shape in shapes('buffer_shapes_var').items():
    var[key] = np.zeros(shape, np.float32)
  return vae, var


@functools.cache
def model_and_params(shared: bool = False, path: str = REF_PATH):
  model = build_model(config(shared, path))
  vae, var = state_dicts(shared, path)
  return model, weights.params_from_state_dicts(model, vae, 'vae.pth', var, 'var.pth')
