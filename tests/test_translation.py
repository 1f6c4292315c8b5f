"""Image-to-image translation end to end (#12): pix2pix and CycleGAN trained through the real
config tree on tiny generated folders, bit-identical resume (CycleGAN's history pools included),
`ganrun sample` of folders at any size, and the paired metrics against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import cli, run_train
from PIL import Image
from test_cli import assert_one_line_error
from test_sr import ssim_by_hand

from ganrun.imaging import pad_to_multiple
from ganrun.loop.checkpoint import load_checkpoint
from ganrun.tasks.translation import measure_split, translate_any_size

SIZE = 32

# helpers


def smooth_images(count: int, *, size: int = 36, seed: int = 0) -> list[np.ndarray]:
    """uint8 (size, size, 3) colour gradients with a bright disc: smooth, structured, varied."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        channels = [rng.uniform(40, 200) + rng.uniform(-50, 50) * x + rng.uniform(-50, 50) * y for _ in range(3)]
        image = np.stack(channels, axis=-1)
        cy, cx, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
        image[(y - cy) ** 2 + (x - cx) ** 2 < radius**2] = rng.uniform(180, 255, 3)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def side_by_side(folder: Path, count: int, *, seed: int) -> Path:
    """pix2pix's layout: A | B in one file, B = A's colour inverse."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(smooth_images(count, seed=seed)):
        Image.fromarray(np.concatenate([image, 255 - image], axis=1)).save(folder / f"{index:03d}.png")
    return folder


@pytest.fixture
def facades(tmp_path) -> Path:
    root = tmp_path / "facades"
    side_by_side(root / "train", 6, seed=0)
    side_by_side(root / "test", 3, seed=1)
    return root


@pytest.fixture
def horse2zebra(tmp_path) -> Path:
    root = tmp_path / "horse2zebra"
    for split, seed, count in (("train", 0, 6), ("test", 1, 4)):
        for domain, images in (("A", smooth_images(count, seed=seed)), ("B", [255 - i for i in smooth_images(count + 1, seed=seed + 7)])):
            folder = root / f"{split}{domain}"
            folder.mkdir(parents=True)
            for index, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{domain.lower()}{index:02d}.png")
    return root


def common(**extra: object) -> list[str]:
    overrides = {
        "dataset.load_size": 36,
        "dataset.crop_size": SIZE,
        "model.G.width": 8,
        "model.D.width": 8,
        "trainer.batch_size": 2,
        "trainer.max_steps": 4,
        "trainer.log_every": 1,
        "trainer.sample_every": 2,
        "trainer.ckpt_every": 2,
        "trainer.grid_size": 6,
        "trainer.num_workers": 0,
        "trainer.precision": "fp32",
        # not auto: auto threads follow the machine's load, so two runs compared bit for bit could differ
        "trainer.num_threads": 1,
        "logger.mode": "disabled",
    }
    overrides.update(extra)
    return [f"{key}={value}" for key, value in overrides.items()]


def pix2pix(root: Path, **extra: object) -> list[str]:
    return ["experiment=pix2pix", f"dataset.root={root}", *common(**extra)]


def cyclegan(root: Path, **extra: object) -> list[str]:
    return ["experiment=cyclegan", f"dataset.root={root}", *common(**{"model.G.blocks": 1, "model.pool_size": 3, **extra})]


def assert_same_runs(a_dir: Path, b_dir: Path, *, step: int) -> tuple[dict, dict]:
    a, b = load_checkpoint(a_dir / "checkpoints" / "last.pt"), load_checkpoint(b_dir / "checkpoints" / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == step
    assert a["data"] == b["data"]
    assert all(torch.equal(a["G_ema"][name], b["G_ema"][name]) for name in a["G_ema"])
    for network in ("G", "D"):
        state_a, state_b = a["recipe"]["networks"][network], b["recipe"]["networks"][network]
        assert all(torch.equal(state_a[name], state_b[name]) for name in state_a), network
    name = f"step_{step:07d}.png"
    assert np.array_equal(np.asarray(Image.open(a_dir / "samples" / name)), np.asarray(Image.open(b_dir / "samples" / name)))
    return a, b


def tensors_in(node: object) -> list[torch.Tensor]:
    if isinstance(node, torch.Tensor):
        return [node]
    if isinstance(node, dict):
        return [t for value in node.values() for t in tensors_in(value)]
    if isinstance(node, (list, tuple)):
        return [t for value in node for t in tensors_in(value)]
    return []


# training and resume


def test_pix2pix_trains_logs_every_term_and_resumes_bit_identically(facades, tmp_path):
    full, halves = tmp_path / "full", tmp_path / "halves"
    run_train(pix2pix(facades), full)
    run_train(pix2pix(facades, **{"trainer.max_steps": 2}), halves)
    run_train([f"resume={halves}", "trainer.max_steps=4"], halves)
    checkpoint, _ = assert_same_runs(full, halves, step=4)
    assert checkpoint["config"]["task"]["name"] == "translation"
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    losses = {key: value for row in rows for key, value in row.items() if key.startswith("loss/")}
    assert {"loss/G/adv", "loss/G/l1", "loss/D/real", "loss/D/fake"} <= set(losses)
    assert all(math.isfinite(value) for value in losses.values())
    # grid: rows of input | output | target, 2 rows for grid_size 6
    assert Image.open(full / "samples" / "step_0000004.png").size == (3 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)


def test_cyclegan_resume_is_bit_identical_with_its_history_pools(horse2zebra, tmp_path):
    full, halves = tmp_path / "full", tmp_path / "halves"
    run_train(cyclegan(horse2zebra), full)
    run_train(cyclegan(horse2zebra, **{"trainer.max_steps": 2}), halves)
    interrupted = load_checkpoint(halves / "checkpoints" / "last.pt")
    pools = interrupted["recipe"]["pools"]
    assert {len(pool["images"]) for pool in pools.values()} == {3}  # full after 2 steps of batch 2: swaps happen next
    run_train([f"resume={halves}", "trainer.max_steps=4"], halves)
    a, b = assert_same_runs(full, halves, step=4)
    assert all(torch.equal(x, y) for x, y in zip(tensors_in(a["recipe"]), tensors_in(b["recipe"])))
    assert {"G_AB", "G_BA"} <= {name.split(".")[0] for name in a["G_ema"]}  # the EMA covers both generators
    # grid: rows of A | G_AB(A) | G_BA(G_AB(A)) | B | G_BA(B) | G_AB(G_BA(B))
    assert Image.open(full / "samples" / "step_0000004.png").size[0] == 6 * (SIZE + 2) + 2


# sample


def test_sample_translates_a_folder_at_any_size_both_ways(horse2zebra, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_train(cyclegan(horse2zebra, **{"trainer.max_steps": 1}), run_dir)
    inputs = tmp_path / "photos"
    (inputs / "nested").mkdir(parents=True)
    Image.fromarray(smooth_images(1, size=41)[0][:23]).save(inputs / "odd.png")  # 41 x 23
    Image.fromarray(smooth_images(1, size=50)[0][..., 0]).save(inputs / "nested" / "gray.jpg")  # grayscale, 50 x 50
    (inputs / "broken.png").write_bytes(b"not an image")
    for direction in ("AtoB", "BtoA"):
        out = tmp_path / direction
        code, _, err = cli(capsys, "sample", f"ckpt={run_dir}", f"input_dir={inputs}", f"out_dir={out}",
                           f"direction={direction}", "tile=32", "tile_overlap=8")
        assert code == 0, err
        assert Image.open(out / "odd.png").size == (41, 23)
        assert Image.open(out / "nested" / "gray.png").size == (50, 50)
        assert not (out / "broken.png").exists()
        assert "skipped 1 of 3 images" in err


def test_sample_without_a_folder_draws_the_run_grid_and_pix2pix_refuses_b_to_a(facades, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_train(pix2pix(facades, **{"trainer.max_steps": 1}), run_dir)
    code, out, err = cli(capsys, "sample", f"ckpt={run_dir}", f"out={tmp_path / 'grid.png'}")
    assert code == 0, err
    assert Image.open(tmp_path / "grid.png").size[0] == 3 * (SIZE + 2) + 2
    code, _, err = cli(capsys, "sample", f"ckpt={run_dir}", f"input_dir={facades / 'test'}", f"out_dir={tmp_path / 'x'}",
                       "direction=BtoA")
    assert_one_line_error(code, err, "direction=BtoA", "AtoB")


def test_any_size_inference_pads_to_the_generator_multiple_and_crops_back():
    seen = []
    recipe = SimpleNamespace(size_multiple=16, translate=lambda G, x, direction: seen.append(tuple(x.shape)) or -x)
    images = torch.rand(1, 3, 21, 35) * 2 - 1
    out = translate_any_size(recipe, None, images, direction="AtoB", tile=0, overlap=0)
    assert seen == [(1, 3, 32, 48)] and torch.equal(out, -images)
    assert torch.equal(pad_to_multiple(images, 16)[..., :21, :35], images)
    tiny = torch.rand(1, 3, 5, 5)  # smaller than the padding: replicated, not reflected
    assert pad_to_multiple(tiny, 16).shape[-2:] == (16, 16)


# metrics


def test_paired_metrics_match_hand_computed_values():
    rng = np.random.default_rng(0)
    targets = [torch.from_numpy(image).permute(2, 0, 1).contiguous() for image in smooth_images(3, size=SIZE)]
    inputs = [torch.from_numpy(np.clip(t.numpy().astype(int) + rng.integers(-40, 41, t.shape), 0, 255).astype(np.uint8))
              for t in targets]
    split = SimpleNamespace(paired=True, a=inputs, b=targets, names_a=["x", "y", "z"], names_b=["x", "y", "z"], source="test")
    # a "generator" that halves the distance to mid-gray: outputs are known exactly
    recipe = SimpleNamespace(size_multiple=1, directions=("AtoB",), translate=lambda G, x, direction: x / 2)
    values, rows, _ = measure_split(recipe, None, split, metrics=["psnr", "ssim"], device=torch.device("cpu"),
                                    extractor=None, perceptual=None)

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return 10 * math.log10(255**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))

    def ssim(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([ssim_by_hand(a[c].astype(np.float64), b[c].astype(np.float64)) for c in range(3)]))

    outputs = [np.clip(np.round(((i.numpy() / 127.5 - 1) / 2 + 1) * 127.5), 0, 255).astype(np.uint8) for i in inputs]
    expected = {
        "psnr": np.mean([psnr(o, t.numpy()) for o, t in zip(outputs, targets)]),
        "ssim": np.mean([ssim(o, t.numpy()) for o, t in zip(outputs, targets)]),
        "input_psnr": np.mean([psnr(i.numpy(), t.numpy()) for i, t in zip(inputs, targets)]),
        "input_ssim": np.mean([ssim(i.numpy(), t.numpy()) for i, t in zip(inputs, targets)]),
    }
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-4), key
    assert [row["name"] for row in rows] == ["x", "y", "z"]


def test_eval_of_a_cyclegan_checkpoint_reports_both_directions_beside_the_baseline(horse2zebra, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_train(cyclegan(horse2zebra, **{"trainer.max_steps": 1}), run_dir)
    code, out, err = cli(capsys, "eval", f"ckpt={run_dir}", "metrics=[fid]", "download=false")
    assert code == 0, err
    result = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["last.pt"]
    assert {"fid_AtoB", "fid_BtoA", "fid", "input_fid"} <= set(result["metrics"])
    assert result["metrics"]["fid"] == pytest.approx((result["metrics"]["fid_AtoB"] + result["metrics"]["fid_BtoA"]) / 2)
    assert "G_AB(testA) vs testB" in result["protocol"]["measurement"]
    assert "input: " in out


def test_training_evaluation_keeps_best_by_psnr_with_the_input_baseline_logged(facades, tmp_path):
    run_dir = tmp_path / "run"
    run_train(pix2pix(facades, **{"eval.every": 2, "eval.metrics": "[psnr,ssim]", "eval.best_metric": "psnr"}), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "eval/psnr" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    assert all("eval/input_psnr" in row and "eval/ssim" in row for row in evaluated)
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def test_pix2pix_on_unpaired_data_and_unpaired_psnr_are_one_line_errors(horse2zebra, tmp_path, capsys):
    code, _, err = cli(capsys, "train", *[o for o in pix2pix(horse2zebra) if not o.startswith("dataset.root")],
                       "dataset=unpaired", f"dataset.root={horse2zebra}", "hydra.run.dir=" + str(tmp_path / "a"))
    assert_one_line_error(code, err, "pix2pix", "paired")
    code, _, err = cli(capsys, "train", *cyclegan(horse2zebra), "eval.every=2", "eval.metrics=[psnr]",
                       "eval.best_metric=psnr", "hydra.run.dir=" + str(tmp_path / "b"))
    assert_one_line_error(code, err, "unpaired", "psnr")


def test_a_translation_model_on_a_dataset_of_another_kind_is_a_one_line_error(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "model=pix2pix", "hydra.run.dir=" + str(tmp_path / "run"))
    assert_one_line_error(code, err, "dataset.crop_size", "dataset=mnist", "dataset=paired")
    assert not (tmp_path / "run").exists()
