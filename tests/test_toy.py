"""Toy 2-D mixtures: the data, the mode-coverage metric, scatter plots, the loop's diagnostics
hook, and the acceptance test that hinge and WGAN-GP actually cover ring8."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import cli, run_train
from PIL import Image
from test_models import one_thread  # noqa: F401  (autouse: tiny MLPs run fastest on one thread)

from ganrun.data import Batches
from ganrun.data.toy import grid_centres, load_grid, load_ring, mode_coverage, ring_centres, save_scatter, scatter_reference_for
from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import LAST, load_checkpoint

# data


def test_ring8_has_eight_tight_modes_on_a_circle_of_radius_two():
    data = load_ring(num_points=20_000)
    assert data.images.shape == (20_000, 2) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64 and set(data.labels.tolist()) == set(range(8))
    assert torch.allclose(data.centres.norm(dim=1), torch.full((8,), 2.0))
    for mode in range(8):
        points = data.images[data.labels == mode]
        assert torch.allclose(points.mean(dim=0), data.centres[mode], atol=0.005)
        assert abs(float((points - data.centres[mode]).std()) - 0.02) < 0.002
    assert torch.equal(load_ring(num_points=20_000).images, data.images)  # a fixed, seeded set
    assert not torch.equal(load_ring(num_points=20_000, seed=1).images, data.images)


def test_grid25_sits_on_minus_four_to_four():
    data = load_grid(num_points=5_000)
    assert data.centres.shape == (25, 2)
    assert sorted(set(data.centres[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    residuals = data.images - data.centres[data.labels]
    assert abs(float(residuals.std()) - 0.05) < 0.005


def test_toy_settings_are_checked():
    with pytest.raises(GanrunError, match="dataset.resolution must be 0"):
        load_ring(resolution=28)
    with pytest.raises(GanrunError, match="num_classes for ring8 must be 8"):
        load_ring(num_classes=10)
    with pytest.raises(GanrunError, match="std > 0"):
        load_grid(std=0.0)


def test_points_flow_through_batches_as_float_coordinates():
    data = load_ring(num_points=1_000)
    batches = Batches(data=data, batch_size=64, seed=0, device=torch.device("cpu"), channels_last=True, num_workers=0)
    batch = next(batches)
    assert batch["image"].shape == (64, 2) and batch["image"].dtype == torch.float32
    assert batch["image"].abs().max() > 1.5  # coordinates, not pixels rescaled to [-1, 1]
    assert batch["label"].shape == (64,)
    index = torch.cdist(batch["image"], data.images).argmin(dim=1)  # each point is one of the set
    assert torch.equal(data.images[index], batch["image"])


# the metric


def test_coverage_of_real_points_is_complete():
    data = load_ring(num_points=2_500, seed=3)
    metrics = mode_coverage(data.images, centres=data.centres, std=data.std)
    assert metrics["modes/covered"] == 8
    assert metrics["modes/high_quality"] > 0.98  # 3 std holds 98.9 % of a 2-D Gaussian


def test_coverage_of_half_the_modes():
    data = load_ring(num_points=5_000)
    half = data.images[data.labels < 4][:2_500]
    metrics = mode_coverage(half, centres=data.centres, std=data.std)
    assert metrics["modes/covered"] == 4 and metrics["modes/high_quality"] > 0.98


def test_coverage_of_noise_is_none():
    noise = torch.rand(2_500, 2, generator=torch.Generator().manual_seed(0)) * 6 - 3
    metrics = mode_coverage(noise, centres=ring_centres(modes=8, radius=2.0), std=0.02)
    assert metrics["modes/covered"] == 0 and metrics["modes/high_quality"] < 0.01


def test_a_mode_needs_one_percent_of_all_samples():
    centres = grid_centres(side=2, spacing=2.0)  # (+-1, +-1)
    samples = torch.cat([centres[0].expand(990, 2), centres[1].expand(10, 2)])
    assert mode_coverage(samples, centres=centres, std=0.05)["modes/covered"] == 2  # 10 of 1,000: exactly 1 %
    # One more sample (a NaN: never high quality) and 10 of 1,001 fall short of 1 %.
    metrics = mode_coverage(torch.cat([samples, torch.full((1, 2), float("nan"))]), centres=centres, std=0.05)
    assert metrics["modes/covered"] == 1 and metrics["modes/high_quality"] == pytest.approx(1000 / 1001)


# scatter plots


def test_scatter_plot_draws_samples_and_mode_rings_on_fixed_axes(tmp_path):
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    path = tmp_path / "scatter.png"
    save_scatter(torch.tensor([[0.0, 2.0]]), path, centres=centres, std=0.02)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert pixels.shape == (512, 512, 3)
    scale = 511 / 6.0  # extent 1.5 * max |centre| = 3 on each side

    def color(x: float, y: float) -> np.ndarray:
        return pixels[round((3 - y) * scale), round((x + 3) * scale)]

    sample = color(0.0, 2.0)
    assert sample[0] > 150 and sample[1] < 80  # red, and up: y grows upwards
    assert color(0.0, -2.0).tolist() != sample.tolist()
    row, column = round(3 * scale), round(5 * scale)  # the centre (2, 0): inside its ring, white
    assert pixels[row, column].tolist() == [255, 255, 255]
    around = pixels[row, column - 8 : column + 9]
    assert ((around[:, 2] > 150) & (around[:, 0] < 80)).any()  # a blue ring around it


# through the loop


def _toy_overrides(loss: str, **extra: object) -> list[str]:
    overrides = {
        "model": "mlp",
        "dataset": "ring8",
        "loss": loss,
        "trainer.precision": "fp32",
        # One thread, as the settings below were tuned: auto threads pick 1 or 2 with the machine's
        # load, and a different reduction order is a different training run.
        "trainer.num_threads": 1,
        "trainer.num_workers": 0,
        "logger.mode": "disabled",
        **extra,
    }
    return [f"{key}={value}" for key, value in overrides.items()]


def test_two_steps_on_ring8_log_coverage_and_draw_a_scatter_plot(tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = _toy_overrides(
        "bce",
        **{"trainer.max_steps": 2, "trainer.batch_size": 16, "trainer.log_every": 2, "trainer.sample_every": 2,
           "trainer.ckpt_every": 2, "trainer.grid_size": 16, "dataset.diagnostic_samples": 100},
    )
    run_train(overrides, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    coverage = [row for row in rows if "modes/covered" in row]
    assert [row["step"] for row in coverage] == [2]
    assert 0 <= coverage[0]["modes/covered"] <= 8 and 0 <= coverage[0]["modes/high_quality"] <= 1
    assert Image.open(run_dir / "samples" / "step_0000002.png").size == (512, 512)

    # `ganrun sample` on the toy checkpoint draws a scatter plot too, and the checkpoint's config
    # alone gives the rings to draw under it.
    out = tmp_path / "sampled.png"
    code, _, err = cli(capsys, "sample", f"ckpt={run_dir}", "n=200", f"out={out}", "device=cpu")
    assert code == 0, err
    assert Image.open(out).size == (512, 512)
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert ((pixels[..., 2] > 150) & (pixels[..., 0] < 80)).sum() > 8 * 20  # the eight blue mode rings
    reference = scatter_reference_for(load_checkpoint(run_dir / "checkpoints" / LAST)["config"]["dataset"])
    assert torch.allclose(reference["centres"], ring_centres(modes=8, radius=2.0)) and reference["std"] == 0.02
    assert scatter_reference_for({"_target_": "ganrun.data.load_mnist_family"}) is None


# The acceptance test. Budget, on one CPU thread: ring8, MLP G and D with 3 hidden layers of
# 64 (z 4), Adam lr 1e-3 with betas (0.5, 0.9), batch 256, constant lr (scripts/toy_losses.py's
# settings); hinge 4,000 G steps (about 12 s on a quiet core), wgan_gp 1,500 G steps x 5 critic
# steps (about 20 s). Tuned on seeds 0-4: hinge covers 7-8 modes, wgan_gp 8 (hinge at 2,000
# steps and wgan_gp at 1,000 steps or batch 128 dropped to 6 on some seeds). The test runs seed
# 0 (8/8 for both). For scale, at 2,000 steps of these settings bce covered 2 modes and
# clipped wgan 0 (scripts/toy_losses.py), so a loss that stops learning fails this test.
ACCEPTANCE = {"hinge": 4000, "wgan_gp": 1500}


@pytest.mark.parametrize("loss", sorted(ACCEPTANCE))
def test_hinge_and_wgan_gp_cover_ring8(loss, tmp_path):
    run_dir = tmp_path / "run"
    settings = {
        "model.z_dim": 4, "model.G.hidden": 64, "model.D.hidden": 64, "optim.lr": 1e-3,
        "optim.G.betas": "[0.5,0.9]", "optim.D.betas": "[0.5,0.9]", "trainer.batch_size": 256,
        "trainer.max_steps": ACCEPTANCE[loss], "trainer.log_every": 500, "trainer.sample_every": 500,
        "trainer.ckpt_every": 100_000, "trainer.grid_size": 256,
    }
    started = time.perf_counter()
    run_train(_toy_overrides(loss, **settings), run_dir)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [row for row in rows if "modes/covered" in row][-1]
    assert final["step"] == settings["trainer.max_steps"]
    assert final["modes/covered"] >= 7, f"{loss}: {final} after {seconds:.0f} s"
    assert final["modes/high_quality"] > 0.3, f"{loss}: {final}"


def test_toy_experiments_carry_the_settings_every_loss_converges_under():
    """scripts/toy_losses.py's settings, one command away: the image defaults covered 0 of 8 modes."""
    from conftest import compose_train

    for name in ("toy_ring8", "toy_grid25"):
        cfg = compose_train([f"experiment={name}", "loss=wgan_gp"])
        assert cfg.dataset.name == name.removeprefix("toy_") and cfg.model.G._target_ == "ganrun.models.mlp.Generator"
        assert (cfg.trainer.batch_size, cfg.optim.lr, cfg.model.z_dim, cfg.model.G.hidden) == (256, 1e-3, 4, 64)
        assert list(cfg.optim.G.betas) == [0.5, 0.9] and cfg.loss._target_ == "ganrun.losses.WassersteinGPLoss"
