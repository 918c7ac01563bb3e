"""Guidance (chapter 06): CFG, classifier guidance, inpainting and RePaint, SR input, SDEdit.

References are independent of the code under test: closed forms on Gaussian data (where the
conditional score is known), hand-worked schedules, and oracle denoisers that know x0.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    cfg_combine,
    classifier_guided_ddpm_sample,
    classifier_guided_eps,
    classifier_log_prob_grad,
    inpaint,
    repaint_schedule,
    replacement_step,
    sdedit,
    sdedit_start,
    sr_downsample,
)
from ddpm_course.guidance_nets import NoisyClassifier, SuperResUNet, sr_model_input
from ddpm_course.nn import UNet
from ddpm_course.samplers import ddim_sample, ddpm_sample, dpm_solver_sample, respace
from ddpm_course.schedules import linear


def _diffusion(T: int = 100) -> GaussianDiffusion:
    return GaussianDiffusion(linear(T))


def _tiny_unet(num_classes: int | None = 3) -> UNet:
    torch.manual_seed(0)
    model = UNet(
        image_size=8,
        in_channels=1,
        model_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        num_groups=4,
        num_classes=num_classes,
    )
    for p in (
        model.parameters()
    ):  # a random, non-zero network (the output layer starts at 0)
        nn.init.normal_(p, std=0.05)
    return model.eval()


# ------------------------------------------------------------------------------------- CFG
def test_cfg_combine_is_conditional_at_w_0_and_matches_the_s_convention():
    cond, uncond = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), cond)
    w = 2.5
    s = 1 + w  # GLIDE / diffusers: uncond + s (cond - uncond)
    torch.testing.assert_close(
        cfg_combine(cond, uncond, w), uncond + s * (cond - uncond)
    )


def test_cfg_wrapper_runs_the_network_once_on_both_halves_and_matches_two_calls():
    model = _tiny_unet()
    calls = []
    model.register_forward_hook(
        lambda module, args, out: calls.append(args[0].shape[0])
    )
    x, t, y = (
        torch.randn(5, 1, 8, 8),
        torch.randint(0, 100, (5,)),
        torch.tensor([0, 1, 2, 0, 1]),
    )
    guided = ClassifierFreeGuidance(model, 3.0, y)(x, t)
    assert calls == [10]  # one forward of 2N images
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, torch.full((5,), 3))
    torch.testing.assert_close(guided, 4.0 * cond - 3.0 * uncond, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", [ddim_sample, dpm_solver_sample])
def test_every_sampler_accepts_the_cfg_wrapper_and_w_0_is_conditional_sampling(sampler):
    model, diffusion = _tiny_unet(), _diffusion()
    y = torch.tensor([0, 1, 2])
    kwargs = dict(
        steps=5, x_T=torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    )
    plain = sampler(model, diffusion, (3, 1, 8, 8), model_kwargs={"y": y}, **kwargs)
    wrapped = sampler(
        ClassifierFreeGuidance(model, 0.0, y), diffusion, (3, 1, 8, 8), **kwargs
    )
    torch.testing.assert_close(wrapped, plain, atol=1e-5, rtol=1e-5)
    guided = sampler(
        ClassifierFreeGuidance(model, 4.0, y), diffusion, (3, 1, 8, 8), **kwargs
    )
    assert (guided - plain).abs().max() > 1e-3  # guidance changes the samples
    # the ancestral sampler too, with labels passed through model_kwargs
    out = ddpm_sample(
        ClassifierFreeGuidance(model, 2.0),
        respace(diffusion, 4),
        (3, 1, 8, 8),
        model_kwargs={"y": y},
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()


def test_cfg_limited_to_an_interval_guides_only_the_timesteps_inside_it():
    model = _tiny_unet()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    t = torch.tensor([10, 40, 60, 90])
    with torch.no_grad():
        full = ClassifierFreeGuidance(model, 3.0, y)(x, t)
        plain = ClassifierFreeGuidance(model, 0.0, y)(x, t)
        limited = ClassifierFreeGuidance(model, 3.0, y, max_timestep=50)(x, t)
    torch.testing.assert_close(limited[:2], full[:2])
    torch.testing.assert_close(limited[2:], plain[2:])


def test_cfg_with_a_separate_unconditional_model_guides_away_from_that_model():
    model, other = _tiny_unet(), _tiny_unet(None)
    for p in other.parameters():  # a different network from the conditional one
        nn.init.normal_(p, std=0.07)
    x, t, y = (
        torch.randn(3, 1, 8, 8),
        torch.tensor([5, 50, 95]),
        torch.tensor([2, 0, 1]),
    )
    with torch.no_grad():
        guided = ClassifierFreeGuidance(model, 2.0, y, uncond_model=other)(x, t)
        cond, uncond = model(x, t, y), other(x, t)
        null = model(x, t, torch.full((3,), 3))
    torch.testing.assert_close(guided, 3.0 * cond - 2.0 * uncond, atol=1e-5, rtol=1e-5)
    assert (guided - (3.0 * cond - 2.0 * null)).abs().max() > 1e-3  # not the null class
    with pytest.raises(ValueError, match="uncond_model must be an unconditional"):
        ClassifierFreeGuidance(model, 2.0, y, uncond_model=_tiny_unet())

    def half_size(x, t):  # an unconditional "model" of other images
        return torch.zeros(x.shape[0], 1, 4, 4)

    with pytest.raises(ValueError, match=r"uncond_model returned \(3, 1, 4, 4\)"):
        ClassifierFreeGuidance(model, 2.0, y, uncond_model=half_size)(x, t)

    def no_channels(x, t):  # would broadcast silently against the 1-channel prediction
        return torch.zeros(x.shape[0], 0, 8, 8)

    with pytest.raises(ValueError, match=r"uncond_model returned \(3, 0, 8, 8\)"):
        ClassifierFreeGuidance(model, 2.0, y, uncond_model=no_channels)(x, t)


def test_cfg_refuses_an_unconditional_model_and_labels_outside_the_classes():
    with pytest.raises(ValueError, match="unconditional"):
        ClassifierFreeGuidance(_tiny_unet(None), 3.0)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        ClassifierFreeGuidance(
            _tiny_unet(), 3.0, torch.tensor([0, 3])
        )  # 3 is the null class
    with pytest.raises(ValueError, match="w must be >= 0"):
        ClassifierFreeGuidance(_tiny_unet(), -1.0)


# ---------------------------------------------------------------------- classifier guidance
def test_log_prob_gradient_of_a_linear_softmax_classifier_has_its_closed_form():
    torch.manual_seed(0)
    W = torch.randn(4, 16)

    def classifier(x, t):
        return x.flatten(1) @ W.T

    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 2, 3])
    with torch.no_grad():  # works inside the samplers' no_grad
        grad = classifier_log_prob_grad(
            classifier, x, torch.zeros(3, dtype=torch.long), y
        )
    probs = torch.softmax(x.flatten(1) @ W.T, dim=1)
    expected = W[y] - probs @ W  # d/dx [w_y.x - logsumexp(Wx)]
    torch.testing.assert_close(grad.flatten(1), expected, atol=1e-5, rtol=1e-5)


class _GaussianClasses:
    """x0 ~ N(mu_y, tau^2 I) with p(y) uniform: q(x_t | y) = N(sqrt(ab) mu_y, (ab tau^2 + 1 - ab) I)."""

    def __init__(self, diffusion, mu, tau=0.3):
        self.ab, self.mu, self.tau = diffusion.alphas_cumprod.float(), mu, tau

    def _stats(self, t):
        ab = self.ab[t].reshape(-1, 1)
        return ab.sqrt()[:, None] * self.mu[
            None
        ], ab * self.tau**2 + 1 - ab  # (N, K, D), (N, 1)

    def log_joint(self, x, t):  # log q(x_t | y) + const, (N, K)
        means, var = self._stats(t)
        return -((x.flatten(1)[:, None] - means) ** 2).sum(-1) / (2 * var)

    def classifier(self, x, t):  # exact log p(y | x_t) up to a per-image constant
        return self.log_joint(x, t)

    def eps(
        self, x, t, y=None
    ):  # exact eps = -sqrt(1-ab) score, of q(x_t) or q(x_t | y)
        means, var = self._stats(t)
        weights = torch.softmax(self.log_joint(x, t), dim=1)
        if y is not None:
            weights = nn.functional.one_hot(y, self.mu.shape[0]).float()
        score = -(x.flatten(1) - (weights[:, :, None] * means).sum(1)) / var
        return (-(1 - self.ab[t]).sqrt()[:, None] * score).reshape(x.shape)


def test_classifier_guidance_at_scale_1_turns_the_unconditional_eps_into_the_conditional_one():
    """Eq. (14) of Dhariwal & Nichol: eps - sqrt(1-ab) grad log p(y|x_t) = eps of q(x_t | y)."""
    diffusion = _diffusion(1000)
    mu = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    data = _GaussianClasses(diffusion, mu)
    x, t = torch.randn(6, 1, 2, 2), torch.tensor([0, 10, 200, 500, 800, 999])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    guided = ClassifierGuidance(data.eps, data.classifier, diffusion, y, scale=1.0)(
        x, t
    )
    torch.testing.assert_close(guided, data.eps(x, t, y), atol=1e-4, rtol=1e-4)
    # and the plain function, with the alpha-bar of one timestep
    grad = classifier_log_prob_grad(data.classifier, x[:1], t[3:4], y[:1])
    shifted = classifier_guided_eps(
        data.eps(x[:1], t[3:4]), grad, float(diffusion.alphas_cumprod[500]), 1.0
    )
    torch.testing.assert_close(
        shifted, data.eps(x[:1], t[3:4], y[:1]), atol=1e-4, rtol=1e-4
    )


def test_classifier_guided_ancestral_sampling_at_scale_0_is_ancestral_sampling():
    model, diffusion = _tiny_unet(None), respace(_diffusion(), 6)
    classifier = NoisyClassifier(
        image_size=8, model_channels=8, channel_mults=(1, 2), num_groups=4
    )
    guided = classifier_guided_ddpm_sample(
        model,
        diffusion,
        classifier,
        torch.tensor([0, 1]),
        0.0,
        (2, 1, 8, 8),
        generator=torch.Generator().manual_seed(0),
    )
    plain = ddpm_sample(
        model, diffusion, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=1e-5)
    pushed = classifier_guided_ddpm_sample(
        model,
        diffusion,
        classifier,
        torch.tensor([0, 1]),
        50.0,
        (2, 1, 8, 8),
        generator=torch.Generator().manual_seed(0),
    )
    assert (pushed - plain).abs().max() > 1e-3


def test_classifier_guidance_refuses_a_respaced_process_or_a_non_eps_model():
    with pytest.raises(ValueError, match="respaced"):
        ClassifierGuidance(
            _tiny_unet(None),
            lambda x, t: x,
            respace(_diffusion(), 5),
            torch.zeros(1),
            1.0,
        )
    with pytest.raises(ValueError, match="'eps'"):
        ClassifierGuidance(
            _tiny_unet(None),
            lambda x, t: x,
            GaussianDiffusion(linear(10), objective="v"),
            torch.zeros(1),
            1.0,
        )


def test_noisy_classifier_depends_on_t_and_rebuilds_from_its_config():
    torch.manual_seed(0)
    classifier = NoisyClassifier()
    for p in classifier.parameters():
        nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 1, 16, 16)
    logits = classifier(x, torch.tensor([0, 0]))
    assert logits.shape == (2, 10)
    assert (classifier(x, torch.tensor([900, 900])) - logits).abs().max() > 1e-4
    assert NoisyClassifier(**classifier.config).config == classifier.config


# -------------------------------------------------------------------------------- inpainting
def test_replacement_step_puts_q_sample_in_the_known_pixels_and_x0_itself_at_the_end():
    diffusion = _diffusion()
    x_prev, known, noise = (
        torch.randn(3, 1, 8, 8),
        torch.rand(3, 1, 8, 8) * 2 - 1,
        torch.randn(3, 1, 8, 8),
    )
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    out = replacement_step(x_prev, known, mask, diffusion, 40, noise)
    ab = float(diffusion.alphas_cumprod[40])
    expected = math.sqrt(ab) * known + math.sqrt(1 - ab) * noise
    torch.testing.assert_close(out[..., :4], expected[..., :4])
    torch.testing.assert_close(out[..., 4:], x_prev[..., 4:])
    torch.testing.assert_close(
        replacement_step(x_prev, known, mask, diffusion, -1)[..., :4], known[..., :4]
    )


def test_repaint_schedule_matches_a_hand_worked_walk_and_plain_sampling():
    # T=6, jump 2, 2 samples: jump back up at 2 and at 0 once each
    assert repaint_schedule(6, 2, 2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert repaint_schedule(5) == [4, 3, 2, 1, 0, -1]
    times = repaint_schedule(50, 10, 5)
    moves = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    assert set(moves) == {-1, 1} and times[0] == 49 and times[-1] == -1
    # 4 jumps (at 0, 10, 20, 30) x 4 extra passes x 10 steps each way
    assert moves.count(1) == 4 * 4 * 10 and moves.count(-1) == 50 + 4 * 4 * 10


def _oracle(diffusion, x0):
    """The exact eps-predictor of data concentrated on the images x0: (x_t - sqrt(ab) x0) / sqrt(1-ab)."""
    ab = diffusion.alphas_cumprod.float()

    def model(x, t):
        a = ab[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return model


@pytest.mark.parametrize("jump_length,resample", [(1, 1), (3, 3)])
def test_inpainting_keeps_known_pixels_exactly_and_an_oracle_recovers_the_rest(
    jump_length, resample
):
    diffusion = _diffusion()
    target = (
        torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    )
    mask = (
        torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5
    ).float()
    known = torch.where(mask.bool(), target, torch.zeros_like(target))
    out = inpaint(
        _oracle(diffusion, target),
        respace(diffusion, 12),
        known,
        mask,
        jump_length,
        resample,
        generator=torch.Generator().manual_seed(2),
    )
    assert (out - known)[mask.expand_as(out).bool()].abs().max() <= 1e-6
    torch.testing.assert_close(
        out, target, atol=1e-4, rtol=0
    )  # the oracle fills the hole exactly
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(
            _oracle(diffusion, target),
            respace(diffusion, 3),
            known,
            torch.ones(1, 1, 7, 7),
        )


# --------------------------------------------------------------------------- SR and SDEdit
def test_sr_model_input_concatenates_x_t_with_the_bicubic_upsampled_low_res():
    x_t, low = torch.randn(2, 1, 16, 16), torch.full((2, 1, 8, 8), 0.3)
    low[1] = -0.5
    model_input = sr_model_input(x_t, low)
    assert model_input.shape == (2, 2, 16, 16)
    torch.testing.assert_close(model_input[:, :1], x_t)
    torch.testing.assert_close(
        model_input[:, 1:], low.repeat_interleave(2, 2).repeat_interleave(2, 3)
    )
    image = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(
        sr_downsample(image)[0, 0, 0, 0], image[0, 0, :2, :2].mean()
    )
    model = SuperResUNet(
        8,
        1,
        dict(
            image_size=16,
            model_channels=8,
            channel_mults=(1, 2),
            num_groups=4,
            num_res_blocks=1,
            attention_resolutions=(),
        ),
    )
    with pytest.raises(ValueError, match="low_res"):
        model(x_t, torch.zeros(2, dtype=torch.long))


def test_sdedit_starts_from_q_sample_and_an_oracle_returns_the_guide_for_any_t0():
    diffusion = _diffusion()
    guide, noise = torch.rand(2, 1, 8, 8) * 1.6 - 0.8, torch.randn(2, 1, 8, 8)
    ab = float(diffusion.alphas_cumprod[30])
    torch.testing.assert_close(
        sdedit_start(guide, diffusion, 30, noise),
        math.sqrt(ab) * guide + math.sqrt(1 - ab) * noise,
    )
    for t0 in (0, 30, 99):
        out = sdedit(
            _oracle(diffusion, guide),
            diffusion,
            guide,
            t0,
            steps=10,
            generator=torch.Generator().manual_seed(0),
        )
        torch.testing.assert_close(out, guide, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="t0"):
        sdedit(_oracle(diffusion, guide), diffusion, guide, 100)


# ------------------------------------------------------------------------- the shipped models
def test_shipped_noisy_classifier_reads_clean_digits_and_is_at_chance_on_pure_noise():
    from ddpm_course.guidance_models import load_noisy_classifier, noisy_accuracy
    from ddpm_course.pretrained import load_pretrained

    classifier, diffusion, _ = load_noisy_classifier(device="cpu")
    assert (
        load_pretrained("digits-noisy-classifier", device="cpu")[0].config
        == classifier.config
    )
    clean, noisy, noise = noisy_accuracy(classifier, diffusion, [0, 200, 999])
    # 300 test digits: chance is 10%; at t = 999 (abar ~ 4e-5) nothing of the digit is left
    assert clean > 0.9 and noisy > 0.8 and noise < 0.25


def test_shipped_sr_model_is_more_consistent_with_its_input_than_bicubic_upsampling():
    import torch.nn.functional as F

    from ddpm_course.data import fashion_mnist
    from ddpm_course.guidance import super_resolve
    from ddpm_course.guidance_models import load_sr_model

    model, diffusion, _ = load_sr_model(device="cpu", name="fashion-sr")
    model = model.float()
    truth = fashion_mnist("test")[0][:8]
    low = sr_downsample(truth)
    out = super_resolve(
        model, diffusion, low, steps=50, generator=torch.Generator().manual_seed(0)
    )
    bicubic = F.interpolate(low, size=28, mode="bicubic", align_corners=False)

    def consistency(images):
        return (sr_downsample(images.clamp(-1, 1)) - low).pow(2).mean().sqrt().item()

    # bicubic's 2x2 averages blur the input; the SR model's samples pool back to it closely
    assert consistency(out) < consistency(bicubic)
