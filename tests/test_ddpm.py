"""The seed's DDPM API, checked with oracle models whose right answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_course.ddpm import DDPM, GaussianDiffuser


class _Recorder(nn.Module):
    """Remembers (x_t, t) and predicts zero noise."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        self.seen = (x.clone(), t.clone())
        return x * self.scale


def test_default_diffuser_has_the_seed_linear_betas():
    betas = GaussianDiffuser().diffusion.betas
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12) and betas[
        -1
    ].item() == pytest.approx(0.02, rel=1e-12)


def test_loss_of_a_zero_predictor_is_the_mean_square_of_the_noise_it_was_shown():
    # with eps_hat = 0 the loss is E[eps^2]; recover eps from what the model saw: eps = (x_t - sqrt(ab) x0)/sqrt(1 - ab)
    model = _Recorder()
    ddpm = DDPM(model=model, image_size=8, channels=1, timesteps=100)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = ddpm(x, generator=torch.Generator().manual_seed(1))
    x_t, t = model.seen
    alphas_cumprod = (
        torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)[t]
        .float()
        .view(-1, 1, 1, 1)
    )
    noise = (x_t - alphas_cumprod.sqrt() * (2 * x - 1)) / (1 - alphas_cumprod).sqrt()
    assert loss.item() == pytest.approx(
        noise.pow(2).mean().item(), rel=1e-4
    )  # float32 round-off of x_t


def test_denoise_at_t0_is_deterministic_and_at_t_positive_is_not():
    diffuser = GaussianDiffuser(timesteps=50)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731 - any callable model works
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = diffuser.denoise(model, x, 0, generator=torch.Generator().manual_seed(1))
    b = diffuser.denoise(model, x, 0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = diffuser.denoise(model, x, 10, generator=torch.Generator().manual_seed(1))
    d = diffuser.denoise(model, x, 10, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c, d)


def test_sample_is_ancestral_sampling_mapped_to_the_unit_interval():
    """ddpm.sample is Algorithm 2 over all T steps (the samplers module's ddpm_sample, tested
    against diffusers' DDPMScheduler) from the same x_T and noise, mapped from [-1, 1] to [0, 1]."""
    from ddpm_course.samplers import ddpm_sample

    torch.manual_seed(0)
    model = _Recorder()
    with torch.no_grad():
        model.scale.fill_(
            0.3
        )  # a model that predicts something, so that each step matters
    ddpm = DDPM(model=model, image_size=8, channels=3, timesteps=20)
    samples = ddpm.sample(5, generator=torch.Generator().manual_seed(0))
    expected = ddpm_sample(model, ddpm.diffuser.diffusion, (5, 3, 8, 8),
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(samples, ((expected + 1) / 2).clamp(0, 1))


def test_wrong_image_shape_is_refused_with_the_expected_shape():
    ddpm = DDPM(model=_Recorder(), image_size=8, channels=3, timesteps=20)
    with pytest.raises(ValueError, match=r"\(N, 3, 8, 8\)"):
        ddpm(torch.rand(2, 1, 8, 8))


def test_denoise_refuses_a_timestep_out_of_range():
    with pytest.raises(ValueError, match="0, ..., 49"):
        GaussianDiffuser(timesteps=50).denoise(
            lambda x, t: x, torch.zeros(1, 1, 2, 2), 50
        )


def test_default_model_is_the_seed_sized_unet_and_mnist_sized_images_work():
    ddpm = DDPM(image_size=32, channels=3)
    # the seed's docs state 20,907,649 parameters; our U-Net of the same role is within 1%
    assert sum(p.numel() for p in ddpm.model.parameters()) == pytest.approx(
        20_907_649, rel=0.01
    )
    mnist = DDPM(image_size=28, channels=1, timesteps=10)
    loss = mnist(torch.rand(2, 1, 28, 28))
    assert loss.ndim == 0 and torch.isfinite(loss)
