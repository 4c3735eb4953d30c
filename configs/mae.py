"""MAE pretraining of a ViT-S/4 on 32 px images (simclr_jax/methods/mae.py).

    python -m simclr_jax.main --config=configs/mae.py --workdir=runs/mae

The recipe of solo-learn's scripts/pretrain/cifar/mae.yaml and its augmentations/reconstruction.yaml
(vturrisi/solo-learn): vit_small with 4 px patches, 75% of the patches masked, a decoder of 8
blocks of width 512 with 16 heads, the loss on per-patch normalised pixels, AdamW with learning
rate 2e-4 x batch/256, betas (0.9, 0.95), weight decay 0.05 (none on biases, norms, position
embeddings and tokens), batch 256, 10 warm-up epochs then a cosine; one view: a random resized
crop at scale 0.08-1 and a flip, no colour. solo-learn trains 1,000 epochs; this project's default
is 200.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'mae')
  c.model, c.patch_size = 'vit_small', 4
  c.mask_ratio = 0.75
  c.decoder_dim, c.decoder_depth, c.decoder_heads = 512, 8, 16
  c.norm_pix_loss = True
  c.optimizer = 'adamw'
  c.learning_rate = 2e-4
  c.momentum, c.adam_beta2 = 0.9, 0.95
  c.weight_decay = 0.05
  c.batch_size = 256
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.jitter_prob = 0.0
  c.augment.grayscale_prob = 0.0
  return c
