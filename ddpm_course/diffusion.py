r"""Gaussian diffusion: the forward process, the learned reverse process, its losses and bits/dim.

Chapter 03 (The ELBO). Notation follows Ho et al. 2020 and Nichol & Dhariwal 2021:

* forward: :math:`q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t} x_0, (1-\bar\alpha_t) I)`;
* posterior: :math:`q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t(x_t, x_0), \tilde\beta_t I)`;
* reverse: :math:`p_\theta(x_{t-1} \mid x_t) = \mathcal N(\mu_\theta(x_t, t), \Sigma_\theta(x_t, t))`,
  with :math:`\mu_\theta = \tilde\mu_t(x_t, \hat x_0)` where :math:`\hat x_0` comes from the
  network's prediction of ε, x0 or v;
* the bound: :math:`L = L_T + \sum_{t>1} L_{t-1} + L_0` (Eq. (5) of Ho et al. 2020), in bits/dim.

Shapes: images x0, x_t, noise are (N, C, H, W) (any (N, ...) works) in [-1, 1]; t is (N,) int64 in
{0, ..., T-1}. A ``model`` is any callable ``model(x_t, t, **model_kwargs) -> (N, C, ...)``
(or (N, 2C, ...) with ``var_type="learned_range"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from .schedules import NoiseSchedule
from .utils import check_choice, check_timesteps, extract

__all__ = [
    "GaussianDiffusion",
    "PMeanVariance",
    "OBJECTIVES",
    "VAR_TYPES",
    "LOSS_TYPES",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "training_draws",
]

OBJECTIVES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("simple", "hybrid", "vlb")
HYBRID_VLB_WEIGHT = 0.001  # lambda of L_hybrid = L_simple + lambda * L_vlb (Nichol & Dhariwal 2021, Sec. 3.1)

Model = Callable[..., torch.Tensor]


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: (N, ...) -> (N,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    r"""KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats (broadcasting).

    :math:`\tfrac12\big(-1 + \log\sigma_2^2 - \log\sigma_1^2 + \sigma_1^2/\sigma_2^2
    + (\mu_1-\mu_2)^2/\sigma_2^2\big)`.
    """
    mean1, logvar1, mean2, logvar2 = (
        torch.as_tensor(v) for v in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    r"""log-probability of 8-bit data under a Gaussian discretised into 256 bins (Ho et al. 2020, Eq. (13)).

    x: data in [-1, 1] on the grid {-1, -1 + 2/255, ..., 1}; means, log_scales: the Gaussian's mean
    and log standard deviation, broadcastable to x. Each bin is [x - 1/255, x + 1/255]; the edge
    bins are open (-inf at the bottom, +inf at the top). Returns per-element log-probabilities in
    nats. Works in log space with ``torch.special.log_ndtr``, which stays accurate far in the tails
    (``ndtr`` itself does not: in float32 it returns 0 six standard deviations below the mean):
    :math:`\log(\Phi(b) - \Phi(a)) = \log\Phi(b) + \log(1 - \Phi(a)/\Phi(b))`, evaluated on the side of
    the mean where :math:`b \le 0` so that nothing cancels. Middle-bin masses are floored at 1e-12
    (as in improved-diffusion), so one element costs at most 27.6 nats.
    """
    if torch.broadcast_shapes(x.shape, means.shape, log_scales.shape) != x.shape:
        raise ValueError(
            f"means {tuple(means.shape)} and log_scales {tuple(log_scales.shape)} must broadcast to x {tuple(x.shape)}"
        )
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    upper = inv_stdv * (centered + 1.0 / 255.0)
    lower = inv_stdv * (centered - 1.0 / 255.0)
    log_ndtr = torch.special.log_ndtr
    # a bin above the mean is mirrored below it: P(lower < Z < upper) = P(-upper < Z < -lower)
    above = lower > 0
    a, b = torch.where(above, -upper, lower), torch.where(above, -lower, upper)
    log_cdf_b = log_ndtr(b)
    log_mid = (log_cdf_b + torch.log1p(-torch.exp(log_ndtr(a) - log_cdf_b))).clamp(
        min=math.log(1e-12)
    )
    log_bottom = log_ndtr(upper)  # P(X <= x + 1/255)
    log_top = log_ndtr(-lower)  # P(X >= x - 1/255)
    return torch.where(x < -0.999, log_bottom, torch.where(x > 0.999, log_top, log_mid))


class PMeanVariance(NamedTuple):
    """The reverse step p(x_{t-1} | x_t): its mean, variance and log-variance (each broadcastable to
    x_t), and the network's implied predictions of x0 and of the noise (both like x_t)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor


def training_draws(
    num_timesteps: int,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The time bins and the noise of a training batch, as every process's
    ``training_losses`` takes them: t (N,) int64 uniform in {0, ..., num_timesteps - 1} and
    noise ~ N(0, I) like x0, each drawn with ``generator`` when not given, and checked (x0
    batched, t in range, noise of x0's shape) when given."""
    if x0.ndim < 2:
        raise ValueError(
            f"x0 must be batched, shape (N, C, ...), got {tuple(x0.shape)}"
        )
    if t is None:
        device = generator.device if generator is not None else x0.device
        t = torch.randint(
            0, num_timesteps, (x0.shape[0],), generator=generator, device=device
        )
    t = check_timesteps(t, num_timesteps, batch_size=x0.shape[0])
    if noise is None:
        noise = torch.randn(
            x0.shape, generator=generator, dtype=x0.dtype, device=x0.device
        )
    elif noise.shape != x0.shape:
        raise ValueError(
            f"noise has shape {tuple(noise.shape)} but x0 has shape {tuple(x0.shape)}"
        )
    return t, noise


class GaussianDiffusion:
    r"""The DDPM forward process and reverse-process parameterisation for a schedule of betas.

    Args:
        betas: (T,) betas, or a :class:`~ddpm_course.schedules.NoiseSchedule`.
        objective: what the network predicts: ``"eps"`` (the noise, Ho et al. 2020), ``"x0"`` (the
            clean image) or ``"v"`` (:math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0`,
            Salimans & Ho 2022).
        var_type: the reverse variance: ``"fixed_small"`` (:math:`\tilde\beta_t`),
            ``"fixed_large"`` (:math:`\beta_t`, with :math:`\tilde\beta_1` at t = 0), or
            ``"learned_range"`` (the network's extra C channels v in [-1, 1] interpolate the log:
            :math:`\log\Sigma = \tfrac{v+1}2\log\beta_t + \tfrac{1-v}2\log\tilde\beta_t`,
            Eq. (15) of Nichol & Dhariwal 2021).
        timestep_map: for a respaced process (see :func:`ddpm_course.samplers.respace`), the trained
            timestep that each of these T steps stands for; the model is always called with the
            mapped t. Default: the identity.
    """

    def __init__(
        self,
        betas: torch.Tensor | np.ndarray | NoiseSchedule,
        objective: str = "eps",
        var_type: str = "fixed_small",
        timestep_map: torch.Tensor | None = None,
    ) -> None:
        self.schedule = (
            betas
            if isinstance(betas, NoiseSchedule)
            else NoiseSchedule(torch.as_tensor(betas))
        )
        self.objective = check_choice("objective", objective, OBJECTIVES)
        self.var_type = check_choice("var_type", var_type, VAR_TYPES)
        T = self.schedule.num_timesteps
        if timestep_map is None:
            timestep_map = torch.arange(T)
        timestep_map = torch.as_tensor(timestep_map, dtype=torch.long)
        if timestep_map.shape != (T,):
            raise ValueError(
                f"timestep_map must have shape ({T},), got {tuple(timestep_map.shape)}"
            )
        self.timestep_map = timestep_map
        # (T,) float64 tables of the eps / x0 / v conversions, computed once (as improved-diffusion)
        alphas_cumprod = self.schedule.alphas_cumprod
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / alphas_cumprod - 1.0).sqrt()

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, objective={self.objective!r}, "
            f"var_type={self.var_type!r})"
        )

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def betas(self) -> torch.Tensor:
        return self.schedule.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    def _t(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return check_timesteps(t, self.num_timesteps, batch_size=x.shape[0]).to(
            x.device
        )

    # ----------------------------------------------------------------- forward process q
    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Mean, variance and log-variance of :math:`q(x_t \mid x_0)` (Eq. (4) of Ho et al. 2020)."""
        t = self._t(t, x0)
        s = self.schedule
        mean = extract(self.sqrt_alphas_cumprod, t, x0) * x0
        variance = extract(1.0 - s.alphas_cumprod, t, x0)
        log_variance = extract(torch.log1p(-s.alphas_cumprod), t, x0)
        return mean, variance, log_variance

    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Draw :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon` (Eq. (4) of Ho et al. 2020).

        x0: (N, ...); t: (N,) or a scalar; noise: like x0 (drawn with ``generator`` when None).
        """
        t = self._t(t, x0)
        if noise is None:
            noise = torch.randn(
                x0.shape, generator=generator, dtype=x0.dtype, device=x0.device
            )
        elif noise.shape != x0.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)} but x0 has shape {tuple(x0.shape)}"
            )
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Mean, variance and clipped log-variance of :math:`q(x_{t-1} \mid x_t, x_0)`.

        :math:`\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}x_0
        + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t`,
        :math:`\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t` (Eqs. (6)-(7) of Ho et al. 2020).
        """
        if x0.shape != x_t.shape:
            raise ValueError(
                f"x0 {tuple(x0.shape)} and x_t {tuple(x_t.shape)} must have the same shape"
            )
        t = self._t(t, x_t)
        s = self.schedule
        mean = (
            extract(s.posterior_mean_coef1, t, x_t) * x0
            + extract(s.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = extract(s.posterior_variance, t, x_t)
        log_variance = extract(s.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # ------------------------------------------------------ conversions between eps, x0, v
    def predict_x0_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}` (Eq. (4) solved for x0)."""
        t = self._t(t, x_t)
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x0(
        self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\epsilon = (x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}`."""
        t = self._t(t, x_t)
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def predict_v(
        self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0` (Salimans & Ho 2022, Sec. 4)."""
        t = self._t(t, x0)
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * eps
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def predict_x0_from_v(
        self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v`."""
        t = self._t(t, x_t)
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def predict_eps_from_v(
        self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\epsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v`."""
        t = self._t(t, x_t)
        return (
            extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
            + extract(self.sqrt_alphas_cumprod, t, x_t) * v
        )

    # ------------------------------------------------------------ reverse process p_theta
    def model_output(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Call ``model(x_t, t_trained, **model_kwargs)`` with t mapped to the trained timesteps and
        check the shape of what comes back: like x_t, or with 2C channels for ``learned_range``."""
        t = self._t(t, x_t)
        out = model(x_t, self.timestep_map.to(t.device)[t], **(model_kwargs or {}))
        expected = list(x_t.shape)
        if self.var_type == "learned_range":
            expected[1] *= 2
        if list(out.shape) != expected:
            hint = (
                " (learned_range needs twice the input channels)"
                if self.var_type == "learned_range"
                else ""
            )
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; expected {tuple(expected)}{hint}"
            )
        return out

    def predictions_from_output(
        self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred_x0, pred_eps) implied by the network's mean output ``out`` (C channels) under the objective."""
        if self.objective == "eps":
            return self.predict_x0_from_eps(x_t, t, out), out
        if self.objective == "x0":
            return out, self.predict_eps_from_x0(x_t, t, out)
        return self.predict_x0_from_v(x_t, t, out), self.predict_eps_from_v(x_t, t, out)

    def _variance(
        self, var_values: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.schedule
        if self.var_type == "fixed_small":
            return extract(s.posterior_variance, t, x_t), extract(
                s.posterior_log_variance_clipped, t, x_t
            )
        if self.var_type == "fixed_large":
            # beta_t, except at t = 0 where beta_0 would make the decoder needlessly wide (improved-diffusion)
            variance = (
                torch.cat([s.posterior_variance[1:2], s.betas[1:]])
                if s.num_timesteps > 1
                else s.betas
            )
            return extract(variance, t, x_t), extract(torch.log(variance), t, x_t)
        min_log = extract(s.posterior_log_variance_clipped, t, x_t)
        max_log = extract(torch.log(s.betas), t, x_t)
        frac = (var_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        return torch.exp(log_variance), log_variance

    def p_mean_variance(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        model_out: torch.Tensor | None = None,
    ) -> PMeanVariance:
        r"""The reverse step :math:`p_\theta(x_{t-1} \mid x_t)`: mean, variance, log-variance, pred_x0, pred_eps.

        The mean is the posterior mean :math:`\tilde\mu_t(x_t, \hat x_0)` at the network's
        :math:`\hat x_0`, clipped to [-1, 1] when ``clip_denoised`` (pred_eps is then recomputed from the
        clipped :math:`\hat x_0`, so that the two stay consistent). ``model_out`` skips the network
        call when the output is already known.
        """
        t = self._t(t, x_t)
        out = (
            self.model_output(model, x_t, t, model_kwargs)
            if model_out is None
            else model_out
        )
        var_values = None
        if self.var_type == "learned_range":
            out, var_values = out.chunk(2, dim=1)
        pred_x0, pred_eps = self.predictions_from_output(out, x_t, t)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
            pred_eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        variance, log_variance = self._variance(var_values, x_t, t)
        return PMeanVariance(mean, variance, log_variance, pred_x0, pred_eps)

    # -------------------------------------------------------------------------- losses
    def vb_terms_bpd(
        self, p: PMeanVariance, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        r"""One term of the bound in bits/dim, (N,): :math:`L_{t-1} = KL(q(x_{t-1}|x_t,x_0) \| p_\theta(x_{t-1}|x_t))`
        for t > 0 and the decoder NLL :math:`L_0 = -\log p_\theta(x_0 \mid x_1)` at t = 0.

        ``p`` is the reverse step of :meth:`p_mean_variance` (only its ``mean`` and ``log_variance``
        are used); x0, x_t: (N, ...) in [-1, 1]; t: (N,) int64. Each KL and NLL is averaged over the
        non-batch dimensions and divided by log 2."""
        true_mean, _, true_log_variance = self.q_posterior(x0, x_t, t)
        kl = mean_flat(
            normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)
        ) / math.log(2.0)
        decoder_nll = -mean_flat(
            discretized_gaussian_log_likelihood(
                x0, means=p.mean, log_scales=0.5 * p.log_variance.expand_as(x0)
            )
        ) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
        loss_type: str = "simple",
        generator: torch.Generator | None = None,
        min_snr_gamma: float | None = None,
    ) -> dict[str, torch.Tensor]:
        r"""Per-example training losses at timesteps ``t`` (uniform when None): a dict of (N,) tensors.

        * ``"simple"``: ``loss = mse``, the mean squared error between the network output and its
          target (ε, x0 or v): :math:`L_\text{simple}`, Eq. (14) of Ho et al. 2020. With
          ``min_snr_gamma`` γ, ``loss = w_t · mse`` with the min-SNR-γ weight of Hang et al. 2023,
          :math:`w_t = \min(\text{SNR}_t, \gamma)` divided by :math:`\text{SNR}_t` (ε),
          1 (x0) or :math:`\text{SNR}_t + 1` (v): in each case :math:`\min(\text{SNR}_t, \gamma)`
          times the x0-error.
        * ``"hybrid"``: ``loss = mse + 0.001 · T · vb`` where ``vb`` is :math:`L_{t-1}` in bits/dim
          computed with the mean detached, so that it trains only the learned variance
          (:math:`L_\text{hybrid}`, Sec. 3.1 of Nichol & Dhariwal 2021; T·vb estimates :math:`\sum_t L_t`).
        * ``"vlb"``: ``loss = T · vb``, an unbiased estimate of :math:`\sum_t L_t` (bits/dim).
        """
        check_choice("loss_type", loss_type, LOSS_TYPES)
        if loss_type != "simple" and self.var_type != "learned_range":
            raise ValueError(
                f"loss_type {loss_type!r} trains the reverse variance, but var_type {self.var_type!r} fixes it "
                "(the bound's mean term would only rescale L_simple); use var_type='learned_range' or loss_type='simple'"
            )
        if min_snr_gamma is not None and (
            loss_type != "simple" or not min_snr_gamma > 0
        ):
            raise ValueError(
                f"min_snr_gamma must be positive and needs loss_type 'simple', got {min_snr_gamma!r}"
            )
        t, noise = training_draws(self.num_timesteps, x0, t, noise, generator)
        t = t.to(x0.device)
        x_t = self.q_sample(x0, t, noise=noise)
        out = self.model_output(model, x_t, t, model_kwargs)
        mean_out = out.chunk(2, dim=1)[0] if self.var_type == "learned_range" else out
        target = {"eps": noise, "x0": x0, "v": self.predict_v(x0, t, noise)}[
            self.objective
        ]
        terms = {"mse": mean_flat((target - mean_out) ** 2)}
        if loss_type == "simple":
            terms["loss"] = terms["mse"]
            if min_snr_gamma is not None:
                snr = (self.alphas_cumprod / (1 - self.alphas_cumprod)).to(t.device)[
                    t
                ]  # (N,) float64
                divisor = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[
                    self.objective
                ]
                terms["loss"] = terms["mse"] * (
                    snr.clamp(max=min_snr_gamma) / divisor
                ).to(terms["mse"].dtype)
            return terms
        if loss_type == "hybrid":
            frozen = torch.cat([mean_out.detach(), out.chunk(2, dim=1)[1]], dim=1)
            p = self.p_mean_variance(
                model, x_t, t, clip_denoised=False, model_out=frozen
            )
            terms["vb"] = self.vb_terms_bpd(p, x0, x_t, t)
            terms["loss"] = (
                terms["mse"] + HYBRID_VLB_WEIGHT * self.num_timesteps * terms["vb"]
            )
            return terms
        p = self.p_mean_variance(model, x_t, t, clip_denoised=False, model_out=out)
        terms["vb"] = self.vb_terms_bpd(p, x0, x_t, t)
        terms["loss"] = self.num_timesteps * terms["vb"]
        return terms

    # ------------------------------------------------------------------------ bits/dim
    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        r""":math:`L_T = KL(q(x_T \mid x_0) \| \mathcal N(0, I))` in bits/dim, (N,). No parameters, no training."""
        t = torch.full(
            (x0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x0.device
        )
        mean, _, log_variance = self.q_mean_variance(x0, t)
        return mean_flat(
            normal_kl(
                mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean)
            )
        ) / math.log(2.0)

    @torch.no_grad()
    def calc_bpd_loop(
        self,
        model: Model,
        x0: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        r"""The whole variational bound on :math:`-\log_2 p(x_0)` per dimension, term by term.

        x0: (N, ...) 8-bit data scaled to [-1, 1]. Returns ``total_bpd`` (N,) :math:`= L_T +
        \sum_{t} L_t`, ``prior_bpd`` (N,), and (N, T) tensors ``vb`` (the term at each t: the
        decoder NLL at t = 0, KLs above), ``x0_mse`` and ``mse`` (the noise-prediction error),
        each from one draw of x_t per t.
        """
        from tqdm.auto import tqdm

        vb, x0_mse, mse = [], [], []
        for step in tqdm(
            range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="bits/dim"
        ):
            t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
            noise = torch.randn(
                x0.shape, generator=generator, dtype=x0.dtype, device=x0.device
            )
            x_t = self.q_sample(x0, t, noise=noise)
            p = self.p_mean_variance(
                model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
            )
            vb.append(self.vb_terms_bpd(p, x0, x_t, t))
            x0_mse.append(mean_flat((p.pred_x0 - x0) ** 2))
            mse.append(mean_flat((p.pred_eps - noise) ** 2))
        vb_t = torch.stack(vb[::-1], dim=1)
        prior = self.prior_bpd(x0)
        return {
            "total_bpd": vb_t.sum(dim=1) + prior,
            "prior_bpd": prior,
            "vb": vb_t,
            "x0_mse": torch.stack(x0_mse[::-1], dim=1),
            "mse": torch.stack(mse[::-1], dim=1),
        }
