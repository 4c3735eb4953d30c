"""DINO pretraining of a CIFAR ResNet-18 (simclr_jax/methods/dino.py), on two views.

    python -m simclr_jax.main --config=configs/dino.py --workdir=runs/dino

The recipe of lightly's CIFAR-10 benchmark (lightly-ai/lightly,
docs/source/getting_started/benchmarks/cifar10_benchmark.py, whose 200-epoch table at batch 128
gives DINO kNN 84.0), with the defaults of its DINOLoss and DINOTransform: head 2048-256
(Linear-BN-GELU, then the 256-wide bottleneck), 2,048 weight-normalised prototypes with their
norms fixed, not frozen at the start; student temperature 0.1, teacher temperature 0.04, centre
momentum 0.9; the teacher an EMA at a constant 0.99; SGD with momentum 0.9 at 0.06 x batch/128
(0.12 x batch/256 here), weight decay 5e-4, a cosine over the run without warm-up, batch 128;
two global crops at scale 0.4-1, colour jitter 0.4/0.4/0.2/0.1 with probability 0.8, grey 0.2,
no blur, solarisation 0.2 on the second, ImageNet's normalisation. configs/dino_multicrop.py adds
six small crops. lightly's benchmark draws its teacher's head apart from the student's; here the
teacher starts as a copy of the student, as in DINO's code.

solo-learn's recipe (scripts/pretrain/cifar/dino.yaml: head 2048-2048-256 without BatchNorm,
4,096 prototypes frozen for the first epoch, teacher temperature 0.07, tau 0.9995 -> 1, LARS 0.3,
wd 1e-6, for 1,000 epochs) left the loss at ln 4,096 for all 640 steps of this project's small
CPU check (README, "Results"), where this one moves it within 16 epochs: override those fields to
run it.
"""
from simclr_jax.config_base import base_config


def get_config():
  c = base_config('pretrain', 'dino')
  c.projection_dims = (2048, 256)
  c.head_norm = True
  c.num_prototypes = 2048
  c.freeze_prototypes_epochs = 0
  c.student_temperature = 0.1
  c.teacher_temperature = c.warmup_teacher_temperature = 0.04
  c.warmup_teacher_temperature_epochs = 0
  c.center_momentum = 0.9
  c.base_tau, c.final_tau = 0.99, 0.99
  c.optimizer = 'sgd'
  c.learning_rate = 0.12
  c.warmup_epochs = 0.0
  c.weight_decay = 5e-4
  c.batch_size = 128
  c.augment.crop_scale = (0.4, 1.0)
  c.augment.saturation = 0.2
  c.view2.solarize_prob = 0.2
  c.augment.mean = (0.485, 0.456, 0.406)
  c.augment.std = (0.229, 0.224, 0.225)
  return c
