"""What an exercise is: a fixed signature, a reference, randomised test cases and a comparison.

Every exercise of the course is a function with a fixed signature that the package also implements.
An :class:`Exercise` holds the package's answer (``reference``), a generator of test cases (several
shapes, float32 and float64, values drawn from a ``torch.Generator``), the tolerance of the
comparison per dtype with the reason for it, and a hint for students. ``check()`` (in the notebook)
and the instructor grader (in its own process) both use :meth:`Exercise.compare`, so a case passes
or fails for the same reason in both places.

Some exercises take functions as arguments (a drift, a score model). Those are :class:`InputFunction`
objects: plain callables described by a name and tensor / float parameters, so that the grader can
send them to the process that runs a student's notebook as data (:func:`encode_args`) and rebuild
them there (:func:`decode_args`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

__all__ = [
    "FOLLOWED",
    "ROUNDING",
    "ROUNDING_REASON",
    "Case",
    "CaseResult",
    "Exercise",
    "InputFunction",
    "OutputError",
    "Tolerance",
    "as_outputs",
    "clone_args",
    "correlation",
    "decode_args",
    "draw_normal",
    "draw_uniform",
    "dtype_name",
    "encode_args",
    "malformed",
    "noise_verdict",
    "not_followed",
    "per_example_shape",
    "relative_gap",
    "row_weights",
]


@dataclass(frozen=True)
class Case:
    """One test case: a short description for feedback (``"float32, x0 (4, 3, 8, 8)"``), the
    positional arguments of the exercise function, and the size of the terms that rounding acts on
    (``scale``, a float or a tensor that broadcasts against the output; the absolute tolerance is
    multiplied by it where a formula is ill-conditioned, e.g. a division by a small number)."""

    label: str
    args: tuple
    scale: float | torch.Tensor = 1.0


@dataclass(frozen=True)
class Tolerance:
    """A case passes when ``|actual - expected| <= atol * scale + rtol * |expected|`` element-wise
    (``scale`` is the case's, 1 unless the formula is ill-conditioned)."""

    rtol: float
    atol: float


@dataclass(frozen=True)
class CaseResult:
    """Whether one case passed, and why not: the largest error or what was wrong with the output."""

    passed: bool
    message: str


class OutputError(ValueError):
    """The function returned something of the wrong kind (not a tensor, or the wrong number of them)."""


class InputFunction:
    """A callable argument of an exercise (a drift, a diffusion, a score model), described by data.

    Subclasses set ``kind`` (a unique name) and keep their parameters, floats or tensors, in
    ``self.params``; they are rebuilt from ``(kind, params)`` by :func:`decode_args`.
    """

    kind: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[InputFunction]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        known = InputFunction.registry.get(cls.kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"{known.__qualname__} and {cls.__qualname__} are both called {cls.kind!r}; give each a unique kind"
            )
        InputFunction.registry[cls.kind] = cls

    def __init__(self, **params: float | torch.Tensor) -> None:
        self.params = params

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{key}={tuple(value.shape)}"
            if torch.is_tensor(value)
            else f"{key}={value:g}"
            for key, value in self.params.items()
        )
        return f"{type(self).__name__}({shown})"


def clone_args(args: tuple) -> tuple:
    """A copy of the arguments in which every tensor is a fresh clone (so in-place edits do not leak)."""
    return tuple(arg.clone() if torch.is_tensor(arg) else arg for arg in args)


def encode_args(args: tuple) -> list:
    """Arguments as plain data for ``torch.save`` / ``torch.load(weights_only=True)``: tensors, numbers,
    and ``{"function": kind, "params": {...}}`` for each :class:`InputFunction`."""
    return [
        {"function": arg.kind, "params": dict(arg.params)}
        if isinstance(arg, InputFunction)
        else arg
        for arg in args
    ]


def decode_args(encoded: list) -> tuple:
    """The inverse of :func:`encode_args`."""
    return tuple(
        InputFunction.registry[arg["function"]](**arg["params"])
        if isinstance(arg, dict)
        else arg
        for arg in encoded
    )


def as_outputs(value: Any, n_outputs: int) -> tuple[torch.Tensor, ...]:
    """What a function returned, as a tuple of ``n_outputs`` tensors; an :class:`OutputError` otherwise."""
    if n_outputs == 1:
        if not torch.is_tensor(value):
            raise OutputError(
                f"returned a {type(value).__name__}; return a torch.Tensor"
            )
        return (value,)
    if not isinstance(value, (tuple, list)) or len(value) != n_outputs:
        got = (
            f"{len(value)} values"
            if isinstance(value, (tuple, list))
            else f"a {type(value).__name__}"
        )
        raise OutputError(f"returned {got}; return a tuple of {n_outputs} tensors")
    for position, item in enumerate(value):
        if not torch.is_tensor(item):
            raise OutputError(
                f"output {position} is a {type(item).__name__}; return torch.Tensors"
            )
    return tuple(value)


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function a student writes and how it is checked.

    Args:
        name: the function's name in the notebook (``"q_sample"``).
        signature: how it is called, shown in messages (``"q_sample(x0, t, noise, alphas_cumprod)"``).
        reference: the package's answer, a thin wrapper with the same signature.
        make_cases: draws the test cases from a ``torch.Generator``.
        tolerances: the :class:`Tolerance` per output dtype; ``tolerance_reason`` says why.
        hint: one or two sentences shown when a case fails.
        output_names: the names of the returned tensors (one name: a tensor; more: a tuple).
        package_functions: dotted names of the package functions that compute the answer (the
            grader flags a submission that calls them).
        driver: the name of a function in :mod:`~ddpm_course.grading.drivers` that calls the
            student's function (``DRIVERS[driver](student_fn, *case.args)`` -> the outputs), for an
            exercise graded by what a procedure built from it produces (e.g. a few training
            steps); None: the outputs are ``student_fn(*case.args)``. It runs where the student's
            code runs (in the sandbox, and in ``check()``).
        judge: ``judge(case, outputs) -> CaseResult``, run in the grader's process (and in
            ``check()``) instead of comparing with the reference's outputs; ``reference`` is then
            the package's answer that the judge must accept (tests show it does).
        copy_check: whether the copy check compares this exercise's answers with each other's
            and the package's; False for a bug hunt, whose answers all start from the same
            given code and differ from it by a few lines.
    """

    name: str
    signature: str
    reference: Callable[..., Any]
    make_cases: Callable[[torch.Generator], list[Case]]
    tolerances: Mapping[torch.dtype, Tolerance]
    tolerance_reason: str
    hint: str
    output_names: tuple[str, ...] = ("output",)
    package_functions: tuple[str, ...] = field(default=())
    driver: str | None = None
    judge: Callable[[Case, tuple[torch.Tensor, ...]], CaseResult] | None = None
    copy_check: bool = True

    @property
    def n_outputs(self) -> int:
        return len(self.output_names)

    def call(self, fn: Callable[..., Any], args: tuple) -> tuple[torch.Tensor, ...]:
        """The outputs of the student's ``fn`` on ``args`` (through the driver, if any), as a tuple
        of ``n_outputs`` tensors; :class:`OutputError` when it returns something else."""
        from .drivers import call_with_driver

        return as_outputs(
            call_with_driver(self.driver, fn, clone_args(args)), self.n_outputs
        )

    def grade_case(
        self,
        case: Case,
        actual: tuple[torch.Tensor, ...],
        expected: tuple[torch.Tensor, ...] | None = None,
    ) -> CaseResult:
        """Judge one case: with ``judge`` when it is set, else :meth:`compare` with ``expected``
        (computed from the reference when not given)."""
        if self.judge is not None:
            result = self.judge(case, tuple(actual))
            if not isinstance(result, CaseResult):
                raise TypeError(
                    f"the judge of {self.name} returned {type(result).__name__}"
                )
            return result
        if expected is None:
            expected = self.expected(case)
        return self.compare(expected, tuple(actual), case.scale)

    def cases(self, seed: int) -> list[Case]:
        """The test cases drawn with a generator seeded with ``seed`` (the same seed, the same cases)."""
        return self.make_cases(torch.Generator().manual_seed(seed))

    def expected(self, case: Case) -> tuple[torch.Tensor, ...]:
        """The reference's outputs for ``case``."""
        return as_outputs(self.reference(*clone_args(case.args)), self.n_outputs)

    def compare(
        self,
        expected: tuple[torch.Tensor, ...],
        actual: tuple[torch.Tensor, ...],
        scale: float | torch.Tensor = 1.0,
    ) -> CaseResult:
        """Compare a function's outputs with the reference's: same shape, same dtype, and values within
        the tolerance of that dtype (see :class:`Tolerance`; NaN only where the reference has NaN)."""
        errors = []
        for name, want, got in zip(self.output_names, expected, actual, strict=False):
            label = f"{name}: " if self.n_outputs > 1 else ""
            if tuple(got.shape) != tuple(want.shape):
                return CaseResult(
                    False,
                    f"{label}shape {tuple(got.shape)}, expected {tuple(want.shape)}",
                )
            if got.dtype != want.dtype:
                return CaseResult(
                    False,
                    f"{label}dtype {got.dtype}, expected {want.dtype} (the inputs' dtype)",
                )
            tolerance = self.tolerances[want.dtype]
            want64 = want.detach().cpu().double()
            got64 = got.detach().cpu().double()
            difference = (got64 - want64).abs()
            allowed = (
                tolerance.atol * torch.as_tensor(scale, dtype=torch.float64)
                + tolerance.rtol * want64.abs()
            ).expand_as(want64)
            # equal infinities or NaN in both count as equal; an infinity must be matched exactly
            same_special = (got64 == want64) | (got64.isnan() & want64.isnan())
            close = same_special | (want64.isfinite() & (difference <= allowed))
            difference = torch.where(
                same_special, 0.0, difference.nan_to_num(nan=math.inf)
            )
            largest = difference.max().item() if difference.numel() else 0.0
            if not bool(close.all()):
                # the failing element with the largest error (a NaN counts as an infinite error)
                failing = torch.where(close, -1.0, difference)
                flat = int(torch.argmax(failing.reshape(-1)).item())
                index = tuple(
                    int(i)
                    for i in torch.unravel_index(torch.tensor(flat), want64.shape)
                )
                where = f" at index {index}" if index else ""
                want_value, got_value = want64[index].item(), got64[index].item()
                # the ratio names a factor (√2, 2, -1, ...), the most common shape of a mistake
                ratio = (
                    f", got/expected {got_value / want_value:.4g}"
                    if want_value != 0 and math.isfinite(got_value / want_value)
                    else ""
                )
                return CaseResult(
                    False,
                    f"{label}largest error {difference[index].item():.2e}{where}: "
                    f"expected {want_value:.6g}, got {got_value:.6g}{ratio} "
                    f"(allowed error there: {allowed[index].item():.1e})",
                )
            errors.append(largest)
        return CaseResult(True, f"largest error {max(errors):.1e}")


# ------------------------------------------------------------------ helpers for the case generators
# float32 keeps about 7 significant digits; the same formula evaluated in a different order (or with a
# float64 coefficient cast at a different point) differs by a few units in the last place.
ROUNDING = {
    torch.float32: Tolerance(rtol=1e-5, atol=1e-6),
    torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
}
ROUNDING_REASON = "a few roundings of a different but equivalent evaluation order"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def per_example_shape(shape: tuple) -> tuple:
    """(N, 1, ..., 1): one value per example, broadcastable against data of ``shape``."""
    return (shape[0],) + (1,) * (len(shape) - 1)


def draw_normal(
    shape: tuple, dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """N(0, 1) values drawn in float64 (the same numbers for either dtype) and cast to ``dtype``."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def draw_uniform(
    shape: tuple,
    low: float,
    high: float,
    dtype: torch.dtype,
    generator: torch.Generator,
) -> torch.Tensor:
    """Uniform values in [low, high), drawn in float64 and cast to ``dtype``."""
    return (
        low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)
    ).to(dtype)


def relative_gap(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The root mean square of ``actual - expected`` over the standard deviation of
    ``expected`` (float64): 0 for the same numbers, about 1.4 for an independent draw of the same
    law. The outcome judges measure with it whether a simulation followed the noise it was given
    (compared with the scheme run on that noise) and not fresh randomness."""
    actual64, expected64 = actual.detach().double(), expected.detach().double()
    spread = float(expected64.std()) or 1.0
    return float((actual64 - expected64).pow(2).mean().sqrt()) / spread


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """The correlation coefficient of two tensors of the same shape (float64), each centred
    per feature (over its first dimension, the paths or samples) and then pooled."""
    a, b = a.double(), b.double()
    a, b = (a - a.mean(0)).flatten(), (b - b.mean(0)).flatten()
    return float(
        (a * b).sum() / ((a * a).sum() * (b * b).sum()).sqrt().clamp_min(1e-300)
    )


def row_weights(values: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression coefficient of ``values`` (N,) on each row of ``noise`` (K, N): how much
    of each row's noise the values carry (the rows are nearly orthogonal over N paths)."""
    centred = values.double() - values.double().mean()
    rows = noise.double()
    return (rows @ centred) / (rows * rows).sum(1)


def not_followed(what: str, rho: float) -> str:
    """Feedback for an output that does not depend on the noise it was given."""
    return (
        f"{what} do not follow the given noise: their correlation with the scheme run on it "
        f"is {rho:.2f} (the scheme: 1). They look like fresh random draws (the "
        "target law sampled directly, or torch.randn in place of the rows of noise) or a "
        "fixed answer; each path is driven by its own column of noise, row k at step k"
    )


# below this correlation with the scheme's output on the given noise, an output did not use it
FOLLOWED = 0.3


def noise_verdict(measured: str, what: str, actual: torch.Tensor, scheme: torch.Tensor,
                  followed: bool, how: str, departure: Callable[[], str]) -> CaseResult:  # fmt: skip
    """The verdict on a simulation whose statistics passed (``measured`` says them): a pass when
    it ``followed`` the noise it was given (``how`` says how close it is to ``scheme``, the
    scheme's output on that noise); otherwise a failure that says either that ``what`` do not
    follow the noise (correlation with ``scheme`` below :data:`FOLLOWED`: fresh randomness, a
    fixed answer) or, from ``departure()``, how they follow it but not the scheme."""
    if followed:
        return CaseResult(True, f"{measured}; {how}")
    rho = correlation(actual, scheme)
    if rho < FOLLOWED:
        return CaseResult(False, f"{measured}, but {not_followed(what, rho)}")
    return CaseResult(False, f"{measured}, but {departure()}")


def malformed(
    output: torch.Tensor, shape: tuple, what: str, why_not_finite: str = ""
) -> CaseResult | None:
    """An outcome judge's first check: the failure of an ``output`` that is not of ``shape`` or
    holds NaN or infinite values (``what`` names it in the message, "the samples";
    ``why_not_finite`` says what non-finite values suggest), or None when it is well formed."""
    if tuple(output.shape) != tuple(shape):
        return CaseResult(
            False, f"{what} of shape {tuple(output.shape)}, expected {tuple(shape)}"
        )
    if not bool(output.isfinite().all()):
        why = f": {why_not_finite}" if why_not_finite else ""
        return CaseResult(False, f"{what} hold NaN or infinite values{why}")
    return None
