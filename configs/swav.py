"""SwAV pretraining of a CIFAR ResNet-18 with multi-crop (simclr_jax/methods/swav.py).

    python -m simclr_jax.main --config=configs/swav.py --workdir=runs/swav

The recipe of solo-learn's scripts/pretrain/cifar-multicrop/swav.yaml and its
augmentations/swav.yaml (vturrisi/solo-learn), with the Sinkhorn-Knopp defaults of its
solo/methods/swav.py: projector 2048-128 (Linear-BN-ReLU-Linear), 3,000 prototypes frozen for the
first 2 epochs, temperature 0.1, Sinkhorn-Knopp with 3 iterations at epsilon 0.05, a queue of
3,840 embeddings per global view used from epoch 50, LARS with learning rate 0.6 x batch/256, eta
0.02 in solo-learn's form (clip_lr: True, the learning rate outside the momentum buffer), weight
decay 1e-6, batch 256, 10 warm-up epochs then a cosine (solo-learn's ends at 0.0006, this
project's at 0). Views: 2 global 32 px crops at scale 0.2-1, colour jitter 0.6/0.6/0.6/0.2 with
probability 0.8, grey 0.2, no blur, solarisation 0.2 on the second; 6 local 18 px crops at scale
0.08-0.5, jitter 0.8/0.8/0.8/0.2, blur 0.1, solarisation 0.1. solo-learn trains 1,000 epochs
(online linear 89.17 on CIFAR-10 without multi-crop); this project's default is 200, and the
queue still starts at epoch 50, as the recipe says.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'swav')
  c.projection_dims = (2048, 128)
  c.num_prototypes = 3000
  c.temperature = 0.1
  c.sinkhorn_iterations, c.sinkhorn_epsilon = 3, 0.05
  c.queue_size, c.queue_start_epochs = 3840, 50
  c.freeze_prototypes_epochs = 2
  c.optimizer = 'lars'
  c.lars_eta = 0.02
  c.lars_trust_ratio, c.lars_clip, c.lars_lr_in_momentum = 'sum_of_norms', True, False  # solo-learn's LARS
  c.learning_rate = 0.6
  c.weight_decay = 1e-6
  c.batch_size = 256
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.brightness, c.augment.contrast, c.augment.saturation, c.augment.hue = 0.6, 0.6, 0.6, 0.2
  c.view2.solarize_prob = 0.2
  c.local_crops, c.local_crop_size = 6, 18
  c.local_view.crop_scale = (0.08, 0.5)
  c.local_view.brightness, c.local_view.contrast, c.local_view.saturation, c.local_view.hue = 0.8, 0.8, 0.8, 0.2
  c.local_view.blur_prob = 0.1
  c.local_view.solarize_prob = 0.1
  return c
