"""Both official VAR state_dicts <-> our ``{'tokenizer', 'transformer'}`` params.

The VQ-VAE part is `vqvae_weights`, the transformer part
`transformer_weights`; this module joins them for the converter and tests.
"""

from __future__ import annotations

import numpy as np

from varrl_jax.models.var_official import transformer_weights, vqvae_weights


def params_from_state_dicts(
  model, vae_sd: dict, vae_source: str, var_sd: dict, var_source: str
) -> dict:
  """Their two state_dicts -> our params; `ConversionError` names file and key."""
  return {
    'tokenizer': vqvae_weights.vqvae_params_from_state_dict(
      vae_sd, model.tokenizer, vae_source
    ),
    'transformer': transformer_weights.params_from_state_dict(
      var_sd, model.cfg, var_source
    ),
  }


def state_dicts_from_params(model, params: dict) -> tuple[dict, dict]:
  """(vae state_dict, var state_dict) with their keys; the VAR buffers are
  added so their strict ``load_state_dict`` accepts it."""
  vae = vqvae_weights.vqvae_state_dict_from_params(params['tokenizer'], model.tokenizer)
  var = transformer_weights.state_dict_from_params(params['transformer'], model.cfg)
  sched = model.schedule
  level = sched.scale_index.astype(np.int64)[None]
  var['lvl_1L'] = level
  allowed = level[0][:, None] >= level[0][None, :]
  var['attn_bias_for_masking'] = np.where(allowed, 0.0, -np.inf).astype(np.float32)[
    None, None
  ]
  for i in range(model.cfg.depth):
    var[f'blocks.{i}.attn.zero_k_bias'] = np.zeros(model.cfg.embed_dim, np.float32)
  return vae, var
