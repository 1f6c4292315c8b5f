"""Inpainting (issue 13, requirement 2 and the classical baseline of 5): DeepFill v2's gated G and
SN-PatchGAN D, the recipe's step, losses, compositing, resume, grids, config, the biharmonic
baseline, and a tiny G that learns to fill holes. Generated tensors only; one CPU thread."""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train
from PIL import Image
from test_models import one_thread  # noqa: F401  (autouse: tiny nets run several times faster on one thread)

from ganrun.config import build
from ganrun.errors import GanrunError
from ganrun.losses import HingeLoss, LeastSquaresLoss, MinimaxLoss, NonSaturatingLoss, WassersteinGPLoss, WassersteinLoss
from ganrun.metrics.inpaint_baseline import biharmonic_inpaint
from ganrun.models.inpaint import GatedConv2d, GatedGenerator, SNPatchDiscriminator, patch_layers_for
from ganrun.recipes.base import Stepper
from ganrun.recipes.inpaint import InpaintRecipe, composite, grid_masks, masked_l1

EVERY_TERM = {"G/l1_hole", "G/l1_valid", "G/adv", "D/real", "D/fake", "stat/D_acc_fake"}

# helpers


def tiny_recipe(*, loss=None, resolution: int = 32, width: int = 8, lr: float = 1e-3, seed: int = 0) -> InpaintRecipe:
    torch.manual_seed(seed)
    adam = functools.partial(torch.optim.Adam, lr=lr, betas=(0.5, 0.999))
    return InpaintRecipe(
        G=GatedGenerator(channels=3, width=width),
        D=SNPatchDiscriminator(channels=3, width=8, resolution=resolution),
        loss=loss if loss is not None else HingeLoss(),
        optim={"G": adam, "D": adam},
    )


def fp32_stepper(recipe: InpaintRecipe, *, step_index: int = 0) -> Stepper:
    stepper = Stepper(
        device_type="cpu",
        autocast_dtype=None,
        optimizers=recipe.optimizers,
        scalers={name: torch.amp.GradScaler("cpu", enabled=False) for name in recipe.optimizers},
    )
    stepper.step_index = step_index
    return stepper


def box_masks(count: int, size: int, *, generator: torch.Generator, sides: tuple[int, int]) -> torch.Tensor:
    """float (count, 1, size, size): one box per image, sides drawn in [sides[0], sides[1]]."""
    masks = torch.zeros(count, 1, size, size)
    for index in range(count):
        height, width = torch.randint(sides[0], sides[1] + 1, (2,), generator=generator).tolist()
        top = int(torch.randint(0, size - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - width + 1, (1,), generator=generator))
        masks[index, :, top:top + height, left:left + width] = 1
    return masks


def random_batch(count: int, size: int = 32, *, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(count, 3, size, size, generator=generator) * 2 - 1,
            "mask": box_masks(count, size, generator=generator, sides=(size // 4, size // 2))}


def smooth_images(count: int, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """float (count, 3, size, size) in [-1, 1]: a random linear ramp per channel plus a faint
    diagonal wave of 1-3 cycles: smooth, so the surroundings of a hole predict its contents."""
    ys = torch.linspace(-1, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(-1, 1, size).view(1, 1, 1, size)
    offset = (torch.rand(count, 3, 1, 1, generator=generator) * 2 - 1) * 0.5
    slope_y, slope_x = (torch.rand(2, count, 3, 1, 1, generator=generator) - 0.5).unbind(0)
    cycles = torch.rand(count, 1, 1, 1, generator=generator) * 2 + 1
    phase = torch.rand(count, 1, 1, 1, generator=generator) * 2 * math.pi
    amplitude = torch.rand(count, 3, 1, 1, generator=generator) * 0.4 - 0.2
    wave = amplitude * torch.sin(cycles * math.pi * (ys + xs) + phase)
    return (offset + slope_y * ys + slope_x * xs + wave).clamp(-1, 1)


def hole_l1(filled: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean |filled - truth| over the hole pixels (all channels) of the batch."""
    return float(((filled - truth).abs() * masks).sum() / (masks.sum() * truth.shape[1]))


def mean_fill(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Holes filled with each image's per-channel mean of its valid pixels."""
    valid = 1 - masks
    means = (images * valid).sum(dim=(2, 3), keepdim=True) / valid.sum(dim=(2, 3), keepdim=True)
    return masks * means + valid * images


# networks


@pytest.mark.parametrize("height,width", [(32, 32), (64, 64), (48, 64)])
def test_generator_and_discriminator_shapes_and_gradients(height, width):
    torch.manual_seed(0)
    G, D = GatedGenerator(channels=3, width=8), SNPatchDiscriminator(channels=3, width=8, resolution=height)
    inputs = torch.cat([torch.rand(2, 3, height, width) * 2 - 1, torch.ones(2, 1, height, width)], dim=1)
    out = G(inputs)
    assert out.shape == (2, 3, height, width) and out.abs().max() <= 1
    layers = patch_layers_for(height)
    scores = D(torch.cat([out, inputs[:, 3:]], dim=1))
    assert scores.shape == (2, 4 * 8 if layers >= 3 else 2 * 8, math.ceil(height / 2**layers), math.ceil(width / 2**layers))
    scores.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_patch_layers_keep_the_references_four_by_four_map_and_are_spectral():
    assert [patch_layers_for(size) for size in (32, 64, 128, 256, 512)] == [3, 4, 5, 6, 6]
    D = SNPatchDiscriminator(channels=3, width=64, resolution=256)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 256, 256]  # the reference's widths
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) and hasattr(c, "parametrizations") for c in convs)
    assert D(torch.zeros(1, 4, 256, 256)).shape == (1, 256, 4, 4)
    assert SNPatchDiscriminator(channels=1, resolution=256, layers=2)(torch.zeros(1, 2, 32, 32)).shape == (1, 128, 8, 8)


def test_gated_conv_is_elu_features_times_sigmoid_gates():
    torch.manual_seed(0)
    layer = GatedConv2d(in_channels=4, out_channels=6, kernel_size=3, dilation=2)
    x = torch.randn(2, 4, 12, 12)
    raw = layer.conv(x)
    assert raw.shape == (2, 12, 12, 12)  # one conv, both halves
    expected = F.elu(raw[:, :6]) * torch.sigmoid(raw[:, 6:])
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    G = GatedGenerator(width=8)
    gated = [m for m in G.modules() if isinstance(m, GatedConv2d)]
    assert len(gated) == 16  # every layer but the output conv (the reference's conv1-conv16)
    assert [m.conv.dilation[0] for m in gated if m.conv.dilation[0] > 1] == [2, 4, 8, 16]


def test_generator_starts_with_a_live_signal():
    """The scale-keeping init: the reference's Glorot init starts G's output at ~1e-8 (see the
    module docstring); this one near the images' own scale."""
    torch.manual_seed(0)
    with torch.no_grad():
        out = GatedGenerator(width=8)(torch.cat([torch.rand(4, 3, 32, 32) * 2 - 1, torch.zeros(4, 1, 32, 32)], dim=1))
    assert 0.05 < float(out.std()) < 0.9


def test_bad_sizes_and_widths_name_the_fix():
    with pytest.raises(GanrunError, match=r"model.G.width must be a positive multiple of 4.*got 10"):
        GatedGenerator(width=10)
    with pytest.raises(GanrunError, match=r"30x32 .* multiples of 4"):
        GatedGenerator(width=8)(torch.zeros(1, 4, 30, 32))
    with pytest.raises(GanrunError, match=r"4 channels, got 3"):
        GatedGenerator(width=8)(torch.zeros(1, 3, 32, 32))
    with pytest.raises(GanrunError, match=r"model.D.layers must be 1..6"):
        SNPatchDiscriminator(layers=7)
    recipe = tiny_recipe()
    with pytest.raises(GanrunError, match=r"masks must be \(N, 1, H, W\)"):
        recipe.inpaint(recipe.generator, torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 16, 16))
    with pytest.raises(GanrunError, match=r"model.hole_weight must be >= 0"):
        InpaintRecipe(G=GatedGenerator(width=8), D=SNPatchDiscriminator(width=8), loss=HingeLoss(),
                      optim={"G": torch.optim.Adam, "D": torch.optim.Adam}, hole_weight=-1)


# the recipe


def test_compositing_keeps_valid_pixels_bit_exact():
    recipe = tiny_recipe()
    batch = random_batch(4)
    images, masks = batch["image"], batch["mask"]
    filled = recipe.inpaint(recipe.generator, images, masks)
    valid, hole = masks.expand_as(images) == 0, masks.expand_as(images) == 1
    assert torch.equal(filled[valid], images[valid])
    with torch.no_grad():
        out = recipe.generator.eval()(torch.cat([images * (1 - masks), masks], dim=1))
    assert torch.equal(filled[hole], out[hole])  # the hole is G's, and only the hole
    x_hat = composite(torch.randn_like(images) * 3, images, masks)  # any finite G output
    assert torch.equal(x_hat[valid], images[valid])


def test_l1_terms_are_means_over_their_own_region():
    """mmagic's mask-weighted L1 (mean over the region's pixel values, each region normalized by
    its own size): an error of 0.5 in the hole and 0.1 elsewhere gives 0.5 and 0.1 at any hole size."""
    images = torch.zeros(2, 3, 8, 8)
    for hole_pixels in (1, 10, 50):
        masks = torch.zeros(2, 1, 8, 8)
        masks.view(2, -1)[:, :hole_pixels] = 1
        out = images + 0.5 * masks + 0.1 * (1 - masks)
        assert masked_l1(out, images, masks).item() == pytest.approx(0.5)
        assert masked_l1(out, images, 1 - masks).item() == pytest.approx(0.1)


def test_two_steps_are_finite_and_log_every_term():
    recipe = tiny_recipe()
    for step in range(2):
        terms = recipe.train_step(random_batch(4, seed=step), fp32_stepper(recipe, step_index=step))
        assert set(terms) == EVERY_TERM
        assert all(torch.isfinite(value).all() and not value.requires_grad for value in terms.values())
    for name in ("G", "D"):
        assert int(next(iter(recipe.optimizers[name].state.values()))["step"]) == 2
    # the logged G terms are the weighted ones that were summed (mmagic's 1, 1, 0.1)
    assert (recipe.hole_weight, recipe.valid_weight, recipe.adversarial_weight) == (1.0, 1.0, 0.1)


def test_state_dict_roundtrip_then_the_next_step_is_bit_identical():
    recipe = tiny_recipe()
    for step in range(2):
        recipe.train_step(random_batch(4, seed=step), fp32_stepper(recipe, step_index=step))
    buffer = io.BytesIO()
    torch.save(recipe.state_dict(), buffer)
    buffer.seek(0)
    resumed = tiny_recipe(seed=123)  # other initial weights, replaced by the checkpoint's
    resumed.load_state_dict(torch.load(buffer, weights_only=True), step=2)
    expected = recipe.train_step(random_batch(4, seed=2), fp32_stepper(recipe, step_index=2))
    got = resumed.train_step(random_batch(4, seed=2), fp32_stepper(resumed, step_index=2))
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    for name in ("G", "D"):
        for a, b in zip(recipe.networks[name].state_dict().values(), resumed.networks[name].state_dict().values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("loss,extra", [
    (WassersteinGPLoss(), {"D/gp"}),
    (WassersteinLoss(), set()),
    (NonSaturatingLoss(r1_gamma=1.0), {"D/r1", "stat/D_acc_fake"}),
    (LeastSquaresLoss(), {"stat/D_acc_fake"}),
    (MinimaxLoss(), {"stat/D_acc_fake"}),
])
def test_other_losses_run_with_their_critic_schedule(loss, extra):
    recipe = tiny_recipe(loss=loss)
    terms = recipe.train_step(random_batch(2 * recipe.batches_per_step), fp32_stepper(recipe))
    assert set(terms) == {"G/l1_hole", "G/l1_valid", "G/adv", "D/real", "D/fake"} | extra
    assert all(torch.isfinite(value) for value in terms.values())
    assert int(next(iter(recipe.optimizers["D"].state.values()))["step"]) == loss.n_critic
    if isinstance(loss, WassersteinLoss):  # clipping (wgan) keeps D's weights in [-c, c]
        masks = torch.zeros(2, 1, 32, 32)
        assert recipe.critic(recipe.networks["D"], masks)(torch.zeros(2, 3, 32, 32)).shape == (2,)
        if loss.clip is not None:
            assert all(p.abs().max() <= loss.clip for p in recipe.networks["D"].parameters())


def test_bf16_autocast_and_channels_last_step():
    recipe = tiny_recipe()
    recipe.to(torch.device("cpu"), channels_last=True)
    stepper = fp32_stepper(recipe)
    stepper.autocast_dtype = torch.bfloat16
    terms = recipe.train_step(random_batch(2), stepper)
    assert set(terms) == EVERY_TERM and all(torch.isfinite(value) for value in terms.values())


# grids and config


def test_grid_shows_damaged_mask_output_original_rows(tmp_path):
    recipe = tiny_recipe()
    real = random_batch(5)["image"]
    inputs = recipe.grid_inputs(8, generator=torch.Generator().manual_seed(0), real=real)
    again = recipe.grid_inputs(8, generator=torch.Generator().manual_seed(0), real=real)
    assert inputs["real"].shape == (2, 3, 32, 32) and torch.equal(inputs["mask"], again["mask"])  # fixed, seeded
    assert set(inputs["mask"].unique().tolist()) == {0.0, 1.0}
    given = recipe.grid_inputs(8, generator=torch.Generator(), real=real, mask=torch.ones(5, 1, 32, 32))
    assert given["mask"].eq(1).all()  # the data's masks when it gives them
    rows = recipe.render(recipe.generator, inputs)
    assert rows.shape == (8, 3, 32, 32)
    damaged, mask_column, output, original = rows[0::4], rows[1::4], rows[2::4], rows[3::4]
    holes = inputs["mask"].expand_as(damaged) == 1
    assert damaged[holes].eq(0).all() and mask_column[holes].eq(1).all() and mask_column[~holes].eq(-1).all()
    assert torch.equal(original, inputs["real"]) and torch.equal(output[~holes], original[~holes])
    recipe.save_grid(rows, tmp_path / "grid.png", nrow=8)
    assert Image.open(tmp_path / "grid.png").size == (4 * 34 + 2, 2 * 34 + 2)  # 4 columns (torchvision's 2 px padding)
    assert grid_masks(3, 64, 48, generator=torch.Generator().manual_seed(1)).mean() > 0.05


def test_model_inpaint_composes_with_hinge_and_builds():
    cfg = compose_train(["model=inpaint", "dataset=celeba", "model.G.width=8", "model.D.width=8"])
    assert cfg.loss._target_ == "ganrun.losses.HingeLoss"
    recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    assert isinstance(recipe, InpaintRecipe) and recipe.task == "inpainting" and recipe.size_multiple == 4
    assert recipe.networks["D"].layers == 4  # celeba at 64 px
    assert (recipe.hole_weight, recipe.valid_weight, recipe.adversarial_weight) == (1.0, 1.0, 0.1)
    cfg = compose_train(["model=inpaint", "dataset=celeba", "loss=wgan_gp"])
    assert cfg.loss._target_ == "ganrun.losses.WassersteinGPLoss"  # the command line wins


# the classical baseline


def test_biharmonic_baseline_fills_a_smooth_gradient_close_to_the_truth():
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float64)
    ramp = np.stack([40 + 2.5 * xs, 30 + 2 * ys, 80 + 1.2 * (xs + ys)])  # linear ramps, 30..220
    images = torch.from_numpy(np.rint(ramp)).to(torch.uint8)[None].repeat(2, 1, 1, 1)
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 20:44, 16:40] = 1
    masks[1, :, 5:12, 30:60] = 1
    filled = biharmonic_inpaint(images, masks)
    assert filled.dtype == torch.uint8 and filled.shape == images.shape
    valid = masks.expand_as(images) == 0
    assert torch.equal(filled[valid], images[valid])
    truth, as_float = images.float() / 127.5 - 1, filled.float() / 127.5 - 1
    error, mean_error = hole_l1(as_float, truth, masks), hole_l1(mean_fill(truth, masks), truth, masks)
    assert error < 0.05 * mean_error and (filled.int() - images.int()).abs().max() <= 2
    gray = biharmonic_inpaint(images[:, :1].numpy(), masks.bool().numpy())  # one channel, numpy, bool masks
    assert gray.shape == (2, 1, 64, 64) and torch.equal(gray[:, 0], filled[:, 0])
    assert torch.equal(biharmonic_inpaint(images, torch.zeros(2, 1, 64, 64)), images)  # no hole: as it is
    with pytest.raises(GanrunError, match="float .* or bool"):
        biharmonic_inpaint(images, masks.to(torch.uint8))


# learning


def test_tiny_generator_learns_to_fill_holes_better_than_the_image_mean():
    """A 16-wide G (width 8's last gated layer carries 2 channels and learns too slowly for this
    budget) with its SN-PatchGAN and the full recipe (hinge, weights 1/1/0.1), Adam 2e-3, batch 16
    of 32 px smooth images with random 8-16 px box holes, 400 steps: about 20-25 s on one thread of
    this CPU (OMP_NUM_THREADS=1). On 64 held-out images and holes it fills the holes with an L1
    error below 0.8x that of each image's per-channel mean of its valid pixels (measured: 0.11 vs 0.19)."""
    recipe = tiny_recipe(width=16, lr=2e-3)
    data = torch.Generator().manual_seed(1)
    for step in range(400):
        batch = {"image": smooth_images(16, 32, generator=data), "mask": box_masks(16, 32, generator=data, sides=(8, 16))}
        recipe.train_step(batch, fp32_stepper(recipe, step_index=step))
    held_out = torch.Generator().manual_seed(99)
    images = smooth_images(64, 32, generator=held_out)
    masks = box_masks(64, 32, generator=held_out, sides=(8, 16))
    learned = hole_l1(recipe.inpaint(recipe.generator, images, masks), images, masks)
    baseline = hole_l1(mean_fill(images, masks), images, masks)
    assert learned < 0.8 * baseline, (learned, baseline)
