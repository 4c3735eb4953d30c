import jax.numpy as jnp
import numpy as np

from simclr_jax.evals import knn_top1


def _normalise(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_knn(train_f, train_y, test_f, k, t, num_classes):
  sim = test_f @ train_f.T
  idx = np.argsort(-sim, axis=1)[:, :k]
  votes = np.zeros((len(test_f), num_classes))
  for i in range(len(test_f)):
    for j in idx[i]:
      votes[i, train_y[j]] += np.exp(sim[i, j] / t)
  return votes.argmax(1)


def test_matches_a_numpy_weighted_knn():
  rng = np.random.RandomState(0)
  train_f, test_f = _normalise(rng.randn(300, 16)), _normalise(rng.randn(120, 16))
  train_y, test_y = rng.randint(0, 5, 300), rng.randint(0, 5, 120)
  expected = (numpy_knn(train_f, train_y, test_f, 20, 0.1, 5) == test_y).mean()
  got = knn_top1(jnp.asarray(train_f, jnp.float32), jnp.asarray(train_y), jnp.asarray(test_f, jnp.float32),
                 jnp.asarray(test_y), num_classes=5, k=20, temperature=0.1, chunk=50)
  assert abs(got - expected) < 1e-9


def test_separable_clusters_are_classified_perfectly():
  rng = np.random.RandomState(1)
  centres = _normalise(rng.randn(4, 32)) * 10
  train_y, test_y = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 10)
  train_f = _normalise(centres[train_y] + rng.randn(200, 32))
  test_f = _normalise(centres[test_y] + rng.randn(40, 32))
  assert knn_top1(jnp.asarray(train_f), jnp.asarray(train_y), jnp.asarray(test_f), jnp.asarray(test_y),
                  num_classes=4, k=200) == 1.0
