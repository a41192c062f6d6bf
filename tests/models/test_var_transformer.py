"""The VAR family against the official code (``data/var_reference.npz``):
teacher-forced logits of every scale, class-conditional and null, with and
without shared AdaLN; the official sampler at top-k 1 (argmax, so RNG-free)
token for token; and our sampler's log-probs against our teacher-forced ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models import var_fixture
from varrl_jax import sampling
from varrl_jax.models.var_official import transformer_weights, weights
from varrl_jax.models.var_official.errors import ConversionError
from varrl_jax.policy import SamplingOptions

TOL = 1e-4
VARIANTS = [False, True]  # shared_aln
PREFIX = {False: 'var', True: 'varshared'}


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision('highest'):
    yield


@pytest.mark.parametrize('path', var_fixture.REFERENCES)
@pytest.mark.parametrize('shared', VARIANTS)
def test_teacher_forced_logits_match_official(shared, path):
  ref = var_fixture.reference(path)
  model, params = var_fixture.model_and_params(shared, path)
  tokens = jnp.asarray(ref['vae_idx_BL'], jnp.int32)
  inputs = model.teacher_inputs(params, tokens)
  np.testing.assert_allclose(inputs[:, 1:], ref['vae_var_input'], atol=TOL)
  labels = jnp.asarray(ref['label_B'], jnp.int32)  # reduced: [207, 1000 = null]
  null = jnp.full_like(labels, model.cfg.null_class)
  logits = model.logits(params['transformer'], {'label': labels}, inputs)
  want = ref[f'{PREFIX[shared]}_logits_BLV']
  assert logits.shape == want.shape
  err = float(np.abs(np.asarray(logits) - want).max())
  print(f'{path}: shared_aln={shared} max |logits - official| = {err:.2e}')
  assert err <= TOL, err
  # Not vacuous: a class and the null class give other logits.
  other = model.logits(params['transformer'], {'label': null}, inputs)
  assert float(np.abs(np.asarray(other) - want).max()) > 1e-2


@pytest.mark.parametrize('path', var_fixture.REFERENCES)
@pytest.mark.parametrize('shared', VARIANTS)
def test_greedy_sampler_matches_official_sampler(shared, path):
  """Their autoregressive_infer_cfg(cfg=4, top_k=1) against ours with the
  official linear CFG ramp: the same token at every position, the same image.
  Where their top-1 margin at some scale is below our float error (a near
  tie: the full d16 file has one), the scales before it."""
  ref = var_fixture.reference(path)
  p = PREFIX[shared]
  gaps = ref[f'{p}_ar_gap_S']
  model, params = var_fixture.model_and_params(shared, path)
  opts = SamplingOptions(cfg_scale=4.0, cfg_schedule='var', top_k=1)
  cond = model.encode_prompts([str(x) for x in ref['ar_label_B']])
  out = sampling.Sampler(model, opts).sample(params, cond, jax.random.key(0))
  tied = np.flatnonzero(gaps < 10 * TOL)
  if tied.size:
    end = int(model.schedule.offsets[tied[0]])
    assert tied[0] >= model.schedule.num_scales // 2, f'near tie at scale {tied[0]}'
    np.testing.assert_array_equal(
      np.asarray(out.tokens)[:, :end], ref[f'{p}_ar_idx_BL'][:, :end]
    )
    return
  np.testing.assert_array_equal(np.asarray(out.tokens), ref[f'{p}_ar_idx_BL'])
  # Their image is (x + 1) / 2 in [0, 1]; ours rounds the same to uint8.
  img = np.asarray(out.images).astype(np.float32) / 255.0
  want = ref[f'{p}_ar_img'].transpose(0, 2, 3, 1)
  assert float(np.abs(img - want).max()) <= 0.5 / 255 + TOL


@pytest.mark.parametrize('shared', VARIANTS)
def test_sampler_logprobs_equal_teacher_forced(shared):
  model, params = var_fixture.model_and_params(shared)
  opts = SamplingOptions(cfg_scale=4.0, cfg_schedule='var', top_k=20, top_p=0.95)
  s = sampling.Sampler(model, opts)
  cond = model.encode_prompts(['207', '3', '999', '0'])
  out = s.sample(params, cond, jax.random.key(1))
  lp = sampling.logprobs(model, params, cond, out.tokens, opts)
  assert float(jnp.abs(lp - out.logprobs).max()) <= TOL
  state = s.sample_prefix(params, cond, jax.random.key(1), 3)
  branched = s.branch(params, state, jax.random.key(2), 3, 2)
  cond2 = jax.tree.map(lambda x: np.repeat(x, 2, 0), cond)
  lp2 = sampling.logprobs(model, params, cond2, branched.tokens, opts)
  assert float(jnp.abs(lp2 - branched.logprobs).max()) <= TOL


def test_kv_cache_matches_recompute():
  model, params = var_fixture.model_and_params(False)
  s = sampling.Sampler(model, SamplingOptions(cfg_scale=1.5, cfg_schedule='var'))
  cond = model.encode_prompts(['1', '2'])
  a = s.sample(params, cond, jax.random.key(3))
  b = s.sample_recompute(params, cond, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


@pytest.mark.parametrize('shared', VARIANTS)
def test_state_dict_round_trip(shared):
  model, params = var_fixture.model_and_params(shared)
  vae, var = var_fixture.state_dicts(shared)
  back_vae, back_var = weights.state_dicts_from_params(model, params)
  assert set(back_var) == set(var)
  for k, v in var.items():
    if k in transformer_weights.expected_state_shapes(model.cfg):
      np.testing.assert_array_equal(back_var[k], v, err_msg=k)
  assert set(back_vae) - {'quantize.ema_vocab_hit_SV'} == set(vae)


@pytest.mark.parametrize(
  'edit, key, match',
  [
    (lambda sd: sd.pop('blocks.1.ffn.fc2.bias'), 'blocks.1.ffn.fc2.bias', 'missing'),
    (
      lambda sd: sd.update({'blocks.2.attn.q_bias': np.zeros(128)}),
      'blocks.2.attn.q_bias',
      'not a parameter',
    ),
    (
      lambda sd: sd.update({'head.weight': np.zeros((256, 64))}),
      'head.weight',
      r'shape \(256, 64\), expected \(256, 128\)',
    ),
  ],
)
def test_conversion_errors_name_file_and_key(edit, key, match):
  model, _ = var_fixture.model_and_params(False)
  _, var = var_fixture.state_dicts(False)
  edit(var)
  with pytest.raises(ConversionError, match=match) as e:
    transformer_weights.params_from_state_dict(var, model.cfg, 'var_d2.pth')
  assert str(e.value).startswith(f'var_d2.pth: {key}: ')
  assert '\n' not in str(e.value)


def test_class_prompts_are_validated():
  model, _ = var_fixture.model_and_params(False)
  np.testing.assert_array_equal(model.encode_prompts(['0', ' 999'])['label'], [0, 999])
  for bad in ('1000', '-1', 'goldfish', ''):
    with pytest.raises(
      ValueError, match='not a class id: the var family takes class ids 0..999'
    ):
      model.encode_prompts([bad])


# Parameter counts of the official constructors (VAR(depth=d, embed_dim=64 d,
# num_heads=d, shared_aln=d == 36, attn_l2_norm=True) and VQVAE(ch=160,
# V=4096, Cvae=32, share_quant_resi=4)), sum(p.numel() for p in
# m.parameters()), read off their code at commit 78b9539 (d36 at 512^2).
OFFICIAL_COUNTS = {
  16: 310_283_520,
  20: 600_917_136,
  24: 1_033_399_360,
  30: 2_010_020_356,
  36: 2_353_893_904,
}
OFFICIAL_VAE = 108_948_355


@pytest.mark.parametrize('depth', sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_the_official_models(depth):
  from varrl_jax.models import summary
  from varrl_jax.models.var_official import presets

  counts = summary.count_parameters(presets.official_config(depth))
  vae = sum(v for k, v in counts.items() if k.startswith('tokenizer'))
  var = sum(v for k, v in counts.items() if k.startswith('transformer'))
  assert (vae, var) == (OFFICIAL_VAE, OFFICIAL_COUNTS[depth])
