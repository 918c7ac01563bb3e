r"""Guidance and conditioning: classifier guidance, classifier-free guidance, inpainting, SR, SDEdit.

Chapter 06. Every piece either wraps the network (so that every sampler of
:mod:`ddpm_course.samplers` accepts it: a model is any ``model(x_t, t, **model_kwargs)``) or is a
short loop over :func:`~ddpm_course.samplers.ddpm_step`:

* **Classifier-free guidance** (Ho & Salimans 2022): :class:`ClassifierFreeGuidance` evaluates the
  conditional and the null-class predictions in one batched forward and returns
  :func:`cfg_combine`, :math:`(1+w)\,\epsilon(x, c) - w\,\epsilon(x, \varnothing)`.
* **Classifier guidance** (Dhariwal & Nichol 2021): :func:`classifier_log_prob_grad` is
  :math:`\nabla_{x_t}\log p_\phi(y \mid x_t)`; :func:`classifier_guided_eps` shifts the predicted
  noise (their Eq. 14, for DDIM and any ε-based sampler, wrapped as :class:`ClassifierGuidance`)
  and :func:`classifier_guided_ddpm_sample` shifts the ancestral mean (their Algorithm 1).
* **Inpainting**: :func:`replacement_step` puts the known pixels, noised by
  :math:`q(x_{t} \mid x_0)`, into the sample after every step; :func:`inpaint` runs it on the
  RePaint schedule :func:`repaint_schedule` (Lugmayr et al. 2022; jump length 1 and one sample per
  step is the plain replacement method).
* **Super-resolution** (SR3, Saharia et al. 2021): :func:`sr_downsample` (the degradation, 2×2
  average pooling), :func:`sr_model_input` (the concatenation the network sees) and
  :func:`super_resolve`.
* **SDEdit** (Meng et al. 2022): :func:`sdedit_start` noises a guide image to :math:`t_0`,
  :func:`sdedit` denoises it.

Shapes: images (N, C, H, W) in [-1, 1]; labels (N,) int64; masks broadcast against the images,
1 for a known pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion
from .guidance_nets import sr_model_input
from .samplers import ddpm_sample, ddpm_step, respace
from .utils import check_class_labels

__all__ = [
    "cfg_combine",
    "ClassifierFreeGuidance",
    "classifier_log_prob_grad",
    "classifier_guided_eps",
    "ClassifierGuidance",
    "guided_mean",
    "classifier_guided_ddpm_sample",
    "replacement_step",
    "repaint_schedule",
    "forward_step",
    "inpaint",
    "sr_downsample",
    "sr_model_input",
    "super_resolve",
    "sdedit_start",
    "sdedit",
]


# ------------------------------------------------------------------ classifier-free guidance
def cfg_combine(
    eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    r"""Classifier-free guidance, Eq. (6) of Ho & Salimans 2022:

    .. math:: \tilde\epsilon = (1 + w)\,\epsilon_\theta(x_t, c) - w\,\epsilon_\theta(x_t, \varnothing)

    w = 0 is plain conditional sampling. The other common convention (GLIDE, diffusers'
    ``guidance_scale``) writes :math:`\epsilon(\varnothing) + s(\epsilon(c) - \epsilon(\varnothing))`,
    the same with s = 1 + w. eps_cond, eps_uncond: (N, ...) -> (N, ...).
    """
    return (1 + guidance_scale) * eps_cond - guidance_scale * eps_uncond


class ClassifierFreeGuidance(nn.Module):
    r"""A class-conditional model guided without a classifier: a model every sampler accepts.

    ``forward(x_t, t, y=None)`` stacks the batch twice, with the labels and with the null class
    (index ``model.num_classes``), runs the network once on the 2N images and returns
    :func:`cfg_combine` of the two halves. The labels are ``y`` when the sampler passes them
    (``model_kwargs={"y": ...}``), else the ``labels`` given here. With a learned variance (twice
    the channels) only the first half of the output (ε, x0 or v: the combination is linear in
    each) is guided and the conditional variance kept.

    model: a :class:`~ddpm_course.nn.UNet` with ``num_classes``; labels: (N,) int64 in
    {0, ..., num_classes - 1} or None; guidance_scale: w >= 0. ``max_timestep``: guide only at
    trained timesteps t <= max_timestep, and sample conditionally (w = 0) above, where the
    global layout is decided (the limited interval of Kynkäänniemi et al. 2024); None guides
    at every step. ``uncond_model``: take ε(x_t, ∅) from this separately trained unconditional
    network (same schedule and objective, called as ``uncond_model(x_t, t)``) instead of the
    model's null class; Ho & Salimans train one network for both only for convenience. Then the
    two halves are two forward passes of N images each.
    """

    def __init__(
        self,
        model: nn.Module,
        guidance_scale: float,
        labels: torch.Tensor | None = None,
        max_timestep: int | None = None,
        uncond_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.max_timestep = max_timestep
        if uncond_model is not None and getattr(uncond_model, "num_classes", None):
            raise ValueError(
                "uncond_model must be an unconditional network (num_classes None), got one with "
                f"{uncond_model.num_classes} classes; leave uncond_model=None to use the "
                "model's own null class"
            )
        self.uncond_model = uncond_model
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError(
                "classifier-free guidance needs a class-conditional model (num_classes set, with a "
                "null class), but this model is unconditional; use e.g. the 'digits-cond' model"
            )
        if not guidance_scale >= 0:
            raise ValueError(
                f"guidance_scale w must be >= 0 (0: no guidance), got {guidance_scale}"
            )
        self.model, self.guidance_scale, self.num_classes = (
            model,
            float(guidance_scale),
            num_classes,
        )
        self.labels = (
            None if labels is None else self._check_labels(torch.as_tensor(labels))
        )

    def _check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return check_class_labels(labels, self.num_classes, null=False)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        labels = self.labels if y is None else self._check_labels(torch.as_tensor(y))
        if labels is None or labels.shape != (x.shape[0],):
            got = None if labels is None else tuple(labels.shape)
            raise ValueError(
                f"need ({x.shape[0]},) class labels for x_t {tuple(x.shape)}, got {got}"
            )
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if self.uncond_model is not None:
            cond = self.model(x, t, y=labels.to(x.device))
            uncond = self.uncond_model(x, t)
            mismatched = (
                uncond.shape[0] != cond.shape[0] or uncond.shape[2:] != cond.shape[2:]
            )
            if mismatched or uncond.shape[1] < x.shape[1]:
                raise ValueError(
                    f"uncond_model returned {tuple(uncond.shape)} for x_t {tuple(x.shape)}, "
                    f"the conditional model {tuple(cond.shape)}: give an unconditional model "
                    "of the same images (size, channels) as the conditional one"
                )
        else:
            null = torch.full_like(labels, self.num_classes)
            both = self.model(
                torch.cat([x, x]),
                torch.cat([t, t]),
                y=torch.cat([labels, null]).to(x.device),
            )
            cond, uncond = both.chunk(2, dim=0)
        channels = x.shape[1]
        scale = torch.full((x.shape[0],), self.guidance_scale, device=x.device)
        if self.max_timestep is not None:
            scale = torch.where(t.to(x.device) <= self.max_timestep, scale, 0.0)
        scale = scale.to(cond.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        guided = cfg_combine(cond[:, :channels], uncond[:, :channels], scale)
        return torch.cat([guided, cond[:, channels:]], dim=1)


# ---------------------------------------------------------------------- classifier guidance
def classifier_log_prob_grad(
    classifier: nn.Module, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    r""":math:`\nabla_{x_t}\log p_\phi(y \mid x_t, t)`, the gradient of the log-softmax of the
    classifier's logits at the labels (works inside ``torch.no_grad()``).

    classifier: ``classifier(x_t, t) -> (N, K)`` logits; x_t: (N, C, H, W); t: (N,) trained
    timesteps; labels: (N,) int64 -> (N, C, H, W). Each image's gradient is its own (the sum over
    the batch separates).
    """
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x, t), dim=-1)
        selected = log_probs[
            torch.arange(x.shape[0], device=x.device), labels.to(x.device)
        ]
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad


def classifier_guided_eps(
    eps: torch.Tensor,
    grad: torch.Tensor,
    alpha_bar_t: float | torch.Tensor,
    scale: float,
) -> torch.Tensor:
    r"""The classifier-guided noise prediction, Eq. (14) of Dhariwal & Nichol 2021:

    .. math:: \hat\epsilon' = \hat\epsilon - s\,\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_\phi(y \mid x_t)

    (the score of :math:`p(x_t)p(y \mid x_t)^s` is :math:`-\hat\epsilon'/\sqrt{1-\bar\alpha_t}`).
    eps, grad: (N, ...); alpha_bar_t: a float or a tensor broadcastable against them; scale s.
    """
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    return eps - scale * (1 - alpha_bar_t).sqrt().to(eps.dtype) * grad


class ClassifierGuidance(nn.Module):
    r"""An ε-prediction model guided by a noisy classifier (:func:`classifier_guided_eps`): a
    model every sampler accepts (DDIM, DPM-Solver++, and ancestral sampling with the ε shift).

    ``forward(x_t, t, **model_kwargs)`` returns
    :math:`\hat\epsilon - s\sqrt{1-\bar\alpha_t}\nabla\log p_\phi(y \mid x_t, t)` with
    :math:`\bar\alpha` of ``diffusion`` (the *trained* process: the samplers pass trained
    timesteps). model: ε-prediction; classifier: ``classifier(x_t, t) -> logits``; labels: (N,).
    """

    def __init__(
        self,
        model: nn.Module,
        classifier: nn.Module,
        diffusion: GaussianDiffusion,
        labels: torch.Tensor,
        scale: float,
    ) -> None:
        super().__init__()
        if diffusion.objective != "eps":
            raise ValueError(
                f"classifier guidance here shifts the predicted noise; the model's objective is "
                f"{diffusion.objective!r}, not 'eps'"
            )
        if not torch.equal(
            diffusion.timestep_map, torch.arange(diffusion.num_timesteps)
        ):
            raise ValueError(
                "pass the trained diffusion, not a respaced one (the samplers map t)"
            )
        self.model, self.classifier, self.scale = model, classifier, float(scale)
        self.labels = torch.as_tensor(labels).long()
        self.alphas_cumprod = diffusion.alphas_cumprod

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any
    ) -> torch.Tensor:
        eps = self.model(x, t, **model_kwargs)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        grad = classifier_log_prob_grad(self.classifier, x, t, self.labels)
        alpha_bar = self.alphas_cumprod.to(x.device)[t].reshape(
            -1, *([1] * (x.ndim - 1))
        )
        return classifier_guided_eps(eps, grad, alpha_bar, self.scale)


def guided_mean(
    mean: torch.Tensor, variance: torch.Tensor, grad: torch.Tensor, scale: float
) -> torch.Tensor:
    r"""The classifier-guided ancestral mean, Algorithm 1 of Dhariwal & Nichol 2021:
    :math:`\mu + s\,\Sigma\,\nabla_{x_t}\log p_\phi(y \mid x_t)`. All (N, ...) or broadcastable."""
    return mean + scale * variance * grad


@torch.no_grad()
def classifier_guided_ddpm_sample(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    classifier: nn.Module,
    labels: torch.Tensor,
    scale: float,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Ancestral sampling with the classifier shifting the mean (Algorithm 1 of Dhariwal & Nichol
    2021): :math:`x_{t-1} \sim \mathcal N(\mu + s\Sigma\nabla\log p_\phi(y \mid x_t), \Sigma)`.

    ``diffusion`` may be respaced (``respace(diffusion, 100)``); the classifier sees the trained t.
    Returns samples (N, C, H, W) in [-1, 1].
    """
    device = next(model.parameters()).device if isinstance(model, nn.Module) else None
    x = torch.randn(tuple(shape), generator=generator, device=device)
    labels = torch.as_tensor(labels, device=x.device).long()
    for step in tqdm(range(diffusion.num_timesteps - 1, -1, -1), disable=not progress):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        p = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        trained_t = diffusion.timestep_map.to(x.device)[t]
        grad = classifier_log_prob_grad(classifier, x, trained_t, labels)
        x = guided_mean(p.mean, p.variance, grad, scale)
        if step > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            x = x + torch.exp(0.5 * p.log_variance) * noise
    return x


# -------------------------------------------------------------------------------- inpainting
def replacement_step(
    x_prev: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    diffusion: GaussianDiffusion,
    t_prev: int,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""One inpainting replacement (Eq. (8) of Lugmayr et al. 2022; Song et al. 2021, App. I):

    .. math:: x_{t-1} = m \odot x^\text{known}_{t-1} + (1 - m)\odot x^\text{unknown}_{t-1},
       \qquad x^\text{known}_{t-1} \sim q(x_{t-1} \mid x_0) = \mathcal N(\sqrt{\bar\alpha_{t-1}}x_0,
       (1-\bar\alpha_{t-1})I)

    x_prev: the sampler's x_{t-1} (N, C, H, W); known: x_0 (N, C, H, W); mask: 1 = known,
    broadcastable; t_prev: the index of t - 1 in ``diffusion`` (-1: the data, x^known = x_0);
    noise: like known (drawn when None).
    """
    if t_prev < 0:
        known_noisy = known
    else:
        t = torch.full((known.shape[0],), t_prev, dtype=torch.long, device=known.device)
        known_noisy = diffusion.q_sample(known, t, noise)
    return mask * known_noisy + (1 - mask) * x_prev


def repaint_schedule(
    num_steps: int, jump_length: int = 1, resample: int = 1
) -> list[int]:
    r"""The RePaint time schedule (Lugmayr et al. 2022, Sec. 4.2): the visited step indices, from
    ``num_steps - 1`` (x_T) down to -1 (the data).

    Going down one step at a time, on arriving at each multiple j of ``jump_length`` with
    j < num_steps - jump_length the walk jumps back *up* ``jump_length`` steps, ``resample - 1``
    times (a jump back is noise added by :func:`forward_step`, one step each), then carries on
    down. ``jump_length=1, resample=1`` is plain sampling: num_steps - 1, ..., 0, -1.
    """
    for name, value in [
        ("num_steps", num_steps),
        ("jump_length", jump_length),
        ("resample", resample),
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    jumps_left = {
        j: resample - 1 for j in range(0, num_steps - jump_length, jump_length)
    }
    t, times = num_steps - 1, [num_steps - 1]
    while t >= 0:
        t -= 1
        times.append(t)
        while jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            times.extend(range(t + 1, t + jump_length + 1))
            times.extend(range(t + jump_length - 1, t - 1, -1))
    return times


def forward_step(
    x: torch.Tensor, diffusion: GaussianDiffusion, t: int, noise: torch.Tensor
) -> torch.Tensor:
    r"""One step of the forward process, :math:`x_t \sim q(x_t \mid x_{t-1}) =
    \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)` (Eq. (2) of Ho et al. 2020), at index t of
    ``diffusion`` (RePaint's jump back). x, noise: (N, ...)."""
    beta = float(diffusion.betas[t])
    return math.sqrt(1 - beta) * x + math.sqrt(beta) * noise


def _check_inpainting(known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if known.ndim != 4:
        raise ValueError(
            f"known must be images (N, C, H, W), got shape {tuple(known.shape)}"
        )
    mask = torch.as_tensor(mask, dtype=known.dtype, device=known.device)
    try:
        torch.broadcast_shapes(mask.shape, known.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast against the known images "
            f"{tuple(known.shape)}; give (H, W), (1, 1, H, W) or (N, C, H, W) with 1 = known"
        ) from None
    if torch.broadcast_shapes(mask.shape, known.shape) != known.shape:
        raise ValueError(
            f"mask {tuple(mask.shape)} is larger than the images {tuple(known.shape)}"
        )
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must hold only 0 (unknown) and 1 (known)")
    return mask


@torch.no_grad()
def inpaint(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    known: torch.Tensor,
    mask: torch.Tensor,
    jump_length: int = 1,
    resample: int = 1,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Inpainting by replacement, with RePaint resampling (Algorithm 1 of Lugmayr et al. 2022).

    Walks :func:`repaint_schedule` over the steps of ``diffusion`` (respace it for speed): each
    step down is an ancestral :func:`~ddpm_course.samplers.ddpm_step` followed by
    :func:`replacement_step`, each step up is :func:`forward_step`. ``resample=1`` is the plain
    replacement method. The known pixels of the result equal ``known`` (the last replacement puts
    x_0 itself). known: (N, C, H, W) in [-1, 1]; mask: 1 = known, broadcastable. Returns
    (N, C, H, W).
    """
    mask = _check_inpainting(known, mask)
    alphas_cumprod = diffusion.alphas_cumprod
    times = repaint_schedule(diffusion.num_timesteps, jump_length, resample)
    x = torch.randn(
        known.shape, generator=generator, device=known.device, dtype=known.dtype
    )
    pairs = list(zip(times[:-1], times[1:], strict=True))
    for t_last, t_cur in tqdm(pairs, disable=not progress, desc="RePaint"):
        noise = torch.randn(
            known.shape, generator=generator, device=known.device, dtype=known.dtype
        )
        if t_cur > t_last:
            x = forward_step(x, diffusion, t_cur, noise)
            continue
        t = torch.full((known.shape[0],), t_last, dtype=torch.long, device=known.device)
        p = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        alpha_bar_prev = float(alphas_cumprod[t_cur]) if t_cur >= 0 else 1.0
        step_noise = noise if t_last > 0 else None
        x_prev = ddpm_step(
            x,
            p.pred_x0,
            float(alphas_cumprod[t_last]),
            alpha_bar_prev,
            step_noise,
            p.log_variance,
        )
        known_noise = torch.randn(
            known.shape, generator=generator, device=known.device, dtype=known.dtype
        )
        x = replacement_step(x_prev, known, mask, diffusion, t_cur, known_noise)
    return x


# -------------------------------------------------------------------------- super-resolution
def sr_downsample(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    r"""The degradation the SR model inverts: ``factor``×``factor`` average pooling,
    (N, C, H, W) -> (N, C, H/factor, W/factor). Its consistency check: ``sr_downsample(output)``
    should give back the low-resolution input."""
    return F.avg_pool2d(images, factor)


@torch.no_grad()
def super_resolve(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    low_res: torch.Tensor,
    steps: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""SR3 sampling (Saharia et al. 2021, Algorithm 2): ancestral sampling over ``steps``
    respaced timesteps with the model conditioned on ``low_res`` (N, C, h, w) in [-1, 1]
    (``model_kwargs={"low_res": low_res}``). Returns (N, C, H, W), H = model.image_size.

    Ancestral rather than DDIM: the injected noise corrects the network's errors along the way,
    and on digits the samples agree with their input several times better (chapter 06)."""
    size = model.image_size
    shape = (low_res.shape[0], low_res.shape[1], size, size)
    return ddpm_sample(
        model, respace(diffusion, steps), shape, generator=generator,
        model_kwargs={"low_res": low_res}, device=low_res.device,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ SDEdit
def sdedit_start(
    guide: torch.Tensor,
    diffusion: GaussianDiffusion,
    t0: int,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""SDEdit's starting point (Meng et al. 2022, Algorithm 1, in DDPM's notation): the guide
    image noised to :math:`t_0` by the forward process,

    .. math:: x_{t_0} = \sqrt{\bar\alpha_{t_0}}\,x^\text{guide} + \sqrt{1-\bar\alpha_{t_0}}\,\epsilon.

    guide: (N, C, H, W) in [-1, 1]; t0: a trained timestep in 0..T-1; noise: like guide.
    """
    t = torch.full((guide.shape[0],), int(t0), dtype=torch.long, device=guide.device)
    return diffusion.q_sample(guide, t, noise)


@torch.no_grad()
def sdedit(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    guide: torch.Tensor,
    t0: int,
    steps: int = 50,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    r"""SDEdit (Meng et al. 2022): :func:`sdedit_start` at :math:`t_0`, then ancestral sampling
    down from :math:`t_0` over at most ``steps`` timesteps of [0, t0] (a respaced process whose
    last step is t0 itself). Small t0 keeps the guide (faithful), large t0 forgets it (realistic).
    guide: (N, C, H, W) in [-1, 1] -> (N, C, H, W)."""
    T = diffusion.num_timesteps
    if not isinstance(t0, int) or isinstance(t0, bool) or not 0 <= t0 < T:
        raise ValueError(f"t0 must be a timestep in 0..{T - 1}, got {t0!r}")
    count = min(steps, t0 + 1)
    kept = torch.linspace(0, t0, count).round().long().unique().tolist()
    noise = torch.randn(
        guide.shape, generator=generator, device=guide.device, dtype=guide.dtype
    )
    x_t0 = sdedit_start(guide, diffusion, t0, noise)
    return ddpm_sample(
        model, respace(diffusion, kept), tuple(guide.shape), x_T=x_t0, generator=generator,
        model_kwargs=model_kwargs, device=guide.device,
    )  # fmt: skip
