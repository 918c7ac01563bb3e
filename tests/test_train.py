"""The trainer: exact resume, the pieces of a step (EMA, warm-up, accumulation, label dropout),
safe checkpoints, divergence, the wall-clock budget, the command line and the image grids.

Everything runs on the CPU in fp32 with a U-Net of a few thousand parameters on 8×8 images."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_course import checkpoint as ckpt
from ddpm_course.checkpoint import CheckpointError
from ddpm_course.cli import main as cli_main
from ddpm_course.config import TRAIN_PRESETS, TrainConfig
from ddpm_course.dit import DIT_PRESETS
from ddpm_course.ema import ema_decay_at, ema_update
from ddpm_course.loading import load_model
from ddpm_course.nn import PRESETS as NN_PRESETS
from ddpm_course.nn import UNet, unet_from_preset
from ddpm_course.train import NonFiniteLossError, ResumableSampler, Trainer
from ddpm_course.viz import image_grid, save_image_grid, show_images

TINY_UNET = dict(
    model_channels=8,
    channel_mults=[1],
    num_res_blocks=1,
    attention_resolutions=[],
    num_groups=4,
    dropout=0.1,
)


def tiny_config(out_dir: Path, **overrides) -> TrainConfig:
    """A run of a tiny U-Net on 8×8 one-channel images: a few milliseconds per step."""
    values = dict(
        preset="digits", model_overrides=TINY_UNET, image_size=8, channels=1, timesteps=50, batch_size=8, lr=1e-3,
        warmup_steps=2, ema_decay=0.99, max_steps=6, log_every=1, sample_every=0, sample_steps=2, num_samples=4,
        checkpoint_every=0, precision="fp32", out_dir=str(out_dir),
    )  # fmt: skip
    return TrainConfig.from_dict({**values, **overrides})


def tiny_data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 8×8 images in [-1, 1] and labels in {0, ..., 9}."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=generator) * 2 - 1, torch.randint(
        0, 10, (n,), generator=generator
    )


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_identical(a, b, where: str = "state") -> None:
    """Every tensor bitwise equal (torch.equal), every other value equal, recursively."""
    if isinstance(a, torch.Tensor):
        assert (
            isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        ), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", sorted(TRAIN_PRESETS))
def test_each_training_preset_matches_the_image_shape_of_its_u_net_preset(name):
    config = TrainConfig.from_preset(name)
    architecture = {**NN_PRESETS, **DIT_PRESETS}[name]
    assert (config.image_size, config.channels) == (
        architecture["image_size"],
        architecture["in_channels"],
    )
    assert config.class_conditional == ("num_classes" in architecture)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config, (
        "the config must survive JSON"
    )


# ------------------------------------------------------------------------- exact resume
def test_n_steps_then_resume_then_n_steps_is_bitwise_identical_to_2n_steps(tmp_path):
    # 40 images in batches of 8: 5 steps per epoch, so the 6 steps cross an epoch and the resume
    # at step 3 lands mid-epoch; dropout 0.1 draws from the global RNG; the sample grids at steps
    # 2, 4, 6 must not disturb any random state.
    data = tiny_data()
    straight = Trainer(
        tiny_config(tmp_path / "straight", max_steps=6, sample_every=2), dataset=data
    )
    straight.train()
    Trainer(
        tiny_config(
            tmp_path / "split", max_steps=3, sample_every=2, checkpoint_every=3
        ),
        dataset=data,
    ).train()
    resumed = Trainer(
        tiny_config(
            tmp_path / "split", max_steps=6, sample_every=2, checkpoint_every=3
        ),
        dataset=data,
    )
    resumed.train(resume=True)

    assert resumed.step == straight.step == 6
    assert_identical(straight.model.state_dict(), resumed.model.state_dict(), "model")
    assert_identical(
        straight.ema_model.state_dict(), resumed.ema_model.state_dict(), "ema"
    )
    assert_identical(
        straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer"
    )
    assert [r["loss"] for r in read_log(tmp_path / "straight")] == [
        r["loss"] for r in read_log(tmp_path / "split")
    ]


def test_resume_refuses_a_changed_batch_size(tmp_path):
    data = tiny_data()
    Trainer(tiny_config(tmp_path, max_steps=2), dataset=data).train()
    with pytest.raises(ValueError, match="batch_size: 8 -> 4"):
        Trainer(tiny_config(tmp_path, max_steps=4, batch_size=4), dataset=data).train(
            resume=True
        )


def test_resume_with_another_architecture_names_it_and_the_overrides_that_fit(tmp_path):
    data = tiny_data()
    Trainer(tiny_config(tmp_path, max_steps=2), dataset=data).train()
    changed = tiny_config(
        tmp_path, max_steps=3, model_overrides={**TINY_UNET, "num_res_blocks": 2}
    )
    with pytest.raises(
        CheckpointError, match=r"num_res_blocks=1, but this run builds num_res_blocks=2"
    ) as error:
        Trainer(changed, dataset=data).train(resume=True)
    suggested = re.search(r"model_overrides='(.*?)'", str(error.value)).group(1)
    assert json.loads(suggested) == {"num_res_blocks": 1}
    # the suggested overrides on top of the changed ones rebuild the saved model, and the run goes on
    fixed = tiny_config(
        tmp_path,
        max_steps=3,
        model_overrides={**changed.model_overrides, **json.loads(suggested)},
    )
    Trainer(fixed, dataset=data).train(resume=True)
    assert read_log(tmp_path)[-1]["step"] == 3


def test_a_new_run_refuses_a_folder_with_checkpoints_and_resume_needs_one(tmp_path):
    data = tiny_data()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(tiny_config(tmp_path), dataset=data).train(resume=True)
    Trainer(tiny_config(tmp_path, max_steps=1), dataset=data).train()
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(tiny_config(tmp_path, max_steps=2), dataset=data).train()


# ---------------------------------------------------------------------- one step's pieces
def test_ema_decay_warm_up_matches_hand_values():
    # min(0.999, (1 + t) / (10 + t)): 1/10, 9/18, 81/90, then capped at 0.999 once (1+t)/(10+t) > 0.999
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1, abs=1e-15)
    assert ema_decay_at(8, 0.999) == pytest.approx(0.5, abs=1e-15)
    assert ema_decay_at(80, 0.999) == pytest.approx(0.9, abs=1e-15)
    assert ema_decay_at(10_000, 0.999) == 0.999


def test_ema_update_is_decay_times_average_plus_one_minus_decay_times_weights():
    average, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        average.weight.copy_(torch.tensor([[1.0, -2.0]]))
        average.bias.fill_(4.0)
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))
        model.bias.fill_(-6.0)
    ema_update(average, model, decay=0.75)
    # by hand: 0.75 * [1, -2] + 0.25 * [3, 0] = [1.5, -1.5]; 0.75 * 4 + 0.25 * (-6) = 1.5 (all exact in binary)
    assert average.weight.tolist() == [[1.5, -1.5]]
    assert average.bias.tolist() == [1.5]


def test_the_first_training_step_moves_the_ema_nine_tenths_of_the_way_to_the_new_weights(
    tmp_path,
):
    trainer = Trainer(tiny_config(tmp_path), dataset=tiny_data())
    initial = copy.deepcopy(trainer.model.state_dict())
    trainer.train_step(*tiny_data(8, seed=1))
    for name, ema in trainer.ema_model.state_dict().items():
        expected = (
            0.1 * initial[name] + 0.9 * trainer.model.state_dict()[name]
        )  # decay_0 = min(0.99, 1/10)
        torch.testing.assert_close(
            ema, expected, rtol=0, atol=1e-6
        )  # float32 rounding of a lerp vs. the sum


def test_learning_rate_warms_up_linearly_in_the_optimiser_and_the_log(tmp_path):
    trainer = Trainer(
        tiny_config(tmp_path, lr=1e-3, warmup_steps=4, max_steps=6), dataset=tiny_data()
    )
    used = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: used.append(optimizer.param_groups[0]["lr"])
    )
    trainer.train()
    expected = [
        0.25e-3,
        0.5e-3,
        0.75e-3,
        1e-3,
        1e-3,
        1e-3,
    ]  # lr * min(1, (step + 1) / 4), by hand
    assert used == pytest.approx(expected, rel=1e-12)
    assert [record["lr"] for record in read_log(tmp_path)] == pytest.approx(
        expected, rel=1e-12
    )


def _deterministic_unet(seed: int = 0) -> UNet:
    """A tiny U-Net without dropout whose zero-initialised layers (the output and each block's last
    convolution) are made random, so that every parameter receives a gradient at the first step."""
    torch.manual_seed(seed)
    model = UNet(image_size=8, in_channels=1, **{**TINY_UNET, "dropout": 0.0})
    for parameter in model.parameters():
        if parameter.ndim > 1 and not parameter.any():
            torch.nn.init.normal_(parameter, std=0.1)
    return model


def test_accumulating_four_micro_batches_gives_the_gradient_of_one_big_batch(tmp_path):
    model = _deterministic_unet()
    images, _ = tiny_data(16, seed=3)
    gradients = {}
    for accumulation in (1, 4):
        config = tiny_config(
            tmp_path / str(accumulation),
            batch_size=16,
            grad_accum=accumulation,
            grad_clip=0.0,
        )
        trainer = Trainer(config, model=copy.deepcopy(model), dataset=tiny_data())
        trainer.train_step(images)
        gradients[accumulation] = {
            name: p.grad.clone() for name, p in trainer.model.named_parameters()
        }
    for name, gradient in gradients[1].items():
        assert gradient.abs().max() > 0, (
            f"{name} got no gradient: the comparison would be empty"
        )
        # the same sum in another order: float32 rounding, relative to the gradient's size
        torch.testing.assert_close(
            gradients[4][name],
            gradient,
            rtol=1e-4,
            atol=1e-6 * float(gradient.abs().max()),
        )


class LabelRecorder(torch.nn.Module):
    """A one-layer stand-in for a class-conditional U-Net that records the labels it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.seen.append(y.clone())
        return self.conv(x)


def test_label_dropout_replaces_a_fraction_p_uncond_of_labels_by_the_null_class(
    tmp_path,
):
    images, labels = tiny_data(2000, seed=4)
    labels = labels % 10
    recorder = LabelRecorder()
    config = tiny_config(
        tmp_path, class_conditional=True, num_classes=10, p_uncond=0.25, batch_size=2000
    )
    trainer = Trainer(config, model=recorder, dataset=(images, labels))
    trainer.train_step(images, labels)
    seen = recorder.seen[0]
    dropped = seen == 10
    # Binomial(2000, 0.25): standard deviation of the fraction 0.0097; 0.04 is four of them
    assert abs(dropped.float().mean().item() - 0.25) < 0.04
    assert torch.equal(seen[~dropped], labels[~dropped]), (
        "kept labels must pass through unchanged"
    )


def test_ranks_read_disjoint_shards_of_one_permutation_and_a_resume_skips_what_was_read():
    dataset = torch.utils.data.TensorDataset(torch.arange(10))
    epoch, seed = 3, 7
    permutation = torch.randperm(
        10, generator=torch.Generator().manual_seed(seed + epoch)
    ).tolist()
    shards = []
    for rank in (0, 1):
        sampler = ResumableSampler(dataset, num_replicas=2, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert shards[-1] == permutation[rank::2]
        sampler.set_epoch(epoch, skip=2)
        assert list(sampler) == permutation[rank::2][2:] and len(sampler) == 3
    assert sorted(shards[0] + shards[1]) == list(range(10))


# ------------------------------------------------------------------------- checkpoints
def _raising_writer(obj, file, *args, **kwargs):
    file.write(b"half a checkpoint")
    raise OSError("disk full (simulated)")


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(
    tmp_path, monkeypatch
):
    path = tmp_path / "step_0000001.pt"
    ckpt.save_checkpoint({"step": 1, "weights": torch.arange(4.0)}, path)
    monkeypatch.setattr(torch, "save", _raising_writer)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint({"step": 2, "weights": torch.zeros(4)}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000001.pt"], (
        "the temporary file must be removed"
    )


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    Trainer(
        tiny_config(tmp_path, max_steps=5, checkpoint_every=1, keep_checkpoints=2),
        dataset=tiny_data(),
    ).train()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        "step_0000004.pt",
        "step_0000005.pt",
    ]


def test_a_truncated_or_missing_checkpoint_gives_a_clear_error(tmp_path):
    data = tiny_data()
    Trainer(tiny_config(tmp_path, max_steps=2), dataset=data).train()
    latest = tmp_path / "checkpoints" / "step_0000002.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="step_0000002.pt.*truncated, corrupt"):
        Trainer(tiny_config(tmp_path, max_steps=4), dataset=data).train(resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_0000999.pt")


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return "pwned"


class CodeOnLoad:
    """An object whose unpickling calls a function: what weights_only loading must refuse."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_loading_never_unpickles_code(tmp_path):
    path = tmp_path / "step_0000001.pt"
    torch.save(
        {"format": "ddpm_course.checkpoint", "step": 1, "payload": CodeOnLoad()}, path
    )
    with pytest.raises(CheckpointError, match="plain"):
        ckpt.load_checkpoint(path)
    assert UNPICKLED == [], "the checkpoint's code ran"


def test_load_model_reads_a_run_folder_a_checkpoint_and_safetensors_alike(tmp_path):
    Trainer(tiny_config(tmp_path, max_steps=2), dataset=tiny_data()).train()
    saved_ema = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_0000002.pt")[
        "ema"
    ]
    for source in (
        tmp_path,
        tmp_path / "checkpoints" / "step_0000002.pt",
        tmp_path / "model.safetensors",
    ):
        model, diffusion, config = load_model(source, device="cpu")
        assert_identical(model.state_dict(), saved_ema, f"weights from {source.name}")
        assert (
            diffusion.num_timesteps == 50
            and config.image_size == 8
            and not model.training
        )


def test_load_model_gives_a_clear_error_for_a_bad_path(tmp_path):
    with pytest.raises(CheckpointError, match="no run folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither"):
        load_model(tmp_path)
    (tmp_path / "lonely.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no sidecar"):
        load_model(tmp_path / "lonely.safetensors")


# -------------------------------------------------------------- divergence and time budget
class NaNAfter(torch.nn.Module):
    """Wraps a model; from forward call ``calls + 1`` on, its output is NaN (a diverged network)."""

    def __init__(self, model: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.model, self.calls, self.count = model, calls, 0

    def forward(self, x, t, y=None):
        self.count += 1
        out = self.model(x, t)
        return out * math.nan if self.count > self.calls else out


def test_a_nan_loss_stops_the_run_with_the_step_and_the_last_good_checkpoint_loads(
    tmp_path,
):
    model = NaNAfter(
        _deterministic_unet(), calls=3
    )  # steps 1-3 are fine, step 4 diverges
    trainer = Trainer(
        tiny_config(tmp_path, max_steps=10, checkpoint_every=2),
        model=model,
        dataset=tiny_data(),
    )
    with pytest.raises(
        NonFiniteLossError, match=r"step 4 .*lower learning rate"
    ) as raised:
        trainer.train()
    good = tmp_path / "checkpoints" / "step_0000002.pt"
    assert raised.value.checkpoint == good and str(good) in str(raised.value)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        "step_0000002.pt"
    ]
    state = ckpt.load_checkpoint(good)
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), (
        "the NaN step must not reach the weights"
    )


def test_max_seconds_stops_the_run_and_still_leaves_a_checkpoint(tmp_path):
    config = tiny_config(tmp_path, max_steps=None, max_seconds=0.5, log_every=5)
    Trainer(config, dataset=tiny_data()).train()
    log = read_log(tmp_path)
    last_step = log[-1]["step"]
    assert last_step > 0
    # the loop checks the clock before each step of a few ms; 3 s leaves room for a loaded machine
    assert 0.5 <= log[-1]["time"] < 3.0
    assert (
        ckpt.latest_checkpoint(tmp_path / "checkpoints").name
        == f"step_{last_step:07d}.pt"
    )


# ------------------------------------------------------------------------- command line
def test_the_cli_writes_a_checkpoint_a_sample_grid_a_log_and_weights(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--preset", "digits", "--max-steps", "2", "--batch-size", "8", "--out", str(out), "--log-every", "1",
            "--set", "num_samples=4", "--set", "sample_steps=2"]  # fmt: skip
    assert cli_main(argv) == 0
    assert (out / "checkpoints" / "step_0000002.pt").is_file()
    assert [record["step"] for record in read_log(out)] == [1, 2]
    grid = np.asarray(Image.open(out / "samples" / "step_0000002.png"))
    assert grid.shape == (
        2 + 2 * 18,
        2 + 2 * 18,
    )  # 2×2 digits of 16 px with 2 px of padding, grey
    assert json.loads((out / "config.json").read_text())["preset"] == "digits"
    model, _, _ = load_model(out / "model.safetensors", device="cpu")
    assert model.config == unet_from_preset("digits").config
    assert_identical(
        model.state_dict(),
        ckpt.load_checkpoint(out / "checkpoints" / "step_0000002.pt")["ema"],
        "EMA weights",
    )


def test_the_cli_names_the_presets_when_given_an_unknown_one(capsys):
    assert cli_main(["train", "--preset", "imagenet"]) == 2
    error = capsys.readouterr().err
    assert (
        "unknown preset 'imagenet'" in error
        and "'digits'" in error
        and "'cifar10-ddpm'" in error
    )


# ------------------------------------------------------------------------------ grids
def test_image_grid_maps_minus_one_to_black_one_to_white_with_white_padding():
    images = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)])
    grid = image_grid(images, nrow=2)
    # make_grid with padding 2: height 2 + (2 + 2), width 2 + 2 * (2 + 2)
    assert grid.shape == (6, 10)
    assert (grid[2:4, 2:4] == 0).all() and (grid[2:4, 6:8] == 1).all()
    assert (grid[:2] == 1).all() and (grid[:, 4:6] == 1).all()
    colour = image_grid(torch.zeros(3, 3, 4, 4), value_range=(0, 1))
    assert colour.shape == (2 + 2 * 6, 2 + 2 * 6, 3) and colour[2, 2].tolist() == [
        0,
        0,
        0,
    ]


def test_save_image_grid_writes_the_grid_as_8_bit_png(tmp_path):
    images = torch.linspace(-1, 1, 2 * 3 * 3).reshape(2, 1, 3, 3)
    path = save_image_grid(images, tmp_path / "sub" / "grid.png")
    assert np.array_equal(
        np.asarray(Image.open(path)),
        np.round(image_grid(images) * 255).astype(np.uint8),
    )


def test_show_images_draws_the_grid_in_grey_without_axes():
    import matplotlib

    matplotlib.use("Agg")
    images = torch.linspace(-1, 1, 4 * 16).reshape(4, 1, 4, 4)
    ax = show_images(images, title="four")
    drawn = ax.images[0]
    assert np.array_equal(drawn.get_array(), image_grid(images))
    assert (
        drawn.get_cmap().name == "gray" and ax.get_title() == "four" and not ax.axison
    )


# ------------------------------------------------------------- the split and the new options
def test_inference_imports_no_training_code():
    """Sampling a shipped model and the sample command load neither the trainer nor its optimiser."""
    import subprocess
    import sys

    code = (
        "import sys; import ddpm_course.commands.sample; from ddpm_course.pretrained import load_any; "
        "load_any('digits', device='cpu'); "
        "print(sorted(m for m in sys.modules if m in ('ddpm_course.train', 'ddpm_course.ema', 'ddpm_course.experiments.ablation')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("loss_type", ["hybrid", "vlb"])
def test_a_config_that_trains_a_fixed_variance_is_refused(tmp_path, loss_type):
    with pytest.raises(ValueError, match="var_type 'fixed_small'.*learned_range"):
        tiny_config(tmp_path, loss_type=loss_type)
    tiny_config(
        tmp_path, loss_type=loss_type, var_type="learned_range"
    )  # fine with a learned variance


def test_min_snr_gamma_reaches_the_loss_of_a_training_step(tmp_path):
    """The same seed, batch, t and noise: the step's loss is the min-SNR-weighted mean of the
    per-example losses that diffusion.training_losses gives for those t and that noise."""
    images, _ = tiny_data()
    trainer = Trainer(
        tiny_config(tmp_path, min_snr_gamma=2.0, schedule="sigmoid", grad_clip=0.0),
        dataset=images,
    )
    model_before = copy.deepcopy(trainer.model)
    state = trainer.generator.get_state()
    batch = images[:8]
    loss = trainer.train_step(batch)
    trainer.generator.set_state(state)
    t = torch.randint(0, 50, (8,), generator=trainer.generator)
    noise = torch.randn(batch.shape, generator=trainer.generator)
    with torch.no_grad():
        expected = trainer.diffusion.training_losses(
            model_before, batch, t, noise, min_snr_gamma=2.0
        )["loss"].mean()
        plain = trainer.diffusion.training_losses(model_before, batch, t, noise)[
            "loss"
        ].mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(expected) - float(plain)) > 1e-3  # the weighting changed something
