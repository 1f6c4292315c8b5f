"""Decisions and building blocks, each against values worked out by hand."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import REPO, compose_train
from torch import nn

from ganrun.cli import group_options
from ganrun.config import build
from ganrun.errors import GanrunError
from ganrun.hardware import BF16, FP16, FP32, choose_device, choose_precision, cpu_supports_bf16, use_channels_last
from ganrun.loop.ema import EMA
from ganrun.loop.tracking import choose_wandb_mode, has_wandb_credentials
from ganrun.models.dcgan import Discriminator, Generator

# hardware decisions


@pytest.mark.parametrize(
    "requested, device_type, capability, cpu_bf16, expected",
    [
        ("auto", "cuda", (9, 0), False, BF16),  # Hopper
        ("auto", "cuda", (8, 0), False, BF16),  # Ampere
        ("auto", "cuda", (7, 5), False, FP16),  # Turing: fp16 + GradScaler
        ("auto", "cpu", None, True, BF16),  # AVX512-BF16 / AMX
        ("auto", "cpu", None, False, FP32),  # AVX2 only
        ("fp32", "cuda", (9, 0), True, FP32),
        ("bf16", "cpu", None, False, BF16),  # asked for explicitly: allowed, if slow
        ("fp16", "cuda", (7, 0), False, FP16),
    ],
)
def test_precision_policy(requested, device_type, capability, cpu_bf16, expected):
    assert choose_precision(requested, device_type=device_type, cuda_capability=capability, cpu_bf16=cpu_bf16) == expected


def test_precision_errors_name_the_fix():
    with pytest.raises(GanrunError, match="precision=fp16 needs a CUDA GPU; use trainer.precision=bf16 or fp32"):
        choose_precision("fp16", device_type="cpu")
    with pytest.raises(GanrunError, match="compute capability 8.0.*this one is 7.5; use trainer.precision=fp16"):
        choose_precision("bf16", device_type="cuda", cuda_capability=(7, 5))
    assert FP16.grad_scaler and not BF16.grad_scaler and FP32.autocast_dtype is None


def test_cpu_bf16_detection_reads_cpu_flags(tmp_path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags : fpu avx2 avx512f avx512_bf16\n")
    assert cpu_supports_bf16(flags)
    flags.write_text("flags : fpu avx2 fma\n")
    assert not cpu_supports_bf16(flags)
    assert not cpu_supports_bf16(tmp_path / "missing")


def test_device_choice():
    assert choose_device("auto", cuda_available=False) == torch.device("cpu")
    assert choose_device("auto", cuda_available=True, local_rank=1) == torch.device("cuda", 1)
    assert choose_device("cpu", cuda_available=True) == torch.device("cpu")
    with pytest.raises(GanrunError, match="trainer.device=cuda but no CUDA GPU"):
        choose_device("cuda", cuda_available=False)


def test_channels_last_only_for_conv_networks():
    assert use_channels_last(True, Generator(z_dim=4, resolution=28, channels=1, width=4))
    assert not use_channels_last(True, nn.Sequential(nn.Linear(4, 4)))
    assert not use_channels_last(False, Generator(z_dim=4, resolution=28, channels=1, width=4))


# W&B mode


def test_wandb_mode_decision():
    assert choose_wandb_mode("auto", has_credentials=True) == ("online", None)
    mode, note = choose_wandb_mode("auto", has_credentials=False)
    assert mode == "offline" and "wandb sync" in note
    assert choose_wandb_mode("auto", has_credentials=True, env_mode="offline") == ("offline", None)
    assert choose_wandb_mode("disabled", has_credentials=True) == ("disabled", None)
    assert choose_wandb_mode("online", has_credentials=False) == ("online", None)


def test_wandb_credentials_from_env_or_netrc(tmp_path):
    assert has_wandb_credentials({"WANDB_API_KEY": "k"})
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    assert has_wandb_credentials({"NETRC": str(netrc)})
    assert not has_wandb_credentials({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})
    assert not has_wandb_credentials({"NETRC": str(tmp_path / "none")})


# EMA


def test_ema_half_life_in_images():
    source = nn.Linear(1, 1, bias=False)
    ema = EMA(source=source, half_life_kimg=1.0, rampup=None)
    with torch.no_grad():
        source.weight.fill_(1.0)
        ema.module.weight.fill_(0.0)
    for _ in range(10):  # 10 steps of 100 images = one half-life (1,000 images)
        ema.update(source, images_seen=10_000, batch_size=100)
    assert ema.module.weight.item() == pytest.approx(0.5, abs=1e-6)


def test_ema_rampup_caps_the_half_life_early():
    ema = EMA(source=nn.Linear(1, 1), half_life_kimg=10.0, rampup=0.05)
    assert ema.decay(images_seen=1_000, batch_size=50) == pytest.approx(0.5)  # half-life 50 images
    assert ema.decay(images_seen=10**7, batch_size=50) == pytest.approx(0.5 ** (50 / 10_000))
    assert EMA(source=nn.Linear(1, 1), half_life_kimg=10.0, rampup=None, enabled=False).decay(
        images_seen=10**7, batch_size=50) == 0.0


def test_ema_copies_buffers():
    source = nn.BatchNorm1d(3)
    ema = EMA(source=source, half_life_kimg=100.0, rampup=None)
    source(torch.randn(8, 3) * 5 + 2)
    ema.update(source, images_seen=8, batch_size=8)
    assert torch.equal(ema.module.running_mean, source.running_mean)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


# DCGAN


@pytest.mark.parametrize("resolution, channels", [(28, 1), (32, 3), (64, 3), (128, 3)])
def test_dcgan_shapes_and_init(resolution, channels):
    G = Generator(z_dim=16, resolution=resolution, channels=channels, width=8)
    D = Discriminator(resolution=resolution, channels=channels, width=8)
    images = G(torch.randn(5, 16))
    assert images.shape == (5, channels, resolution, resolution)
    assert images.abs().max() <= 1.0  # tanh output
    assert D(images).shape == (5,)
    conv_weights = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert conv_weights.std().item() == pytest.approx(0.02, rel=0.1)


def test_dcgan_64_is_the_papers_network():
    G, D = Generator(z_dim=100, resolution=64, channels=3, width=64), Discriminator(resolution=64, channels=3, width=64)
    assert sum(p.numel() for p in G.parameters()) == 3_576_704  # pytorch/examples netG
    assert sum(p.numel() for p in D.parameters()) == 2_765_568  # pytorch/examples netD


def test_dcgan_rejects_unsupported_resolution():
    with pytest.raises(GanrunError, match=r"dataset.resolution in \[28, 32, 64, 128\], got 48"):
        Generator(resolution=48)


# config tree


@pytest.mark.parametrize("group", ["dataset", "model", "loss", "optim", "logger", "trainer", "experiment", "debug"])
def test_every_option_of_every_group_composes_and_builds(group):
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        if group == "dataset" and option == "image_folder":
            overrides.append("dataset.root=/photos")
        if (group, option) in (("dataset", "paired_sr"), ("model", "srresnet"), ("model", "srgan")):
            overrides += ["dataset=paired_sr", "dataset.hr_dir=/photos"]  # SR models read dataset.scale
        if (group, option) in (("model", "pix2pix"), ("model", "cyclegan")):  # translation models read dataset.crop_size
            overrides += ["dataset=paired" if option == "pix2pix" else "dataset=unpaired", "dataset.root=/photos"]
        cfg = compose_train(overrides)
        assert cfg.trainer.batch_size >= 1
        if group in ("model", "loss", "optim"):
            recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
            assert recipe.optimizers and recipe.generator_name in recipe.networks
            for optimizer in recipe.optimizers.values():
                betas = optimizer.param_groups[0].get("betas", ())
                assert type(betas) is tuple and all(type(beta) is float for beta in betas)  # not ListConfig


def test_build_refuses_foreign_targets():
    with pytest.raises(GanrunError, match="os.system.*not allowed"):
        build({"_target_": "os.system", "command": "true"})


def test_wheel_ships_the_config_tree(tmp_path):
    """A plain `pip install .` (not -e) must find conf/: it is packaged as ganrun.conf."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("ganrun-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("ganrun/conf/train.yaml", "ganrun/conf/sample.yaml", "ganrun/conf/eval.yaml", "ganrun/conf/model/dcgan.yaml",
                     "ganrun/conf/dataset/mnist.yaml", "ganrun/conf/experiment/dcgan_celeba64.yaml", "ganrun/cli.py"):
        assert required in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    result = subprocess.run([sys.executable, "-c", "from ganrun.cli import main; main(['train', '--cfg', 'job'])"],
                            capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "_target_: ganrun.models.dcgan.Generator" in result.stdout
    assert str(target) in subprocess.run([sys.executable, "-c", "import ganrun.conf; print(ganrun.conf.__file__)"],
                                         capture_output=True, text=True, env={"PYTHONPATH": str(target)}).stdout
