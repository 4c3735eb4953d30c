"""DCL and DCLW (Yeh et al. 2022, "Decoupled Contrastive Learning"): SimCLR with the positive pair
taken out of the denominator. NT-Xent's gradient carries a factor that shrinks when the positive
is already close or the negatives are easy (the negative-positive coupling); without the positive
in the log-sum the factor is gone and a small batch trains as well as a large one. DCLW weights
each positive term by the negative von Mises-Fisher weighting. Recipes: configs/dcl.py,
configs/dclw.py.

    python -m simclr_jax.main --config=configs/dcl.py     # --config.dcl_sigma=0.5 for DCLW

With z_i^(1), z_i^(2) the normalised projections of image i's two views and tau the temperature,
the paper's Eq. 6 per image i and view k:
    L_i^(k) = -w_i <z_i^(1), z_i^(2)> / tau + log sum_{l in {1, 2}, j != i} exp(<z_i^(k), z_j^(l)> / tau)
(one log over the 2N - 2 negatives: both views of every other image of the global batch), the
loss the mean over the 2N terms. DCL: w_i = 1. DCLW (dcl_sigma > 0): w_i = 2 - exp(<z_i^(1),
z_i^(2)> / sigma) / mean_j exp(<z_j^(1), z_j^(2)> / sigma), the weights taken as constants for
the gradient, as lightly's DCLWLoss detaches them. lightly's DCLLoss took two log-sums (over the
same view's negatives and over the other view's) until 2025 (lightly-ai/lightly #1827), so its
2023 benchmark figures come from that form; it now takes the paper's one, as this module does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from simclr_jax.methods.base import Field, l2_normalize, non_negative, positive
from simclr_jax.methods.simclr import SimCLR

_MASKED = -1e9  # finite, so no -inf reaches the log-sum or a NaN check


def dcl(z1: jax.Array, z2: jax.Array, temperature: float = 0.1, sigma: float = 0.0) -> jax.Array:
  """The decoupled contrastive loss of two views' projections [N, D] (z1[k] and z2[k] the views of
  image k), in float32; sigma > 0 weights the positives (DCLW)."""
  z1, z2 = l2_normalize(z1), l2_normalize(z2)
  n = z1.shape[0]
  positive = jnp.sum(z1 * z2, axis=-1)  # [N]
  if sigma > 0:
    weights = 2 - n * jax.nn.softmax(jax.lax.stop_gradient(positive) / sigma)
  else:
    weights = jnp.ones_like(positive)
  z = jnp.concatenate([z1, z2])  # rows k and N + k: image k's two views
  logits = z @ z.T / temperature  # [2N, 2N]
  image = jnp.arange(2 * n) % n
  logits = jnp.where(image[:, None] == image[None, :], _MASKED, logits)  # the anchor and its positive out
  negatives = jax.nn.logsumexp(logits, axis=-1)  # [2N]
  return jnp.mean(-jnp.tile(weights * positive, 2) / temperature + negatives)


class DCL(SimCLR):
  NAME = 'dcl'
  PAPER = 'Yeh et al. 2022, Decoupled Contrastive Learning'
  # SimCLR's fields but its NT-Xent clamp; its temperature at the paper's and lightly's 0.1.
  FIELDS = {**{k: v for k, v in SimCLR.FIELDS.items() if k != 'clamp_similarity'},
            'temperature': Field(0.1, positive, doc='the temperature'),
            'dcl_sigma': Field(0.0, non_negative, defines_run=True,
                               doc='0: DCL; > 0: DCLW, each positive weighted by 2 - exp(s/sigma) / mean exp(s/sigma)')}

  def loss(self, model, out, state, views, step, params=None):
    z1, z2 = out['global']['projection']
    loss = dcl(z1, z2, self.config['temperature'], self.config['dcl_sigma'])
    return loss, state, {}


METHOD = DCL
