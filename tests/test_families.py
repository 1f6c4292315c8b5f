"""Every model x loss pair a config allows trains through the one loop; every other pair is a
one-line error at build time, before any data is read or any file is written."""

from __future__ import annotations

import json
import math

import pytest
from conftest import compose_train, run_train, tiny_overrides

from ganrun.config import build
from ganrun.errors import GanrunError

MODELS = ["mlp", "dcgan", "wgan", "sngan", "sagan", "bigan", "vae"]
LOSSES = ["minimax", "bce", "lsgan", "hinge", "wgan", "wgan_gp"]
# Tiny networks; sngan/sagan at 32x32 (their smallest native size), attention at 16x16.
SIZES = {
    "mlp": {"model.G.hidden": 16, "model.D.hidden": 16},
    "dcgan": {"model.G.width": 4, "model.D.width": 4},
    "wgan": {"model.G.width": 4, "model.D.width": 4},
    "sngan": {"model.G.width": 4, "model.D.width": 4, "dataset.resolution": 32},
    "sagan": {"model.G.width": 4, "model.D.width": 4, "dataset.resolution": 32, "model.G.attention_resolution": 16},
    "bigan": {"model.G.width": 4, "model.E.width": 4, "model.D.width": 4, "model.D.hidden": 16},
    "vae": {"model.G.width": 4, "model.E.width": 4},
}
# What the recipes refuse, by design: the VAE has no adversary; BiGAN's joint D(x, z) has no
# image-only interpolates for a gradient penalty.
REFUSED = {("vae", loss) for loss in LOSSES if loss != "bce"} | {("bigan", "wgan_gp")}


def overrides_for(model: str, loss: str, data_root) -> list[str]:
    base = [o for o in tiny_overrides(data_root, **{"trainer.max_steps": 2, "trainer.ckpt_every": 2})
            if not o.startswith(("model.G.width", "model.D.width"))]
    return [f"model={model}", f"loss={loss}", *base, *(f"{key}={value}" for key, value in SIZES[model].items())]


@pytest.mark.parametrize("model", MODELS)
def test_every_allowed_model_and_loss_trains_two_steps(model, mnist_root, tmp_path):
    for loss in LOSSES:
        overrides = overrides_for(model, loss, mnist_root)
        if (model, loss) in REFUSED:
            cfg = compose_train(overrides)
            with pytest.raises(GanrunError) as error:
                build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
            assert len(str(error.value).splitlines()) == 1 and "loss" in str(error.value)
            continue
        run_dir = tmp_path / f"{model}-{loss}"
        result = run_train(overrides, run_dir)
        assert result.step == 2, (model, loss)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = {key: value for row in rows for key, value in row.items() if key.startswith("loss/")}
        assert losses and all(math.isfinite(value) for value in losses.values()), (model, loss, losses)
        assert (run_dir / "samples" / "step_0000002.png").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
