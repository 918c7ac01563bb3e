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
        hint="Ho & Salimans' Eq. (6): (1 + w) * eps_cond - w * eps_uncond; w = 0 gives eps_cond.",
        package_functions=(f"{GUIDANCE}.cfg_combine",),
    ),
    Exercise(
        name="classifier_guided_eps",
        signature="classifier_guided_eps(eps, grad, alpha_bar_t, scale)",
        reference=reference_classifier_guided_eps,
        make_cases=cases_classifier_guided_eps,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + ", scaled by 1 + s",
        hint="Dhariwal & Nichol's Eq. (14): eps - scale * sqrt(1 - alpha_bar_t) * grad; alpha_bar_t is "
        "(N, 1, ..., 1) float64, so cast the coefficient to eps's dtype.",
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
        hint="known noised to t_prev, sqrt(abar) * known + sqrt(1 - abar) * noise with abar = "
        "alphas_cumprod[t_prev] (and known itself when t_prev == -1), where mask is 1; x_prev elsewhere.",
        package_functions=(f"{GUIDANCE}.replacement_step", f"{GUIDANCE}.inpaint"),
    ),
    Exercise(
        name="repaint_schedule",
        signature="repaint_schedule(num_steps, jump_length, resample)",
        reference=reference_repaint_schedule,
        make_cases=cases_repaint_schedule,
        tolerances=EXACT,
        tolerance_reason="step indices are integers: the schedule must match exactly",
        hint="Start at num_steps - 1 and step down to -1; on arriving at each j in range(0, num_steps - "
        "jump_length, jump_length), go up jump_length steps and back down to j, resample - 1 times. "
        "Return a 1-D int64 tensor of the visited indices.",
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
        hint="torch.cat([x_t, F.interpolate(low_res, size=x_t.shape[-2:], mode='bicubic', "
        "align_corners=False)], dim=1).",
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
        hint="The forward process at t0: sqrt(alphas_cumprod[t0]) * guide + sqrt(1 - alphas_cumprod[t0]) * "
        "noise, in guide's dtype.",
        package_functions=(f"{GUIDANCE}.sdedit_start", f"{GUIDANCE}.sdedit"),
    ),
)
