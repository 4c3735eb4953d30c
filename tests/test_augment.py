import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import augment
from simclr_jax.augment import AugmentParams

IDENTITY = AugmentParams(crop_scale=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)


def _images(n=16, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 3)), jnp.uint8)


views_fn = jax.jit(augment.simclr_views, static_argnums=2)


def test_shapes_and_dtypes():
  x = _images(8)
  v = views_fn(jax.random.PRNGKey(0), x, AugmentParams(blur_prob=0.5))
  assert v.shape == (16, 32, 32, 3) and v.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(v)))
  c = augment.classifier_views(jax.random.PRNGKey(0), x, AugmentParams())
  assert c.shape == (8, 32, 32, 3) and c.dtype == jnp.float32


def test_same_key_same_views_other_key_other_views():
  x = _images(8)
  a = views_fn(jax.random.PRNGKey(1), x, AugmentParams())
  b = views_fn(jax.random.PRNGKey(1), x, AugmentParams())
  c = views_fn(jax.random.PRNGKey(2), x, AugmentParams())
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a[0::2], a[1::2])  # the two views of an image differ


def test_no_op_settings_give_the_normalised_input():
  x = _images(8)
  v = views_fn(jax.random.PRNGKey(0), x, IDENTITY)
  expected = augment.eval_view(x, IDENTITY)
  np.testing.assert_allclose(v[0::2], expected, atol=1e-5)
  np.testing.assert_allclose(v[1::2], expected, atol=1e-5)
  mean = np.asarray(expected).mean(axis=(0, 1, 2))
  raw = (np.asarray(x) / 255.0 - np.array(augment.CIFAR_MEAN)) / np.array(augment.CIFAR_STD)
  np.testing.assert_allclose(expected, raw, atol=1e-5)
  assert mean.shape == (3,)


def _rate(hits, p, n):
  """Measured rate within 4 standard errors of p."""
  return abs(hits / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_flip_rate_matches_probability():
  n = 2000
  x = jnp.tile(_images(1, seed=3), (n, 1, 1, 1))
  params = IDENTITY._replace(flip_prob=0.5)
  v = np.asarray(jax.jit(augment.simclr_views, static_argnums=2)(jax.random.PRNGKey(5), x, params))
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
  params = AugmentParams(flip_prob=0.0, crop_padding=0)
  np.testing.assert_allclose(augment.classifier_views(jax.random.PRNGKey(0), x, params),
                             augment.eval_view(x, params), atol=1e-6)
