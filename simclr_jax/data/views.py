"""The views a method trains on, declared as data and made on the accelerator from one batch.

    spec = (Crops('global', 0, (first, second)), Crops('local', 16, (local,) * 6))  # 2 x 32 px + 6 x 16 px
    views = make_views(key, images_uint8, spec)   # {'global': [2, B, 32, 32, 3], 'local': [6, B, 16, 16, 3]}
    two_views(first, second)                     # the two same-size views of SimCLR, BYOL, ...
    count(spec), names(spec), describe(spec, 32)  # '2 x 32 px + 6 x 16 px'
    config.view2 = overrides_config()            # a view's differences from config.augment
    second = augment.overridden(first, config.view2)  # AugmentSettings with them

Each group holds the crops of one size, stacked on a leading axis (view-major), so the model runs
a group in one call; every crop has its own AugmentSettings (asymmetric views: BYOL's
solarisation on the second), its scale range included (multi-crop's small local crops). The
crop j of image b, counting over the groups in order, is made with the key
jax.random.split(key, (B, count(spec)))[b, j], the same for any device count.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from simclr_jax.data.augment import AugmentSettings, simclr_view


class Crops(NamedTuple):
  """A group of same-size views: one crop of every image per entry of `settings`, at `size` px
  (0: the images' own size)."""
  name: str
  size: int
  settings: tuple

  @property
  def count(self) -> int:
    return len(self.settings)


def overrides_config(**values) -> ml_collections.ConfigDict:
  """A view's differences from config.augment as a config field (config.view2, a multi-crop
  method's local_view): every AugmentSettings field, None meaning 'as augment', but `values`."""
  fields = {k: config_dict.placeholder(type(v)) for k, v in AugmentSettings()._asdict().items()}
  c = ml_collections.ConfigDict(fields)
  c.update(values)
  return c


def two_views(first: AugmentSettings, second: AugmentSettings | None = None) -> tuple:
  """The spec of two same-size views ('global'), the second with its own settings."""
  return (Crops('global', 0, (first, second or first)),)


def count(spec) -> int:
  """The views of each image, over every group."""
  return sum(g.count for g in spec)


def names(spec) -> tuple:
  return tuple(g.name for g in spec)


def describe(spec, image_size: int) -> str:
  """'2 x 32 px + 6 x 18 px': each group's crops and their size, for the model line."""
  return ' + '.join(f'{g.count} x {g.size or image_size} px' for g in spec)


def make_views(key: jax.Array, images: jax.Array, spec) -> dict:
  """{group name: float32 [count, B, size, size, 3]} of a uint8 [B, H, W, 3] batch."""
  keys = jax.random.split(key, (images.shape[0], count(spec)))
  out, first = {}, 0
  for group in spec:
    size = group.size or images.shape[1]

    def crops(k, x, group=group, first=first, size=size):
      return jnp.stack([simclr_view(k[first + i], x, s, (size, size)) for i, s in enumerate(group.settings)])
    out[group.name] = jnp.swapaxes(jax.vmap(crops)(keys, images), 0, 1)
    first += group.count
  return out
