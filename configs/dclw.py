"""DCLW pretraining of a CIFAR ResNet-18: configs/dcl.py's recipe with the negative von
Mises-Fisher weighting of the positives at sigma 0.5 (the paper's and lightly's DCLWLoss default).

    python -m simclr_jax.main --config=configs/dclw.py --workdir=runs/dclw
"""
import os

from simclr_jax.config_base import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dcl.py'))
  c.dcl_sigma = 0.5
  return c
