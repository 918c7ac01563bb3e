r"""The exercises of chapter 04 (Training a DDPM): the pieces of a training step, then the step.

Four exercises are compared element-wise with the package's answer: the sinusoidal timestep
embedding (:func:`ddpm_course.nn.timestep_embedding`), one :math:`L_\text{simple}` loss
(:meth:`~ddpm_course.diffusion.GaussianDiffusion.training_losses`), an in-place EMA update
(:mod:`ddpm_course.ema`) and the cosine schedule's betas (:func:`ddpm_course.schedules.cosine`).

The fifth, ``training_step``, is graded by its outcome: the driver ``train_tiny_denoiser``
(:mod:`~ddpm_course.grading.drivers`, where the student's code runs) trains a
:class:`~ddpm_course.grading.drivers.TinyDenoiser` with it for 300 steps on the 8×8 digits, and
:func:`judge_training_step` (in the grader's process) measures the trained weights' denoising loss
on the held-out digits. The threshold lies between what the correct step reaches (about 0.32 on
every seed) and what the classic mistakes reach (0.45 or more: t not given to the model, one fixed
t, no noise added, x0 as the target, a missing ``zero_grad``); the message names the mistake that
the trained weights look like.

The sixth, ``v_training_step``, is the same step for the v-objective (Salimans & Ho 2022), graded
the same way by :func:`judge_v_training_step`: the error of the :math:`\hat x_0` that the trained
model's v gives on the held-out digits, below :data:`V_THRESHOLD`; a failing case names the
target (−v, v with its coefficients swapped, ε or x0) that the model's output is closest to.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..diffusion import GaussianDiffusion
from ..ema import ema_update
from ..nn import timestep_embedding
from ..schedules import cosine, get_betas
from .ch03_elbo import _diffusion_from_alphas_cumprod
from .drivers import tiny_denoiser
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    CaseResult,
    Exercise,
    InputFunction,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
    malformed,
)

__all__ = [
    "EXERCISES",
    "LinearEpsModel",
    "judge_training_step",
    "held_out_losses",
    "THRESHOLD",
    "judge_v_training_step",
    "held_out_v",
    "V_THRESHOLD",
]


# ----------------------------------------------------------------------- timestep_embedding
def reference_timestep_embedding(t, dim):
    return timestep_embedding(t, dim)


def cases_timestep_embedding(generator: torch.Generator) -> list[Case]:
    cases = []
    for n, dim, kind in (
        (5, 8, "int64"),
        (7, 32, "int64"),
        (4, 128, "float32"),
        (3, 2 * 3, "int64"),
    ):
        t = torch.randint(0, 1000, (n,), generator=generator)
        t[0] = 0
        if kind == "float32":
            t = t.float() + torch.rand(n, generator=generator)
        cases.append(Case(f"t ({n},) {kind}, dim {dim}", (t, dim)))
    return cases


# ---------------------------------------------------------------------------- l_simple_loss
class LinearEpsModel(InputFunction):
    r"""A stand-in ε-model :math:`\hat\epsilon(x_t, t) = a\,x_t + b_t` (a scalar ``scale``, a
    (T,) ``time_bias``), so that the loss depends on x_t and on t."""

    kind = "linear_eps_model"

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        bias = (
            self.params["time_bias"].to(x.dtype)[t].reshape(-1, *([1] * (x.ndim - 1)))
        )
        return self.params["scale"].to(x.dtype) * x + bias


def reference_l_simple_loss(model, x0, t, noise, alphas_cumprod):
    diffusion = _diffusion_from_alphas_cumprod(alphas_cumprod)
    return diffusion.training_losses(model, x0, t, noise=noise)["loss"].mean()


def cases_l_simple_loss(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, schedule, T in ((torch.float32, (4, 1, 8, 8), "linear", 1000),
                                      (torch.float64, (3, 3, 4, 4), "cosine", 100),
                                      (torch.float32, (6, 2), "sigmoid", 50)):  # fmt: skip
        alphas_cumprod = torch.cumprod(1 - get_betas(schedule, T), 0)
        t = torch.randint(0, T, (shape[0],), generator=generator)
        t[0], t[-1] = 0, T - 1
        model = LinearEpsModel(scale=draw_uniform((), 0.2, 0.8, torch.float64, generator),
                               time_bias=draw_normal((T,), torch.float64, generator) * 0.1)  # fmt: skip
        x0 = draw_uniform(shape, -1.0, 1.0, dtype, generator)
        args = (model, x0, t, draw_normal(shape, dtype, generator), alphas_cumprod)
        cases.append(Case(f"{dtype_name(dtype)}, x0 {shape}, {schedule} T={T}", args))
    return cases


# ------------------------------------------------------------------------------- ema_update
def reference_ema_update(ema, weights, decay):
    ema_model, model = (
        torch.nn.ParameterList([ema]),
        torch.nn.ParameterList([weights]),
    )  # views of the tensors
    ema_update(ema_model, model, decay)
    return ema


def cases_ema_update(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, decay in ((torch.float32, (16, 8), 0.999), (torch.float64, (3, 4, 5), 0.9),
                                (torch.float32, (7,), 0.0), (torch.float64, (2, 2), 0.5)):  # fmt: skip
        cases.append(Case(f"{dtype_name(dtype)}, {shape}, decay {decay}",
                          (draw_normal(shape, dtype, generator), draw_normal(shape, dtype, generator), decay)))  # fmt: skip
    return cases


# ----------------------------------------------------------------------------- cosine_betas
def reference_cosine_betas(T, s):
    return cosine(T, s=s)


def cases_cosine_betas(generator: torch.Generator) -> list[Case]:
    """Short and long schedules: the paper's offset s = 0.008 at T = 1000, then random T and s."""
    cases = [Case("T=1000, s=0.008", (1000, 0.008))]
    for T in (10, 50, 4000):
        s = round(draw_uniform((), 0.002, 0.03, torch.float64, generator).item(), 6)
        cases.append(Case(f"T={T}, s={s}", (T, s)))
    return cases


# ---------------------------------------------------------------------------- training_step
STEPS, BATCH_SIZE, LR, T_TINY = 300, 128, 1e-3, 100
THRESHOLD = (
    0.38  # the correct step reaches about 0.32 on every seed; the mistakes 0.45+
)


def reference_training_step(model, optimizer, x0, alphas_cumprod, generator):
    diffusion = _diffusion_from_alphas_cumprod(alphas_cumprod.double())
    t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    loss = diffusion.training_losses(model, x0, t, noise=noise)["loss"].mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def _tiny_alphas_cumprod() -> torch.Tensor:
    """ᾱ of the cosine schedule with T = 100, in float32 (the tiny model's dtype)."""
    return torch.cumprod(1 - get_betas("cosine", T_TINY), 0).float()


def cases_training_step(generator: torch.Generator) -> list[Case]:
    from ..data import digits

    images, _ = digits(size=8, split="train")
    seeds = torch.randint(0, 2**16, (2,), generator=generator).tolist()
    return [Case(f"seed {seed}: {STEPS} steps of {BATCH_SIZE} digits 8×8, cosine T={T_TINY}",
                 (seed, images, _tiny_alphas_cumprod(), STEPS, BATCH_SIZE, LR)) for seed in seeds]  # fmt: skip


@lru_cache(maxsize=1)
def _held_out() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 300 test digits (8×8) four times over, with fixed t and noise: (x0, t, noise, x_t)."""
    from ..data import digits

    x0 = digits(size=8, split="test")[0].repeat(4, 1, 1, 1)
    generator = torch.Generator().manual_seed(123)
    alphas_cumprod = _tiny_alphas_cumprod()
    t = torch.randint(0, T_TINY, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return x0, t, noise, a.sqrt() * x0 + (1 - a).sqrt() * noise


@torch.no_grad()
def held_out_losses(seed: int, weights: torch.Tensor) -> dict[str, float]:
    """What the trained weights do on held-out digits: the ε-MSE (the graded number), the
    x0-MSE of the same output, its mean square, the ε-MSE when the model is told t = 0, how far
    the weights moved from their initialisation and whether the time pathway moved at all."""
    model = tiny_denoiser(seed, T_TINY)
    initial = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
    initial_time = torch.nn.utils.parameters_to_vector(model.time.parameters()).clone()
    torch.nn.utils.vector_to_parameters(weights.float(), model.parameters())
    x0, t, noise, x_t = _held_out()
    out = model(x_t, t)
    return {
        "eps_mse": float(((out - noise) ** 2).mean()),
        "x0_mse": float(((out - x0) ** 2).mean()),
        "mean_square": float((out**2).mean()),
        "eps_mse_t0": float(((model(x_t, torch.zeros_like(t)) - noise) ** 2).mean()),
        "moved": float((weights.float() - initial).norm() / initial.norm()),
        "time_moved": float(
            (
                torch.nn.utils.parameters_to_vector(model.time.parameters())
                - initial_time
            )
            .abs()
            .max()
        ),
    }


def judge_training_step(case: Case, outputs: tuple[torch.Tensor, ...]) -> CaseResult:
    """Pass when the held-out ε-MSE is below :data:`THRESHOLD`; otherwise say which classic
    mistake the trained weights look like."""
    weights = outputs[0]
    seed = case.args[0]
    size = sum(p.numel() for p in tiny_denoiser(0, T_TINY).parameters())
    failure = malformed(weights, (size,), "the weights", "the training diverged")
    if failure is not None:
        return failure
    stats = held_out_losses(seed, weights)
    loss = stats["eps_mse"]
    if loss < THRESHOLD:
        return CaseResult(True, f"held-out denoising loss {loss:.3f} < {THRESHOLD}")
    if stats["moved"] > 2.0:
        why = ("the weights moved far from where they started, as when gradients pile up "
               "from step to step: are the old gradients cleared before each backward pass?")  # fmt: skip
    elif stats["mean_square"] < 0.05:
        why = ("the model predicts about 0 everywhere, as if the noise were never added to "
               "x_t: reread the closed form of x_t in chapter 04's L_simple equation")  # fmt: skip
    elif stats["x0_mse"] < stats["eps_mse"]:
        why = "the model predicts the clean image x0, not the noise ε: the target should be the noise"
    elif stats["time_moved"] == 0.0:
        why = "the model never used the timestep: the network must be given each example's t"
    elif stats["eps_mse_t0"] < loss:
        why = "the model does better when told t = 0 than its own t: give the model each example's t"
    else:
        why = "check the six steps: t, ε, x_t, the prediction, the MSE against ε, and the update"
    return CaseResult(
        False, f"held-out denoising loss {loss:.3f}, not below {THRESHOLD}: {why}"
    )


# --------------------------------------------------------------------------- v_training_step
# The held-out x̂0-MSE of a model trained for v, on the 24 training seeds of cases(0)...cases(11)
# with tests/test_ch04_grading.py's student steps: the correct step (and the reference)
# 0.164-0.166; v's coefficients swapped 0.405-0.422, ε as the target 0.532-0.557, x0 as the
# target 1.005-1.021, v's sign flipped 1.092-1.136.
V_THRESHOLD = 0.25


def reference_v_training_step(model, optimizer, x0, alphas_cumprod, generator):
    betas = _diffusion_from_alphas_cumprod(alphas_cumprod.double()).betas
    diffusion = GaussianDiffusion(betas, objective="v")
    t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    loss = diffusion.training_losses(model, x0, t, noise=noise)["loss"].mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


# What a step with each classic mistake trains the model to output, and how the message says it.
V_MISTAKES = {
    "minus_v": "the sign of v is flipped: in v the noise carries the plus sign and the "
    "clean image the minus sign",
    "swapped": "the two coefficients are swapped: in v the noise is weighted by the square "
    "root of ᾱ_t and the clean image by that of 1 − ᾱ_t",
    "noise": "the target is still the noise ε, as in exercise 5, not v",
    "x0": "the target is the clean image x0, not v",
}
# A mistake is named when the output's MSE to its target is below this fraction of the MSE to v:
# 0.08-0.35 for the four mistakes above on the same 24 seeds; 0.85 for untrained weights (seed 0).
V_NAMED_RATIO = 0.6


@torch.no_grad()
def held_out_v(seed: int, weights: torch.Tensor) -> dict[str, float]:
    r"""What weights trained for v do on the held-out digits.

    ``x0_mse``: the MSE of :math:`\hat x_0 = \sqrt{\bar\alpha_t}\,x_t -
    \sqrt{1-\bar\alpha_t}\,\hat v` against x0 (the graded number); ``v``: the MSE of the
    model's output against v; and for each key of :data:`V_MISTAKES`, its MSE against what that
    mistake makes the target (-v; v with its coefficients swapped; ε; x0); ``moved``: how far
    the weights moved from their initialisation, relative to its norm.
    """
    model = tiny_denoiser(seed, T_TINY)
    torch.nn.utils.vector_to_parameters(weights.float(), model.parameters())
    x0, t, noise, x_t = _held_out()
    abar = _tiny_alphas_cumprod()[t].view(-1, 1, 1, 1)
    out = model(x_t, t)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    targets = {
        "v": v,
        "minus_v": -v,
        "swapped": (1 - abar).sqrt() * noise - abar.sqrt() * x0,
        "noise": noise,
        "x0": x0,
    }
    x0_hat = abar.sqrt() * x_t - (1 - abar).sqrt() * out
    initial = torch.nn.utils.parameters_to_vector(
        tiny_denoiser(seed, T_TINY).parameters()
    )
    stats = {
        "x0_mse": float(((x0_hat - x0) ** 2).mean()),
        "moved": float((weights.float() - initial).norm() / initial.norm()),
    }
    stats.update({k: float(((out - y) ** 2).mean()) for k, y in targets.items()})
    return stats


def judge_v_training_step(case: Case, outputs: tuple[torch.Tensor, ...]) -> CaseResult:
    """Pass when the x̂0 read from the trained model's v on held-out digits has an MSE below
    :data:`V_THRESHOLD`; otherwise name the classic mistake whose target the model's output is
    much closer to than to v (:data:`V_NAMED_RATIO`), or say that the weights never moved."""
    weights, seed = outputs[0], case.args[0]
    size = sum(p.numel() for p in tiny_denoiser(0, T_TINY).parameters())
    failure = malformed(weights, (size,), "the weights", "the training diverged")
    if failure is not None:
        return failure
    stats = held_out_v(seed, weights)
    loss = stats["x0_mse"]
    measured = f"held-out MSE of the x̂0 that the model's v gives: {loss:.3f}"
    if loss < V_THRESHOLD:
        return CaseResult(True, f"{measured} < {V_THRESHOLD}")
    closest = min(V_MISTAKES, key=stats.__getitem__)
    if stats["moved"] == 0.0:
        why = "the weights never changed: does the step call the optimizer's step?"
    elif stats[closest] < V_NAMED_RATIO * stats["v"]:
        why = (
            f"{V_MISTAKES[closest]} (the output's MSE to that mistake's target is "
            f"{stats[closest]:.3f}, to v {stats['v']:.3f})"
        )
    else:
        why = (
            f"the output is as far from v (MSE {stats['v']:.3f}) as from any classic "
            "mistake's target: check t, ε and x_t, that the old gradients are cleared, "
            "and the target"
        )
    return CaseResult(False, f"{measured}, not below {V_THRESHOLD}: {why}")


DIFFUSION = "ddpm_course.diffusion.GaussianDiffusion"
EXERCISES = (
    Exercise(
        name="timestep_embedding",
        signature="timestep_embedding(t, dim)",
        reference=reference_timestep_embedding,
        make_cases=cases_timestep_embedding,
        # angles t·ω up to 1000 rad: float32 spacing there is 6e-5, so sin and cos agree to ~1e-4
        tolerances={torch.float32: Tolerance(rtol=0.0, atol=2e-4)},
        tolerance_reason="float32 angles up to t = 1000 carry rounding errors of about 1e-4 rad",
        hint=(
            "The embedding is off. Right magnitudes but in the wrong columns: the sine half "
            "comes first, then the cosine half; right at t = 0 but wrong elsewhere: the "
            "frequencies (they fall geometrically from 1 to 1/10000 over the half, both "
            "ends included); a dtype message: the result is float32 whatever t's dtype. "
            "Reread chapter 04, “U-Net anatomy, block by block” (the time embedding)."
        ),
        output_names=("embedding",),
        package_functions=("ddpm_course.nn.timestep_embedding",),
    ),
    Exercise(
        name="l_simple_loss",
        signature="l_simple_loss(model, x0, t, noise, alphas_cumprod)",
        reference=reference_l_simple_loss,
        make_cases=cases_l_simple_loss,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + " (a mean over up to 192 squared errors)",
        hint=(
            "The loss is off. By a lot: x_t not formed as the closed form says (ᾱ_t in "
            "place of its square root, or the one-step α_t in place of ᾱ_t), or the error "
            "measured against x0 instead of the noise; off by a constant factor: a sum "
            "where the mean belongs; wrong broadcasting when ᾱ_t is not one value per "
            "example. Reread chapter 04, “From the algorithm to code” (the displayed "
            "equation of L_simple)."
        ),
        output_names=("loss",),
        package_functions=(f"{DIFFUSION}.training_losses", f"{DIFFUSION}.q_sample"),
    ),
    Exercise(
        name="ema_update",
        signature="ema_update(ema, weights, decay)",
        reference=reference_ema_update,
        make_cases=cases_ema_update,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "The average is off. Unchanged from the start: a new tensor was made and the "
            "name rebound, but the exercise changes ema itself, in place; moved almost all "
            "the way to the weights: decay and 1 − decay swapped. Reread chapter 04, “EMA: "
            "sampling with averaged weights” (the displayed update)."
        ),
        output_names=("ema",),
        package_functions=("ddpm_course.ema.ema_update",),
        driver="in_place",
    ),
    Exercise(
        name="cosine_betas",
        signature="cosine_betas(T, s)",
        reference=reference_cosine_betas,
        make_cases=cases_cosine_betas,
        tolerances={torch.float64: Tolerance(rtol=1e-10, atol=1e-12)},
        tolerance_reason=ROUNDING_REASON + " in float64",
        hint=(
            "The betas are off. Wrong everywhere by a little: the offset s is missing from "
            "the cosine's argument or from its normalisation at 0; too large at the end: "
            "the clip at 0.999 is missing (the last ratio of ᾱ goes to 0); shifted by one "
            "step: each beta is one minus the ratio of consecutive ᾱ, from t/T to (t + "
            "1)/T. In float64. Reread Nichol and Dhariwal's Eq. (17) and chapter 04, "
            "“Design choices, measured at an equal training budget”."
        ),
        output_names=("betas",),
        package_functions=(
            "ddpm_course.schedules.cosine",
            "ddpm_course.schedules.get_betas",
        ),
    ),
    Exercise(
        name="training_step",
        signature="training_step(model, optimizer, x0, alphas_cumprod, generator)",
        reference=reference_training_step,
        make_cases=cases_training_step,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the held-out loss of the trained weights",
        hint=(
            "The trained weights denoise badly (the case line names the mistake they look "
            "like). Algorithm 1 is six parts: a timestep per example, the noise, x_t in "
            "closed form, the noise prediction given x_t and t, the mean squared error "
            "against the noise, then clear the old gradients, backpropagate and step; draw "
            "t and the noise from the given generator. Reread chapter 04, “From the "
            "algorithm to code” and its L_simple equation."
        ),
        output_names=("weights", "losses"),
        package_functions=(f"{DIFFUSION}.training_losses", f"{DIFFUSION}.q_sample"),
        driver="train_tiny_denoiser",
        judge=judge_training_step,
    ),
    Exercise(
        name="v_training_step",
        signature="v_training_step(model, optimizer, x0, alphas_cumprod, generator)",
        reference=reference_v_training_step,
        make_cases=cases_training_step,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the held-out error of the x0 "
        "that the trained model's v gives",
        hint=(
            "The x̂0 that the trained model's v gives is poor (the case line names the "
            "target the model learned instead). Everything but the target is exercise 5's "
            "step. Picture x_t on a quarter circle: the square root of ᾱ_t is the cosine "
            "of an angle, that of 1 − ᾱ_t its sine, x0 and ε the two axes; v is the "
            "velocity of x_t as the angle grows, and x0 is read back by turning against "
            "it. A flipped sign runs the circle backwards, swapped coefficients use the "
            "sine where the cosine belongs, and ε as the target is exercise 5 again. "
            "Reread chapter 04, “Design choices, measured at an equal training budget” "
            "(the three objectives) and Salimans and Ho's Sec. 4."
        ),
        output_names=("weights", "losses"),
        package_functions=(f"{DIFFUSION}.training_losses", f"{DIFFUSION}.predict_v"),
        driver="train_tiny_denoiser",
        judge=judge_v_training_step,
    ),
)
