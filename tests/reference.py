"""Independent NumPy float64 transcriptions of the paper's algorithms.

Written from the paper's pseudo-code (Loshchilov & Hutter, ICLR 2019,
Algorithms 1 and 2; SGDR, ICLR 2017, eq. 5), not from the library: the tests
check the library against these. Parameters are dicts of NumPy arrays; ``eta``,
``alpha`` and ``lam`` are Python callables of the 0-based step.
"""

from __future__ import annotations

import math

import numpy as np


def sgdr(step, t0, t_mult=1, eta_min=0.0, eta_max=1.0, decay=1.0, warmup=0):
  """SGDR's multiplier at 0-based ``step``, by walking the cycles one by one."""
  if step < warmup:
    return eta_max * step / warmup
  t_cur, t_i, i = step - warmup, t0, 0
  while t_cur >= t_i:
    t_cur -= t_i
    t_i *= t_mult
    i += 1
  peak = max(eta_max * decay**i, eta_min)
  return eta_min + 0.5 * (peak - eta_min) * (1 + math.cos(math.pi * t_cur / t_i))


def cycle_length(step, t0, t_mult=1, warmup=0):
  """Length ``T_i`` of the cycle holding ``step`` (the first during warmup)."""
  t_cur, t_i = max(step - warmup, 0), t0
  while t_cur >= t_i:
    t_cur -= t_i
    t_i *= t_mult
  return t_i


def _as_fn(x):
  return x if callable(x) else (lambda t: x)


def _variant(lam, step, theta, eta, cautious, peak):
  """Per-entry decay coefficient of the cautious and corrected variants.

  ``step`` is how the optimizer moves ``θ`` before the decay. Cautious: the
  coefficient is kept where ``step · θ <= 0`` (the step moves ``θ`` toward
  zero, or not at all) and zeroed elsewhere. Corrected: times ``η_t / η_max``.
  """
  lam = lam * np.ones_like(theta)
  if cautious:
    lam = np.where(step * theta <= 0, lam, 0.0)
  if peak is not None:
    lam = lam * eta / peak
  return lam


def adam(
  params,
  grads,
  alpha,
  *,
  b1=0.9,
  b2=0.999,
  eps=1e-8,
  eps_root=0.0,
  lam=0.0,
  eta=1.0,
  decoupled=True,
  nesterov=False,
  mask=None,
  cautious=False,
  peak=None,
):
  """Algorithm 2: Adam with L2 (``decoupled=False``) or AdamW.

  Decoupled variants: ``cautious`` decays entry ``i`` only where the Adam step
  ``s_i = -η_t α m̂_i / (sqrt(v̂_i) + ε)`` has ``s_i θ_i <= 0`` (Chen et al.
  2025); ``peak`` (η_max) makes the decay corrected, ``λ_t η_t / η_max``
  (Defazio 2025), so that ``θ`` loses ``η_t² λ_t / η_max`` of itself.

  With ``nesterov`` the first moment is NAdam's (Dozat 2016, as optax documents
  it): ``m̂_t = β1 m_t / (1-β1^(t+1)) + (1-β1) g_t / (1-β1^t)``.

  ``grads`` is a list of gradient dicts, one per step (computed elsewhere at
  the parameters of that step, or fixed), or of callables that take the
  current parameters and return one (the gradient of a real loss). Returns the
  parameters after each step. ``mask[name]`` False means no decay for that leaf;
  a bool array there decays only its True elements. ``eps_root`` is added to
  ``v̂`` inside the square root, ``eps`` outside it.
  """
  alpha, lam, eta = _as_fn(alpha), _as_fn(lam), _as_fn(eta)
  theta = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  v = {k: np.zeros_like(x) for k, x in theta.items()}
  history = []
  for t, g_t in enumerate(grads, start=1):
    s = t - 1  # 0-based schedule step
    g_t = g_t(theta) if callable(g_t) else g_t
    new = {}
    for k in theta:
      decay = lam(s) * (1.0 if mask is None else np.asarray(mask[k], np.float64))
      g = np.asarray(g_t[k], np.float64)
      if not decoupled:
        g = g + decay * theta[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1**t)
      if nesterov:
        m_hat = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
      v_hat = v[k] / (1 - b2**t)
      step = alpha(s) * m_hat / (np.sqrt(v_hat + eps_root) + eps)
      if decoupled:
        decay = _variant(decay, -eta(s) * step, theta[k], eta(s), cautious, peak)
        step = step + decay * theta[k]
      new[k] = theta[k] - eta(s) * step
    theta = new
    history.append(dict(theta))
  return history


def sgd(
  params,
  grads,
  alpha,
  *,
  momentum=0.9,
  lam=0.0,
  eta=1.0,
  decoupled=True,
  nesterov=False,
  mask=None,
  cautious=False,
  peak=None,
):
  """Algorithm 1: SGD with momentum and L2 (``decoupled=False``) or SGDW.

  ``η_t α`` sits inside the momentum buffer, as in the paper. With
  ``nesterov`` the step is ``β m_t + η_t α g_t``. ``grads`` as in :func:`adam`.
  ``cautious`` and ``peak`` as in :func:`adam`, the step being ``-m_t``.
  """
  alpha, lam, eta = _as_fn(alpha), _as_fn(lam), _as_fn(eta)
  theta = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in theta.items()}
  history = []
  for t, g_t in enumerate(grads, start=1):
    s = t - 1
    g_t = g_t(theta) if callable(g_t) else g_t
    new = {}
    for k in theta:
      decay = lam(s) * (1.0 if mask is None else np.asarray(mask[k], np.float64))
      g = np.asarray(g_t[k], np.float64)
      if not decoupled:
        g = g + decay * theta[k]
      m[k] = momentum * m[k] + eta(s) * alpha(s) * g
      step = momentum * m[k] + eta(s) * alpha(s) * g if nesterov else m[k]
      new[k] = theta[k] - step
      if decoupled:
        decay = _variant(decay, -step, theta[k], eta(s), cautious, peak)
        new[k] = new[k] - eta(s) * decay * theta[k]
    theta = new
    history.append(dict(theta))
  return history


def restart_steps(t0, t_mult, upto):
  """Steps at which SGDR restarts, up to ``upto``, walking the cycles in float64.

  Cycle ``i`` begins at the real ``S_i = S_{i-1} + T_{i-1}`` and restarts at
  the first integer step at or after it.
  """
  steps, start, length = [], 0.0, float(t0)
  while start <= upto:
    steps.append(math.ceil(start))
    start, length = start + length, length * t_mult
  return steps
