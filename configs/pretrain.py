"""SimCLR pretraining of a CIFAR ResNet-18 (the default recipe).

    python -m simclr_jax.main --config=configs/pretrain.py --workdir=runs/pretrain

Architecture, augmentation and temperature follow the PyTorch write-up (512-2048-128 projector,
torchvision's SimCLR augmentation, NT-Xent at temperature 0.5); SGD with momentum 0.9, learning
rate 0.3 x batch/256 after a 10-epoch warmup, cosine decay, weight decay 5e-4 on kernels only.
Monitors: kNN at k=200 (the usual CIFAR protocol) and, as a second instance of the same
evaluator, at k=20 (the figure solo-learn's and lightly's kNN tables also report).
"""
from simclr_jax.config_base import base_config, evaluator_config


def get_config():
  c = base_config('pretrain', 'simclr')
  c.evals.knn20 = evaluator_config('knn', every_epochs=10, k=20)
  return c
