"""Properties that hold for every schedule, every T, every t and every shape (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.schedules import NoiseSchedule

SETTINGS = settings(max_examples=25, deadline=None)
ROUND_TRIP_TOL = {
    "rtol": 1e-9,
    "atol": 1e-9,
}  # float64; 1/sqrt(alpha-bar) reaches 4e4 at the last cosine step (T = 2000)

schedule_names = st.sampled_from(["linear", "cosine", "sigmoid"])
num_timesteps = st.integers(min_value=2, max_value=2000)


@st.composite
def diffusion_and_timesteps(draw, batch_size: int = 4):
    """A process of a random schedule and T, with t covering both ends and random steps in between."""
    diffusion = GaussianDiffusion(
        NoiseSchedule.from_name(draw(schedule_names), draw(num_timesteps))
    )
    T = diffusion.num_timesteps
    inner = draw(
        st.lists(
            st.integers(0, T - 1), min_size=batch_size - 2, max_size=batch_size - 2
        )
    )
    return diffusion, torch.tensor([0, T - 1, *inner])


def gaussian(shape, seed: int) -> torch.Tensor:
    return torch.randn(
        shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@SETTINGS
@given(diffusion_and_timesteps(), st.integers(0, 2**31 - 1))
def test_eps_x0_and_v_conversions_match_their_closed_forms(process, seed):
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (Eq. 4 of Ho et al. 2020) and v = sqrt(ᾱ_t) ε -
    sqrt(1 - ᾱ_t) x0 (Salimans & Ho 2022), with ᾱ_t the product of (1 - β) computed here from
    the betas; every conversion recovers x0 and ε from these hand-built x_t and v."""
    diffusion, t = process
    x0, eps = gaussian((4, 2, 3, 3), seed), gaussian((4, 2, 3, 3), seed + 1)
    alpha_bar = torch.cumprod(1 - diffusion.betas.double(), 0)[t].reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    torch.testing.assert_close(
        diffusion.q_sample(x0, t, noise=eps), x_t, **ROUND_TRIP_TOL
    )
    torch.testing.assert_close(diffusion.predict_v(x0, t, eps), v, **ROUND_TRIP_TOL)
    torch.testing.assert_close(
        diffusion.predict_x0_from_eps(x_t, t, eps), x0, **ROUND_TRIP_TOL
    )
    torch.testing.assert_close(
        diffusion.predict_eps_from_x0(x_t, t, x0), eps, **ROUND_TRIP_TOL
    )
    torch.testing.assert_close(
        diffusion.predict_x0_from_v(x_t, t, v), x0, **ROUND_TRIP_TOL
    )
    torch.testing.assert_close(
        diffusion.predict_eps_from_v(x_t, t, v), eps, **ROUND_TRIP_TOL
    )


@SETTINGS
@given(schedule_names, num_timesteps)
def test_posterior_variance_is_positive_and_finite_for_t_at_least_1(name, T):
    schedule = NoiseSchedule.from_name(name, T)
    assert bool((schedule.posterior_variance[1:] > 0).all())
    assert bool(torch.isfinite(schedule.posterior_log_variance_clipped).all())
    assert bool(
        (schedule.posterior_variance[1:] <= schedule.betas[1:]).all()
    )  # beta-tilde_t <= beta_t


@SETTINGS
@given(
    diffusion_and_timesteps(batch_size=3),
    st.sampled_from(["eps", "x0", "v"]),
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
)
def test_every_output_has_the_shape_of_the_input(process, objective, trailing_shape):
    """(N, D), (N, C, H) and (N, C, H, W) all work, with per-example t or one scalar t."""
    base, t = process
    diffusion = GaussianDiffusion(
        base.schedule, objective=objective, var_type="learned_range"
    )
    shape = (3, *trailing_shape)
    x = gaussian(shape, 0)

    def model(x_t, t):
        return torch.cat([0.5 * x_t, torch.zeros_like(x_t)], dim=1)

    for timesteps in (t, t[1]):
        assert diffusion.q_sample(x, timesteps).shape == shape
        assert all(
            q.shape == shape
            for q in torch.broadcast_tensors(*diffusion.q_posterior(x, x, timesteps))
        )
        p = diffusion.p_mean_variance(model, x, timesteps)
        assert all(value.shape == shape for value in torch.broadcast_tensors(*p))
        losses = diffusion.training_losses(
            model, x, t=timesteps.expand(3), loss_type="hybrid"
        )
        assert all(value.shape == (3,) for value in losses.values())
