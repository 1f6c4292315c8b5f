"""Translation networks and recipes: U-Net / ResNet generators at several sizes (fully
convolutional), the PatchGAN's receptive field, pix2pix and CycleGAN train steps with a real
Stepper, the image pool's semantics and checkpointed state, bit-identical recipe resume, the
size and direction errors, the model configs, and a tiny CycleGAN that learns a colour inversion."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_models import one_thread  # noqa: F401  (autouse: tiny nets run several times faster on one thread)

from ganrun.config import build
from ganrun.errors import GanrunError
from ganrun.losses import LeastSquaresLoss, NonSaturatingLoss, WassersteinGPLoss
from ganrun.models.cyclegan import CycleDiscriminators, CycleGenerators, ResnetGenerator
from ganrun.models.pix2pix import PatchDiscriminator, UNetGenerator
from ganrun.recipes.base import Stepper
from ganrun.recipes.cyclegan import CycleGANRecipe, ImagePool
from ganrun.recipes.pix2pix import Pix2PixRecipe

CONF = Path(__file__).resolve().parents[1] / "conf"

# helpers


def adam(lr: float = 2e-4):
    return functools.partial(torch.optim.Adam, lr=lr, betas=(0.5, 0.999))


def fp32_stepper(recipe, *, step_index: int = 0) -> Stepper:
    stepper = Stepper(device_type="cpu", autocast_dtype=None, optimizers=recipe.optimizers,
                      scalers={name: torch.amp.GradScaler("cpu", enabled=False) for name in recipe.optimizers})
    stepper.step_index = step_index
    return stepper


def tiny_pix2pix(*, seed: int = 0, loss=None, **options) -> Pix2PixRecipe:
    torch.manual_seed(seed)
    return Pix2PixRecipe(G=UNetGenerator(resolution=32, width=4), D=PatchDiscriminator(condition_channels=3, width=4),
                         loss=loss or NonSaturatingLoss(), optim={"G": adam(), "D": adam()}, **options)


def tiny_cyclegan(*, seed: int = 0, pool_size: int = 3, loss=None, **options) -> CycleGANRecipe:
    torch.manual_seed(seed)
    return CycleGANRecipe(G=CycleGenerators(resolution=32, width=4, blocks=1), D=CycleDiscriminators(width=4, n_layers=2),
                          loss=loss or LeastSquaresLoss(), optim={"G": adam(), "D": adam()}, pool_size=pool_size, **options)


def random_batch(n: int = 2, size: int = 32, *, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.rand(n, 3, size, size, generator=generator) * 2 - 1 for key in ("A", "B")}


def roundtrip(state: dict) -> dict:
    """Through a checkpoint file's path: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same(a, b, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{index}]")
    else:
        assert a == b, path


def smooth_blobs(n: int, *, size: int = 16, generator: torch.Generator) -> torch.Tensor:
    """Two soft coloured blobs on a dark background, float (n, 3, size, size) in [-0.8, 0.8]:
    smooth, and their colour inverse (B = -A) looks different (bright background, dark blobs),
    so neither the identity nor any increasing map of the pixel values turns A into B."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = torch.zeros(n, 3, size, size)
    for _ in range(2):
        cy, cx = torch.rand(2, n, 1, 1, generator=generator) * size
        sigma = 1.0 + torch.rand(n, 1, 1, generator=generator)
        blob = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        images = torch.maximum(images, blob[:, None] * (0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=generator)))
    return images * 1.6 - 0.8


# networks


@pytest.mark.parametrize("resolution, num_downs", [(32, 5), (64, 6), (128, 7), (256, 8)])
def test_unet_depth_follows_the_resolution(resolution, num_downs):
    G = UNetGenerator(resolution=resolution, width=2)
    assert G.num_downs == num_downs and G.size_multiple == 2**num_downs


@pytest.mark.parametrize("resolution, shape", [(32, (32, 32)), (64, (64, 64)), (32, (32, 96)), (64, (128, 64))])
def test_unet_is_fully_convolutional(resolution, shape):
    G = UNetGenerator(resolution=resolution, in_channels=1, out_channels=3, width=4)
    out = G(torch.randn(2, 1, *shape))
    assert out.shape == (2, 3, *shape) and out.abs().max() <= 1


def test_unet_has_skips_and_dropout_in_the_three_innermost_decoder_blocks():
    G = UNetGenerator(resolution=64, width=4)  # num_downs 6, widths 4, 8, 16, 32, 32, 32
    widths = [4, 8, 16, 32, 32, 32]
    for level, block in enumerate(G.up):
        up = next(layer for layer in block if isinstance(layer, torch.nn.ConvTranspose2d))
        # every decoder block but the innermost reads [encoder skip, block below]
        assert up.in_channels == (widths[level] if level == 5 else 2 * widths[level])
        assert any(isinstance(layer, torch.nn.Dropout) for layer in block) == (level >= 3)
    # The outermost skip alone carries the input: with every deeper block silenced, G(x) still depends on x.
    with torch.no_grad():
        for block in list(G.down)[1:]:
            for parameter in block.parameters():
                parameter.zero_()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    G.eval()(x).sum().backward()
    assert x.grad.abs().sum() > 0
    # dropout is G's noise: train mode varies, eval mode does not
    x = torch.randn(2, 3, 64, 64)
    G = UNetGenerator(resolution=64, width=4)
    assert not torch.equal(G.train()(x), G(x))
    assert torch.equal(G.eval()(x), G(x))


def test_residual_unet_starts_as_the_identity_and_learns_a_correction():
    G = UNetGenerator(resolution=32, width=4, residual=True)
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    assert torch.equal(G.train()(x), x) and torch.equal(G.eval()(x), x)
    # the zero-initialised last conv still gets a gradient, so one step moves G off the identity
    target = torch.zeros_like(x)
    torch.nn.functional.l1_loss(G.train()(x), target).backward()
    torch.optim.SGD(G.parameters(), lr=0.1).step()
    with torch.no_grad():
        moved = G.eval()(x)
    assert (moved - target).abs().mean() < (x - target).abs().mean()
    assert moved.min() >= -1 and moved.max() <= 1  # eval outputs are clamped to the image range
    with pytest.raises(GanrunError, match="residual=true needs as many input as output channels, got 1 -> 3"):
        UNetGenerator(resolution=32, in_channels=1, out_channels=3, residual=True)


def test_full_resolution_level_keeps_the_unet_fully_convolutional_and_residual():
    G = UNetGenerator(resolution=32, width=4, residual=True, full_res_blocks=2)
    x = torch.rand(2, 3, 32, 96) * 2 - 1
    assert torch.equal(G.eval()(x), x)  # still the identity at init
    assert len(G.stem) == 4 and G.head[0].in_channels == 8  # conv, act, 2 blocks; head reads [stem, U-Net]
    plain = UNetGenerator(resolution=32, in_channels=1, out_channels=3, width=4, full_res_blocks=1)
    out = plain(torch.randn(2, 1, 32, 64))
    assert out.shape == (2, 3, 32, 64) and out.abs().max() <= 1  # tanh out without residual
    with pytest.raises(GanrunError, match="full_res_blocks must be >= 0, got -1"):
        UNetGenerator(resolution=32, full_res_blocks=-1)


def test_unet_rejects_a_resolution_that_is_not_a_power_of_two():
    with pytest.raises(GanrunError, match="power of two >= 32, got 48"):
        UNetGenerator(resolution=48)


def test_patchgan_receptive_field_is_70_for_three_layers():
    """Measured, not read off the layers: the input pixels whose gradient reaches one logit."""
    for n_layers, field in ((1, 16), (2, 34), (3, 70)):
        D = PatchDiscriminator(width=4, n_layers=n_layers, norm="none")
        assert D.receptive_field == field
        x = torch.randn(1, 3, 160, 160, requires_grad=True)
        logits = D(x)
        logits[0, 0, logits.shape[2] // 2, logits.shape[3] // 2].backward()
        rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
        columns = x.grad.abs().sum(dim=(0, 1, 2)).nonzero()
        assert int(rows.max() - rows.min()) + 1 == field and int(columns.max() - columns.min()) + 1 == field
    # 256 px -> 30x30 patches (the paper's); conditional input cat(A, B); too small is a clear error
    D = PatchDiscriminator(condition_channels=3, width=2)
    assert D(torch.randn(1, 6, 256, 256)).shape == (1, 1, 30, 30)
    with pytest.raises(GanrunError, match="at least 24 px"):
        D(torch.randn(1, 6, 16, 16))


@pytest.mark.parametrize("shape", [(32, 32), (64, 64), (36, 52)])
def test_resnet_generator_is_fully_convolutional(shape):
    G = ResnetGenerator(resolution=64, width=4, blocks=2)
    out = G(torch.randn(2, 3, *shape))
    assert out.shape == (2, 3, *shape) and out.abs().max() <= 1
    assert ResnetGenerator(resolution=128, width=2).blocks == 6 and ResnetGenerator(resolution=256, width=2).blocks == 9
    layers = list(G.modules())
    assert any(isinstance(layer, torch.nn.ReflectionPad2d) for layer in layers)
    assert any(isinstance(layer, torch.nn.InstanceNorm2d) for layer in layers)
    assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in layers)


# recipes


def test_pix2pix_trains_two_steps_and_logs_every_term():
    recipe = tiny_pix2pix()
    for step in range(2):
        terms = recipe.train_step(random_batch(seed=step), fp32_stepper(recipe, step_index=step))
        assert set(terms) == {"G/adv", "G/l1", "D/real", "D/fake", "stat/D_acc_fake"}
        assert all(torch.isfinite(value) and not value.requires_grad for value in terms.values())
    # the L1 term carries lambda_L1 = 100: about 100 x mean |G(A) - B| of random images
    assert 30 < terms["G/l1"] < 200
    # any loss object: wgan_gp's penalty through the conditional critic, 5 critic steps per G step
    recipe = tiny_pix2pix(loss=WassersteinGPLoss())
    terms = recipe.train_step(random_batch(n=5), fp32_stepper(recipe))
    assert {"D/gp", "G/adv", "G/l1"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    assert int(next(iter(recipe.optimizers["D"].state.values()))["step"]) == 5


def test_cyclegan_trains_two_steps_and_logs_every_term():
    recipe = tiny_cyclegan()
    assert set(recipe.optimizers) == {"G", "D"}  # one Adam for both Gs, one for both Ds, as the reference
    for step in range(2):
        terms = recipe.train_step(random_batch(seed=step), fp32_stepper(recipe, step_index=step))
    assert set(terms) == {"G/adv_AB", "G/adv_BA", "G/cycle_A", "G/cycle_B", "G/idt_A", "G/idt_B",
                          "D/real_A", "D/fake_A", "D/real_B", "D/fake_B", "stat/D_acc_fake"}
    assert all(torch.isfinite(value) and not value.requires_grad for value in terms.values())
    assert len(recipe.pools["A"]) == len(recipe.pools["B"]) == 3  # 4 fakes per domain met a 3-image pool
    # identity at half the cycle weight: both ~ lambda * mean |G(x) - x|, so idt ~ cycle / 2 at init
    assert 0.2 < float(terms["G/idt_A"] / terms["G/cycle_A"]) < 1.0
    recipe = tiny_cyclegan(lambda_identity=0.0)
    assert "G/idt_A" not in recipe.train_step(random_batch(), fp32_stepper(recipe))


def test_bf16_channels_last_steps_run():
    for recipe in (tiny_pix2pix(), tiny_cyclegan()):
        recipe.to(torch.device("cpu"), channels_last=True)
        batch = {key: value.contiguous(memory_format=torch.channels_last) for key, value in random_batch().items()}
        stepper = Stepper(device_type="cpu", autocast_dtype=torch.bfloat16, optimizers=recipe.optimizers,
                          scalers={name: torch.amp.GradScaler("cpu", enabled=False) for name in recipe.optimizers})
        assert all(torch.isfinite(value) for value in recipe.train_step(batch, stepper).values())


def test_invalid_settings_are_one_line_errors():
    with pytest.raises(GanrunError, match="model.lambda_L1 must be >= 0, got -1"):
        tiny_pix2pix(lambda_L1=-1)
    with pytest.raises(GanrunError, match="model.lambda_A must be >= 0, got -10"):
        tiny_cyclegan(lambda_A=-10)
    with pytest.raises(GanrunError, match="model.pool_size must be >= 0"):
        tiny_cyclegan(pool_size=-1)
    with pytest.raises(GanrunError, match="condition_channels must be A's channels"):
        Pix2PixRecipe(G=UNetGenerator(resolution=32, width=2), D=PatchDiscriminator(width=2), loss=NonSaturatingLoss(),
                      optim={"G": adam(), "D": adam()})


def test_translate_takes_any_multiple_and_names_the_fix_otherwise():
    pix2pix, cyclegan = tiny_pix2pix(), tiny_cyclegan()
    assert pix2pix.size_multiple == 32 and cyclegan.size_multiple == 4
    assert pix2pix.directions == ("AtoB",) and cyclegan.directions == ("AtoB", "BtoA")
    assert pix2pix.task == cyclegan.task == "translation"
    out = cyclegan.translate(cyclegan.generator, torch.rand(1, 3, 36, 44) * 2 - 1, direction="BtoA")
    assert out.shape == (1, 3, 36, 44) and out.dtype == torch.float32 and out.abs().max() <= 1
    assert pix2pix.translate(pix2pix.generator, torch.zeros(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    assert pix2pix.generator.training  # translate restores the mode it found
    with pytest.raises(GanrunError, match="image size 33x48 .* multiples of 4"):
        cyclegan.translate(cyclegan.generator, torch.zeros(1, 3, 33, 48))
    with pytest.raises(GanrunError, match="image size 48x64 .* multiples of 32"):
        pix2pix.translate(pix2pix.generator, torch.zeros(1, 3, 48, 64))
    with pytest.raises(GanrunError, match="translates only AtoB"):
        pix2pix.translate(pix2pix.generator, torch.zeros(1, 3, 32, 32), direction="BtoA")


def test_grids_show_rows_of_examples_and_their_translations():
    examples = random_batch(n=4)
    for recipe, columns in ((tiny_pix2pix(), 3), (tiny_cyclegan(), 6)):
        inputs = recipe.grid_inputs(2 * columns, generator=torch.Generator(), **examples)
        assert set(inputs) == {"A", "B"} and len(inputs["A"]) == 2
        rows = recipe.render(recipe.generator, inputs)
        assert rows.shape == (2 * columns, 3, 32, 32)
        assert torch.equal(rows[0], examples["A"][0]) and torch.equal(rows[columns], examples["A"][1])
        # the target (pix2pix) or the B example (CycleGAN) in its column
        assert torch.equal(rows[2 if columns == 3 else 3], examples["B"][0])
    with pytest.raises(GanrunError, match="need data examples"):
        tiny_pix2pix().grid_inputs(6, generator=torch.Generator())


# the history pool


def numbered(values) -> torch.Tensor:
    """Images whose every pixel is their number: (N, 1, 2, 2)."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def test_pool_stores_until_full_then_swaps_half_the_time():
    pool = ImagePool(capacity=4, seed=0)
    assert torch.equal(pool.query(numbered([0, 1, 2])), numbered([0, 1, 2]))  # below capacity: stored and returned
    out = pool.query(numbered([3, 4]))  # 3 fills the pool; 4 meets a full pool
    assert out[0, 0, 0, 0] == 3 and len(pool) == 4
    stored, returned = {float(v) for v in pool.images[:, 0, 0, 0]}, float(out[1, 0, 0, 0])
    assert (returned == 4 and stored == {0, 1, 2, 3}) or (returned in {0, 1, 2, 3} and stored == {0, 1, 2, 3, 4} - {returned})
    swaps, trials = 0, 4000
    for number in range(100, 100 + trials):
        before = {float(v) for v in pool.images[:, 0, 0, 0]}
        returned = float(pool.query(numbered([number]))[0, 0, 0, 0])
        after = {float(v) for v in pool.images[:, 0, 0, 0]}
        if returned == number:  # kept out: the pool is unchanged
            assert after == before
        else:  # an old image came back, and the new one took its place
            swaps += 1
            assert returned in before and after == (before - {returned}) | {number}
    assert abs(swaps / trials - 0.5) < 0.03  # p = 1/2 (4000 draws: 3 sigma is 0.024)
    images = numbered([7])
    assert ImagePool(capacity=0).query(images) is images  # capacity 0: a pass-through


@pytest.mark.parametrize("filled", [0, 3, 6])
def test_pool_state_roundtrips_through_a_weights_only_checkpoint(filled):
    pool = ImagePool(capacity=5, seed=1)
    if filled:
        pool.query(numbered(range(filled)))
    state = roundtrip(pool.state_dict())
    assert set(state) == {"images", "rng"} and all(isinstance(v, torch.Tensor) for v in state.values())
    restored = ImagePool(capacity=5, seed=99)
    restored.load_state_dict(state)
    for batch in range(6):
        images = numbered(range(10 * batch + 50, 10 * batch + 53))
        assert torch.equal(pool.query(images), restored.query(images))
    assert torch.equal(pool.images, restored.images)
    with pytest.raises(GanrunError, match="holds 5 images, more than model.pool_size=2"):
        ImagePool(capacity=2).load_state_dict(roundtrip(pool.state_dict()))


# resume


@pytest.mark.parametrize("make", [tiny_pix2pix, tiny_cyclegan], ids=["pix2pix", "cyclegan"])
def test_recipe_state_resumes_bit_identically(make):
    recipe = make(seed=0)
    for step in range(3):
        recipe.train_step(random_batch(seed=step), fp32_stepper(recipe, step_index=step))
    state = roundtrip(recipe.state_dict())  # a checkpoint: tensors only, loadable with weights_only=True
    resumed = make(seed=7)  # other initial weights and pool seeds: everything must come from the state
    resumed.load_state_dict(state, step=3)
    outputs = []
    for candidate in (recipe, resumed):
        torch.manual_seed(11)  # the loop restores the global RNG (pix2pix's dropout draws from it)
        terms = candidate.train_step(random_batch(seed=3), fp32_stepper(candidate, step_index=3))
        outputs.append((terms, candidate.state_dict()))
    assert_same(outputs[0][0], outputs[1][0])
    assert_same(outputs[0][1], outputs[1][1])  # networks, optimizers and (CycleGAN) pools alike


# configs


@pytest.mark.parametrize("model", ["pix2pix", "cyclegan"])
def test_model_configs_build_the_recipes(model):
    config = OmegaConf.create({"dataset": {"crop_size": 64, "channels": 3}, "model": OmegaConf.load(CONF / "model" / f"{model}.yaml")})
    config.model.G.width = config.model.D.width = 4
    recipe = build(config.model, loss=NonSaturatingLoss(), optim={"G": adam(), "D": adam()})
    assert type(recipe) is {"pix2pix": Pix2PixRecipe, "cyclegan": CycleGANRecipe}[model]
    if model == "pix2pix":
        assert recipe.lambda_L1 == 100 and recipe.generator.num_downs == 6 and recipe.networks["D"].condition_channels == 3
    else:
        assert (recipe.lambda_A, recipe.lambda_B, recipe.lambda_identity) == (10, 10, 0.5)
        assert recipe.generator.G_AB.blocks == 6 and recipe.pools["A"].capacity == 50


# learning


def test_tiny_cyclegan_learns_a_colour_inversion():
    """Budget: 500 steps at batch 1 of a width-8, 2-block CycleGAN at 16 px (PatchGAN n_layers=2),
    about 10 s on one CPU thread. A: smooth blobs on a dark background; B: colour inverses of
    other such images (unpaired). The paper's settings otherwise: LSGAN with the reference's G
    weight (adversarial_weight=2), cycle 10, identity 0.5, pool 50, Adam 2e-4 (0.5, 0.999).
    On held-out images, L1(G_AB(a), -a) (1 - a in [0, 1] terms) must fall below a third of
    L1(a, -a) (the identity's error; a G that outputs 0 scores half of it) and below half of
    what the untrained G scores; runs of six seeds reached 0.08-0.23 of L1(a, -a)."""
    torch.manual_seed(0)
    recipe = CycleGANRecipe(G=CycleGenerators(resolution=16, width=8, blocks=2), D=CycleDiscriminators(width=8, n_layers=2),
                            loss=LeastSquaresLoss(), optim={"G": adam(), "D": adam()}, adversarial_weight=2.0)
    stepper = fp32_stepper(recipe)
    data = torch.Generator().manual_seed(1)
    held_out = smooth_blobs(64, generator=torch.Generator().manual_seed(2))
    baseline = (held_out - -held_out).abs().mean()
    start = (recipe.translate(recipe.generator, held_out) - -held_out).abs().mean()
    for step in range(500):
        stepper.step_index = step
        recipe.train_step({"A": smooth_blobs(1, generator=data), "B": -smooth_blobs(1, generator=data)}, stepper)
    error = (recipe.translate(recipe.generator, held_out) - -held_out).abs().mean()
    message = f"L1(G_AB(a), -a) = {error:.3f} vs L1(a, -a) = {baseline:.3f} (untrained {start:.3f})"
    assert error < baseline / 3 and error < start / 2, message
