"""Self-supervised methods, one module each (simclr_jax/methods/<name>.py defining METHOD, a
methods.base.Method subclass), selected by config.method.

    method_cls = methods.get('byol')        # the class: its FIELDS, validate(config)
    method = method_cls(config, total_steps)
"""
from __future__ import annotations

import importlib

NAMES = (
    'simclr',
    'mocov3',
    'byol',
    'simsiam',
    'barlow_twins',
    'vicreg',
    'fastsiam',
    'dcl',
    'mocov2plus',
    'nnclr',
    'dino',
    'swav',
    'mae',
)


def get(name: str):
  """The Method class of a method name (one of NAMES)."""
  if name not in NAMES:
    raise KeyError(name)
  return importlib.import_module(f'simclr_jax.methods.{name}').METHOD
