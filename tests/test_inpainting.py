"""Inpainting end to end (#13): the masked data stream (masks by index and epoch, resume, the
held-out split), training through the real config tree with bit-identical resume, `ganrun sample`
of damaged folders (alpha and mask folders, per-file problems, any size), the hole-only metrics
against hand-computed values, `ganrun eval` per hole-size bucket beside the biharmonic baseline,
restore_faces with the new degradations, and bad input as one-line errors. Fixtures: 32 px
generated images."""

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
from test_translation import assert_same_runs, smooth_images

from ganrun.data.degrade import Degradation
from ganrun.data.images import ImageData
from ganrun.data.masked import masked_data
from ganrun.data.masks import BUCKETS, EvaluationMasks, MaskSource, hole_fraction
from ganrun.loop.checkpoint import load_checkpoint
from ganrun.tasks.inpainting import image_values, inpaint_any_size

SIZE = 32

# helpers


def write_folder(folder: Path, count: int, *, size: int = SIZE, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(smooth_images(count, size=size, seed=seed)):
        Image.fromarray(image).save(folder / f"face_{index:02d}.png")
    return folder


@pytest.fixture
def faces(tmp_path) -> Path:
    return write_folder(tmp_path / "faces", 8)


def inpaint_run(root: Path, **extra: object) -> list[str]:
    overrides = {
        "dataset.root": root,
        "dataset.resolution": SIZE,
        "dataset.holdout": 2,
        "model.G.width": 4,
        "model.D.width": 8,
        "trainer.batch_size": 2,
        "trainer.max_steps": 4,
        "trainer.log_every": 1,
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
    return ["task=inpainting", "model=inpaint", "dataset=image_folder", *[f"{key}={value}" for key, value in overrides.items()]]


def tiny_data(count: int = 10) -> ImageData:
    """In-memory images whose first pixel is their index: which image a batch holds is readable."""
    images = torch.from_numpy(np.stack(smooth_images(count, size=SIZE))).permute(0, 3, 1, 2).contiguous()
    images[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
    return ImageData(source="tiny", images=images, resolution=SIZE, channels=3)


def to_index(batch_images: torch.Tensor) -> list[int]:
    return [round(float(value)) for value in (batch_images[:, 0, 0, 0] + 1) * 127.5]


def write_rgba(path: Path, colour: np.ndarray, alpha: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.dstack([colour, alpha]), mode="RGBA").save(path)
    return path


# the data stream


def test_masks_follow_index_and_epoch_and_a_resumed_stream_continues_exactly():
    data = masked_data(tiny_data(10), masks="free_form", mask_ratio=[0.2, 0.3], holdout=2)
    assert data.kind == "masked" and len(data) == 8 and data.test_split().images.shape == (2, 3, SIZE, SIZE)
    settings = dict(batch_size=4, seed=3, device=torch.device("cpu"), num_workers=0)
    stream = data.batches(**settings)
    source = MaskSource(kind="free_form", mask_ratio=[0.2, 0.3])
    orders = data.batches(**settings).stream  # the image stream's epoch orders
    served = []
    for number in range(5):  # 2 batches per epoch: the stream rolls over twice
        epoch = number // 2
        indices = orders.batch_indices(epoch)[number % 2]
        drawn = next(stream)
        assert to_index(drawn["image"]) == indices.tolist()
        assert max(indices.tolist()) < 8  # the held-out images (8, 9) are never served
        assert torch.equal(drawn["mask"], source.masks_for(indices, epoch, size=SIZE, seed=3))
        fractions = hole_fraction(drawn["mask"])
        assert ((fractions >= 0.2) & (fractions <= 0.3)).all()
        served.append(drawn)
    resumed = data.batches(**settings)
    halfway = data.batches(**settings)
    for _ in range(3):
        next(halfway)
    resumed.load_state_dict(halfway.state_dict())
    assert halfway.state_dict() == {"epoch": 1, "position": 1}
    for expected in served[3:]:
        again = next(resumed)
        assert torch.equal(again["image"], expected["image"]) and torch.equal(again["mask"], expected["mask"])
    grid = data.grid_examples(8)
    assert torch.equal(grid["real"], data.test_split().images.float() / 127.5 - 1)  # only the 2 held-out images
    assert torch.equal(grid["mask"], masked_data(tiny_data(10), mask_ratio=[0.2, 0.3], holdout=2).grid_masks(2))


# compositing at any size


def test_any_size_fill_pads_image_and_mask_together_and_keeps_valid_pixels_bit_exact():
    seen = []

    def inpaint(G, images, masks):
        seen.append((tuple(images.shape), bool(masks.sum() > 0)))
        return masks * torch.rand_like(images) * 2 - masks + (1 - masks) * images  # anything in the hole

    recipe = SimpleNamespace(size_multiple=4, inpaint=inpaint)
    image = torch.from_numpy(smooth_images(1, size=37)[0][:23]).permute(2, 0, 1)[None].contiguous()  # 23 x 37
    mask = torch.zeros(1, 1, 23, 37)
    mask[..., 2:9, 3:12] = 1  # one hole, top left: the other tiles skip G
    filled = inpaint_any_size(recipe, None, image, mask, tile=16, overlap=4)
    assert filled.dtype == torch.uint8 and filled.shape == image.shape
    assert torch.equal(filled[..., mask[0, 0] == 0], image[..., mask[0, 0] == 0])
    assert not torch.equal(filled[..., mask[0, 0] == 1], image[..., mask[0, 0] == 1])
    assert all(shape[-1] % 4 == 0 and shape[-2] % 4 == 0 for shape, _ in seen) and all(has for _, has in seen)
    assert len(seen) == 1  # 6 tiles of 16 px, one with holes


# training


def test_two_step_training_logs_every_term_and_resumes_bit_identically_with_its_best_checkpoint(faces, tmp_path):
    full, halves = tmp_path / "full", tmp_path / "halves"
    evaluation = {"eval.every": 2, "eval.metrics": "[psnr_hole,l1_hole]", "eval.best_metric": "psnr_hole",
                  "dataset.in_memory": "false"}  # streamed files: the unit test above covers images in memory
    run_train(inpaint_run(faces, **evaluation), full)
    run_train(inpaint_run(faces, **{**evaluation, "trainer.max_steps": 2}), halves)
    run_train([f"resume={halves}", "trainer.max_steps=4"], halves)
    checkpoint, resumed = assert_same_runs(full, halves, step=4)
    assert checkpoint["config"]["task"]["name"] == "inpainting"
    assert checkpoint["config"]["dataset"]["masks"] == "free_form"
    assert "6 train / 2 held-out" in checkpoint["config"]["dataset"]["source"]
    assert checkpoint["eval"] == resumed["eval"] == {"best": checkpoint["eval"]["best"], "best_step": 2}
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    losses = {key: value for row in rows for key, value in row.items() if key.startswith("loss/")}
    assert {"loss/G/l1_hole", "loss/G/l1_valid", "loss/G/adv", "loss/D/real", "loss/D/fake"} <= set(losses)
    assert all(math.isfinite(value) for value in losses.values())
    evaluated = [row for row in rows if "eval/psnr_hole" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    assert all(row["eval/biharmonic_psnr_hole"] == evaluated[0]["eval/biharmonic_psnr_hole"] for row in evaluated)
    assert (full / "checkpoints" / "best.pt").is_file()
    # grid rows: damaged | mask | output | original, 2 rows for grid_size 8
    assert Image.open(full / "samples" / "step_0000004.png").size == (4 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)


# sample


def test_sample_fills_alpha_holes_and_mask_folder_holes_at_any_size_and_reports_each_problem(faces, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_train(inpaint_run(faces, **{"trainer.max_steps": 1}), run_dir)
    damaged, masks = tmp_path / "damaged", tmp_path / "masks"
    colour = smooth_images(1, size=45, seed=5)[0][:27]  # 45 x 27: not a multiple of the generator's 4
    alpha = np.full(colour.shape[:2], 255, np.uint8)
    alpha[5:15, 10:30] = 0
    write_rgba(damaged / "nested" / "holes.png", colour, alpha)
    Image.fromarray(colour).save(damaged / "masked.jpg", quality=95)
    drawn = np.zeros(colour.shape[:2], np.uint8)
    drawn[20:, :9] = 255
    masks.mkdir()
    Image.fromarray(drawn).save(masks / "masked.png")
    Image.fromarray(colour).save(damaged / "blank.png")
    Image.fromarray(np.zeros_like(drawn)).save(masks / "blank.png")  # marks nothing
    Image.fromarray(colour).save(damaged / "plain.png")  # no alpha, no mask
    (damaged / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "repaired"
    code, stdout, err = cli(capsys, "sample", f"ckpt={run_dir}", f"input_dir={damaged}", f"out_dir={out}",
                            f"mask_dir={masks}", "tile=16", "tile_overlap=4")
    assert code == 0, err
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*.png")) == ["masked.png", "nested/holes.png"]
    filled = np.asarray(Image.open(out / "nested" / "holes.png"))
    assert filled.shape == (27, 45, 3)  # RGB, no alpha, same size
    assert np.array_equal(filled[alpha >= 128], colour[alpha >= 128])  # valid pixels bit for bit
    jpeg = np.asarray(Image.open(damaged / "masked.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "masked.png"))[drawn < 128], jpeg[drawn < 128])
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 3 and "Traceback" not in err
    assert any("blank.png marks nothing" in line for line in skipped)
    assert any("plain.png has no holes to fill" in line for line in skipped)
    assert any("broken.png could not be read" in line for line in skipped)
    assert "wrote 2 images" in stdout and "skipped 3" in stdout

    code, stdout, err = cli(capsys, "sample", f"ckpt={run_dir}", f"out={tmp_path / 'grid.png'}")
    assert code == 0, err
    assert Image.open(tmp_path / "grid.png").size[0] == 4 * (SIZE + 2) + 2  # damaged | mask | output | original
    code, _, err = cli(capsys, "sample", f"ckpt={run_dir}", f"input_dir={damaged}", f"out_dir={out}",
                       f"mask_dir={tmp_path / 'nowhere'}")
    assert_one_line_error(code, err, "mask_dir=", "nowhere", "not a folder")


# metrics


def test_hole_only_metrics_match_hand_computed_values():
    from numpy.lib.stride_tricks import sliding_window_view

    rng = np.random.default_rng(0)
    original = smooth_images(1, size=SIZE)[0].transpose(2, 0, 1).astype(np.int64)
    hole = np.zeros((SIZE, SIZE), bool)
    hole[10:20, 12:24] = True  # 120 pixels, >= 5 px from every side
    output = original.copy()
    output[:, hole] = np.clip(output[:, hole] + rng.integers(-60, 61, (3, hole.sum())), 0, 255)
    values = image_values(torch.from_numpy(output.astype(np.uint8)), torch.from_numpy(original.astype(np.uint8)),
                          torch.from_numpy(hole))

    difference = (output - original).astype(np.float64)
    assert values["l1_hole"] == pytest.approx(np.abs(difference[:, hole]).mean() / 255, rel=1e-12)
    assert values["l1"] == pytest.approx(np.abs(difference).mean() / 255, rel=1e-12)
    floor = 255**2 * 1e-8  # the MSE floor that keeps an exact fill at 80 dB instead of inf
    assert values["psnr_hole"] == pytest.approx(10 * math.log10(255**2 / ((difference[:, hole] ** 2).mean() + floor)),
                                                rel=1e-12)
    assert values["psnr"] == pytest.approx(10 * math.log10(255**2 / ((difference**2).mean() + floor)), rel=1e-12)
    # the hole's difference spread over the whole image: whole-image PSNR is higher by 10 log10(pixels / hole)
    assert values["psnr"] - values["psnr_hole"] == pytest.approx(10 * math.log10(SIZE * SIZE / hole.sum()), abs=1e-4)
    exact = image_values(torch.from_numpy(original.astype(np.uint8)), torch.from_numpy(original.astype(np.uint8)),
                         torch.from_numpy(hole))
    assert exact["psnr"] == pytest.approx(80.0) and exact["psnr_hole"] == pytest.approx(80.0)

    coords = np.arange(11) - 5
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Wang et al. 2004 per pixel: the 11x11 Gaussian window centred on it, reflect-padded."""
        def filt(image: np.ndarray) -> np.ndarray:
            return (sliding_window_view(np.pad(image, 5, mode="reflect"), (11, 11)) * window).sum(axis=(-1, -2))

        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        mu_a, mu_b = filt(a), filt(b)
        var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
        return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))

    maps = np.mean([ssim_map(output[c].astype(np.float64), original[c].astype(np.float64)) for c in range(3)], axis=0)
    assert values["ssim_hole"] == pytest.approx(maps[hole].mean(), abs=1e-6)
    assert values["ssim"] == pytest.approx(maps[5:-5, 5:-5].mean(), abs=1e-6)
    assert values["ssim_hole"] < values["ssim"] < 1


def test_eval_reports_every_bucket_beside_the_biharmonic_baseline_on_a_stored_mask_set(faces, tmp_path, capsys,
                                                                                       monkeypatch):
    run_dir = tmp_path / "run"
    run_train(inpaint_run(faces, **{"trainer.max_steps": 1}), run_dir)
    compared = []

    def distance_of_means(fake, real, *, metrics, kid_subset_size):
        """FID's first term only: torch-fidelity's 2048x2048 eigendecomposition takes 2 s per FID
        on this CPU, and eval computes 14 (6 buckets and overall, GAN and baseline)."""
        compared.append((len(fake["2048"]), len(real["2048"])))
        return {"fid": float((fake["2048"].mean(0) - real["2048"].mean(0)).pow(2).sum())}

    monkeypatch.setattr("ganrun.tasks.inpainting.compute_metrics", distance_of_means)
    code, out, err = cli(capsys, "eval", f"ckpt={run_dir}", "metrics=[fid]", "download=false")
    assert code == 0, err
    assert compared == [(2, 2)] * 12 + [(12, 2)] * 2  # per bucket: 2 outputs vs the 2 originals; overall: all 12
    result = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["last.pt"]
    names = [f"{round(low * 100)}-{round(high * 100)}%" for low, high in BUCKETS]
    assert list(result["buckets"]) == names
    keys = {"l1", "l1_hole", "psnr", "psnr_hole", "ssim", "ssim_hole", "fid"}
    for (low, high), name in zip(BUCKETS, names):
        entry = result["buckets"][name]
        assert keys <= set(entry["gan"]) and keys <= set(entry["biharmonic"]) and entry["images"] == 2
        assert low < entry["hole_fraction"] <= high
        assert entry["biharmonic"]["l1"] < entry["biharmonic"]["l1_hole"]  # valid pixels are exact: no error there
        assert name in out
    assert keys <= set(result["metrics"]) and keys <= set(result["baseline"]["metrics"])
    stored = EvaluationMasks.load(result["protocol"]["mask_set"]["folder"])  # the set the numbers were measured on
    assert stored.kind == "free_form" and stored.count_per_bucket == 2 and stored.size == SIZE
    for (low, high), name in zip(BUCKETS, names):
        assert ((hole_fraction(stored[name]) > low) & (hole_fraction(stored[name]) <= high)).all()
    assert "biharmonic" in result["protocol"]["measurement"] and "psnr_hole" in result["protocol"]["measurement"]
    assert "GAN / biharmonic" in out and "masks: evaluation masks: free_form" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"eval/psnr_hole", "eval/biharmonic_psnr_hole"} <= set(rows[-1])


def test_training_evaluation_without_lpips_weights_keeps_best_by_fid_and_says_so(monkeypatch, capsys):
    from omegaconf import OmegaConf

    from ganrun.config import TrainEvalConfig
    from ganrun.tasks.inpainting import InpaintingEvaluator

    monkeypatch.setattr("ganrun.tasks.inpainting.perceptual_distance_or_reason",
                        lambda **_: (None, "LPIPS not computed: no AlexNet weights at /nowhere"))
    settings = OmegaConf.merge(OmegaConf.structured(TrainEvalConfig), {"metrics": ["lpips", "psnr_hole"], "best_metric": "lpips"})
    data = masked_data(tiny_data(14), holdout=12)
    evaluator = InpaintingEvaluator(settings=settings, split=data.test_split(), device=torch.device("cpu"))
    assert evaluator.metrics == ["psnr_hole", "fid"] and evaluator.settings.best_metric == "fid"
    assert "LPIPS not computed" in capsys.readouterr().err and not evaluator.higher_is_better("fid")
    fractions = hole_fraction(evaluator.masks)  # one fixed mask per held-out image, the buckets in turn
    assert all(low < float(fraction) <= high for fraction, (low, high) in zip(fractions, BUCKETS * 2))


# restoration


def test_motion_blur_and_scratches_are_functions_of_each_images_generator():
    images = torch.from_numpy(np.stack(smooth_images(3, size=SIZE))).permute(0, 3, 1, 2).contiguous()
    chain = Degradation([{"name": "motion_blur", "length": [5, 7]}, {"name": "scratches", "count": [2, 3]}], channels=3)
    made = chain(images, [np.random.default_rng([0, index, 0]) for index in range(3)])
    alone = chain(images[1:2], [np.random.default_rng([0, 1, 0])])
    assert torch.equal(made[1:2], alone)  # not a function of the rest of the batch
    assert not torch.equal(made, chain(images, [np.random.default_rng([0, index, 1]) for index in range(3)]))
    gray = torch.full((2, 3, SIZE, SIZE), 128, dtype=torch.uint8)
    scratched = Degradation({"name": "scratches", "count": 3}, channels=3)(gray, [np.random.default_rng(i) for i in range(2)])
    marked = (scratched != 128).any(1)
    assert 0 < marked.float().mean() < 0.2  # thin strokes
    assert torch.equal(scratched[:, 0], scratched[:, 2])  # gray: the same level in every channel


def test_restore_faces_composes_and_trains_a_step_on_degraded_faces(tmp_path):
    faces = write_folder(tmp_path / "faces", 6, size=40)
    run_dir = tmp_path / "run"
    run_train(["experiment=restore_faces", f"dataset.b_dir={faces}", "dataset.holdout=2", "dataset.load_size=36",
               f"dataset.crop_size={SIZE}", "model.G.width=8", "model.D.width=8", "trainer.batch_size=2",
               "trainer.max_steps=1", "trainer.num_workers=0", "trainer.grid_size=3", "logger.mode=disabled"], run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["config"]["task"]["name"] == "translation"
    source = checkpoint["config"]["dataset"]["source"]
    assert "noise" in source and "motion_blur" in source and "jpeg" in source and "scratches" in source


# bad input


@pytest.mark.parametrize("ratio, shown", [("[0.5,0.2]", "[0.5, 0.2]"), ("[0.1,1.0]", "[0.1, 1.0]"), ("0.3", "0.3")])
def test_mask_ratio_outside_zero_one_is_a_one_line_error(faces, capsys, ratio, shown):
    code, _, err = cli(capsys, "train", *inpaint_run(faces, **{"dataset.mask_ratio": ratio}))
    assert_one_line_error(code, err, "dataset.mask_ratio", shown, "0 < low <= high < 1")


def test_missing_or_empty_mask_folders_are_one_line_errors(faces, tmp_path, capsys):
    code, _, err = cli(capsys, "train", *inpaint_run(faces, **{"dataset.masks": "folder",
                                                               "dataset.mask_dir": tmp_path / "nowhere"}))
    assert_one_line_error(code, err, "dataset.mask_dir=", "nowhere", "not a folder")
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "train", *inpaint_run(faces, **{"dataset.masks": "folder",
                                                               "dataset.mask_dir": tmp_path / "empty"}))
    assert_one_line_error(code, err, "dataset.mask_dir=", "empty", "holds no images")
    code, _, err = cli(capsys, "train", *inpaint_run(faces, **{"dataset.holdout": 8}))
    assert_one_line_error(code, err, "dataset.holdout=8", "leaves no training images")
