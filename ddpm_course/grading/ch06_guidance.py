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
from ..samplers import ddim_step
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    CaseResult,
    Exercise,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
    malformed,
    per_example_shape,
)
from .outcome import median_rmse, traced_model

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


# ----------------------------------------------- guided and inpainted samplers, graded by outcome
# The shipped `digits` model and `digits-noisy-classifier` are sent to the student's code as
# TorchScript programs (grading/outcome.py); one case of SAMPLES images per exercise.
SAMPLES, STEPS, GUIDANCE_SCALE = 200, 10, 5.0
ACCURACY_MIN = 0.6  # the package's guided samples: 0.8 or more; unguided: 0.1 (chance)
TIE = 0.1  # the largest median RMS distance per sample to the package's samples
KNOWN_ROWS = 8  # inpainting: the top 8 rows of the 16×16 digits are known


def _trailing(steps: int) -> torch.Tensor:
    return torch.arange(T - 1, -1, -(T // steps))[:steps]


def reference_classifier_guidance_eps(model, classifier, x_t, t, y, scale, alpha_bar_t):
    with torch.no_grad():
        eps = model(x_t, t)
    grad = guidance.classifier_log_prob_grad(classifier, x_t, t, y)
    return guidance.classifier_guided_eps(eps, grad, alpha_bar_t, scale)


def cases_classifier_guidance_eps(generator: torch.Generator) -> list[Case]:
    labels = torch.randint(0, 10, (SAMPLES,), generator=generator)
    x_T = torch.randn((SAMPLES, 1, 16, 16), generator=generator)
    args = (traced_model("digits"), traced_model("digits-noisy-classifier"),
            _alphas_cumprod(0), _trailing(STEPS), x_T, labels, GUIDANCE_SCALE)  # fmt: skip
    label = (f"{SAMPLES} digits guided to random classes, s = {GUIDANCE_SCALE:g}, "
             f"DDIM {STEPS} steps")  # fmt: skip
    return [Case(label, args)]


def judge_classifier_guidance_eps(case: Case, outputs: tuple) -> CaseResult:
    """Pass when the guided samples are classified as their labels at least
    :data:`ACCURACY_MIN` of the time and follow from the noise as the package's do."""
    from ..metrics import class_accuracy
    from .drivers import guided_ddim

    samples, labels = outputs[0], case.args[5]
    failure = malformed(samples, case.args[4].shape, "the samples")
    if failure is not None:
        return failure
    expected = guided_ddim(reference_classifier_guidance_eps, *case.args)
    accuracy = class_accuracy(samples.float(), labels)
    reference = class_accuracy(expected.float(), labels)
    distance = median_rmse(samples, expected)
    measured = (
        f"class accuracy {accuracy:.0%} of the guided samples (at least {ACCURACY_MIN:.0%}; "
        f"the package's {reference:.0%}, unguided about 10%), median distance {distance:.3f} "
        f"per sample from the package's guided samples of the same noise (allowed {TIE})"
    )
    if accuracy >= ACCURACY_MIN and distance <= TIE:
        return CaseResult(True, measured)
    if accuracy < 0.05:
        why = (
            "fewer samples than chance show their label: the guidance pushes AWAY from y; "
            "the score of p(y|x_t) enters with a minus sign on ε (Eq. (14): "
            "ε̂ - s sqrt(1 - ᾱ_t) ∇ log p(y|x_t))"
        )
    elif accuracy < 0.2:
        why = (
            "about chance, as without guidance: the gradient is zero or never reached ε̂; "
            "take it with torch.autograd.grad of log p(y|x_t) with respect to an x_t that "
            "requires grad (inside torch.enable_grad())"
        )
    elif accuracy < reference - 0.1:
        why = (
            "weaker guidance than Eq. (14): the gradient of log p(y|x_t) (log_softmax of the "
            "logits at y, summed over the batch), not of p(y|x_t) itself, scaled by "
            "s sqrt(1 - ᾱ_t)"
        )
    else:
        why = (
            "the labels are reached, but not along the path Eq. (14) takes: check the factor "
            "sqrt(1 - ᾱ_t) (not ᾱ_t, not 1 - ᾱ_t), the gradient of the log-softmax at y, and "
            "that the classifier sees (x_t, t)"
        )
    return CaseResult(False, f"{measured}: {why}")


# ------------------------------------------------------------------- inpainting (a bug hunt)
@torch.no_grad()
def reference_inpaint_ddim(model, alphas_cumprod, timesteps, known, mask, x_T, noise):
    diffusion = _diffusion_from_alphas_cumprod(alphas_cumprod)
    x = x_T
    visited = timesteps.tolist()
    for k, step in enumerate(visited):
        t_prev = visited[k + 1] if k + 1 < len(visited) else -1
        t = torch.full((x.shape[0],), step, dtype=torch.long)
        p = diffusion.p_mean_variance(model, x, t, clip_denoised=True)
        alpha_bar_prev = float(alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        x_prev = ddim_step(
            p.pred_x0, p.pred_eps, float(alphas_cumprod[step]), alpha_bar_prev
        )
        x = guidance.replacement_step(x_prev, known, mask, diffusion, t_prev, noise[k])
    return x


def cases_inpaint_ddim(generator: torch.Generator) -> list[Case]:
    from ..data import digits

    images = digits(size=16, split="test")[0]
    known = images[torch.randint(0, images.shape[0], (SAMPLES,), generator=generator)]
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :KNOWN_ROWS, :] = 1.0
    x_T = torch.randn(known.shape, generator=generator)
    noise = torch.randn((STEPS, *known.shape), generator=generator)
    args = (
        traced_model("digits"),
        _alphas_cumprod(0),
        _trailing(STEPS),
        known,
        mask,
        x_T,
        noise,
    )
    label = f"{SAMPLES} test digits, top {KNOWN_ROWS} rows known, DDIM {STEPS} steps"
    return [Case(label, args)]


def judge_inpaint_ddim(case: Case, outputs: tuple) -> CaseResult:
    """Pass when the known rows are kept, the completions follow from the noise as the
    package's do, and the seam is no worse than theirs."""
    from ..metrics import seam_error

    completions, known, mask = outputs[0], case.args[3], case.args[4]
    failure = malformed(completions, known.shape, "the completions")
    if failure is not None:
        return failure
    expected = reference_inpaint_ddim(*case.args)
    kept = mask.bool().expand_as(known)
    known_error = float(
        (completions.double() - known.double())[kept].pow(2).mean().sqrt()
    )
    seam, reference_seam = seam_error(completions, known), seam_error(expected, known)
    distance = median_rmse(completions, expected)
    measured = (
        f"known rows off by {known_error:.3f} (RMS; 0 when kept), seam error {seam:.3f} (the "
        f"package's {reference_seam:.3f}), median distance {distance:.3f} per image from the "
        f"package's completions of the same noise (allowed {TIE})"
    )
    if known_error < 1e-3 and distance <= TIE:
        return CaseResult(True, measured)
    last = float(case.args[1][int(case.args[2][-1])])
    if abs(known_error / (1 - last) ** 0.5 - 1) < 0.35:
        why = (
            f"the known rows still carry noise of std about sqrt(1 - ᾱ) = {(1 - last) ** 0.5:.2f} "
            "of the last visited timestep: the known pixels are put back at the noise level of "
            "the step's start (ᾱ_t), where they belong at the level the step lands on "
            "(ᾱ_prev, and the clean pixels after the last step; Eq. (8) of Lugmayr et al.)"
        )
    elif known_error > 0.3:
        why = (
            "the known rows are not the known pixels: mask = 1 marks what is KNOWN, and the "
            "replacement keeps the (noised) known image there and the sampler's x elsewhere"
        )
    else:
        why = (
            "the known rows are kept but the rest is not what this noise leads to: check the "
            "DDIM step between the replacements and the noise each replacement uses"
        )
    return CaseResult(False, f"{measured}: {why}")


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
        name="classifier_guidance_eps",
        signature="classifier_guidance_eps(model, classifier, x_t, t, y, scale, alpha_bar_t)",
        reference=reference_classifier_guidance_eps,
        make_cases=cases_classifier_guidance_eps,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the guided samples' class "
        "accuracy and their distance to the package's guided samples",
        hint=(
            "The guided samples' class accuracy is off. Guidance moves the predicted noise "
            "against the gradient, taken by autograd at (x_t, t), of the classifier's log- "
            "probability of the wanted label, scaled by s and by the noise level's standard "
            "deviation (Dhariwal & Nichol, Eq. 14); classic mistakes: the gradient with the "
            "wrong sign, the probability in place of its log, the gradient of all classes' "
            "logits together. Reread chapter 06, “Classifier guidance”."
        ),
        output_names=("samples",),
        package_functions=(
            f"{GUIDANCE}.classifier_log_prob_grad",
            f"{GUIDANCE}.classifier_guided_eps",
            f"{GUIDANCE}.ClassifierGuidance",
        ),
        driver="guided_ddim",
        judge=judge_classifier_guidance_eps,
    ),
    Exercise(
        name="inpaint_ddim",
        signature="inpaint_ddim(model, alphas_cumprod, timesteps, known, mask, x_T, noise)",
        reference=reference_inpaint_ddim,
        make_cases=cases_inpaint_ddim,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the known rows, the seam and "
        "the distance to the package's completions",
        hint=(
            "A bug hunt: the given sampler's completions keep neither the known rows nor a "
            "clean image. Read the replacement against Eq. (8) of Lugmayr et al.: which "
            "pixels does the mask mark, and at which noise level do the known pixels go "
            "back? Reread chapter 06, “Inpainting”."
        ),
        output_names=("completions",),
        package_functions=(f"{GUIDANCE}.replacement_step", f"{GUIDANCE}.inpaint"),
        judge=judge_inpaint_ddim,
        copy_check=False,
    ),
)
