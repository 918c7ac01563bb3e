r"""The exercises of chapter 05 (DDIM and fast sampling): one step of each sampler, slerp, and
two whole samplers graded by their samples.

The step exercises are standalone functions of explicit tensors and floats; their references
call :mod:`ddpm_course.samplers`. The alpha-bars of a step are Python floats taken from real
schedules (linear and cosine, T = 1000), including the ends: :math:`\bar\alpha = 1` (the data)
and the cosine schedule's last :math:`\bar\alpha \approx 2\times10^{-9}`. Data tensors are
float32 or float64 and every answer comes back in the data's dtype.

``ddim_sample`` (a whole DDIM loop) and ``respaced_ddpm_sample`` (a bug hunt: an ancestral
sampler on 10 timesteps with two planted bugs) run the shipped ``digits`` model, sent to the
student's code as a TorchScript program (:mod:`~ddpm_course.grading.outcome`). They are judged
by their samples: the Fréchet distance against the test digits must lie within a band of the
package's own sampler on the same noise, and the samples must follow from that noise (median
RMS distance per sample at most :data:`TIE`); a failure says what the samples look like (noise
left from a missing last step, white noise, flat images) and which classic bug does that.
"""

from __future__ import annotations

import torch

from ..diffusion import GaussianDiffusion
from ..samplers import (
    ddim_inversion_step,
    ddim_step,
    ddpm_step,
    dpm_solver_2m_step,
    slerp,
)
from ..schedules import get_betas
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    CaseResult,
    Exercise,
    Tolerance,
    draw_normal,
    dtype_name,
    malformed,
)
from .outcome import median_rmse, traced_model

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


# ----------------------------------------------------- whole samplers, graded by their samples
# The shipped `digits` model (16×16, linear schedule, T = 1000) is sent to the student's code as
# a TorchScript program (grading/outcome.py). One case of SAMPLES images from noise drawn from the
# seed; the judge measures the samples' FD against the test digits and their distance to the
# package's samples from the same noise. Cost of one case in check(): two loops of STEPS network
# calls on 200 images (the student's and the package's), about 10 s of CPU on one thread.
SAMPLES, STEPS = 200, 10
FD_FACTOR, FD_SLACK = 1.5, 20.0  # the FD band: at most max(1.5 x, + 20) the package's
TIE = 0.1  # the largest median RMS distance per sample to the package's samples (pixels in [-1, 1])
FLOOR_NOTE = "real digits score about 45 at n = 200"


def _trailing(steps: int) -> torch.Tensor:
    """The visited timesteps, noisiest first: 999, 899, ..., 99 for 10 steps (trailing)."""
    return torch.arange(T - 1, -1, -(T // steps))[:steps]


def _digits_inputs(generator: torch.Generator) -> tuple:
    model = traced_model("digits")
    x_T = torch.randn((SAMPLES, 1, 16, 16), generator=generator)
    return model, _alphas_cumprod("linear"), _trailing(STEPS), x_T


def _visits(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor):
    """(k, t, ᾱ_t, ᾱ of the next visited timestep or 1 after the last) for each step."""
    visited = timesteps.tolist()
    for k, t in enumerate(visited):
        prev = visited[k + 1] if k + 1 < len(visited) else -1
        yield (
            k,
            t,
            float(alphas_cumprod[t]),
            1.0 if prev < 0 else float(alphas_cumprod[prev]),
        )


def _predictions(diffusion: GaussianDiffusion, model, x: torch.Tensor, t: int):
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long)
    return diffusion.p_mean_variance(model, x, t_batch, clip_denoised=True)


@torch.no_grad()
def reference_ddim_sample(model, alphas_cumprod, timesteps, x_T):
    diffusion = _diffusion_from_alphas_cumprod(alphas_cumprod)
    x = x_T
    for _, t, alpha_bar, alpha_bar_prev in _visits(alphas_cumprod, timesteps):
        p = _predictions(diffusion, model, x, t)
        x = ddim_step(p.pred_x0, p.pred_eps, alpha_bar, alpha_bar_prev, 0.0)
    return x


@torch.no_grad()
def reference_respaced_ddpm_sample(model, alphas_cumprod, timesteps, x_T, noise):
    diffusion = _diffusion_from_alphas_cumprod(alphas_cumprod)
    x = x_T
    for k, t, alpha_bar, alpha_bar_prev in _visits(alphas_cumprod, timesteps):
        p = _predictions(diffusion, model, x, t)
        z = noise[k] if alpha_bar_prev < 1.0 else None
        x = ddpm_step(x, p.pred_x0, alpha_bar, alpha_bar_prev, z)
    return x


def _diffusion_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> GaussianDiffusion:
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return GaussianDiffusion(1.0 - alphas_cumprod.double() / previous.double())


def cases_ddim_sample(generator: torch.Generator) -> list[Case]:
    label = (
        f"{SAMPLES} samples of the shipped digits model, DDIM {STEPS} steps (trailing)"
    )
    return [Case(label, _digits_inputs(generator))]


def cases_respaced_ddpm_sample(generator: torch.Generator) -> list[Case]:
    model, alphas_cumprod, timesteps, x_T = _digits_inputs(generator)
    noise = torch.randn((STEPS, *x_T.shape), generator=generator)
    label = f"{SAMPLES} samples of the shipped digits model, DDPM on {STEPS} timesteps"
    return [Case(label, (model, alphas_cumprod, timesteps, x_T, noise))]


def _measure(samples: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    from ..metrics import digits_fd

    reference_fd = digits_fd(expected.float())
    return {
        "fd": digits_fd(samples.float().clamp(-1, 1)),
        "band": max(FD_FACTOR * reference_fd, reference_fd + FD_SLACK),
        "reference_fd": reference_fd,
        "distance": median_rmse(samples, expected),
    }


def _judge_sampler(case: Case, outputs: tuple, reference, diagnose) -> CaseResult:
    """Pass when the samples' FD lies in the band and they follow from the given noise;
    otherwise say what the samples look like (``diagnose``)."""
    samples, x_T = outputs[0], case.args[3]
    failure = malformed(samples, x_T.shape, "the samples", "a step divided by 0")
    if failure is not None:
        return failure
    expected = reference(*case.args)
    m = _measure(samples, expected)
    measured = (
        f"FD {m['fd']:.0f} against the test digits (band: at most {m['band']:.0f}, from the "
        f"package's {m['reference_fd']:.0f} on this noise; {FLOOR_NOTE}), median distance "
        f"{m['distance']:.3f} per sample from the package's samples of the same noise "
        f"(allowed {TIE})"
    )
    if m["fd"] <= m["band"] and m["distance"] <= TIE:
        return CaseResult(True, measured)
    if m["fd"] <= m["band"]:
        why = (
            "good digits, but not the ones this noise leads to: the sampler is a function of "
            "the x_T (and noise) it is given; start from them and visit the given timesteps"
        )
    else:
        why = diagnose(samples, expected, case)
    return CaseResult(False, f"{measured}: {why}")


def _noise_left(
    samples: torch.Tensor, expected: torch.Tensor, alpha_bar: float
) -> bool:
    """Do the samples look like the reference's image noised to ᾱ (the last visited level)?"""
    residual = samples.double() - alpha_bar**0.5 * expected.double()
    return abs(float(residual.std()) / (1 - alpha_bar) ** 0.5 - 1) < 0.35


def _noise_like(samples: torch.Tensor) -> float:
    """var(x[i+1] - x[i]) / (2 var(x)) along rows: 1 for white noise, small for digits."""
    x = samples.double()
    return float((x[..., 1:] - x[..., :-1]).var() / (2 * x.var()))


def _diagnose_ddim(samples: torch.Tensor, expected: torch.Tensor, case: Case) -> str:
    alphas_cumprod, timesteps = case.args[1], case.args[2]
    last = float(alphas_cumprod[int(timesteps[-1])])
    if _noise_left(samples, expected, last):
        return (
            f"the samples still carry noise of std about sqrt(1 - ᾱ) = {(1 - last) ** 0.5:.2f} "
            f"of the last visited timestep t = {int(timesteps[-1])}: the loop stops one step "
            "early; the last step goes to ᾱ = 1 and returns x̂0 (Eq. (12) with ᾱ_prev = 1)"
        )
    if _noise_like(samples) > 0.5:
        return (
            f"the samples look like noise (neighbouring pixels as unrelated as in white "
            f"noise: {_noise_like(samples):.2f}, digits {_noise_like(expected):.2f}): the "
            "noise was not removed; each step goes from ᾱ_t to the ᾱ of the NEXT VISITED "
            "timestep, not alphas_cumprod[t - 1] (one step of the 1000-step chain), and the "
            "timesteps are walked from the noisiest down"
        )
    return (
        "check x̂0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t), clipped to [-1, 1] with ε̂ "
        "recomputed from it, and Eq. (12) with σ = 0; the model takes (x_t, t) with t the "
        "trained timestep as an int64 tensor of shape (N,)"
    )


def _diagnose_ddpm(samples: torch.Tensor, expected: torch.Tensor, case: Case) -> str:
    spread = float(samples.double().std())
    if spread < 0.1:
        return (
            f"the samples are almost flat (std {spread:.2f}; digits about 0.8): the steps "
            "barely move x towards x̂0, and the last one (ᾱ_prev = 1) returns almost nothing, "
            "as with the trained chain's tiny β_t. Between two VISITED timesteps the step's "
            "β is that of the respaced process, 1 - ᾱ_t / ᾱ_prev (Appendix of Nichol & "
            "Dhariwal 2021), in the posterior mean and variance, Eqs. (6)-(7)"
        )
    return (
        f"the samples spread with std {spread:.2f} (digits about 0.8) and are far from "
        "digits: the model removed the wrong amount of noise at each step, as it does when "
        "it is told the wrong t. What t does the model see: the step's index k, or the "
        "trained timestep?"
    )


def judge_ddim_sample(case: Case, outputs: tuple) -> CaseResult:
    return _judge_sampler(case, outputs, reference_ddim_sample, _diagnose_ddim)


def judge_respaced_ddpm_sample(case: Case, outputs: tuple) -> CaseResult:
    return _judge_sampler(case, outputs, reference_respaced_ddpm_sample, _diagnose_ddpm)


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
    Exercise(
        name="ddim_sample",
        signature="ddim_sample(model, alphas_cumprod, timesteps, x_T)",
        reference=reference_ddim_sample,
        make_cases=cases_ddim_sample,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the samples' FD and their "
        "distance to the package's samples of the same noise",
        hint=(
            "The samples are off. At each visited timestep the loop forms the implied clean "
            "image from the predicted noise (clipped to the data range, the noise "
            "recomputed from it), then takes the deterministic step to the next visited "
            "timestep's ᾱ, which is 1 after the last; classic mistakes: the model given the "
            "position in the visited list in place of the timestep, the next level read "
            "from the full table's neighbour. Reread chapter 05, “1. DDIM: a family of "
            "processes with DDPM's marginals”."
        ),
        output_names=("samples",),
        package_functions=(
            f"{SAMPLERS}.ddim_sample",
            f"{SAMPLERS}.ddim_step",
            f"{SAMPLERS}.sample",
        ),
        judge=judge_ddim_sample,
    ),
    Exercise(
        name="respaced_ddpm_sample",
        signature="respaced_ddpm_sample(model, alphas_cumprod, timesteps, x_T, noise)",
        reference=reference_respaced_ddpm_sample,
        make_cases=cases_respaced_ddpm_sample,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the samples' FD and their "
        "distance to the package's samples of the same noise",
        hint=(
            "A bug hunt: the given sampler makes no digits. Read each line against Ho et "
            "al.'s Eqs. (6)-(7) on a respaced process: what timestep does the model see, "
            "and which β belongs to a step between two visited timesteps? Reread chapter "
            "05, “2. Which timesteps to visit”."
        ),
        output_names=("samples",),
        package_functions=(
            f"{SAMPLERS}.ddpm_sample",
            f"{SAMPLERS}.ddpm_step",
            f"{SAMPLERS}.respace",
        ),
        judge=judge_respaced_ddpm_sample,
        copy_check=False,
    ),
)
