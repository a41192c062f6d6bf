"""Every configuration key, declared once with its default and meaning.

Config files in ``configs/`` start from `base_config()` and override values;
they never add keys: `base_config()` returns a locked ConfigDict, so a typo
inside a config file (``c.rl.panw.alfa = 0.8``) is an error naming the file,
line and closest keys (`cli.load_config_file`), as an unknown key on the
command line (``--config.rl.panw.alfa=0.8``) is. Shapes that jitted
programs depend on (image size, scales, text length) live here, so one config
fixes every static shape.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Pretrained weights (a directory written by varrl_jax.pretrain, holding the
  # tokenizer and the transformer; see varrl_jax/checkpoint.py). '' = random
  # init. One key, not one per part: a transformer is only valid with the
  # tokenizer whose token ids it was trained on, and they ship together.
  c.init_checkpoint = ''
  # JAX's persistent compilation cache: compiled programs are written here and
  # reused by the next run with the same program, jax version and devices
  # (a resumed or repeated job skips its compiles; the 18-scale cvtg sampler
  # takes minutes to compile). A local path or gs:// URL; '' = off. Programs
  # that compile in under 1 s are not cached (JAX's default threshold).
  c.compilation_cache_dir = ''

  # Pixels of a generated image (height, width) and the scale schedule: token
  # grids (h_s, w_s) coarse to fine (an int means a square grid); the last
  # grid is image_size / tokenizer.downsample.
  c.image_size = (32, 128)
  c.scales = ((1, 4), (2, 8), (4, 16), (6, 24), (8, 32))

  # Synthetic text-rendering data (varrl_jax/data/synthetic.py): how varied it
  # is. Pretraining, RL prompts and the synthetic evaluation splits all use it.
  c.data = ml_collections.ConfigDict()
  c.data.max_words = 2  # quoted target words per prompt: 1 or 2 (35 % get two)
  c.data.fonts = ()  # DejaVu styles to draw from; () = all (synthetic.FONT_STYLES)
  c.data.backgrounds = ()  # of 'solid', 'gradient', 'noise'; () = all
  # 'random': random glyph size, alignment and position; 'centered': one size
  # per font and canvas, centred (synthetic.Variety explains both).
  c.data.placement = 'random'

  # Multi-scale residual VQ-VAE (varrl_jax/models/tokenizer.py).
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.downsample = 4  # pixels per latent cell; = 2 ** (len(channels) - 1)
  c.tokenizer.channels = (64, 128, 128)  # conv width at each resolution level
  c.tokenizer.num_res_blocks = 1
  c.tokenizer.latent_dim = 32  # C: codebook vector width
  c.tokenizer.codebook_size = 1024  # V: shared by all scales
  c.tokenizer.phi_count = 0  # phi refiners shared by depth; 0 = one per scale
  c.tokenizer.phi_ratio = 0.5  # rho in phi(x) = (1 - rho) x + rho conv(x)
  c.tokenizer.beta = 0.25  # commitment weight
  c.tokenizer.dtype = 'float32'
  # Convolution weight gradients (tokenizer training only): 'matmul' over image
  # patches, 'xla', or 'auto' = 'xla' (with XLA:CPU's own convolutions the
  # matmul measured 0.67-0.71x of XLA's, benchmarks/tokenizer_step.py;
  # models/conv.py). The same parameters and, up to rounding, the same numbers.
  c.tokenizer.conv_weight_grad = 'auto'

  # The model family (varrl_jax/models/family.py): 'varrl' (our text-prefix
  # model below, pretrained by varrl_jax.pretrain), 'var' (the official
  # FoundationVision/VAR class-conditional model, c.model.var; its VQ-VAE
  # reads c.tokenizer: channels = ch * ch_mult, phi_count = share_quant_resi)
  # or 'infinity' (FoundationVision/Infinity text-to-image, c.model.infinity).
  c.model = ml_collections.ConfigDict()
  c.model.family = 'varrl'
  # Next-scale transformer of the 'varrl' family (varrl_jax/models/transformer.py).
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.num_kv_heads = 2  # grouped-query attention: heads share kv heads
  c.model.head_dim = 0  # 0 = d_model // num_heads
  c.model.mlp_dim = 768  # SwiGLU hidden width
  c.model.text_len = 96  # static prompt length in byte tokens (BOS/EOS incl.)
  c.model.dtype = 'float32'  # activations; 'bfloat16' on TPU
  c.model.param_dtype = 'float32'
  c.model.remat = 'none'  # 'none' | 'full' | 'dots' (rematerialise blocks)
  c.model.attention = 'plain'
  # 'rows': dense layers see [B T, d] (no transposing copies in XLA:CPU's
  # weight gradients); 'batched': [B, T, d]; 'auto': 'rows' on the CPU
  # backend (models/rows.py resolve_dense_layout).
  c.model.dense_layout = 'auto'
  # Layers per iteration of the scan over layers (num_layers = fully
  # unrolled): small models on CPU lose ~5 ms per loop iteration.
  c.model.scan_unroll = 1
  # The same for the sampler's KV-cached steps (same parameters): 0 = as
  # scan_unroll, -1 = every layer. Unrolled, XLA updates the cache in place
  # (VAR-d16 on 2 CPU cores: 19.7 -> 14.6 s of transformer steps for 8
  # images); the teacher-forced GRPO step keeps the scan (and its memory:
  # unrolled, remat no longer bounds it).
  c.model.sample_scan_unroll = 0
  # > 0: add learned embeddings of each byte's place inside the prompt's
  # quoted text, counted from the start and from the end of the quote
  # (models/text.py quote_positions), clipped to quote_slots - 1, and from
  # its centre (start - end, where a centred letter's column is). A
  # character-aware prompt encoding (cf. Glyph-ByT5): without it the tiny
  # model learned to ignore which word was asked for. 0 = off (byte and
  # position embeddings only).
  c.model.quote_slots = 0

  # The 'var' family's transformer (varrl_jax/models/var_official): the
  # official build_vae_var sizes are depth d, width 64 d, d heads.
  c.model.var = ml_collections.ConfigDict()
  c.model.var.depth = 16
  c.model.var.embed_dim = 0  # 0 = 64 * depth
  c.model.var.num_heads = 0  # 0 = depth
  c.model.var.mlp_ratio = 4.0
  c.model.var.num_classes = 1000  # class_emb has num_classes + 1 rows (null)
  c.model.var.shared_aln = False  # True for var_d36 (one AdaLN projection)
  # The 'infinity' family (varrl_jax/models/infinity): FoundationVision/
  # Infinity, text-to-image with bitwise tokens. Its BSQ VAE reads c.tokenizer
  # (channels = ch * ch_mult, latent_dim = the VAE's bits d, downsample = its
  # stride); c.scales are the transformer's grids (models/infinity/schedules.py).
  c.model.infinity = ml_collections.ConfigDict()
  # 'infinity_2b' | 'infinity_8b' | '' (sizes from depth/embed_dim/num_heads).
  c.model.infinity.preset = ''
  c.model.infinity.depth = 0  # 0 = the preset's
  c.model.infinity.embed_dim = 0
  c.model.infinity.num_heads = 0
  c.model.infinity.mlp_ratio = 4.0
  # The 8B's 2x2 spatial patchify: a token holds 4 VAE cells (4 d bits).
  c.model.infinity.spatial_patchify = False
  # A local Hugging Face Flan-T5 folder (config.json, model.safetensors or
  # shards, spiece.model): the frozen text encoder. Loaded when the first
  # prompt is encoded; each prompt is encoded once (host cache).
  c.model.infinity.text_encoder = ''
  c.model.infinity.text_channels = 2048  # the encoder's width (Flan-T5-XL)
  c.model.infinity.text_len = 512  # T5 tokens kept per prompt (theirs: 512)
  c.model.infinity.text_maxlen = 512  # rows of the cfg_uncond parameter

  # Rollouts and the policy distribution (varrl_jax/sampling.py, policy.py).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.cfg_scale = 1.0  # w in l_u + w (l_c - l_u); 1 = no guidance
  # 'constant' | 'linear' ramp over scales | 'var' (the official VAR ramp
  # (1 + t) l_c - t l_u, t = cfg_scale s / (S - 1); cfg_scale 0 = no guidance)
  c.sampling.cfg_schedule = 'constant'
  c.sampling.temperature = 1.0  # 0 = greedy
  c.sampling.top_k = 0  # 0 = off
  c.sampling.top_p = 1.0  # 1 = off
  c.sampling.policy = 'cfg'  # 'cfg' (guided logits) | 'cond' for log-probs
  c.sampling.batch_size = 8

  # Device mesh (varrl_jax/parallel.py): sizes of ('data', 'fsdp', 'tensor');
  # one may be -1 to take the remaining devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # Multi-host jobs (varrl_jax/distributed.py): one process per host, all
  # running the same command. 'auto' starts jax.distributed when a
  # coordinator is set (here or JAX_COORDINATOR_ADDRESS) or JAX detects a
  # cluster (Cloud TPU VM pod, SLURM, Open MPI), else runs one process;
  # 'on' requires a multi-process start; 'off' never starts it.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.mode = 'auto'
  c.distributed.coordinator_address = ''  # 'host:port' of process 0
  c.distributed.num_processes = -1  # -1: JAX_NUM_PROCESSES, else detected
  c.distributed.process_id = -1  # -1: JAX_PROCESS_ID, else detected
  c.distributed.timeout_s = 300  # how long the processes wait for each other

  # RL: GRPO with VMR, PANW and MP (varrl_jax/rl/). Paper values in cvtg.py.
  c.rl = ml_collections.ConfigDict()
  # Which components are on: 'vanilla' (full-horizon GRPO), 'vmr', 'vmr+panw',
  # 'full' (vmr+panw+mp). Hyper-parameters below apply where on.
  c.rl.mode = 'full'
  c.rl.num_updates = 20  # outer updates (rollout batches) of a run
  c.rl.data_seed = 0  # seed of the RL prompt stream (synthetic or class order)
  # RL prompts (varrl_jax/data/prompt_sources.py): 'synthetic' (rendered-text
  # prompts with target words); a list of text prompts: 'jsonl:PATH' (lines
  # {"prompt": ..., "targets": [...]}), 'cvtg:ROOT' (CVTG-2K copy),
  # 'tfds:NAME[,split=S][,data_dir=D]', 'generated[:n=20000,regions=2..5,
  # seed=0]' (what python -m varrl_jax.data.make_prompts writes); or class
  # ids for class-conditional families: 'classes:all' (0 ..
  # model.var.num_classes - 1), 'classes:207,360,387', 'classes:@PATH' (one
  # id a line, '#' comments).
  c.rl.prompts = 'synthetic'
  # Prompts of a text list kept out of training for the before/after
  # evaluation of train.py: a count (>= 1) or a fraction (< 1) of its distinct
  # prompts; 0 = none (the evaluation then uses config.eval.split).
  c.rl.heldout_prompts = 0.0
  # The reward: a weighted sum of terms (varrl_jax/rewards/api.py), comma-
  # separated NAME[:WEIGHT] of registered rewards ('ocr', 'clipscore',
  # 'preference' (models in c.rewards), 'jpeg_compressibility',
  # 'jpeg_incompressibility') or MODULE:ATTR[:WEIGHT] of your own; e.g.
  # 'ocr:1.0,clipscore:0.2'. A weight left out is 1.
  c.rl.rewards = 'ocr'
  c.rl.prompts_per_update = 4  # prompts per rollout batch (paper: 16)
  c.rl.group_size = 4  # G: samples (prefixes) per prompt (paper: 16)
  c.rl.inner_updates = 1  # optimizer steps per rollout batch (old log-probs kept)
  # M: a GRPO step runs its rows in sequential micro-batches of P G / M rows
  # (P G: the rows of a prefix-phase step; a suffix step of P G K rows runs
  # K M of them) and adds their gradients: the same update with the
  # activations of P G / M rows at a time, for a model whose step does not
  # fit the chips' memory at once.
  c.rl.train_microbatches = 1
  # Rollouts are sampled in this many equal parts; OCR of a part overlaps the
  # sampling of the next (prompts_per_update must be divisible by it).
  c.rl.rollout_chunks = 2
  # 'sync': each update samples with the current parameters, then reads the
  # rewards, then steps. 'overlap': update u+1's rollouts are sampled (with
  # the parameters before update u's step) while update u's rewards are read
  # and its step runs; the importance ratio uses the log-probs recorded at
  # sampling time (varrl_jax/rl/pipeline.py).
  c.rl.pipeline = 'sync'
  # The objective of off-policy ('overlap') rollouts. 'decoupled': the clip's
  # trust region is centred on the params before the update, as in sync, and
  # each token's surrogate is weighted by pi_old / pi_behaviour (at most
  # iw_cap if > 0). 'behaviour': the ratio is taken to the behaviour policy
  # itself, as PPO does (measured to learn more slowly, docs/design.md).
  # varrl_jax/rl/grpo.py.
  c.rl.off_policy = ml_collections.ConfigDict()
  c.rl.off_policy.objective = 'decoupled'
  c.rl.off_policy.iw_cap = 0.0
  c.rl.clip_eps = 0.2  # epsilon of the clipped surrogate
  c.rl.kl_beta = 0.04  # beta of the k3 KL to the frozen reference
  c.rl.adv_eps = 1e-4  # A = (R - mean) / (std + adv_eps)
  c.rl.lr = 1e-5
  c.rl.warmup_steps = 0
  c.rl.b1 = 0.9
  c.rl.b2 = 0.95
  c.rl.weight_decay = 0.05  # on kernels only
  c.rl.grad_clip = 1.0  # global norm; 0 = off
  c.rl.vmr = ml_collections.ConfigDict()
  # Split scale m: an index, 'mNNN' (pixel resolution, e.g. 'm256' at 1024^2),
  # 'full', or 'adaptive' (m moves during the run by the rule of
  # c.rl.vmr.adaptive; varrl_jax/rl/adaptive_m.py). Scales <= m form the prefix.
  c.rl.vmr.m = '2'
  c.rl.vmr.num_branches = 2  # K suffix rollouts per prefix
  c.rl.vmr.eta = 1.0  # V_m = eta log mean_k exp(R_k / eta)
  c.rl.vmr.prefix_updates = (
    3  # alternation prefix : suffix (paper 3:1; Table 4b 300:100)
  )
  c.rl.vmr.suffix_updates = 1
  # Group of a suffix update's advantages: 'prompt' (all G K samples of a
  # prompt) | 'prefix' (the K branches of one prefix: pure suffix credit).
  c.rl.vmr.suffix_group = 'prompt'
  # rl.vmr.m='adaptive' (varrl_jax/rl/adaptive_m.py): each update estimates
  # the share of the reward variance its prefix explains (one-way ANOVA over
  # the G prefixes x K branches); an EMA of it moves m one scale down when
  # above target + band, up when below target - band. Scales: an index, a
  # negative index or 'mNNN', as rl.vmr.m.
  c.rl.vmr.adaptive = ml_collections.ConfigDict()
  # First m; 'middle' = (min + max) // 2 (NextFlow's 18 scales: 8, m160,
  # between the paper's m128 and m256).
  c.rl.vmr.adaptive.start = 'middle'
  c.rl.vmr.adaptive.target = 0.5  # wanted prefix share, in (0, 1): half each
  c.rl.vmr.adaptive.band = 0.1  # dead band around target: no move inside
  # EMA decay of the share, in [0, 1): 0.5 weighs the last 4 updates 94%.
  c.rl.vmr.adaptive.decay = 0.5
  c.rl.vmr.adaptive.every = 0  # updates between decisions; 0 = one cycle (3 + 1)
  c.rl.vmr.adaptive.min = '1'  # lowest m (VAR's scale 0 alone: one 1x1 token)
  c.rl.vmr.adaptive.max = '-2'  # highest m; -2 = S - 2: VMR stays on
  c.rl.panw = ml_collections.ConfigDict()
  c.rl.panw.alpha = 0.6  # k_s = (h_s w_s)^-alpha; alpha = 0 when PANW is off
  c.rl.mp = ml_collections.ConfigDict()
  c.rl.mp.boxes = 'matched'  # 'matched' (words matched to targets) | 'all' OCR boxes
  c.rl.mp.dilation = 0  # cells added around the rasterized boxes
  c.rl.mp.propagation = 'max'  # 'max' | 'area' fine -> coarse pooling
  c.rl.mp.floor = 0.0  # mask = floor + (1 - floor) mask
  c.rl.mp.empty = 'ones'  # mask of an image without boxes: 'ones' | 'zeros'
  # Settings of the 'ocr' reward (varrl_jax/rewards/text.py, service.py).
  c.rl.reward = ml_collections.ConfigDict()
  c.rl.reward.kind = 'comp_sim_pen'  # 'comp_sim_pen' | 'one_minus_ned'
  c.rl.reward.fallback = 0.0  # reward of an image whose OCR failed
  # LoRA (varrl_jax/rl/lora.py): train low-rank adapters W' = W + (alpha / r)
  # A B of the targeted kernels instead of every parameter; the optimizer
  # state exists for the adapters only, and the KL reference is the base
  # (adapters off: no second copy of the weights).
  c.rl.lora = ml_collections.ConfigDict()
  c.rl.lora.rank = 0  # r; 0 = full fine-tuning (no adapters at all)
  c.rl.lora.alpha = 16.0  # the update is scaled by alpha / r
  # Comma-separated regular expressions, each matched in full against the
  # '/'-joined transformer parameter path; the default covers the attention
  # (q, k, v, o / qkv, proj) and MLP (wi_gate, wi_up, wo / fc1, fc2) kernels
  # of the 'varrl', 'var' and 'infinity' families (Infinity's self- and
  # cross-attention: sa/qkv, sa/proj, ca/q, ca/kv_proj, ca/proj).
  c.rl.lora.targets = (
    r'.*layers/(q|k|v|o|wi_gate|wi_up|wo)/kernel,.*blocks/(qkv|proj|fc1|fc2)/kernel,'
    r'.*blocks/(sa|ca)/(qkv|q|kv_proj|proj)/kernel'
  )

  # Full train-state checkpoints of an RL run, for exact resume
  # (WORKDIR/checkpoints/state; varrl_jax/train_checkpoints.py).
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = (
    10  # save every N updates (also at the end, and on SIGTERM/SIGINT)
  )
  c.checkpoint.keep = 2  # newest states kept
  c.checkpoint.resume = True  # continue from the newest state in the workdir

  # OCR engine and its worker pool (varrl_jax/rewards/ocr.py, pool.py).
  c.ocr = ml_collections.ConfigDict()
  # 'rapidocr' | 'easyocr'. rapidocr reads the shipped tiny model's rollouts
  # as well as easyocr (reward within noise, word accuracy on held-out renders
  # equal) for about a tenth of its CPU time per image, ~1/20 at 1024^2
  # (benchmarks/ocr_cost.py, benchmarks/ocr_pod_budget.py, docs/performance.md).
  c.ocr.engine = 'rapidocr'
  c.ocr.num_workers = 1  # worker processes per host; 0 = inline
  c.ocr.threads_per_worker = 1  # onnxruntime (rapidocr) or torch threads per worker
  c.ocr.timeout_s = 60.0  # longest one image may take before its worker is restarted
  # Reads again, on the restarted worker, of an image whose worker hung or
  # crashed (a suspend or a stopped process is not the image's fault).
  c.ocr.retries = 1
  c.ocr.cache_size = 4096  # LRU entries of OCR results keyed by image content
  # Small images are enlarged (bicubic, integer factor) before OCR until the
  # short side reaches upscale_min_side, by at most upscale_max_factor
  # (rewards/ocr.py UpscaleConfig; 1 = read as rendered).
  c.ocr.upscale_min_side = 128
  c.ocr.upscale_max_factor = 2

  # CLIP-based rewards (varrl_jax/rewards/clip.py), from local weights only
  # (never downloaded); they run jitted in the training process (on the
  # accelerator). c.rewards.clip is the model of the 'clipscore' reward,
  # 2.5 max(cos, 0), and of the evaluator's CLIPScore (reported whenever
  # its path is set); c.rewards.preference that of the 'preference' reward.
  c.rewards = ml_collections.ConfigDict()
  c.rewards.clip = ml_collections.ConfigDict()
  # A Hugging Face CLIPModel folder (config.json, model.safetensors or
  # pytorch_model.bin, vocab.json, merges.txt) or an open_clip checkpoint
  # file (.pt / .bin / .safetensors state dict). '' = none.
  c.rewards.clip.path = ''
  # 'hf' | 'open_clip' | 'auto' (a folder is hf, a file open_clip).
  c.rewards.clip.format = 'auto'
  # open_clip only: 'ViT-B-32' | 'ViT-B-16' | 'ViT-L-14' | 'ViT-H-14' (add
  # '-quickgelu' for OpenAI's weights), an open_clip model-config .json, or
  # '' = the one of those whose shapes the checkpoint has.
  c.rewards.clip.arch = ''
  # BPE vocabulary: a folder with vocab.json + merges.txt, or open_clip's
  # bpe_simple_vocab_16e6.txt.gz. '' = the hf folder's own (open_clip needs one).
  c.rewards.clip.tokenizer = ''
  c.rewards.clip.batch_size = 16  # images per jitted call (the last is padded)
  c.rewards.clip.dtype = 'float32'  # 'bfloat16' halves weight memory and time
  c.rewards.preference = ml_collections.ConfigDict()
  # 'pickscore': exp(logit_scale) cos (PickScore, a Hugging Face folder);
  # 'hpsv2': cos (HPS-v2: HPS_v2_compressed.pt, arch ViT-H-14).
  c.rewards.preference.kind = 'pickscore'
  c.rewards.preference.path = ''  # as c.rewards.clip.path
  c.rewards.preference.format = 'auto'  # as c.rewards.clip.format
  c.rewards.preference.arch = ''  # as c.rewards.clip.arch
  c.rewards.preference.tokenizer = ''  # as c.rewards.clip.tokenizer
  c.rewards.preference.batch_size = 16
  c.rewards.preference.dtype = 'float32'

  # Evaluation (python -m varrl_jax.evaluate; also the RL loop's held-out eval).
  c.eval = ml_collections.ConfigDict()
  c.eval.split = (
    'heldout'  # synthetic prompt set: 'heldout' | 'heldout_words' | 'train'
  )
  c.eval.num_prompts = 64  # cap on prompts (0 = all of the set; synthetic needs > 0)
  c.eval.images_per_prompt = 1
  c.eval.batch_size = 16  # prompts per sampler call (static shape)
  c.eval.seed = 1234  # sampling seed of the evaluation (fixed: deterministic results)
  c.eval.data_seed = 0  # seed of the synthetic prompt sets
  c.eval.case_sensitive = False  # Word Accuracy / NED case handling
  c.eval.cvtg_targets = (
    'sentences'  # CVTG-2K targets: 'sentences' | 'prompt' (official scorer)
  )
  c.eval.grid_images = 32  # images in the grid PNG
  # Evaluate the starting weights before RL (WORKDIR/eval_before). Ablation
  # sweeps set False after their first run: every run starts from the same
  # weights with the same prompts and keys, so one evaluation serves all.
  c.eval.before = True
  # A prompt longer than model.text_len is an error; True keeps its first
  # text_len - 2 bytes instead (e.g. CVTG-2K prompts on the tiny model).
  c.eval.truncate_prompts = False

  # Supervised pretraining (python -m varrl_jax.pretrain --stage=...): first
  # the tokenizer on synthetic renders, then the transformer on its tokens.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.data_seed = 0  # synthetic train split seed; step t = examples [tB, (t+1)B)
  c.pretrain.prefetch = 2  # batches rendered ahead by a background thread; 0 = inline
  c.pretrain.num_samples = 8  # images in each periodic sample/reconstruction grid
  c.pretrain.keep_checkpoints = 2  # periodic checkpoints kept per stage (+ 'final')

  c.pretrain.tokenizer = ml_collections.ConfigDict()
  c.pretrain.tokenizer.steps = 20_000
  c.pretrain.tokenizer.batch_size = 32
  c.pretrain.tokenizer.lr = 3e-4  # AdamW peak lr: linear warmup, cosine to lr / 10
  c.pretrain.tokenizer.warmup_steps = 500
  c.pretrain.tokenizer.weight_decay = 0.01  # on conv kernels only, not the codebook
  c.pretrain.tokenizer.grad_clip = 1.0  # global gradient norm; 0 = off
  # Reconstruction BCE weight of a pixel: 1 + ink_weight * |x - median(x)|, the
  # median being the background; text is a few % of the pixels and an
  # unweighted loss is content to draw the background only.
  c.pretrain.tokenizer.ink_weight = 4.0
  # A code unused for this many steps is re-initialised from a random residual
  # the quantizer saw in the current batch (dead-code restart); 0 = off.
  c.pretrain.tokenizer.dead_code_steps = 100
  c.pretrain.tokenizer.restart_noise = 0.01  # std of noise added to restarted codes
  c.pretrain.tokenizer.log_every = 50
  c.pretrain.tokenizer.sample_every = 1000  # reconstruction grid + held-out metrics
  c.pretrain.tokenizer.ckpt_every = 2000
  # A checkpoint whose tokenizer this stage starts from ('' = random init),
  # with a fresh optimizer and lr schedule.
  c.pretrain.tokenizer.init_from = ''
  # 'all', or 'decoder': train the pixel decoder only. The encoder, codebook
  # and phi convolutions stay bit-identical (no dead-code restarts), so every
  # image keeps its token ids and a transformer trained on them stays valid;
  # `varrl_jax.export --tokenizer=` then swaps the new decoder in. Needs
  # init_from.
  c.pretrain.tokenizer.trainable = 'all'

  c.pretrain.transformer = ml_collections.ConfigDict()
  c.pretrain.transformer.steps = 50_000
  c.pretrain.transformer.batch_size = 32
  c.pretrain.transformer.lr = 3e-4
  c.pretrain.transformer.warmup_steps = 1000
  c.pretrain.transformer.weight_decay = 0.05  # on dense kernels only
  c.pretrain.transformer.grad_clip = 1.0
  # A checkpoint whose transformer this stage starts from (continued
  # training, with a fresh optimizer and lr schedule; its tokenizer must be
  # the stage's). '' = a random init. Set another pretrain.data_seed to
  # continue on unseen examples.
  c.pretrain.transformer.init_from = ''
  # Probability of replacing a prompt by the null prompt, so the model also
  # learns the unconditional distribution that classifier-free guidance needs.
  c.pretrain.transformer.prompt_dropout = 0.1
  # The tokenizer to train on: '' = WORKDIR/tokenizer/checkpoints/final, the
  # tokenizer stage's output in the same --workdir.
  c.pretrain.transformer.tokenizer_checkpoint = ''
  c.pretrain.transformer.log_every = 50
  c.pretrain.transformer.sample_every = 2000  # sample grid + held-out loss
  c.pretrain.transformer.ckpt_every = 5000
  # Config files change values, never add keys: a typo inside a file
  # (``c.rl.panw.apha = 0.8``) is an error, as on the command line
  # (`cli.load_config_file` names the file, line and closest keys).
  c.lock()
  return c
