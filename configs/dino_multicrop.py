"""DINO with multi-crop: configs/dino.py's recipe on 2 global 32 px views and 6 local 18 px crops.

    python -m simclr_jax.main --config=configs/dino_multicrop.py --workdir=runs/dino_multicrop

The local crops are those of solo-learn's CIFAR multi-crop recipe
(scripts/pretrain/cifar-multicrop/augmentations/swav.yaml, vturrisi/solo-learn, written for SwAV;
neither solo-learn nor lightly has a CIFAR multi-crop recipe for DINO): 6 crops of 18 px at scale
0.08-0.5, colour jitter 0.8/0.8/0.8/0.2 with probability 0.8, grey 0.2, blur 0.1, solarisation
0.1. The student sees all 8 crops, the teacher the 2 global ones (DINO, section 3.1).
"""
import os

from simclr_jax.config_base import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dino.py'))
  c.local_crops = 6
  c.local_crop_size = 18
  c.local_view.crop_scale = (0.08, 0.5)
  c.local_view.brightness, c.local_view.contrast, c.local_view.saturation, c.local_view.hue = 0.8, 0.8, 0.8, 0.2
  c.local_view.blur_prob = 0.1
  c.local_view.solarize_prob = 0.1
  return c
