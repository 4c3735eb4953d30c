"""Image augmentation on the accelerator: pure per-image functions of (key, image), batched with vmap.

    x = simclr_view(key, image_uint8, AugmentSettings(), out_size=(16, 16))   # one view of one image
    x = classifier_views(key, images_uint8, AugmentSettings())    # [B, H, W, 3] float32

AugmentSettings' defaults are the project's defaults (config_base.augment_config reads them); the
views a method trains on are data.views' (each crop with its own settings and size).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class AugmentSettings(NamedTuple):
  """Strengths and probabilities (hashable, so it can be a static argument of jit)."""
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  grayscale_prob: float = 0.2
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0
  crop_padding: int = 4  # classifier random crop
  mean: tuple[float, float, float] = CIFAR_MEAN
  std: tuple[float, float, float] = CIFAR_STD


def _value(v):
  return tuple(v) if isinstance(v, (list, tuple)) else v


def overridden(settings: AugmentSettings, overrides) -> AugmentSettings:
  """settings with the fields that `overrides` sets (a ConfigDict of AugmentSettings' fields,
  None meaning 'as settings': config.view2, a multi-crop method's local_view)."""
  return settings._replace(**{k: _value(v) for k, v in (overrides or {}).items() if v is not None})


def settings_from_config(cfg, overrides=None) -> AugmentSettings:
  """Reads an `augment` ConfigDict into AugmentSettings; overrides (as overridden takes them)
  gives the settings of a second view."""
  return overridden(AugmentSettings(**{k: _value(v) for k, v in cfg.items()}), overrides)


def crop_box(key: jax.Array, height: int, width: int, scale, ratio, attempts: int = 10):
  """Samples (y0, x0, h, w) as torchvision's RandomResizedCrop does (10 tries, then the whole image)."""
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(k_ratio, (attempts,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  first = jnp.argmax(ok)
  h = jnp.where(ok.any(), h[first], height)
  w = jnp.where(ok.any(), w[first], width)
  y0 = jnp.floor(jax.random.uniform(k_y) * (height - h + 1)).astype(jnp.int32)
  x0 = jnp.floor(jax.random.uniform(k_x) * (width - w + 1)).astype(jnp.int32)
  return y0, x0, h, w


def _bilinear_weights(start, length, in_size: int, out_size: int) -> jax.Array:
  """[out_size, in_size] weights that resample pixels [start, start + length) onto out_size pixels:
  half-pixel centres, and source positions clamped to the box's own edge pixels (torch's
  interpolate(mode='bilinear', align_corners=False), which torchvision's resized_crop calls)."""
  length = jnp.asarray(length, jnp.float32)
  src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (length / out_size) - 0.5
  src = jnp.clip(src, 0.0, length - 1)
  lo = jnp.floor(src)
  frac = (src - lo)[:, None]
  lo = lo.astype(jnp.int32)
  hi = jnp.minimum(lo + 1, length.astype(jnp.int32) - 1)
  cols = jnp.arange(in_size)[None, :]
  return ((cols == (start + lo)[:, None]) * (1 - frac) + (cols == (start + hi)[:, None]) * frac)


def resized_crop(image: jax.Array, y0, x0, h, w, out_size: tuple[int, int]) -> jax.Array:
  """The box [y0, y0 + h) x [x0, x0 + w) of a float [H, W, C] image, resized (bilinear) to out_size.
  Only pixels inside the box contribute, as in torchvision.transforms.functional.resized_crop."""
  wy = _bilinear_weights(y0, h, image.shape[0], out_size[0])
  wx = _bilinear_weights(x0, w, image.shape[1], out_size[1])
  return jnp.einsum('ay,yxc,bx->abc', wy, image, wx, precision=jax.lax.Precision.HIGHEST)


def random_resized_crop(key: jax.Array, image: jax.Array, scale, ratio, out_size=None) -> jax.Array:
  """Crops a random box and resizes it (bilinear) to out_size (default: the input's size); image is
  [H, W, C] float."""
  height, width = image.shape[:2]
  y0, x0, h, w = crop_box(key, height, width, scale, ratio)
  return resized_crop(image, y0, x0, h, w, out_size or (height, width))


def _gray3(image):
  return jnp.broadcast_to(pix.rgb_to_grayscale(image, keep_dims=True), image.shape)


def color_jitter(key: jax.Array, image: jax.Array, brightness: float, contrast: float,
                 saturation: float, hue: float) -> jax.Array:
  """torchvision's ColorJitter: the four adjustments in a random order, each clipped to [0, 1].

  Under vmap the choice at each position becomes a select over all four operations, so every
  operation is computed at every position. Measured (README, "Where the step's time goes"): the
  whole augmentation is under 1% of the step's FLOPs and bytes at batch 1024, and computing the
  hue shift once (the costliest operation) ran 50% slower on the CPU, so this form stays.
  """
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

  def factor(k, s):
    return jax.random.uniform(k, minval=max(0.0, 1 - s), maxval=1 + s)

  b, c, s = factor(k_b, brightness), factor(k_c, contrast), factor(k_s, saturation)
  h = jax.random.uniform(k_h, minval=-hue, maxval=hue)
  ops = [
      lambda x: x * b,
      lambda x: (x - pix.rgb_to_grayscale(x).mean()) * c + pix.rgb_to_grayscale(x).mean(),
      lambda x: s * x + (1 - s) * _gray3(x),
      lambda x: pix.adjust_hue(x, h),
  ]
  ops = [lambda x, op=op: jnp.clip(op(x), 0.0, 1.0) for op in ops]
  for i in jax.random.permutation(k_order, len(ops)):
    image = jax.lax.switch(i, ops, image)
  return image


def normalize(image: jax.Array, settings: AugmentSettings) -> jax.Array:
  """Maps a [0, 1] image to zero mean, unit variance per channel."""
  return (image - jnp.asarray(settings.mean)) / jnp.asarray(settings.std)


def to_unit(image: jax.Array) -> jax.Array:
  """uint8 [0, 255] to float32 [0, 1]."""
  return image.astype(jnp.float32) / 255.0


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
  """Pixels at or above the threshold inverted (PIL's ImageOps.solarize at 128 of 255)."""
  return jnp.where(image >= threshold, 1.0 - image, image)


def simclr_view(key: jax.Array, image: jax.Array, settings: AugmentSettings, out_size=None) -> jax.Array:
  """One view of a uint8 [H, W, 3] image at out_size (default: the image's size), normalised
  float32: random resized crop, flip, colour jitter, greyscale, blur and solarisation, each with
  its probability."""
  k_crop, k_flip, k_jit, k_jit_p, k_gray, k_blur, k_blur_p, k_sol = jax.random.split(key, 8)
  x = random_resized_crop(k_crop, to_unit(image), settings.crop_scale, settings.crop_ratio, out_size)
  x = jnp.where(jax.random.uniform(k_flip) < settings.flip_prob, x[:, ::-1], x)
  if settings.jitter_prob > 0:
    jittered = color_jitter(k_jit, x, settings.brightness, settings.contrast, settings.saturation, settings.hue)
    x = jnp.where(jax.random.uniform(k_jit_p) < settings.jitter_prob, jittered, x)
  x = jnp.where(jax.random.uniform(k_gray) < settings.grayscale_prob, _gray3(x), x)
  if settings.blur_prob > 0:
    sigma = jax.random.uniform(k_blur, minval=settings.blur_sigma[0], maxval=settings.blur_sigma[1])
    kernel = max(3, int(0.1 * x.shape[0]) | 1)  # a tenth of the view's side, odd
    x = jnp.where(jax.random.uniform(k_blur_p) < settings.blur_prob,
                  pix.gaussian_blur(x, sigma, kernel), x)
  if settings.solarize_prob > 0:
    x = jnp.where(jax.random.uniform(k_sol) < settings.solarize_prob, solarize(x), x)
  return normalize(x, settings)


def classifier_view(key: jax.Array, image: jax.Array, settings: AugmentSettings) -> jax.Array:
  """Random crop with zero padding and a horizontal flip, normalised float32."""
  k_y, k_x, k_flip = jax.random.split(key, 3)
  p = settings.crop_padding
  x = jnp.pad(to_unit(image), ((p, p), (p, p), (0, 0)))
  y0 = jax.random.randint(k_y, (), 0, 2 * p + 1)
  x0 = jax.random.randint(k_x, (), 0, 2 * p + 1)
  x = jax.lax.dynamic_slice(x, (y0, x0, 0), image.shape)
  x = jnp.where(jax.random.uniform(k_flip) < settings.flip_prob, x[:, ::-1], x)
  return normalize(x, settings)


def classifier_views(key: jax.Array, images: jax.Array, settings: AugmentSettings) -> jax.Array:
  """classifier_view over a uint8 batch [B, H, W, 3]."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(classifier_view, in_axes=(0, 0, None))(keys, images, settings)


def eval_view(images: jax.Array, settings: AugmentSettings) -> jax.Array:
  """No augmentation: uint8 batch to normalised float32."""
  return normalize(to_unit(images), settings)


def inference(apply_fn, settings: AugmentSettings):
  """The one inference function: jit((variables, uint8 images) -> apply_fn(variables, the images
  normalised as in training)), for evaluators, pictures and load_encoder alike."""
  return jax.jit(lambda variables, images: apply_fn(variables, eval_view(images, settings)))
