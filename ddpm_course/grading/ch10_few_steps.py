r"""The exercises of chapter 10 (Transformers and few-step generation).

Five exercises are compared element-wise with the package's answer (:mod:`ddpm_course.dit`,
:mod:`ddpm_course.distill`): a DiT's patchify and unpatchify, one transformer block conditioned
by adaLN-Zero, progressive distillation's two-step target, and the boundary parameterisation of
a consistency model (Song et al. 2023's c_skip and c_out). When an answer is wrong, the judge
also computes what each classic mistake gives on the same inputs and names the one the answer
matches.

The sixth, ``consistency_loss``, is graded by its outcome: a small consistency model of 2-D
points is trained with the student's loss, distilling the exact velocity of a Gaussian mixture,
and its ONE-step samples must come within a threshold of the data that the classic mistakes
cannot reach; its teacher, cases, judge and the measured ranges are in
:mod:`~ddpm_course.grading.consistency_outcome`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..distill import consistency_scalings, two_step_target
from ..dit import DiTBlock, patchify, unpatchify
from .ch09_flow import with_named_mistakes
from .consistency_outcome import (
    cases_consistency_loss,
    judge_consistency_loss,
    reference_consistency_loss,
)
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    Exercise,
    InputFunction,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
)

__all__ = [
    "EXERCISES",
    "CurvedVelocity",
    "Modulation",
    "TokenAttention",
    "TokenMLP",
    "reference_adaln_zero_block",
]


# ---------------------------------------------------------------- patchify / unpatchify
PATCH_SHAPES = (
    (torch.float32, (2, 1, 4, 4), 2),
    (torch.float64, (3, 3, 6, 4), 2),
    (torch.float32, (1, 2, 9, 6), 3),
    (torch.float64, (2, 4, 8, 8), 4),
)


def cases_patchify(generator: torch.Generator) -> list[Case]:
    return [
        Case(f"{dtype_name(dtype)}, x {shape}, {p}×{p} patches",
             (draw_normal(shape, dtype, generator), p))
        for dtype, shape, p in PATCH_SHAPES
    ]  # fmt: skip


def _unfold_order(x, p):
    return F.unfold(x, p, stride=p).transpose(1, 2)


def _patches_by_column(x, p):
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 4, 2, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def _no_permute(x, p):
    n, c, h, w = x.shape
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def _columns_inside_patch_first(x, p):
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 5, 3, 1).reshape(n, (h // p) * (w // p), p * p * c)


def cases_unpatchify(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, (n, c, h, w), p in PATCH_SHAPES:
        tokens = draw_normal((n, (h // p) * (w // p), p * p * c), dtype, generator)
        label = (
            f"{dtype_name(dtype)}, tokens {tuple(tokens.shape)} -> ({n}, {c}, {h}, {w})"
        )
        cases.append(Case(label, (tokens, p, c, h, w)))
    return cases


def _fold_order(tokens, p, c, h, w):
    return F.fold(tokens.transpose(1, 2), (h, w), p, stride=p)


def _unpatchify_no_permute(tokens, p, c, h, w):
    return tokens.reshape(tokens.shape[0], c, h, w)


def _unpatchify_by_column(tokens, p, c, h, w):
    x = tokens.reshape(tokens.shape[0], w // p, h // p, p, p, c)
    return x.permute(0, 5, 2, 3, 1, 4).reshape(tokens.shape[0], c, h, w)


# ---------------------------------------------------------------------- adaLN-Zero block
class Modulation(InputFunction):
    """adaLN's conditioning map ``modulation(c) = Linear(SiLU(c))``: (N, D) -> (N, 6D), the six
    chunks (shift1, scale1, gate1, shift2, scale2, gate2). ``weight`` (6D, D), ``bias`` (6D,)."""

    kind = "adaln_modulation"

    def __call__(self, c: torch.Tensor) -> torch.Tensor:
        weight, bias = self.params["weight"], self.params["bias"]
        return torch.nn.functional.linear(
            torch.nn.functional.silu(c), weight.to(c.dtype), bias.to(c.dtype)
        )


class TokenAttention(InputFunction):
    """Multi-head self-attention over tokens (N, L, D) -> (N, L, D), written out: q, k, v from
    one linear map (``qkv_weight`` (3D, D), ``qkv_bias``), softmax(q kᵀ/√d) v per head
    (``heads`` of them), then the output projection (``proj_weight`` (D, D), ``proj_bias``)."""

    kind = "token_attention"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = {key: value for key, value in self.params.items() if key != "heads"}
        heads = int(self.params["heads"])
        n, length, dim = x.shape
        qkv = torch.nn.functional.linear(
            x, p["qkv_weight"].to(x.dtype), p["qkv_bias"].to(x.dtype)
        )
        q, k, v = qkv.reshape(n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(
            q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1
        )
        out = (weights @ v).transpose(1, 2).reshape(n, length, dim)
        return torch.nn.functional.linear(
            out, p["proj_weight"].to(x.dtype), p["proj_bias"].to(x.dtype)
        )


class TokenMLP(InputFunction):
    """A token-wise MLP (N, L, D) -> (N, L, D): Linear, GELU (tanh form), Linear."""

    kind = "token_mlp"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        hidden = torch.nn.functional.linear(x, p["w1"].to(x.dtype), p["b1"].to(x.dtype))
        hidden = torch.nn.functional.gelu(hidden, approximate="tanh")
        return torch.nn.functional.linear(
            hidden, p["w2"].to(x.dtype), p["b2"].to(x.dtype)
        )


BLOCK_SHAPES = (
    (torch.float32, 2, 5, 8, 2),
    (torch.float64, 3, 4, 12, 3),
    (torch.float32, 1, 6, 16, 4),
    (torch.float64, 2, 3, 8, 1),
)


def cases_adaln_zero_block(generator: torch.Generator) -> list[Case]:
    cases = []
    for k, (dtype, n, length, dim, heads) in enumerate(BLOCK_SHAPES):

        def weight(*shape, gain=1.0):
            return (
                draw_normal(shape, torch.float64, generator)
                * gain
                / math.sqrt(shape[-1])
            )

        zero = k == 3  # adaLN-Zero at initialisation: the block is the identity
        modulation = Modulation(
            weight=weight(6 * dim, dim, gain=0.0 if zero else 1.0),
            bias=weight(6 * dim, gain=0.0 if zero else 0.5 * math.sqrt(6 * dim)),
        )
        attention = TokenAttention(
            qkv_weight=weight(3 * dim, dim), qkv_bias=weight(3 * dim, gain=0.3),
            proj_weight=weight(dim, dim), proj_bias=weight(dim, gain=0.3), heads=heads,
        )  # fmt: skip
        mlp = TokenMLP(
            w1=weight(2 * dim, dim), b1=weight(2 * dim, gain=0.3),
            w2=weight(dim, 2 * dim), b2=weight(dim, gain=0.3),
        )  # fmt: skip
        x = draw_normal((n, length, dim), dtype, generator)
        c = draw_normal((n, dim), dtype, generator)
        label = f"{dtype_name(dtype)}, x {(n, length, dim)}, heads {heads}" + (
            ", modulation zero (as initialised)" if zero else ""
        )
        cases.append(Case(label, (x, c, modulation, attention, mlp)))
    return cases


def reference_adaln_zero_block(x, c, modulation, attention, mlp):
    """The package's :class:`~ddpm_course.dit.DiTBlock` with the cases' weights loaded."""
    dim = x.shape[-1]
    with torch.random.fork_rng(devices=[]):  # its initial weights are replaced below
        block = DiTBlock(dim, int(attention.params["heads"]), mlp_ratio=2.0).to(x.dtype)
    weights = {
        "adaLN_modulation.1.weight": modulation.params["weight"],
        "adaLN_modulation.1.bias": modulation.params["bias"],
        "qkv.weight": attention.params["qkv_weight"],
        "qkv.bias": attention.params["qkv_bias"],
        "proj.weight": attention.params["proj_weight"],
        "proj.bias": attention.params["proj_bias"],
        "mlp.0.weight": mlp.params["w1"],
        "mlp.0.bias": mlp.params["b1"],
        "mlp.2.weight": mlp.params["w2"],
        "mlp.2.bias": mlp.params["b2"],
    }
    block.load_state_dict({key: value.to(x.dtype) for key, value in weights.items()})
    with torch.no_grad():
        return block(x, c)


def _block(x, c, modulation, attention, mlp, mistake):
    """The block with one classic mistake (for naming wrong answers)."""
    chunks = modulation(c if mistake != "silu twice" else F.silu(c)).chunk(6, dim=1)
    shift1, scale1, gate1, shift2, scale2, gate2 = chunks
    if mistake == "shift and scale swapped":
        shift1, scale1, shift2, scale2 = scale1, shift1, scale2, shift2
    eps = 1e-5 if mistake == "eps" else 1e-6

    def norm(tokens):
        if mistake == "no norm":
            return tokens
        return F.layer_norm(tokens, (tokens.shape[-1],), eps=eps)

    def mod(tokens, shift, scale):
        factor = scale if mistake == "scale without 1 +" else 1 + scale
        return tokens * factor[:, None] + shift[:, None]

    if mistake == "no gate":
        gate1, gate2 = torch.ones_like(gate1), torch.ones_like(gate2)
    h = x + gate1[:, None] * attention(mod(norm(x), shift1, scale1))
    second_input = x if mistake == "second from x" else h
    return h + gate2[:, None] * mlp(mod(norm(second_input), shift2, scale2))


def _block_mistake(mistake: str):
    return lambda *args: _block(*args, mistake=mistake)


# ------------------------------------------------------------- the two-step target
class CurvedVelocity(InputFunction):
    r"""A stand-in network :math:`u(x, s) = a(s)\,x + b(s)` with
    :math:`a(s) = a_0 + a_1 s + a_2 s^2` and :math:`b(s) = b_0 + b_1 s + b_2 s^2` (``slope``,
    ``offset``: (3,) each), curved in s so that a step that evaluates it at the wrong time or
    place gives a different answer. Called as ``model(x, s)`` with s a float or (N,)."""

    kind = "curved_velocity"

    def __call__(self, x: torch.Tensor, s) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        if s.ndim == 1:
            s = s.reshape(-1, *([1] * (x.ndim - 1)))
        a, b = self.params["slope"].to(x.dtype), self.params["offset"].to(x.dtype)
        return (a[0] + a[1] * s + a[2] * s * s) * x + (b[0] + b[1] * s + b[2] * s * s)


SHAPES = (
    (torch.float32, (6, 2)),
    (torch.float64, (4, 2)),
    (torch.float32, (3, 1, 4, 4)),
    (torch.float64, (2, 3, 2, 2)),
)


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def cases_two_step_target(generator: torch.Generator) -> list[Case]:
    cases = []
    for (dtype, shape), teacher_steps in zip(SHAPES, (8, 16, 4, 32), strict=True):
        h = 1 / teacher_steps
        # the student's grid: s = 2h·k, k = 1..N/2 (the top, s = 1, included)
        k = torch.randint(1, teacher_steps // 2 + 1, (shape[0],), generator=generator)
        k[0] = teacher_steps // 2
        s = (2 * h * k).to(dtype)
        teacher = CurvedVelocity(
            slope=draw_uniform((3,), -1.5, 1.5, torch.float64, generator),
            offset=draw_uniform((3,), -1.0, 1.0, torch.float64, generator),
        )
        args = (teacher, draw_normal(shape, dtype, generator), s, h)
        cases.append(Case(f"{dtype_name(dtype)}, x {shape}, h 1/{teacher_steps}", args))
    return cases


def reference_two_step_target(teacher, x, s, h):
    return two_step_target(teacher, x, s.double(), h, time_scale=1.0)


def _two_steps(teacher, x, s, h, mistake=None):
    sign = 1 if mistake == "plus" else -1
    x_mid = x + sign * h * teacher(x, s)
    where = x if mistake == "at x" else x_mid
    when = s if mistake == "at s" else s - h
    x_end = x_mid + sign * h * teacher(where, when)
    if mistake == "endpoint":
        return x_end
    return (x - x_end) / (h if mistake == "over h" else 2 * h)


def _target_mistake(mistake: str):
    return lambda *args: _two_steps(*args, mistake=mistake)


def _teacher_velocity(teacher, x, s, h):
    return teacher(x, s)


# ------------------------------------------------------- the consistency boundary condition
SIGMA_DATA, SIGMA_MIN = 0.5, 0.002


def cases_consistency_boundary(generator: torch.Generator) -> list[Case]:
    cases = []
    for k, (dtype, shape) in enumerate(SHAPES):
        sigma_data = SIGMA_DATA if k < 2 else round(float(draw_uniform((), 0.3, 1.5,
                                                    torch.float64, generator)), 3)  # fmt: skip
        sigma_min = SIGMA_MIN if k < 2 else 0.01
        # log-uniform from sigma_min to 10, sigma_min itself first (f must be x there)
        logs = draw_uniform((shape[0],), math.log(sigma_min), math.log(10.0),
                            torch.float64, generator)  # fmt: skip
        sigma = logs.exp()
        sigma[0] = sigma_min
        model = CurvedVelocity(
            slope=draw_uniform((3,), -0.3, 0.3, torch.float64, generator),
            offset=draw_uniform((3,), -0.3, 0.3, torch.float64, generator),
        )
        args = (model, draw_normal(shape, dtype, generator), sigma.to(dtype),
                sigma_data, sigma_min)  # fmt: skip
        label = f"{dtype_name(dtype)}, x {shape}, sigma_data {sigma_data}, sigma_min {sigma_min}"
        cases.append(Case(label, args))
    return cases


def reference_consistency_boundary(model, x, sigma, sigma_data, sigma_min):
    c_skip, c_out = consistency_scalings(sigma, sigma_data, sigma_min)
    f = _column(c_skip, x) * x + _column(c_out, x) * model(x, sigma)
    return c_skip, c_out, f


def _boundary(model, x, sigma, sigma_data, sigma_min, mistake=None):
    shifted = sigma - sigma_min
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    c_out = sigma_data * shifted / (sigma**2 + sigma_data**2).sqrt()
    if mistake == "edm":
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma_data * sigma / (sigma**2 + sigma_data**2).sqrt()
    elif mistake == "shifted denominator":
        c_out = sigma_data * shifted / (shifted**2 + sigma_data**2).sqrt()
    elif mistake == "no sqrt":
        c_out = sigma_data * shifted / (sigma**2 + sigma_data**2)
    elif mistake == "swapped":
        c_skip, c_out = c_out, c_skip
    f = _column(c_skip, x) * x + _column(c_out, x) * model(x, sigma)
    return c_skip, c_out, f


def _boundary_mistake(mistake: str):
    return lambda *args: _boundary(*args, mistake=mistake)


# ----------------------------------------------------------------------------- exercises
DIT, DISTILL = "ddpm_course.dit", "ddpm_course.distill"
EXACT = {torch.float32: Tolerance(0.0, 0.0), torch.float64: Tolerance(0.0, 0.0)}
EXERCISES = (
    with_named_mistakes(
        Exercise(
            name="patchify",
            signature="patchify(x, patch_size)",
            reference=patchify,
            make_cases=cases_patchify,
            tolerances=EXACT,
            tolerance_reason="a rearrangement of the same numbers: exact",
            hint=(
                "The tokens are off. Cut the image into p×p patches, list the patches row by "
                "row (left to right, then down), and flatten each as (row in patch, column in "
                "patch, channel), channel fastest; classic mistakes: unfold's order "
                "(channel first), a reshape without the permutation, the patches listed "
                "column by column. Reread chapter 10, “Patchify”."
            ),
            output_names=("tokens",),
            package_functions=(f"{DIT}.patchify", f"{DIT}.DiT"),
        ),
        {
            "F.unfold's order (channel, row, column inside the patch)": _unfold_order,
            "a reshape without the permutation": _no_permute,
            "the patches listed column by column": _patches_by_column,
            "the columns inside a patch before its rows": _columns_inside_patch_first,
        },
    ),
    with_named_mistakes(
        Exercise(
            name="unpatchify",
            signature="unpatchify(tokens, patch_size, channels, height, width)",
            reference=unpatchify,
            make_cases=cases_unpatchify,
            tolerances=EXACT,
            tolerance_reason="a rearrangement of the same numbers: exact",
            hint=(
                "The image is off. Undo patchify exactly: split each token into (row in "
                "patch, column in patch, channel), put the patches back row by row, and "
                "permute to (N, C, H, W); classic mistakes: fold's order (channel first), "
                "a reshape without the permutation. Reread chapter 10, “Patchify”."
            ),
            output_names=("image",),
            package_functions=(f"{DIT}.unpatchify", f"{DIT}.DiT"),
        ),
        {
            "F.fold's order (channel, row, column inside the patch)": _fold_order,
            "a reshape without the permutation": _unpatchify_no_permute,
            "the patches placed column by column": _unpatchify_by_column,
        },
    ),
    with_named_mistakes(
        Exercise(
            name="adaln_zero_block",
            signature="adaln_zero_block(x, c, modulation, attention, mlp)",
            reference=reference_adaln_zero_block,
            make_cases=cases_adaln_zero_block,
            tolerances={
                torch.float32: Tolerance(rtol=1e-5, atol=1e-5),
                torch.float64: ROUNDING[torch.float64],
            },
            tolerance_reason=ROUNDING_REASON
            + " (float32: a LayerNorm and a softmax in another order, 1e-5)",
            hint=(
                "The block's output is off. Split the modulation of c into six (N, D) chunks "
                "in the order shift, scale, gate (attention) then shift, scale, gate (MLP); each "
                "sub-block normalises its input (LayerNorm without affine parameters, eps "
                "1e-6), modulates it by x·(1 + scale) + shift, applies attention or the MLP, "
                "and adds gate times the result to its input; classic mistakes: no gate, "
                "x·scale instead of x·(1 + scale), the MLP's LayerNorm of the block's input "
                "instead of the updated tokens. Reread chapter 10, “adaLN-Zero: "
                "conditioning every block on the noise level”."
            ),
            output_names=("tokens",),
            package_functions=(f"{DIT}.DiTBlock", f"{DIT}.modulate"),
        ),
        {
            "no gates (plain residual sums)": _block_mistake("no gate"),
            "x·scale + shift without the 1 +": _block_mistake("scale without 1 +"),
            "shift and scale swapped": _block_mistake("shift and scale swapped"),
            "the MLP's input normalised from the block's input x, not the updated tokens": (
                _block_mistake("second from x")
            ),
            "no LayerNorm": _block_mistake("no norm"),
            "LayerNorm's eps 1e-5 (PyTorch's default), not DiT's 1e-6": _block_mistake(
                "eps"
            ),
            "SiLU applied to c twice (modulation already starts with SiLU)": (
                _block_mistake("silu twice")
            ),
        },
    ),
    with_named_mistakes(
        Exercise(
            name="two_step_target",
            signature="two_step_target(teacher, x, s, h)",
            reference=reference_two_step_target,
            make_cases=cases_two_step_target,
            tolerances=ROUNDING,
            tolerance_reason=ROUNDING_REASON,
            hint=(
                "The target is off. Take two Euler steps of the teacher from x at s, each of "
                "size h towards the data (the second at the midpoint and at time s − h), and "
                "return the constant velocity that lands on the end in one step of 2h, (x − "
                "x'')/(2h); classic mistakes: the second velocity at x or at s, dividing by h, "
                "returning the end point. Reread chapter 10, “Progressive distillation”."
            ),
            output_names=("target",),
            package_functions=(
                f"{DISTILL}.two_step_target",
                f"{DISTILL}.ProgressiveDistillation",
            ),
        ),
        {
            "the second velocity evaluated at x instead of the midpoint": _target_mistake(
                "at x"
            ),
            "the second velocity evaluated at s instead of s - h": _target_mistake(
                "at s"
            ),
            "dividing by h instead of 2h": _target_mistake("over h"),
            "the end point x'' instead of the velocity": _target_mistake("endpoint"),
            "steps of +h (towards the noise)": _target_mistake("plus"),
            "the teacher's own velocity at (x, s), a single step": _teacher_velocity,
        },
    ),
    with_named_mistakes(
        Exercise(
            name="consistency_boundary",
            signature="consistency_boundary(model, x, sigma, sigma_data, sigma_min)",
            reference=reference_consistency_boundary,
            make_cases=cases_consistency_boundary,
            tolerances=ROUNDING,
            tolerance_reason=ROUNDING_REASON,
            hint=(
                "A scaling or f is off. Both scalings are shifted by σ_min so that at σ_min "
                "c_skip is 1 and c_out is 0, whatever the network says, and f returns x "
                "itself; f adds c_skip times x and c_out times the network's output at (x, σ); "
                "classic mistakes: EDM's own scalings (not shifted), the shift under c_out's "
                "square root, the square root left out, a (N,) scaling left flat so that it "
                "does not broadcast over x. Reread chapter 10, “Consistency models”."
            ),
            output_names=("c_skip", "c_out", "f"),
            package_functions=(
                f"{DISTILL}.consistency_scalings",
                f"{DISTILL}.consistency_function",
            ),
        ),
        {
            "EDM's scalings without the shift by sigma_min (f(x, sigma_min) != x)": (
                _boundary_mistake("edm")
            ),
            "(sigma - sigma_min)² under c_out's square root": _boundary_mistake(
                "shifted denominator"
            ),
            "c_out without the square root": _boundary_mistake("no sqrt"),
            "c_skip and c_out swapped": _boundary_mistake("swapped"),
        },
    ),
    Exercise(
        name="consistency_loss",
        signature="consistency_loss(model, teacher, x0, noise, s, h)",
        reference=reference_consistency_loss,
        make_cases=cases_consistency_loss,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the one-step samples",
        hint=(
            "The trained model's one-step samples are off. The loss puts x0 on the path at "
            "the noisier time s, takes one Euler step of the teacher from s down to s − h, "
            "and asks the student's consistency function (x minus s times the network's "
            "output) at the noisier point to match its own value at the teacher's point and "
            "s − h, the latter without gradient. Classic mistakes, each named when the "
            "samples show it: the teacher's x0 estimate as the target, the ODE step taken "
            "with the student, s and s − h swapped, no stop-gradient. Reread chapter 10, "
            "“Consistency models”."
        ),
        output_names=("weights", "losses", "gradient_rows"),
        package_functions=(
            f"{DISTILL}.ConsistencyDistillation",
            f"{DISTILL}.consistency_function",
        ),
        driver="train_tiny_consistency",
        judge=judge_consistency_loss,
    ),
)
