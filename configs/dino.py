"""DINO pretraining of a CIFAR ResNet-18 (simclr_jax/methods/dino.py), on two views.

    python -m simclr_jax.main --config=configs/dino.py --workdir=runs/dino

The recipe of solo-learn's scripts/pretrain/cifar/dino.yaml (vturrisi/solo-learn) with the
defaults of its solo/methods/dino.py: head 2048-2048-256 (Linear-GELU twice, then the 256-wide
bottleneck, no BatchNorm), 4,096 prototypes with their norms fixed (norm_last_layer) and frozen
for the first epoch, student temperature 0.1, teacher temperature 0.07 (no warm-up), centre
momentum 0.9, EMA teacher with tau 0.9995 -> 1.0 (cosine), LARS with learning rate 0.3 x
batch/256, eta 0.02 in solo-learn's form (clip_lr: True, the learning rate outside the momentum
buffer), weight decay 1e-6, batch 256, 10 warm-up epochs; augmentations/asymmetric.yaml:
saturation 0.2, solarisation only on the second view (0.2), no blur. solo-learn trains 1,000
epochs (online linear 89.52 on CIFAR-10); this project's default is 200. configs/dino_multicrop.py
adds six small crops.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'dino')
  c.projection_dims = (2048, 2048, 256)
  c.num_prototypes = 4096
  c.student_temperature = 0.1
  c.teacher_temperature = 0.07
  c.warmup_teacher_temperature_epochs = 0
  c.base_tau, c.final_tau = 0.9995, 1.0
  c.optimizer = 'lars'
  c.lars_eta = 0.02
  c.lars_trust_ratio, c.lars_clip, c.lars_lr_in_momentum = 'sum_of_norms', True, False  # solo-learn's LARS
  c.learning_rate = 0.3
  c.weight_decay = 1e-6
  c.batch_size = 256
  c.augment.saturation = 0.2
  c.view2.solarize_prob = 0.2
  return c
