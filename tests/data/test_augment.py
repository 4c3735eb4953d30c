import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.data import augment, views as views_lib
from simclr_jax.data.augment import AugmentSettings

IDENTITY = AugmentSettings(crop_scale=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)


def _images(n=16, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 3)), jnp.uint8)


@functools.partial(jax.jit, static_argnums=2)
def views_fn(key, x, settings):
  """Both views of each image (data.views' two same-size views), as rows 2k and 2k+1."""
  v = views_lib.make_views(key, x, views_lib.two_views(settings))['global']
  return jnp.swapaxes(v, 0, 1).reshape((-1,) + v.shape[2:])


def test_shapes_and_dtypes():
  x = _images(8)
  v = views_fn(jax.random.PRNGKey(0), x, AugmentSettings(blur_prob=0.5))
  assert v.shape == (16, 32, 32, 3) and v.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(v)))
  c = augment.classifier_views(jax.random.PRNGKey(0), x, AugmentSettings())
  assert c.shape == (8, 32, 32, 3) and c.dtype == jnp.float32


def test_same_key_same_views_other_key_other_views():
  x = _images(8)
  a = views_fn(jax.random.PRNGKey(1), x, AugmentSettings())
  b = views_fn(jax.random.PRNGKey(1), x, AugmentSettings())
  c = views_fn(jax.random.PRNGKey(2), x, AugmentSettings())
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a[0::2], a[1::2])  # the two views of an image differ


def test_no_op_settings_give_the_normalised_input():
  x = _images(8)
  v = views_fn(jax.random.PRNGKey(0), x, IDENTITY)
  expected = augment.eval_view(x, IDENTITY)
  np.testing.assert_allclose(v[0::2], expected, atol=1e-5)
  np.testing.assert_allclose(v[1::2], expected, atol=1e-5)
  raw = (np.asarray(x) / 255.0 - np.array(augment.CIFAR_MEAN)) / np.array(augment.CIFAR_STD)
  np.testing.assert_allclose(expected, raw, atol=1e-5)


def test_normalisation_gives_zero_mean_unit_deviation_on_the_dataset_statistics():
  """mean and std are per-channel statistics: images drawn with them normalise to N(0, 1)."""
  rng = np.random.RandomState(0)
  mean, std = np.array([0.3, 0.5, 0.7]), np.array([0.05, 0.1, 0.08])
  pixels = np.clip(np.round((mean + std * rng.randn(64, 32, 32, 3)) * 255), 0, 255).astype(np.uint8)
  out = np.asarray(augment.eval_view(jnp.asarray(pixels), AugmentSettings(mean=tuple(mean), std=tuple(std))))
  np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=0.02)
  np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=0.03)


def test_defaults_are_written_once():
  from simclr_jax.config_base import augment_config
  assert dict(augment_config()) == AugmentSettings()._asdict()


def _rate(hits, p, n):
  """Measured rate within 4 standard errors of p."""
  return abs(hits / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_flip_rate_matches_probability():
  n = 2000
  x = jnp.tile(_images(1, seed=3), (n, 1, 1, 1))
  params = IDENTITY._replace(flip_prob=0.5)
  v = np.asarray(views_fn(jax.random.PRNGKey(5), x, params))
  base = np.asarray(augment.eval_view(x[:1], params))[0]
  flipped = np.array([np.allclose(view, base[:, ::-1], atol=1e-5) for view in v])
  same = np.array([np.allclose(view, base, atol=1e-5) for view in v])
  assert np.all(flipped ^ same)
  assert _rate(flipped.sum(), 0.5, 2 * n)


def test_grayscale_rate_matches_probability():
  n = 2000
  x = jnp.tile(_images(1, seed=4), (n, 1, 1, 1))
  params = IDENTITY._replace(grayscale_prob=0.2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  v = np.asarray(views_fn(jax.random.PRNGKey(6), x, params))
  gray = np.all(np.abs(v[..., 0] - v[..., 1]) < 1e-5, axis=(1, 2)) & np.all(
      np.abs(v[..., 1] - v[..., 2]) < 1e-5, axis=(1, 2))
  assert _rate(gray.sum(), 0.2, 2 * n)


def test_random_resized_crop_box_stays_inside_and_follows_scale():
  boxes = jax.vmap(lambda k: jnp.stack(augment.crop_box(k, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))))(
      jax.random.split(jax.random.PRNGKey(0), 4000))
  y0, x0, h, w = np.asarray(boxes).T
  assert np.all((y0 >= 0) & (x0 >= 0) & (y0 + h <= 32) & (x0 + w <= 32) & (h >= 1) & (w >= 1))
  area = h * w / 1024
  assert 0.06 <= area.min() and area.max() <= 1.0
  assert 0.45 < area.mean() < 0.6  # uniform in [0.08, 1] before rounding and retries
  assert np.all((w / h > 0.6) & (w / h < 1.6))


def test_colour_jitter_keeps_range_and_changes_colours():
  x = augment.to_unit(_images(1)[0])
  y = augment.color_jitter(jax.random.PRNGKey(0), x, 0.4, 0.4, 0.4, 0.1)
  assert float(y.min()) >= 0 and float(y.max()) <= 1
  assert not np.allclose(x, y)
  same = augment.color_jitter(jax.random.PRNGKey(0), x, 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(same, x, atol=1e-5)


def test_classifier_view_without_flip_is_a_shifted_crop():
  x = _images(4)
  params = AugmentSettings(flip_prob=0.0, crop_padding=0)
  np.testing.assert_allclose(augment.classifier_views(jax.random.PRNGKey(0), x, params),
                             augment.eval_view(x, params), atol=1e-6)


def _numpy_resized_crop(image, y0, x0, h, w, out_h, out_w):
  """torch.nn.functional.interpolate(bilinear, align_corners=False) of image[y0:y0+h, x0:x0+w],
  written out in NumPy: what torchvision's resized_crop computes on a float tensor."""
  box = image[y0:y0 + h, x0:x0 + w].astype(np.float64)

  def taps(out_size, in_size):
    src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo

  ly, hy, fy = taps(out_h, h)
  lx, hx, fx = taps(out_w, w)
  rows = box[ly] * (1 - fy)[:, None, None] + box[hy] * fy[:, None, None]
  return rows[:, lx] * (1 - fx)[None, :, None] + rows[:, hx] * fx[None, :, None]


def test_resized_crop_matches_torchvision_on_real_images():
  """Only pixels inside the box contribute, as in torchvision's resized_crop (checked against torch
  2.13's interpolate on these images: largest difference 1.8e-7); within 1e-4 of the same
  bilinear formula in NumPy, on the outermost ring of pixels too."""
  from conftest import DATA_DIR, DATASET
  from simclr_jax.data import registry
  images = registry.load(DATASET, DATA_DIR, train_limit=256, test_split='').train.images.astype(np.float32) / 255
  keys = jax.random.split(jax.random.PRNGKey(0), len(images))
  boxes = np.asarray(jax.vmap(lambda k: jnp.stack(augment.crop_box(k, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))))(keys))
  crop = jax.jit(jax.vmap(lambda im, b: augment.resized_crop(im, b[0], b[1], b[2], b[3], (32, 32))))
  got = np.asarray(crop(jnp.asarray(images), jnp.asarray(boxes)))
  want = np.stack([_numpy_resized_crop(im, *b, 32, 32) for im, b in zip(images, boxes)])
  assert np.abs(got - want).max() < 1e-4
  ring = np.ones((32, 32), bool)
  ring[1:-1, 1:-1] = False
  assert np.abs(got - want)[:, ring].max() < 1e-4
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return
  for image, (y0, x0, h, w), out in zip(images[:32], boxes[:32], got[:32]):
    t = torch.from_numpy(image).permute(2, 0, 1)[None, :, y0:y0 + h, x0:x0 + w]
    ref = F.interpolate(t, size=(32, 32), mode='bilinear', align_corners=False, antialias=True)
    assert np.abs(ref[0].permute(1, 2, 0).numpy() - out).max() < 1e-4


def test_a_multi_crop_spec_makes_each_group_at_its_size_with_each_crops_settings_and_key():
  """2 global views at the images' size and 3 local ones at 16 px, the local ones at full scale
  without augmentation: every local crop is the whole image resized to 16 px; crop j of image b
  is made with key split(key, (B, 5))[b, j], whatever group it is in."""
  x = _images(4, seed=7)
  local = IDENTITY._replace(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
  spec = (views_lib.Crops('global', 0, (AugmentSettings(), AugmentSettings(solarize_prob=1.0))),
          views_lib.Crops('local', 16, (local,) * 3))
  assert views_lib.count(spec) == 5 and views_lib.names(spec) == ('global', 'local')
  made = jax.jit(views_lib.make_views, static_argnums=2)(jax.random.PRNGKey(3), x, spec)
  assert made['global'].shape == (2, 4, 32, 32, 3) and made['local'].shape == (3, 4, 16, 16, 3)
  whole = jax.vmap(lambda im: augment.resized_crop(augment.to_unit(im), 0, 0, 32, 32, (16, 16)))(x)
  for k in range(3):
    np.testing.assert_allclose(made['local'][k], augment.normalize(whole, local), atol=1e-5)
  keys = jax.random.split(jax.random.PRNGKey(3), (4, 5))
  for b in range(4):
    for j, (group, k, settings) in enumerate([('global', 0, spec[0].settings[0]), ('global', 1, spec[0].settings[1])]):
      want = augment.simclr_view(keys[b, j], x[b], settings, (32, 32))
      np.testing.assert_allclose(made[group][k, b], want, atol=1e-5)
