"""Shared test settings and the toy model every model test uses.

XLA's CPU backend spends most of a small program's compile time in LLVM
optimisation; tests trade that for faster compiles (results are unaffected
beyond float rounding, which every tolerance here allows for).
"""

import atexit
import os
import shutil
import tempfile

# Deterministic GPU reductions (scatter-adds of embedding gradients are
# atomics otherwise): the determinism tests compare bits. Ignored on CPU.
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '')
  + ' --xla_backend_optimization_level=0 --xla_gpu_deterministic_ops=true'
).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Exact float32 products everywhere: on GPUs the default is TF32, whose
# ~1e-3 rounding would mask the 1e-4 equalities the tests prove (sampler vs
# teacher-forced log-probs, cache vs recompute). A no-op on CPU.
jax.config.update('jax_default_matmul_precision', 'highest')

# A compilation cache private to this test session: many tests rebuild the
# same jitted programs (each `train.train` call makes new closures), and a
# cache hit skips XLA's compile. Measured: tests/rl/test_loop.py 209 s with
# it against ~380 s without. A pytest subprocess (tests/test_sharding.py)
# loads this file and gets its own; other subprocesses run without one.
_XLA_CACHE = tempfile.mkdtemp(prefix='varrl_jax_tests_xla_cache_')
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update('jax_compilation_cache_dir', _XLA_CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

from varrl_jax.config import base_config  # noqa: E402


def toy_config():
  """16x32 images, 4x downsampling, 3 scales (2 + 8 + 32 = 42 tokens)."""
  c = base_config()
  c.image_size = (16, 32)
  c.scales = ((1, 2), (2, 4), (4, 8))
  c.tokenizer.downsample = 4
  c.tokenizer.channels = (8, 16, 16)
  c.tokenizer.latent_dim = 8
  c.tokenizer.codebook_size = 64
  c.model.num_layers = 2
  c.model.d_model = 32
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 64
  c.model.text_len = 96
  return c


@pytest.fixture(scope='session')
def toy():
  """(config, model, params) of the toy model, built once per session."""
  from varrl_jax.models.family import build_model

  config = toy_config()
  model = build_model(config)
  params = model.init(jax.random.key(0))
  return config, model, params
