"""Inpainting masks (ganrun/data/masks.py): hole fractions within mask_ratio, determinism per
(seed, index, epoch), user mask folders, the fixed evaluation buckets, and the holes a user marks
for `ganrun sample` (alpha or a mask by stem). Every fixture is generated here, 8-64 px."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ganrun.data.masks import (
    BUCKETS,
    EvaluationMasks,
    MaskSource,
    UserHoles,
    WarnOnce,
    box_mask,
    evaluation_masks,
    free_form_mask,
    hole_counts,
    hole_fraction,
    holes_from_alpha,
    read_mask,
)
from ganrun.errors import GanrunError

# helpers


def warning_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""
    return [line for line in captured.err.splitlines() if line.strip()]


def save_gray(path: Path, levels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(levels.astype(np.uint8), mode="L").save(path)
    return path


def dihedral(mask: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations by 90 degrees of a square array."""
    turns = [np.rot90(mask, k) for k in range(4)]
    return turns + [turn[:, ::-1] for turn in turns]


def assert_binary(masks: torch.Tensor) -> None:
    assert masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


# generated masks: hole fractions


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", ["free_form", "box", "mix"])
def test_generated_masks_keep_the_hole_fraction_within_mask_ratio(kind, size):
    # (0.8, 0.9) is past what 32 shapes cover at 32 px: the ring-growth fallback must land it
    for low, high in [(0.1, 0.5), (0.3, 0.32), (0.5, 0.6), (0.8, 0.9)]:
        source = MaskSource(kind=kind, mask_ratio=[low, high])
        masks = source.masks_for(range(48), epoch=3, size=size, seed=11)
        assert masks.shape == (48, 1, size, size)
        assert_binary(masks)
        fractions = hole_fraction(masks)
        assert fractions.min() >= low and fractions.max() <= high, (kind, size, low, high, fractions.min(), fractions.max())


def test_hole_counts_are_whole_pixels_inside_the_range():
    assert hole_counts(0.1, 0.5, 1024) == (103, 512)  # ceil(102.4), floor(512)
    assert hole_counts(0.3, 0.3, 1000) == (300, 300)  # 0.3 * 1000 is 300.00000000000006 in floats
    assert hole_counts(0.0, 0.1, 1024, exclusive_low=True) == (1, 102)  # (0, 10 %]: at least one hole
    assert hole_counts(0.1, 0.2, 1000, exclusive_low=True) == (101, 200)
    assert hole_counts(0.3, 0.3, 1024) == (307, 307)  # no whole count in range: the nearest one


def test_unlimited_strokes_follow_the_reference_and_are_never_empty_at_32_px():
    fractions = [free_form_mask(32, np.random.default_rng(seed)).mean() for seed in range(100)]
    assert min(fractions) > 0  # the 2 px brush floor: the 12-40 px brush scaled to 32 px is 1.5-5 px
    assert 0.05 < np.mean(fractions) < 0.35  # 1-3 strokes, not a full image
    boxes = [box_mask(32, np.random.default_rng(seed)).mean() for seed in range(100)]
    assert min(boxes) > 0
    same = free_form_mask(64, np.random.default_rng(5), mask_ratio=(0.2, 0.4))
    assert np.array_equal(same, free_form_mask(64, np.random.default_rng(5), mask_ratio=(0.2, 0.4)))


# determinism


@pytest.mark.parametrize("kind", ["free_form", "box", "mix"])
def test_masks_depend_on_seed_index_and_epoch_only(kind):
    source = MaskSource(kind=kind, mask_ratio=(0.1, 0.5))
    batch = source.masks_for([3, 7, 9], epoch=2, size=32, seed=5)
    assert torch.equal(batch, source.masks_for(torch.tensor([3, 7, 9]), epoch=2, size=32, seed=5))
    # an image's mask does not depend on its batch (a resumed run starts mid-epoch)
    assert torch.equal(batch[1], source.masks_for([7], epoch=2, size=32, seed=5)[0])
    assert torch.equal(batch[1], MaskSource(kind=kind, mask_ratio=(0.1, 0.5)).masks_for([11, 7], 2, size=32, seed=5)[1])
    next_epoch = source.masks_for([3, 7, 9], epoch=3, size=32, seed=5)
    other_seed = source.masks_for([3, 7, 9], epoch=2, size=32, seed=6)
    for index in range(3):
        assert not torch.equal(batch[index], next_epoch[index])
        assert not torch.equal(batch[index], other_seed[index])
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(batch[1], batch[2])


def test_mix_is_one_coin_then_the_chosen_kinds_own_mask():
    masks = MaskSource(kind="mix", mask_ratio=(0.1, 0.5)).masks_for(range(24), epoch=1, size=32, seed=0)
    kinds = []
    for index, mask in enumerate(masks):
        rng = np.random.default_rng([0, index, 1])
        kinds.append("free_form" if rng.random() < 0.5 else "box")
        draw = free_form_mask if kinds[-1] == "free_form" else box_mask
        assert np.array_equal(mask[0].numpy().astype(bool), draw(32, rng, mask_ratio=(0.1, 0.5)))
    assert set(kinds) == {"free_form", "box"}


# folder masks


@pytest.fixture
def mask_folder(tmp_path) -> Path:
    folder = tmp_path / "masks"
    top_left = np.zeros((20, 30), np.uint8)
    top_left[:10, :15] = 255  # a quarter, at another size and aspect than the images
    save_gray(folder / "quarter.png", top_left)
    graded = np.zeros((8, 8), np.uint8)
    graded[:, :4] = 200  # >= 128: hole
    graded[:, 4:6] = 100  # < 128: kept
    save_gray(folder / "sub" / "graded.png", graded)
    save_gray(folder / "graded2.png", np.full((8, 8), 130, np.uint8))  # all hole, not binary
    save_gray(folder / "blank.png", np.zeros((8, 8), np.uint8))  # marks nothing
    return folder


def test_folder_masks_are_resized_thresholded_and_transformed(mask_folder, capsys):
    source = MaskSource(kind="folder", mask_dir=mask_folder)
    lines = warning_lines(capsys)
    assert len(source) == 3
    graded = [line for line in lines if "not binary" in line]
    assert len(graded) == 1 and "2 of 4 masks" in graded[0] and "128" in graded[0]  # once, for the folder
    assert sum("mark no hole" in line for line in lines) == 1

    quarter = np.zeros((16, 16), bool)
    quarter[:8, :8] = True
    graded_mask = np.zeros((16, 16), bool)
    graded_mask[:, :8] = True
    expected = {"quarter": dihedral(quarter), "graded": dihedral(graded_mask), "all": [np.ones((16, 16), bool)]}
    masks = source.masks_for(range(64), epoch=0, size=16, seed=1)
    assert_binary(masks)
    seen = set()
    for mask in masks[:, 0].numpy().astype(bool):
        matches = [(name, index) for name, options in expected.items() for index, option in enumerate(options)
                   if np.array_equal(mask, option)]
        assert matches, "a folder mask is not a flip/rotation of a nearest-resized user mask"
        seen.update(matches)
    assert {name for name, _ in seen} == {"quarter", "graded", "all"}
    assert len({index for name, index in seen if name == "quarter"}) >= 3  # random flips and rotations happen
    assert "mask_ratio not applied" in source.describe()


def test_folder_masks_bad_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    save_gray(tmp_path / "blank" / "a.png", np.zeros((8, 8), np.uint8))
    cases = {
        None: "dataset.mask_dir is not set",
        str(tmp_path / "nowhere"): "is not a folder",
        str(tmp_path / "empty"): "holds no images",
        str(tmp_path / "blank"): "has no usable mask",
    }
    for mask_dir, words in cases.items():
        with pytest.raises(GanrunError) as error:
            MaskSource(kind="folder", mask_dir=mask_dir)
        assert words in str(error.value) and "\n" not in str(error.value)


# configuration errors


@pytest.mark.parametrize("value", [[0, 0.5], [0.6, 0.2], [0.1, 1.0], 0.3, [0.1], [0.1, 0.2, 0.3], "0.1,0.5", [True, 0.5],
                                   [-0.1, 0.5], [0.1, float("nan")]])
def test_bad_mask_ratio_is_a_one_line_error_with_the_fix(value):
    with pytest.raises(GanrunError) as error:
        MaskSource(kind="free_form", mask_ratio=value)
    message = str(error.value)
    assert "\n" not in message and "dataset.mask_ratio" in message and repr(value) in message
    assert "dataset.mask_ratio=[0.1,0.5]" in message


def test_mask_ratio_from_the_config_and_bad_kinds():
    source = MaskSource(kind="box", mask_ratio=OmegaConf.create({"r": [0.2, 0.4]}).r)  # a ListConfig, as Hydra passes it
    assert source.mask_ratio == (0.2, 0.4) and "[0.2, 0.4]" in source.describe()
    with pytest.raises(GanrunError, match="dataset.masks must be one of free_form, box, mix, folder, got 'strokes'"):
        MaskSource(kind="strokes")
    with pytest.raises(GanrunError, match="evaluation mask kind"):
        evaluation_masks(2, size=32, kind="folder")


# the fixed evaluation set


def test_evaluation_buckets_hold_masks_in_range_and_are_the_same_every_call(tmp_path):
    for kind in ("free_form", "box"):
        first = evaluation_masks(6, size=32, seed=3, kind=kind)
        assert list(first) == ["0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%"]
        for (low, high), (name, masks) in zip(BUCKETS, first.items()):
            assert masks.shape == (6, 1, 32, 32)
            assert_binary(masks)
            fractions = hole_fraction(masks)
            assert (fractions > low).all() and (fractions <= high).all(), (kind, name, fractions)
        again = evaluation_masks(6, size=32, seed=3, kind=kind)
        assert all(torch.equal(first[name], again[name]) for name in first)
        other = evaluation_masks(6, size=32, seed=4, kind=kind)
        assert not torch.equal(first["20-30%"], other["20-30%"])
    protocol = first.describe()
    assert "seed 3" in protocol and "6 per hole-size bucket" in protocol and "0-10%" in protocol and "1 = hole" in protocol

    loaded = EvaluationMasks.load(first.save(tmp_path / "eval_masks"))
    assert loaded.describe() == first.describe()
    assert all(torch.equal(loaded[name], first[name]) for name in first)
    with pytest.raises(GanrunError, match="not a saved evaluation mask set"):
        EvaluationMasks.load(tmp_path)


def test_evaluation_masks_at_64_px():
    masks = evaluation_masks(4, size=64, seed=0)
    for (low, high), bucket in zip(BUCKETS, masks.values()):
        fractions = hole_fraction(bucket)
        assert (fractions > low).all() and (fractions <= high).all()


# a user's holes: alpha, masks by stem


def write_rgba(path: Path, alpha: np.ndarray) -> np.ndarray:
    colour = np.random.default_rng(0).integers(0, 256, (*alpha.shape, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([colour, alpha]).astype(np.uint8), mode="RGBA").save(path)
    return colour


def test_holes_from_alpha_reads_transparent_pixels(tmp_path):
    alpha = np.full((12, 16), 255, np.uint8)
    alpha[2:5, 3:9] = 0
    alpha[7, 7] = 127  # still a hole
    alpha[8, 8] = 128  # not a hole
    colour = write_rgba(tmp_path / "damaged.png", alpha)
    image, holes = holes_from_alpha(tmp_path / "damaged.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 16)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), colour)  # the colour as stored, holes included
    assert holes.dtype == torch.bool and holes.shape == (1, 12, 16)
    assert np.array_equal(holes[0].numpy(), alpha < 128)

    Image.fromarray(colour).save(tmp_path / "plain.png")
    assert holes_from_alpha(tmp_path / "plain.png")[1] is None
    write_rgba(tmp_path / "opaque.png", np.full((12, 16), 0, np.uint8))  # constant alpha: not a mask
    assert holes_from_alpha(tmp_path / "opaque.png")[1] is None
    write_rgba(tmp_path / "soft.png", np.where(alpha < 128, 200, 255).astype(np.uint8))  # alpha, but no pixel < 128
    assert holes_from_alpha(tmp_path / "soft.png")[1] is None


def test_read_mask_resizes_other_sizes_with_a_warning_and_thresholds_once(tmp_path, capsys):
    small = np.zeros((4, 4), np.uint8)
    small[:2, :2] = 255
    save_gray(tmp_path / "a.png", small)
    mask = read_mask(tmp_path / "a.png", size_hw=(8, 8))
    expected = np.zeros((8, 8), bool)
    expected[:4, :4] = True
    assert mask.dtype == torch.bool and mask.shape == (1, 8, 8) and np.array_equal(mask[0].numpy(), expected)
    lines = warning_lines(capsys)
    assert len(lines) == 1 and "4x4" in lines[0] and "8x8" in lines[0] and "nearest" in lines[0]
    assert "aspect" not in lines[0]

    read_mask(tmp_path / "a.png", size_hw=(8, 16))
    assert "aspect ratios differ" in warning_lines(capsys)[0]

    once = WarnOnce()
    for name in ("g1", "g2"):
        save_gray(tmp_path / f"{name}.png", np.where(expected, 180, 60))
        assert np.array_equal(read_mask(tmp_path / f"{name}.png", size_hw=(8, 8), once=once)[0].numpy(), expected)
    lines = warning_lines(capsys)
    assert len(lines) == 1 and "not binary" in lines[0] and "g1.png" in lines[0]

    save_gray(tmp_path / "blank.png", np.full((8, 8), 127, np.uint8))
    assert read_mask(tmp_path / "blank.png", size_hw=(8, 8), once=once) is None  # marks nothing


def test_user_holes_report_each_problem_per_file(tmp_path, capsys):
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[:3] = 0
    write_rgba(photos / "transparent.png", alpha)
    colour = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in ("with_mask", "blank_mask", "nothing", "jpeg_mask"):
        Image.fromarray(colour).save(photos / f"{name}.png")
    (photos / "broken.png").write_bytes(b"not an image")
    drawn = np.zeros((8, 8), np.uint8)
    drawn[4:, 4:] = 255
    save_gray(masks / "with_mask.png", drawn)
    save_gray(masks / "blank_mask.png", np.zeros((8, 8), np.uint8))
    Image.fromarray(drawn).save(masks / "jpeg_mask.jpg", quality=60)  # JPEG: not binary any more

    holes = UserHoles(mask_dir=masks)
    found = {path.stem: holes.read(path) for path in sorted(photos.iterdir())}
    assert found["transparent"].ok and found["transparent"].source == "alpha"
    assert np.array_equal(found["transparent"].mask[0].numpy(), alpha < 128)
    assert found["with_mask"].ok and np.array_equal(found["with_mask"].mask[0].numpy(), drawn >= 128)
    assert found["jpeg_mask"].ok and found["jpeg_mask"].mask.sum() > 0
    assert "marks nothing" in found["blank_mask"].problem
    assert "no holes to fill" in found["nothing"].problem and "no mask named nothing" in found["nothing"].problem
    assert "could not be read" in found["broken"].problem and found["broken"].image is None
    for result in found.values():
        assert (result.problem is None) == (result.mask is not None)
        assert result.problem is None or "\n" not in result.problem
    assert sum("not binary" in line for line in warning_lines(capsys)) == 1

    without_dir = UserHoles().read(photos / "nothing.png")
    assert "it has no transparent pixels" in without_dir.problem and without_dir.image.shape == (3, 8, 8)
    with pytest.raises(GanrunError, match="mask_dir='.*nowhere' is not a folder"):
        UserHoles(mask_dir=tmp_path / "nowhere")


def test_mask_file_and_alpha_holes_are_united(tmp_path):
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[0] = 0
    write_rgba(tmp_path / "both.png", alpha)
    drawn = np.zeros((8, 8), np.uint8)
    drawn[-1] = 255
    save_gray(tmp_path / "masks" / "both.png", drawn)
    result = UserHoles(mask_dir=tmp_path / "masks").read(tmp_path / "both.png")
    assert result.ok and "alpha" in result.source
    assert np.array_equal(result.mask[0].numpy(), (alpha < 128) | (drawn >= 128))


# speed


def test_generation_speed():
    timings = {}
    for kind in ("free_form", "box"):
        source = MaskSource(kind=kind, mask_ratio=(0.1, 0.5))
        for size in (64, 256):
            start = time.perf_counter()
            source.masks_for(range(64), epoch=0, size=size, seed=0)
            timings[kind, size] = (time.perf_counter() - start) / 64
    print(", ".join(f"{kind} {size} px: {seconds * 1e3:.2f} ms/mask" for (kind, size), seconds in timings.items()))
    assert timings["free_form", 64] * 64 < 2.0  # 64 masks of 64 px in well under a second, even on a busy CPU
