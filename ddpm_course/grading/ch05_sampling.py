r"""The exercises of chapter 05 (DDIM and fast sampling): one step of each sampler, respacing, slerp.

Each exercise is a standalone function of explicit tensors and floats; its reference calls
:mod:`ddpm_course.samplers`. The alpha-bars of a step are Python floats taken from real schedules
(linear and cosine, T = 1000), including the ends: :math:`\bar\alpha = 1` (the data) and the
cosine schedule's last :math:`\bar\alpha \approx 2\times10^{-9}`. Data tensors are float32 or
float64 and every answer comes back in the data's dtype.
"""

from __future__ import annotations

import torch

from ..diffusion import GaussianDiffusion
from ..samplers import (
    ddim_inversion_step,
    ddim_step,
    dpm_solver_2m_step,
    respace,
    slerp,
)
from ..schedules import get_betas
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    Exercise,
    Tolerance,
    draw_normal,
    dtype_name,
)

__all__ = ["EXERCISES"]

T = 1000
# (data dtype, data shape, schedule): images and flat data, both dtypes, both schedules
CONFIGS = (
    (torch.float32, (4, 3, 8, 8), "linear"),
    (torch.float64, (4, 3, 8, 8), "cosine"),
    (torch.float32, (6, 2), "cosine"),
    (torch.float64, (6, 2), "linear"),
    (torch.float32, (2, 1, 16, 16), "cosine"),
    (torch.float64, (3, 5), "linear"),
)


def _alphas_cumprod(schedule: str) -> torch.Tensor:
    return torch.cumprod(1.0 - get_betas(schedule, T), dim=0)


def _pair(schedule: str, index: int, generator: torch.Generator) -> tuple[float, float]:
    """(abar at a noisier t, abar at a less noisy one) of ``schedule``: case 0 of a config ends at
    the data (abar = 1), case 1 starts at t = T - 1, the others are drawn at random."""
    alphas_cumprod = _alphas_cumprod(schedule)
    noisy = int(torch.randint(1, T, (1,), generator=generator))
    clean = int(torch.randint(0, noisy, (1,), generator=generator))
    if index == 0:
        return float(alphas_cumprod[noisy]), 1.0
    if index == 1:
        noisy = T - 1
    return float(alphas_cumprod[noisy]), float(alphas_cumprod[clean])


def _label(
    dtype: torch.dtype, shape: tuple, schedule: str, noisy: float, clean: float
) -> str:
    return (
        f"{dtype_name(dtype)}, x {shape}, {schedule}: abar {noisy:.3g} -> {clean:.3g}"
    )


# ------------------------------------------------------------------------------- ddim_step
def cases_ddim_step(generator: torch.Generator) -> list[Case]:
    cases = []
    for index, (dtype, shape, schedule) in enumerate(CONFIGS):
        for eta in ((0.0, 0.5, 1.0)[index % 3], 1.0 if index % 2 else 0.3):
            alpha_bar_t, alpha_bar_prev = _pair(schedule, index % 3, generator)
            pred_x0, pred_eps = (
                draw_normal(shape, dtype, generator),
                draw_normal(shape, dtype, generator),
            )
            noise = draw_normal(shape, dtype, generator)
            args = (pred_x0, pred_eps, alpha_bar_t, alpha_bar_prev, eta, noise)
            label = (
                _label(dtype, shape, schedule, alpha_bar_t, alpha_bar_prev)
                + f", eta {eta}"
            )
            cases.append(Case(label, args))
    return cases


# ---------------------------------------------------------------------------- respaced_betas
def reference_respaced_betas(alphas_cumprod, timesteps):
    alphas_cumprod64 = alphas_cumprod.double()
    previous = torch.cat([alphas_cumprod64.new_ones(1), alphas_cumprod64[:-1]])
    diffusion = GaussianDiffusion(1.0 - alphas_cumprod64 / previous)
    return respace(diffusion, timesteps.tolist()).betas.to(alphas_cumprod.dtype)


def cases_respaced_betas(generator: torch.Generator) -> list[Case]:
    cases = []
    # (schedule, T, kept timesteps, dtype of alphas_cumprod): float64 as in the package, and float32
    for schedule, T_case, n_kept, dtype in (
        ("linear", 1000, 10, torch.float64),
        ("cosine", 1000, 50, torch.float64),
        ("linear", 50, 7, torch.float32),
        ("cosine", 200, 1, torch.float64),
        ("cosine", 1000, 1000, torch.float64),
        ("linear", 1000, 20, torch.float32),
    ):
        alphas_cumprod = torch.cumprod(1.0 - get_betas(schedule, T_case), dim=0).to(
            dtype
        )
        kept = torch.randperm(T_case, generator=generator)[:n_kept].sort().values
        if n_kept > 2:
            kept[-1] = (
                T_case - 1
            )  # include the last trained step, as trailing spacing does
        label = f"{dtype_name(dtype)}, {schedule} T={T_case}, {n_kept} kept timesteps"
        cases.append(Case(label, (alphas_cumprod, kept)))
    return cases


# ------------------------------------------------------------------------------------ slerp
def _not_parallel(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """x1, with each example whose angle to x0 has |cos| > 0.9 replaced by its component orthogonal
    to x0: near theta = 0 or pi the weights divide by sin(theta) ~ 0, and no evaluation order keeps
    float32 digits (in 2-D, random pairs come that close often)."""
    flat0, flat1 = (
        x0.reshape(x0.shape[0], -1).double(),
        x1.reshape(x1.shape[0], -1).double(),
    )
    cosine = (flat0 * flat1).sum(1) / (flat0.norm(dim=1) * flat1.norm(dim=1))
    orthogonal = (
        flat1 - ((flat0 * flat1).sum(1) / (flat0 * flat0).sum(1))[:, None] * flat0
    )
    flat1 = torch.where((cosine.abs() > 0.9)[:, None], orthogonal, flat1)
    return flat1.reshape(x1.shape).to(x1.dtype)


def cases_slerp(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, _ in CONFIGS:
        for fraction in (0.3, 0.5) if len(cases) % 4 else (0.0, 1.0):
            x0, x1 = (
                draw_normal(shape, dtype, generator),
                draw_normal(shape, dtype, generator),
            )
            args = (x0, _not_parallel(x0, x1), fraction)
            cases.append(
                Case(f"{dtype_name(dtype)}, x {shape}, fraction {fraction}", args)
            )
    return cases


# ---------------------------------------------------------------- dpm_solver_first_order_step
def reference_dpm_solver_first_order_step(x_s, pred_x0, alpha_bar_s, alpha_bar_t):
    return dpm_solver_2m_step(x_s, pred_x0, alpha_bar_s, alpha_bar_t)


def cases_first_order(generator: torch.Generator) -> list[Case]:
    cases = []
    for index, (dtype, shape, schedule) in enumerate(CONFIGS):
        for case_index in (index % 3, 2):
            alpha_bar_s, alpha_bar_t = _pair(schedule, case_index, generator)
            x_s, pred_x0 = (
                draw_normal(shape, dtype, generator),
                draw_normal(shape, dtype, generator),
            )
            label = _label(dtype, shape, schedule, alpha_bar_s, alpha_bar_t)
            cases.append(
                Case(
                    label,
                    (x_s, pred_x0, alpha_bar_s, alpha_bar_t),
                    scale=x_s.abs() + pred_x0.abs(),
                )
            )
    return cases


# ------------------------------------------------------------------------ ddim_inversion_step
def cases_inversion(generator: torch.Generator) -> list[Case]:
    cases = []
    for index, (dtype, shape, schedule) in enumerate(CONFIGS):
        for case_index in (index % 3, 2):
            noisy, clean = _pair(
                schedule, case_index, generator
            )  # the step goes clean -> noisy
            x_t, pred_eps = (
                draw_normal(shape, dtype, generator),
                draw_normal(shape, dtype, generator),
            )
            label = _label(dtype, shape, schedule, clean, noisy)
            # x0 = (x_t - b eps) / a and then a' x0: an evaluation through x0 rounds terms of size
            # |x_t| + |eps| (times a'/a <= 1)
            cases.append(
                Case(
                    label,
                    (x_t, pred_eps, clean, noisy),
                    scale=x_t.abs() + pred_eps.abs(),
                )
            )
    return cases


SAMPLERS = "ddpm_course.samplers"

EXERCISES = (
    Exercise(
        name="ddim_step",
        signature="ddim_step(pred_x0, pred_eps, alpha_bar_t, alpha_bar_prev, eta, noise)",
        reference=ddim_step,
        make_cases=cases_ddim_step,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + " (coefficients formed from floats)",
        hint=(
            "x_{t−1} is off. Wrong only when η > 0: σ_t, the added noise's std (DDIM's Eq. "
            "(16)), or the direction's coefficient, which is what remains of 1 − ᾱ_{t−1} "
            "after σ_t²; NaN at the last step, where ᾱ_{t−1} is 1: that remainder rounds "
            "below zero and needs clamping. Wrong at η = 0: the x̂0 term takes √ᾱ_{t−1}. "
            "Reread chapter 05, “1. DDIM: a family of processes with DDPM's marginals” (Eq. "
            "(12) of the paper)."
        ),
        package_functions=(
            f"{SAMPLERS}.ddim_step",
            f"{SAMPLERS}.ddim_sigma",
            f"{SAMPLERS}.ddim_sample",
        ),
    ),
    Exercise(
        name="respaced_betas",
        signature="respaced_betas(alphas_cumprod, timesteps)",
        reference=reference_respaced_betas,
        make_cases=cases_respaced_betas,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON
        + " (a product of up to 1000 terms, in float64)",
        hint=(
            "The betas are off. Wrong only for the first kept step: it divides by ᾱ = 1 "
            "(the clean image), not by the previous entry of the full table; all wrong: "
            "each new beta compares ᾱ at consecutive kept timesteps, not the old betas at "
            "those timesteps; a dtype message: the result keeps ᾱ's dtype. Reread chapter "
            "05, “2. Which timesteps to visit”."
        ),
        output_names=("betas",),
        package_functions=(f"{SAMPLERS}.respace",),
    ),
    Exercise(
        name="slerp",
        signature="slerp(x0, x1, fraction)",
        reference=slerp,
        make_cases=cases_slerp,
        # theta = arccos of a normalised dot product: in float32 the sum over up to 256 products and
        # arccos near pi/2 leave relative errors of a few 1e-6 in sin(f theta) / sin(theta)
        tolerances={
            torch.float32: Tolerance(rtol=2e-5, atol=2e-5),
            torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
        },
        tolerance_reason="theta is the arccos of a float32 dot product over up to 256 elements",
        hint=(
            "The interpolation is off. Right at f = 0 and 1 but too short in between: a "
            "linear blend; NaN: the cosine of the angle rounded just beyond ±1 before the "
            "arccos; wrong for all but the first example: the angle must be one per "
            "example, over all its pixels. Reread chapter 05, “5. Deterministic inversion "
            "and interpolation” (slerp)."
        ),
        package_functions=(f"{SAMPLERS}.slerp",),
    ),
    Exercise(
        name="dpm_solver_first_order_step",
        signature="dpm_solver_first_order_step(x_s, pred_x0, alpha_bar_s, alpha_bar_t)",
        reference=reference_dpm_solver_first_order_step,
        make_cases=cases_first_order,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + ", scaled by |x_s| + |pred_x0|",
        hint=(
            "x_t is off. The step is in λ, the half log-SNR: h is the target's λ minus the "
            "source's; a sign error in h sends the x̂0 coefficient the wrong way; NaN or an "
            "error at ᾱ_t = 1: there σ_t is 0, λ_t is +∞ and the step must return x̂0 (a "
            "float log of 0 raises). Reread chapter 05, “6. DPM-Solver++: an exponential "
            "integrator in λ” (the first-order step is DDIM's)."
        ),
        package_functions=(f"{SAMPLERS}.dpm_solver_2m_step", f"{SAMPLERS}.ddim_step"),
    ),
    Exercise(
        name="ddim_inversion_step",
        signature="ddim_inversion_step(x_t, pred_eps, alpha_bar_t, alpha_bar_next)",
        reference=ddim_inversion_step,
        make_cases=cases_inversion,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + ", scaled by |x_t| + |pred_eps|",
        hint=(
            "x_{t+1} is off. Inversion runs the η = 0 DDIM step upwards: first the implied "
            "clean image from x_t and the predicted noise, then the same two terms at the "
            "higher noise level; wrong only from the clean image: there ᾱ_t is 1. Reread "
            "chapter 05, “5. Deterministic inversion and interpolation”."
        ),
        package_functions=(f"{SAMPLERS}.ddim_inversion_step", f"{SAMPLERS}.ddim_step"),
    ),
)
