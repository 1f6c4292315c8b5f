"""Super-resolution: paired data, aligned crops, PSNR/SSIM, SRResNet learning, tiling, resume,
SRGAN, init_from, and the sample/eval commands on SR checkpoints. Generated images only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, compose_train, run_train
from PIL import Image
from test_models import one_thread  # noqa: F401  (autouse: tiny nets run several times faster on one thread)

from ganrun.config import build
from ganrun.data.paired_sr import load_paired_sr
from ganrun.errors import GanrunError
from ganrun.imaging import bicubic_downscale, tiled, to_float
from ganrun.loop.checkpoint import load_checkpoint
from ganrun.loop.rebuild import rebuild_from_checkpoint
from ganrun.loop.setup import initialize_generator
from ganrun.metrics.image_quality import lpips_backbone_path, measure, perceptual_distance_or_reason, rgb_to_y
from ganrun.models.srresnet import SRResNet
from ganrun.tasks.super_resolution import measure_pairs

CPU = torch.device("cpu")
FREQUENCIES = (0.05, 0.3)  # radians per HR pixel: sharp-edged stripes well below the LR Nyquist limit

# helpers


def textures(count: int, *, size: tuple[int, int] = (48, 40), seed: int = 0) -> list[np.ndarray]:
    """Colour images of oriented sinusoids of mixed frequencies: detail that bicubic blurs but a
    network can learn to restore, statistically the same for training and held-out images."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    images = []
    for _ in range(count):
        image = np.zeros((height, width, 3))
        for _ in range(3):
            angle, frequency, phase = rng.uniform(0, np.pi), rng.uniform(FREQUENCIES[0], FREQUENCIES[1]), rng.uniform(0, 2 * np.pi)
            wave = np.sign(np.sin(frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase))  # sharp edges
            image += wave[..., None] * rng.uniform(-1, 1, 3)
        images.append(np.clip(127.5 + 30 * image, 0, 255).astype(np.uint8))
    return images


def write_images(folder: Path, images: list[np.ndarray], names: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{names[index] if names else f'img_{index:03d}'}.png")
    return folder


def sr_overrides(hr_dir: Path, **extra: object) -> list[str]:
    """A 2-block, 8-channel SRResNet x4 on 32x32 crops: milliseconds per step."""
    overrides = {
        "experiment": "srresnet_x4",
        "dataset.hr_dir": str(hr_dir),
        "dataset.hr_patch": 32,
        "model.G.blocks": 2,
        "model.G.width": 8,
        "trainer.batch_size": 4,
        "trainer.max_steps": 4,
        "trainer.log_every": 2,
        "trainer.sample_every": 2,
        "trainer.ckpt_every": 2,
        "trainer.grid_size": 8,
        "trainer.num_workers": 0,
        "trainer.precision": "fp32",
        # not auto: auto threads follow the machine's load, so two runs compared bit for bit could differ
        "trainer.num_threads": 1,
        "logger.mode": "disabled",
    }
    overrides.update(extra)
    return [f"{key}={value}" for key, value in overrides.items()]


def srgan_overrides(hr_dir: Path, **extra: object) -> list[str]:
    return sr_overrides(hr_dir, **{"experiment": "srgan_x4", "model.D.width": 4, **extra})


@pytest.fixture
def hr_dir(tmp_path) -> Path:
    return write_images(tmp_path / "HR", textures(6))


def ssim_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 on one channel: 11x11 Gaussian (sigma 1.5) windows inside the image."""
    from numpy.lib.stride_tricks import sliding_window_view

    coords = np.arange(11) - 5
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(image: np.ndarray) -> np.ndarray:
        return (sliding_window_view(image, (11, 11)) * window).sum(axis=(-1, -2))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


# paired data


def test_pairs_are_matched_by_the_name_template(tmp_path):
    hr = textures(2, size=(48, 40))
    write_images(tmp_path / "HR", hr, ["baby", "bird"])
    write_images(tmp_path / "LR", [image[::4, ::4] for image in hr], ["babyx4", "birdx4"])
    data = load_paired_sr(hr_dir=str(tmp_path / "HR"), lr_dir=str(tmp_path / "LR"), lr_name="{stem}x4", scale=4)
    assert [pair.name for pair in data.pairs] == ["baby", "bird"]
    for pair, image in zip(data.pairs, hr):
        assert torch.equal(pair.lr, torch.from_numpy(np.ascontiguousarray(image[::4, ::4])).permute(2, 0, 1))
        assert pair.hr.shape == (3, 48, 40)


def test_missing_partner_and_wrong_size_are_errors_naming_the_file(tmp_path):
    hr = textures(2)
    write_images(tmp_path / "HR", hr, ["baby", "bird"])
    write_images(tmp_path / "LR", [hr[0][::4, ::4]], ["babyx4"])
    with pytest.raises(GanrunError, match=r"bird\.png has no low-resolution partner birdx4"):
        load_paired_sr(hr_dir=str(tmp_path / "HR"), lr_dir=str(tmp_path / "LR"), lr_name="{stem}x4")
    write_images(tmp_path / "LR", [hr[1][::2, ::2]], ["birdx4"])  # a x2 image in the x4 folder
    with pytest.raises(GanrunError, match=r"birdx4\.png is 20x24, but its HR partner .*bird\.png is 40x48.*must be 10x12"):
        load_paired_sr(hr_dir=str(tmp_path / "HR"), lr_dir=str(tmp_path / "LR"), lr_name="{stem}x4")


def test_generated_lr_crops_are_the_bicubic_downscaling_of_the_hr_crops(hr_dir):
    data = load_paired_sr(hr_dir=str(hr_dir), scale=4, hr_patch=16)
    stream = data.batches(batch_size=8, seed=3, device=CPU)
    hr, lr = stream.crops(0)
    assert hr.shape == (8, 3, 16, 16) and lr.shape == (8, 3, 4, 4)
    assert torch.equal(lr, bicubic_downscale(hr, 4))
    batch = next(stream)
    assert torch.equal(batch["lr"], to_float(lr)) and torch.equal(batch["image"], to_float(hr))
    # every HR crop is a window of one training image under one of the square's 8 symmetries
    for crop in hr:
        candidates = [v for t in (crop, crop.transpose(-1, -2)) for h in (t, t.flip(-1)) for v in (h, h.flip(-2))]
        assert any(_is_window_of(candidate, pair.hr) for candidate in candidates for pair in data.pairs)


def _is_window_of(crop: torch.Tensor, image: torch.Tensor) -> bool:
    windows = image.unfold(1, crop.shape[1], 1).unfold(2, crop.shape[2], 1)  # (C, y, x, h, w)
    return bool((windows == crop[:, None, None]).all(dim=(0, 3, 4)).any())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_crops_from_an_lr_folder_stay_aligned_through_flips_and_rotations(tmp_path, scale):
    # HR = LR with every pixel repeated scale x scale: an aligned HR crop subsampled is the LR crop.
    lr_images = textures(3, size=(12, 14), seed=scale)
    write_images(tmp_path / "LR", lr_images)
    write_images(tmp_path / "HR", [image.repeat(scale, 0).repeat(scale, 1) for image in lr_images])
    data = load_paired_sr(hr_dir=str(tmp_path / "HR"), lr_dir=str(tmp_path / "LR"), scale=scale, hr_patch=6 * scale)
    hr, lr = data.batches(batch_size=32, seed=0, device=CPU).crops(5)
    assert lr.shape[-1] == 6 and hr.shape[-1] == 6 * scale
    assert torch.equal(hr[:, :, ::scale, ::scale], lr)
    assert torch.equal(hr, lr.repeat_interleave(scale, -1).repeat_interleave(scale, -2))


def test_crops_depend_only_on_seed_and_position_and_are_augmented(hr_dir):
    data = load_paired_sr(hr_dir=str(hr_dir), hr_patch=16)
    first, second = data.batches(batch_size=4, seed=1, device=CPU), data.batches(batch_size=4, seed=1, device=CPU)
    for _ in range(3):
        next(first)
    second.load_state_dict(first.state_dict())
    assert torch.equal(next(first)["image"], next(second)["image"])
    assert not torch.equal(data.batches(batch_size=4, seed=2, device=CPU).crops(0)[0], first.crops(0)[0])
    plain = load_paired_sr(hr_dir=str(hr_dir), hr_patch=16, augment=False).batches(batch_size=64, seed=1, device=CPU)
    augmented = data.batches(batch_size=64, seed=1, device=CPU)
    # same windows, so the augmented crops differ from the plain ones exactly where a symmetry was drawn
    changed = (plain.crops(0)[0] != augmented.crops(0)[0]).flatten(1).any(1).float().mean()
    assert 0.7 < changed <= 1.0  # 7 of the 8 symmetries change a textured crop


def test_grayscale_files_become_rgb_and_hr_is_mod_cropped(tmp_path):
    gray = textures(1, size=(50, 43))[0][..., 0]
    (tmp_path / "HR").mkdir()
    Image.fromarray(gray, mode="L").save(tmp_path / "HR" / "gray.png")
    pair = load_paired_sr(hr_dir=str(tmp_path / "HR"), scale=3, hr_patch=12).pairs[0]
    assert pair.hr.shape == (3, 48, 42)
    assert torch.equal(pair.hr[0], pair.hr[1]) and torch.equal(pair.hr[0], torch.from_numpy(gray[:48, :42]))
    single = load_paired_sr(hr_dir=str(tmp_path / "HR"), scale=3, hr_patch=12, channels=1).pairs[0]
    assert single.hr.shape == (1, 48, 42) and single.low_res(3).shape == (1, 16, 14)


def test_bad_settings_are_one_line_errors(tmp_path, hr_dir):
    with pytest.raises(GanrunError, match="dataset.scale must be 2, 3 or 4, got 5"):
        load_paired_sr(hr_dir=str(hr_dir), scale=5)
    with pytest.raises(GanrunError, match="hr_patch=30 must be a multiple of dataset.scale=4"):
        load_paired_sr(hr_dir=str(hr_dir), hr_patch=30)
    with pytest.raises(GanrunError, match=r"is 40x48, smaller than dataset.hr_patch=64"):
        load_paired_sr(hr_dir=str(hr_dir), hr_patch=64).batches(batch_size=2, seed=0, device=CPU)
    with pytest.raises(GanrunError, match="dataset.hr_dir='nowhere' is not a folder"):
        load_paired_sr(hr_dir="nowhere")


# metrics


def test_psnr_and_crop_border_against_hand_computed_values():
    reference = torch.full((3, 20, 20), 100, dtype=torch.uint8)
    output = reference.clone()
    output[:, 5:9, 5:9] += 10  # interior: 48 of 3 x 12 x 12 values off by 10
    output[:, :4, :] += 50  # border rows: cropped away by crop_border=4
    values = measure(output, reference, border=4)
    assert values["psnr"] == pytest.approx(10 * math.log10(255**2 / (48 * 100 / (3 * 144))), abs=1e-5)  # torchmetrics: float32 inside
    # every channel off by 10 -> Y off by 10 * (65.481 + 128.553 + 24.966) / 255
    assert values["psnr_y"] == pytest.approx(10 * math.log10(255**2 / (16 * (10 * 219 / 255) ** 2 / 144)), abs=1e-5)
    assert measure(output, reference, border=0)["psnr"] < values["psnr"] - 5


def test_ssim_against_a_hand_computed_value():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 24, 24)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    values = measure(torch.from_numpy(b), torch.from_numpy(a), border=2)
    assert values["ssim"] == pytest.approx(ssim_by_hand(b[0, 2:-2, 2:-2].astype(float), a[0, 2:-2, 2:-2].astype(float)), abs=1e-6)
    assert measure(torch.from_numpy(a), torch.from_numpy(a), border=0)["ssim"] == pytest.approx(1.0)


def test_y_channel_is_itu_r_bt601():
    colours = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.float64)
    y = rgb_to_y(colours.T.reshape(3, 1, 5)).flatten()
    assert torch.allclose(y, torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64))


def fake_lpips_backbone() -> None:
    """A randomly initialised AlexNet where torchvision keeps its ImageNet weights ($TORCH_HOME,
    set by the test): the plumbing is what these tests check, not ImageNet's features."""
    import torchvision

    path = lpips_backbone_path()
    assert path.name == "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)


def test_lpips_without_local_alexnet_weights_is_a_one_line_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    perceptual, reason = perceptual_distance_or_reason(device=CPU, allow_download=False)
    assert perceptual is None and "\n" not in reason
    assert f"not at {tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth'}" in reason
    assert "download=false" in reason and "TORCH_HOME" in reason


def test_lpips_with_local_weights_matches_torchmetrics_on_the_cropped_images(tmp_path, monkeypatch):
    from torchmetrics.functional.image import learned_perceptual_image_patch_similarity

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    fake_lpips_backbone()
    perceptual, reason = perceptual_distance_or_reason(device=CPU, allow_download=False)
    assert perceptual is not None and reason == ""
    a, b = (torch.from_numpy(image).permute(2, 0, 1).contiguous() for image in textures(2, size=(40, 40)))
    value = measure(a, b, border=4, perceptual=perceptual)["lpips"]
    expected = learned_perceptual_image_patch_similarity(
        (a[None, :, 4:-4, 4:-4].float() / 255), (b[None, :, 4:-4, 4:-4].float() / 255), net_type="alex", normalize=True)
    assert value == pytest.approx(float(expected), rel=1e-5) and value > 0
    assert measure(a, a, border=4, perceptual=perceptual)["lpips"] == pytest.approx(0.0, abs=1e-6)
    gray = a[:1]  # one channel is compared as grey RGB
    assert measure(gray, gray, border=4, perceptual=perceptual)["lpips"] == pytest.approx(0.0, abs=1e-6)


# models and tiled inference


def test_untrained_srresnet_is_bicubic_and_tiled_inference_equals_whole_image():
    lr = torch.rand(1, 3, 20, 18) * 2 - 1
    G = SRResNet(scale=4, width=8, blocks=2)
    assert torch.allclose(G(lr), torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic"))
    torch.manual_seed(0)
    torch.nn.init.normal_(G.tail.weight, std=0.05)  # a G that is more than bicubic
    with torch.no_grad():
        whole = G(lr)
        pieces = tiled(G, lr, scale=4, tile=7, overlap=16)
    assert pieces.shape == whole.shape == (1, 3, 80, 72)
    assert (pieces - whole).abs().max() < 1e-5
    with torch.no_grad():  # too little context: the seams show
        assert (tiled(G, lr, scale=4, tile=7, overlap=1) - whole).abs().max() > 1e-3


def test_srresnet_learns_to_beat_bicubic_on_held_out_textures(tmp_path):
    train_dir = write_images(tmp_path / "train", textures(16, size=(64, 64), seed=1))
    held_out = write_images(tmp_path / "held_out", textures(4, size=(64, 64), seed=2))
    start = time.perf_counter()
    run_train(sr_overrides(train_dir, **{
        "model.G.width": 16, "trainer.max_steps": 800, "trainer.batch_size": 8, "optim.lr": 2e-3,
        "trainer.ema.enabled": "false", "trainer.sample_every": 0, "trainer.ckpt_every": 800, "trainer.log_every": 100,
    }), tmp_path / "run")
    seconds = time.perf_counter() - start
    recipe, G, _ = rebuild_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", device=CPU)
    rows = measure_pairs(recipe, G, load_paired_sr(hr_dir=str(held_out)).pairs, border=4, device=CPU)
    sr, bicubic = [np.mean([row[side]["psnr_y"] for row in rows]) for side in ("sr", "bicubic")]
    assert sr > bicubic + 0.5, f"SR {sr:.2f} dB vs bicubic {bicubic:.2f} dB after {seconds:.0f} s"
    assert seconds < 60


# the loop: resume, SRGAN, init_from, grids


def test_sr_resume_is_bit_identical_to_an_uninterrupted_run(hr_dir, tmp_path):
    full, halves = tmp_path / "full", tmp_path / "halves"
    run_train(srgan_overrides(hr_dir, **{"trainer.max_steps": 6}), full)
    run_train(srgan_overrides(hr_dir, **{"trainer.max_steps": 2}), halves)
    run_train([f"resume={halves}", "trainer.max_steps=6"], halves)
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(halves / "checkpoints" / "last.pt")
    assert a["data"] == b["data"] == {"position": 6}
    for key in ("G_ema",):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])
    for network in ("G", "D"):
        state_a, state_b = a["recipe"]["networks"][network], b["recipe"]["networks"][network]
        assert all(torch.equal(state_a[name], state_b[name]) for name in state_a)
    assert np.array_equal(np.asarray(Image.open(full / "samples" / "step_0000006.png")),
                          np.asarray(Image.open(halves / "samples" / "step_0000006.png")))


def test_two_srgan_steps_train_g_and_d_and_draw_four_column_grids(hr_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_train(srgan_overrides(hr_dir, **{"trainer.max_steps": 2, "trainer.log_every": 1}), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {key: value for row in rows for key, value in row.items() if key.startswith("loss/")}
    assert {"loss/G/pixel", "loss/G/adv", "loss/D/real", "loss/D/fake"} <= set(losses)
    assert all(math.isfinite(value) for value in losses.values())
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert set(checkpoint["recipe"]["optimizers"]) == {"G", "D"}
    assert checkpoint["config"]["model"]["adversarial_weight"] == 1e-3
    grid = Image.open(run_dir / "samples" / "step_0000002.png")
    # grid_size 8 -> 2 crops, one row each: LR (nearest) | bicubic | SR | HR, 32 px + 2 px padding
    assert grid.size == (4 * 34 + 2, 2 * 34 + 2)


def test_init_from_loads_the_generator_without_optimizer_state(hr_dir, tmp_path):
    warmup = tmp_path / "warmup"
    run_train(sr_overrides(hr_dir, **{"trainer.max_steps": 2}), warmup)
    cfg = compose_train(srgan_overrides(hr_dir))
    recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    initialize_generator(recipe, str(warmup))
    source = load_checkpoint(warmup / "checkpoints" / "last.pt")["G_ema"]
    assert all(torch.equal(recipe.generator.state_dict()[name], source[name]) for name in source)
    assert all(not optimizer.state for optimizer in recipe.optimizers.values())
    result = run_train([*srgan_overrides(hr_dir, **{"trainer.max_steps": 1}), f"init_from={warmup}"], tmp_path / "gan")
    assert result.step == 1
    cfg = compose_train(srgan_overrides(hr_dir, **{"model.G.width": 16}))
    wider = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    with pytest.raises(GanrunError, match=r"init_from=.*does not fit model.G"):
        initialize_generator(wider, str(warmup))


def test_perceptual_loss_without_local_vgg_weights_is_a_clear_error(hr_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(GanrunError, match=r"VGG19 weights, not found at .*vgg19-dcbb9e9d.pth.*perceptual_weight=0"):
        run_train(sr_overrides(hr_dir, **{"model.perceptual_weight": 0.006}), tmp_path / "run")


def test_validation_psnr_during_training_keeps_best_pt(hr_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_train(sr_overrides(hr_dir, **{"dataset.val_hr_dir": str(hr_dir), "eval.every": 2}), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval/psnr_y" in row]
    assert [row["step"] for row in evals] == [2, 4]
    assert all(row["eval/psnr_y"] > 10 and "eval/bicubic_psnr_y" in row for row in evals)
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    with pytest.raises(GanrunError, match="needs validation pairs: set dataset.val_hr_dir"):
        run_train(sr_overrides(hr_dir, **{"eval.every": 2}), tmp_path / "no_val")
    fid = {"dataset.val_hr_dir": str(hr_dir), "eval.every": 2, "eval.metrics": "[fid]", "eval.best_metric": "fid"}
    with pytest.raises(GanrunError, match=r"super-resolution runs measure .*got eval.metrics=\['fid'\]"):
        run_train(sr_overrides(hr_dir, **fid), tmp_path / "fid")


# the commands


def test_sample_super_resolves_a_folder_of_any_size_and_eval_reports_psnr(hr_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no LPIPS weights: a one-line note
    run_dir = tmp_path / "run"
    run_train(sr_overrides(hr_dir, **{"trainer.max_steps": 2}), run_dir)
    inputs = write_images(tmp_path / "photos", [textures(1, size=(13, 29))[0], textures(1, size=(30, 8))[0]], ["a", "b"])
    Image.fromarray(textures(1, size=(10, 10))[0]).save(inputs / "c.jpg")
    code, out, err = cli(capsys, "sample", f"ckpt={run_dir}", f"input_dir={inputs}", f"out_dir={tmp_path / 'sr'}", "tile=8",
                         "tile_overlap=4")
    assert code == 0, err
    sizes = {path.name: Image.open(path).size for path in (tmp_path / "sr").iterdir()}
    assert sizes == {"a.png": (116, 52), "b.png": (32, 120), "c.png": (40, 40)}

    lr_dir = write_images(tmp_path / "LR", [np.asarray(Image.open(p))[::4, ::4] for p in sorted(hr_dir.iterdir())],
                          [f"{p.stem}x4" for p in sorted(hr_dir.iterdir())])
    code, out, err = cli(capsys, "eval", f"ckpt={run_dir}", f"dataset.hr_dir={hr_dir}", f"dataset.lr_dir={lr_dir}",
                         "dataset.lr_name='{stem}x4'", "download=false")
    assert code == 0, err
    assert "crop_border=4" in out and "ITU-R BT.601" in out and "img_005" in out and "mean" in out
    assert out.count("LPIPS not computed: torchvision's ImageNet AlexNet weights are not at") == 1
    result = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["last.pt"]
    assert result["metrics"]["psnr_y"] == pytest.approx(np.mean([row["sr"]["psnr_y"] for row in result["per_image"]]))
    assert set(result["metrics"]) == {"psnr_y", "ssim_y", "psnr", "ssim"} | {
        f"bicubic_{key}" for key in ("psnr_y", "ssim_y", "psnr", "ssim")}
    assert "LPIPS not computed" in result["protocol"]["measurement"]

    fake_lpips_backbone()  # weights in the cache: an LPIPS column for SR and bicubic
    code, out, err = cli(capsys, "eval", f"run={run_dir}", f"dataset.hr_dir={hr_dir}", "crop_border=0", "download=false")
    assert code == 0, err  # every checkpoint
    assert "crop_border=0" in out and (run_dir / "eval_vs_step.png").is_file()
    assert "lpips" in out.splitlines()[1] and "LPIPS not computed" not in out and "LPIPS v0.1 (AlexNet" in out
    result = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["step_0000002.pt"]
    assert result["metrics"]["lpips"] == pytest.approx(np.mean([row["sr"]["lpips"] for row in result["per_image"]]))
    assert result["metrics"]["lpips"] > 0 and result["metrics"]["bicubic_lpips"] > 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["eval/checkpoint"] for row in rows if "eval/psnr_y" in row] == ["last.pt", "step_0000002.pt"]


def test_sr_compare_script_prints_psnr_and_detail_and_draws_the_crops(hr_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_train(sr_overrides(hr_dir, **{"trainer.max_steps": 2}), run_dir)
    script = Path(__file__).resolve().parents[1] / "scripts" / "sr_compare.py"
    figure = tmp_path / "crops.png"
    done = subprocess.run([sys.executable, str(script), "--ckpt", f"tiny={run_dir}", "--hr", str(hr_dir), "--crop", "16",
                           "--out", str(figure)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    mean = next(line for line in done.stdout.splitlines() if line.startswith("mean")).split()
    assert mean[-2:] == ["100.0", "%"]  # HR against itself: all of its own detail
    # an almost untrained G (bicubic skip) reads as bicubic: PSNR-Y dB and detail %
    assert float(mean[1]) == pytest.approx(float(mean[5]), abs=0.5) and float(mean[3]) == pytest.approx(float(mean[7]), abs=5)
    assert Image.open(figure).size[0] == 3 * (2 * 16 + 4) + 4  # bicubic | tiny | HR, zoomed x2, padded
