"""Independent float64 NumPy reference ("oracle") of the LARS update rules.

Written only from these public sources:

* google-research/simclr @ 383d4143fd8cf7879ae10f1046a9baeb753ff438:
  ``tf2/lars_optimizer.py`` and ``lars_optimizer.py`` (classic_momentum=True,
  use_nesterov=False).  For a parameter that uses weight decay the gradient
  becomes ``g + wd * w``; the trust ratio is ``eeta * ||w|| / ||g + wd * w||``
  (1.0 when either norm is 0); ``v = m * v + lr * ratio * (g + wd * w)``;
  ``w -= v``.
* vturrisi/solo-learn @ 9187ea39c2c3f43c455ab06664d2b019a9802954:
  ``solo/utils/lars.py`` (dampening=0, nesterov=False).  When both ``||p||``
  and ``||g||`` are nonzero: ``lars_lr = eta * ||p|| / (||g|| + wd * ||p|| +
  eps)`` with eps = 1e-8, optionally ``lars_lr = min(lars_lr / lr, 1)``
  (clip_lr), and ``d_p = (g + wd * p) * lars_lr``; otherwise ``d_p = g`` (no
  weight decay).  ``buf = m * buf + d_p`` (first step ``buf = d_p``, i.e. a
  zero-initialised buffer); ``p -= lr * buf``.

Parameters with ndim <= 1 (biases, norm scales/offsets) take the plain
gradient: no weight decay and no trust ratio.  (simclr excludes these by
variable name; solo-learn's exclude_bias_n_norm uses ``p.ndim != 1``.)
"""

import numpy as np

_EPS = 1e-8


def _clip(ratio, lr):
    """LARC clipping as in solo-learn's clip_lr: min(ratio / lr, 1); lr == 0 -> 1."""
    if lr == 0.0:
        return 1.0
    return min(ratio / lr, 1.0)


def _direction_and_ratio(p, g, weight_decay, eta, trust_ratio, clip, lr):
    """Return (u, ratio): the update direction and its layer-wise scale."""
    if p.ndim <= 1:
        return g, 1.0

    p_norm = np.linalg.norm(p)

    if trust_ratio == "update_norm":
        # google-research/simclr: weight decay is always added, the ratio uses
        # the norm of the decayed gradient.
        u = g + weight_decay * p
        u_norm = np.linalg.norm(u)
        if p_norm > 0.0 and u_norm > 0.0:
            ratio = eta * p_norm / u_norm
            if clip:
                ratio = _clip(ratio, lr)
        else:
            ratio = 1.0
        return u, ratio

    if trust_ratio == "sum_of_norms":
        # solo-learn: ratio from the raw gradient norm plus wd * ||p||; weight
        # decay is only added when the ratio is computed.
        g_norm = np.linalg.norm(g)
        if p_norm != 0.0 and g_norm != 0.0:
            ratio = eta * p_norm / (g_norm + weight_decay * p_norm + _EPS)
            if clip:
                ratio = _clip(ratio, lr)
            return g + weight_decay * p, ratio
        return g, 1.0

    raise ValueError(f"unknown trust_ratio: {trust_ratio!r}")


def lars_reference(params, grads_per_step, lrs, momentum, weight_decay, eta,
                   trust_ratio, clip, lr_in_momentum):
    """params: dict name -> np.ndarray; grads_per_step: list of dicts (same names/shapes), one per step;
    lrs: list of the learning rate at each step (same length).
    Parameters with ndim <= 1 (biases, norms) get neither weight decay nor the trust ratio: they take the plain gradient.
    trust_ratio: 'update_norm' -> the google-research/simclr ratio eta*||p||/||g + wd*p|| (1 when either norm is 0; the update then is g + wd*p),
                 'sum_of_norms' -> solo-learn's eta*||p||/(||g|| + wd*||p|| + 1e-8) (when ||p|| or ||g|| is 0, the update is the plain g with ratio 1).
    clip: LARC as solo-learn's clip_lr: ratio = min(ratio / lr, 1) wherever the ratio is computed (lr == 0 -> ratio 1).
    lr_in_momentum: True -> google-research/simclr's classic momentum (v = m*v + lr*ratio*u; p -= v);
                    False -> PyTorch/solo-learn (v = m*v + ratio*u; p -= lr*v). Both start with v = 0.
    Returns a list of dicts: the params after each step, float64."""
    if len(grads_per_step) != len(lrs):
        raise ValueError("grads_per_step and lrs must have the same length")

    momentum = float(momentum)
    weight_decay = float(weight_decay)
    eta = float(eta)

    p_cur = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in p_cur.items()}

    history = []
    for grads, lr in zip(grads_per_step, lrs):
        lr = float(lr)
        for name in p_cur:
            p = p_cur[name]
            g = np.asarray(grads[name], np.float64)
            if g.shape != p.shape:
                raise ValueError(f"shape mismatch for {name}: {g.shape} vs {p.shape}")

            u, ratio = _direction_and_ratio(p, g, weight_decay, eta,
                                            trust_ratio, clip, lr)
            if lr_in_momentum:
                vel[name] = momentum * vel[name] + lr * ratio * u
                p_cur[name] = p - vel[name]
            else:
                vel[name] = momentum * vel[name] + ratio * u
                p_cur[name] = p - lr * vel[name]
        history.append({k: v.copy() for k, v in p_cur.items()})
    return history
