r"""The exercises of chapter 06 (Guidance and conditioning): CFG, classifier guidance, inpainting,
RePaint, the SR input and SDEdit.

Each exercise is a standalone function of explicit tensors; its reference calls
:mod:`ddpm_course.guidance`. Schedule tensors (``alphas_cumprod``) are (T,) float64; images are
float32 or float64 and every answer comes back in the images' dtype.
"""

from __future__ import annotations

import torch

from .. import guidance
from ..diffusion import GaussianDiffusion
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    Exercise,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
    per_example_shape,
)

__all__ = ["EXERCISES"]

# (images dtype, images shape): one and three channels, both dtypes
CONFIGS = (
    (torch.float32, (4, 1, 16, 16)),
    (torch.float64, (3, 3, 8, 8)),
    (torch.float32, (2, 3, 8, 8)),
    (torch.float64, (5, 1, 4, 4)),
)
T = 1000


def _alphas_cumprod(schedule_index: int) -> torch.Tensor:
    from ..schedules import get_betas

    betas = get_betas(("linear", "cosine")[schedule_index % 2], T)
    return torch.cumprod(1.0 - betas, dim=0)


def _diffusion_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> GaussianDiffusion:
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return GaussianDiffusion(1.0 - alphas_cumprod / previous)


def _label(dtype: torch.dtype, shape: tuple) -> str:
    return f"{dtype_name(dtype)}, images {shape}"


# ------------------------------------------------------------------------------ cfg_combine
def cases_cfg_combine(generator: torch.Generator) -> list[Case]:
    cases = []
    for (dtype, shape), w in zip(CONFIGS, (0.0, 3.0, 7.5, 1.0), strict=True):
        args = (
            draw_normal(shape, dtype, generator),
            draw_normal(shape, dtype, generator),
            w,
        )
        cases.append(Case(f"{_label(dtype, shape)}, w = {w}", args, scale=1.0 + 2 * w))
    return cases


# -------------------------------------------------------------------- classifier_guided_eps
def reference_classifier_guided_eps(eps, grad, alpha_bar_t, scale):
    return guidance.classifier_guided_eps(eps, grad, alpha_bar_t, scale)


def cases_classifier_guided_eps(generator: torch.Generator) -> list[Case]:
    cases = []
    for k, ((dtype, shape), scale) in enumerate(
        zip(CONFIGS, (1.0, 0.0, 5.0, 2.5), strict=True)
    ):
        alphas_cumprod = _alphas_cumprod(k)
        t = torch.randint(0, T, (shape[0],), generator=generator)
        alpha_bar_t = alphas_cumprod[t].reshape(per_example_shape(shape))
        args = (draw_normal(shape, dtype, generator), draw_normal(shape, dtype, generator),
                alpha_bar_t, scale)  # fmt: skip
        cases.append(
            Case(f"{_label(dtype, shape)}, s = {scale}", args, scale=1.0 + scale)
        )
    return cases


# ------------------------------------------------------------------------- replacement_step
def reference_replacement_step(x_prev, known, mask, t_prev, alphas_cumprod, noise):
    diffusion = _diffusion_from_alphas_cumprod(alphas_cumprod)
    return guidance.replacement_step(x_prev, known, mask, diffusion, t_prev, noise)


def cases_replacement_step(generator: torch.Generator) -> list[Case]:
    cases = []
    for k, ((dtype, shape), t_prev) in enumerate(
        zip(CONFIGS, (500, -1, 0, 999), strict=True)
    ):
        mask = (torch.rand((1, 1) + shape[2:], generator=generator) > 0.5).to(dtype)
        args = (draw_normal(shape, dtype, generator), draw_uniform(shape, -1.0, 1.0, dtype, generator),
                mask, t_prev, _alphas_cumprod(k), draw_normal(shape, dtype, generator))  # fmt: skip
        cases.append(Case(f"{_label(dtype, shape)}, t_prev = {t_prev}", args))
    return cases


# ------------------------------------------------------------------------- repaint_schedule
def reference_repaint_schedule(num_steps, jump_length, resample):
    return torch.tensor(guidance.repaint_schedule(num_steps, jump_length, resample))


def cases_repaint_schedule(generator: torch.Generator) -> list[Case]:
    settings = [(10, 1, 1), (6, 2, 2), (20, 5, 3), (25, 4, 4), (50, 10, 10), (7, 3, 2)]
    extra = torch.randint(1, 4, (2,), generator=generator).tolist()
    settings.append((12 + extra[0], extra[1], 3))
    return [
        Case(f"num_steps={n}, jump_length={j}, resample={r}", (n, j, r))
        for n, j, r in settings
    ]


# ---------------------------------------------------------------------------- sr_model_input
def cases_sr_model_input(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape in CONFIGS:
        low_shape = shape[:2] + (shape[2] // 2, shape[3] // 2)
        args = (
            draw_normal(shape, dtype, generator),
            draw_uniform(low_shape, -1.0, 1.0, dtype, generator),
        )
        cases.append(Case(f"{_label(dtype, shape)}, low_res {low_shape}", args))
    return cases


# ------------------------------------------------------------------------------ sdedit_start
def reference_sdedit_start(guide, t0, alphas_cumprod, noise):
    return guidance.sdedit_start(
        guide, _diffusion_from_alphas_cumprod(alphas_cumprod), t0, noise
    )


def cases_sdedit_start(generator: torch.Generator) -> list[Case]:
    cases = []
    for k, ((dtype, shape), t0) in enumerate(
        zip(CONFIGS, (300, 0, 999, 600), strict=True)
    ):
        args = (draw_uniform(shape, -1.0, 1.0, dtype, generator), t0, _alphas_cumprod(k),
                draw_normal(shape, dtype, generator))  # fmt: skip
        cases.append(Case(f"{_label(dtype, shape)}, t0 = {t0}", args))
    return cases


GUIDANCE = "ddpm_course.guidance"
EXACT = {torch.int64: Tolerance(rtol=0.0, atol=0.0)}

EXERCISES = (
    Exercise(
        name="cfg_combine",
        signature="cfg_combine(eps_cond, eps_uncond, guidance_scale)",
        reference=guidance.cfg_combine,
        make_cases=cases_cfg_combine,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + ", scaled by 1 + 2w (the size of the terms)",
        hint=(
            "The guided noise is off. An error proportional to w and to the gap between the "
            "two predictions: the weights swapped, or the other convention (a scale s that "
            "stands for 1 + w) mixed with this one; w of 0 must give the conditional "
            "prediction. Reread chapter 06, “Classifier-free guidance” (Ho and Salimans' "
            "Eq. (6))."
        ),
        package_functions=(f"{GUIDANCE}.cfg_combine",),
    ),
    Exercise(
        name="classifier_guided_eps",
        signature="classifier_guided_eps(eps, grad, alpha_bar_t, scale)",
        reference=reference_classifier_guided_eps,
        make_cases=cases_classifier_guided_eps,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + ", scaled by 1 + s",
        hint=(
            "The guided noise is off. An error proportional to the gradient: its "
            "coefficient is the scale times √(1 − ᾱ_t) (not 1 − ᾱ_t, and with a minus sign: "
            "guidance lowers ε along the class's log-likelihood gradient); a dtype message: "
            "ᾱ_t comes in float64. Reread chapter 06, “Classifier guidance” (Dhariwal and "
            "Nichol's Eq. (14))."
        ),
        package_functions=(
            f"{GUIDANCE}.classifier_guided_eps",
            f"{GUIDANCE}.ClassifierGuidance",
        ),
    ),
    Exercise(
        name="replacement_step",
        signature="replacement_step(x_prev, known, mask, t_prev, alphas_cumprod, noise)",
        reference=reference_replacement_step,
        make_cases=cases_replacement_step,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "x_{t−1} is off. Wrong only inside the mask: the known pixels must be noised to "
            "the level t − 1, the one x_{t−1} has (not t); wrong outside: those pixels are "
            "the sampler's x_{t−1}, untouched; wrong only at the last step: at t − 1 = −1 "
            "the known pixels are put back clean. Reread chapter 06, “Inpainting”."
        ),
        package_functions=(f"{GUIDANCE}.replacement_step", f"{GUIDANCE}.inpaint"),
    ),
    Exercise(
        name="repaint_schedule",
        signature="repaint_schedule(num_steps, jump_length, resample)",
        reference=reference_repaint_schedule,
        make_cases=cases_repaint_schedule,
        tolerances=EXACT,
        tolerance_reason="step indices are integers: the schedule must match exactly",
        hint=(
            "The visited indices differ (the case line gives the first difference). The "
            "walk starts at num_steps − 1 and ends at −1; a jump back up happens on "
            "arriving at every multiple of jump_length below num_steps − jump_length, "
            "resample − 1 times, each going up jump_length steps and back down. Reread "
            "chapter 06, “Inpainting” (RePaint's schedule)."
        ),
        output_names=("times",),
        package_functions=(f"{GUIDANCE}.repaint_schedule",),
    ),
    Exercise(
        name="sr_model_input",
        signature="sr_model_input(x_t, low_res)",
        reference=guidance.sr_model_input,
        make_cases=cases_sr_model_input,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "The model input is off. Wrong channels: the noisy image comes first, then the "
            "upsampled low-resolution image; small errors everywhere: another interpolation "
            "than bicubic, or corners aligned; a shape message: upsample to x_t's height "
            "and width. Reread chapter 06, “Super-resolution”."
        ),
        package_functions=(
            f"{GUIDANCE}.sr_model_input",
            "ddpm_course.nn.sr_model_input",
        ),
    ),
    Exercise(
        name="sdedit_start",
        signature="sdedit_start(guide, t0, alphas_cumprod, noise)",
        reference=reference_sdedit_start,
        make_cases=cases_sdedit_start,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "The start is off. SDEdit starts from the guide noised to t0 by the forward "
            "process: the classic mistakes are those of q_sample (ᾱ in place of its square "
            "root, the one-step α, the float64 table leaking into the dtype). Reread "
            "chapter 06, “SDEdit”, and chapter 03's closed form of q(x_t | x_0)."
        ),
        package_functions=(f"{GUIDANCE}.sdedit_start", f"{GUIDANCE}.sdedit"),
    ),
)
