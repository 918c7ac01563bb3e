"""What the outcome-graded samplers of chapters 05-07 share: shipped models sent to the
sandbox as TorchScript programs, and the judges' measures of the samples they produced.

A sampler exercise (a DDIM loop, a guided loop, a bug hunt) needs a real network where the
student's code runs. Inside the grading sandbox the package's networks are not importable (the
student view holds no package code), so the grader traces the shipped model
(:func:`torch.jit.trace`: the weights and the forward's operations, no Python source of the
package) and sends the serialised program as a uint8 tensor inside a :class:`TracedModel`,
an :class:`~ddpm_course.grading.exercise.InputFunction` that loads it on its first call. The
samples come back, and the judge measures them in the grader's process: their Fréchet distance
or class accuracy in the shipped digits classifier's features, and how far they are from the
samples the package's own sampler draws from the same noise (a sampler must be a function of
the noise it is given: samples copied from anywhere else, however good, are not).
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache

import torch

from .exercise import InputFunction

__all__ = [
    "TracedModel",
    "median_rmse",
    "traced_model",
]


class TracedModel(InputFunction):
    """A shipped network as a TorchScript program (``program``: uint8 bytes of
    :func:`torch.jit.save`); called like the network, e.g. ``model(x_t, t) -> ε̂``."""

    kind = "traced_model"

    def __call__(self, *args):
        module = self.__dict__.get("_module")
        if module is None:
            import io

            data = self.params["program"].numpy().tobytes()
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            module.eval()
            self.__dict__["_module"] = module
        return module(*args)


class _Decoder(torch.nn.Module):
    """An autoencoder's decoder alone, as a module to trace: ``decoder(z) -> images``."""

    def __init__(self, autoencoder: torch.nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z)


@lru_cache(maxsize=6)
def _program(name: str, part: str) -> torch.Tensor:
    from ..pretrained import load_pretrained

    model = load_pretrained(name, device="cpu")[0].eval()
    if part == "decoder":
        channels, size = model.latent_channels, model.config.get("latent_size", 7)
        module, inputs = _Decoder(model), (torch.zeros(2, channels, size, size),)
    else:
        module = getattr(model, "denoiser", model)  # a latent model: its denoiser alone
        size = module.config.get("image_size", 16)
        channels = module.config.get("in_channels", 1)
        inputs = (torch.zeros(2, channels, size, size), torch.tensor([0, 999]))
        if part == "labels":
            inputs += (torch.tensor([0, 1]),)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter(
            "ignore"
        )  # the tracer's notes on the shape checks it records
        traced = torch.jit.trace(module, inputs, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def traced_model(name: str, part: str = "model") -> TracedModel:
    """The shipped model ``name`` as a :class:`TracedModel` (traced once per process):
    ``part="model"``: ``model(x, t)``; ``"labels"``: ``model(x, t, labels)`` (a latent model:
    its denoiser on latents); ``"decoder"``: an autoencoder's ``decoder(z) -> images``."""
    return TracedModel(program=_program(name, part))


def median_rmse(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """The median over samples of the root-mean-square difference per sample (pixels in
    [-1, 1]): how far a sampler's output lies from the reference's from the same noise."""
    difference = (samples.double() - reference.double()).flatten(1)
    return float(difference.pow(2).mean(1).sqrt().median())
