"""Distil a fine-tuned teacher into a student on every training image, labelled or not (SimCLR v2).

    python -m simclr_jax.main --config=configs/distill.py --workdir=runs/distill \\
        --config.teacher_from=runs/finetune --config.label_fraction=0.01

Chen et al. 2020b ("Big Self-Supervised Models are Strong Semi-Supervised Learners"): the loss
is their equation 2 (the teacher's softmax at temperature tau against the student's at the same
tau, on unlabelled images), with the optional weighted mix of the true labels that the paper
suggests when labels are many; their experiments distil with tau = 1 on the teacher's labels alone, which are the
defaults here (distill_temperature 1.0, distill_label_weight 0.0). The student is the CIFAR
ResNet-18 by default, from scratch (set model or width for a smaller one, init_from to start it
from a pretraining run); optimisation follows configs/finetune.py. The official code does this in
a notebook (google-research/simclr, colabs/), not in run.py.
"""
from simclr_jax.config_base import classifier_config


def get_config():
  return classifier_config('distill')
