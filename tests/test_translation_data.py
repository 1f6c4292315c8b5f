"""Image-to-image translation data (ganrun/data/translation.py, ganrun/data/degrade.py): the three
paired layouts, unpaired domains, aligned crops, input makers, held-out splits, the batch streams'
resume. Tiny generated images only (16-40 px)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ganrun.config import build
from ganrun.data import load_paired, load_unpaired
from ganrun.data.degrade import LUMA, MAKERS, Degradation
from ganrun.data.translation import PairedData, TestSplit, UnpairedData
from ganrun.errors import GanrunError
from ganrun.imaging import to_uint8

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]

# helpers


def noise_image(seed: int, size: tuple[int, int] = (24, 24), channels: int = 3) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 of smooth-ish random texture (height, width = size)."""
    rng = np.random.default_rng(seed)
    shape = (size[0], size[1], 3) if channels == 3 else size
    return rng.integers(0, 256, shape, dtype=np.uint8)


def save(folder: Path, name: str, pixels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)
    return folder / name


def constant(value: int, size: int = 24) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def inverse_pairs(tmp_path: Path, count: int = 10, *, size: int = 24) -> tuple[Path, Path]:
    """a/NAME_sketch.png = 255 - b/NAME.png: any aligned crop and flip keeps A = -B in [-1, 1]."""
    for index in range(count):
        image = noise_image(index, (size, size))
        save(tmp_path / "b", f"img{index:02d}.png", image)
        save(tmp_path / "a", f"img{index:02d}_sketch.png", 255 - image)
    return tmp_path / "a", tmp_path / "b"


def indexed_folder(folder: Path, count: int, *, offset: int = 0, size: int = 20) -> Path:
    """Constant images whose value (5 * index + offset) says which file a crop came from."""
    for index in range(count):
        save(folder, f"{index:03d}.png", constant(5 * index + offset, size))
    return folder


def value_of(images: torch.Tensor) -> list[int]:
    """The constant value of each float image in [-1, 1]."""
    return [int(value) for value in to_uint8(images).flatten(1)[:, 0]]


def window_of(crop: torch.Tensor, images: torch.Tensor) -> tuple[int, int, int, bool] | None:
    """(image index, top, left, flipped) of the window of `images` (N, C, L, L) that `crop` is."""
    size, load = crop.shape[-1], images.shape[-1]
    for index, image in enumerate(images):
        for top in range(load - size + 1):
            for left in range(load - size + 1):
                window = image[:, top : top + size, left : left + size]
                for flipped in (False, True):
                    if torch.equal(window.flip(-1) if flipped else window, crop):
                        return index, top, left, flipped
    return None


def draw(stream, count: int) -> list[dict[str, torch.Tensor]]:
    return [next(stream) for _ in range(count)]


def same_batches(first: list[dict], second: list[dict]) -> bool:
    return all(torch.equal(x[key], y[key]) for x, y in zip(first, second, strict=True) for key in ("A", "B"))


# paired layouts


def test_side_by_side_files_split_at_half_width_and_direction_swaps_the_halves(tmp_path):
    root = tmp_path / "facades"
    for split, count in (("train", 6), ("val", 2)):
        for index in range(count):
            left, right = noise_image(index, (16, 16)), noise_image(100 + index, (16, 16))
            save(root / split, f"{index}.png", np.concatenate([left, right], axis=1))
    data = load_paired(root=str(root), load_size=16, crop_size=16, flip=False)
    assert isinstance(data, PairedData) and data.kind == "paired" and len(data) == 6
    assert data.source == f"paired (root, AtoB): 6 train / 2 held-out pairs from {root / 'train'}, 16 px"
    assert torch.equal(data.a[3], torch.from_numpy(noise_image(3, (16, 16))).permute(2, 0, 1))
    assert torch.equal(data.b[3], torch.from_numpy(noise_image(103, (16, 16))).permute(2, 0, 1))
    split = data.test_split()  # root/val, as there is no root/test
    assert split.paired and split.names_a == ["0", "1"] and str(root / "val") in split.source
    assert torch.equal(split.b[1], torch.from_numpy(noise_image(101, (16, 16))).permute(2, 0, 1))

    swapped = load_paired(root=str(root), direction="BtoA", load_size=16, crop_size=16, flip=False)
    forward = next(data.batches(batch_size=3, seed=1, device=CPU))
    backward = next(swapped.batches(batch_size=3, seed=1, device=CPU))
    assert torch.equal(forward["A"], backward["B"]) and torch.equal(forward["B"], backward["A"])
    assert torch.equal(swapped.test_split().a[0], split.b[0])
    assert torch.equal(swapped.grid_examples(3)["A"], data.grid_examples(3)["B"])


def test_an_odd_width_side_by_side_file_is_an_error_naming_it(tmp_path):
    save(tmp_path / "root" / "train", "good.png", noise_image(0, (16, 32)))
    save(tmp_path / "root" / "train", "odd.png", noise_image(1, (16, 31)))
    with pytest.raises(GanrunError, match=r"odd\.png is 31x16: a side-by-side A\|B image needs an even width") as error:
        load_paired(root=str(tmp_path / "root"), load_size=16, crop_size=16)
    assert "\n" not in str(error.value)


def test_two_folders_are_matched_by_stem_templates_and_crops_stay_aligned_through_flips(tmp_path):
    a_dir, b_dir = inverse_pairs(tmp_path)
    data = load_paired(a_dir=str(a_dir), b_dir=str(b_dir), a_name="{stem}_sketch", holdout=2, load_size=24, crop_size=16)
    assert data.names == [f"img{index:02d}" for index in range(8)]
    assert data.source == f"paired (a_dir + b_dir): 8 train / 2 held-out pairs from {b_dir}, 16 px crops of 24 px"
    stream = data.batches(batch_size=4, seed=3, device=CPU)
    batches = draw(stream, 6)
    for batch in batches:  # the same window and flip for A and B: A = 255 - B, pixel for pixel
        assert batch["A"].shape == (4, 3, 16, 16)
        assert torch.equal(to_uint8(batch["A"]), 255 - to_uint8(batch["B"]))
    windows = {window_of(crop, data.b) for batch in batches for crop in to_uint8(batch["B"])}
    assert None not in windows  # every crop is a window of a training image, maybe mirrored ...
    assert len({(top, left) for _, top, left, _ in windows}) > 3 and {flip for *_, flip in windows} == {False, True}
    split = data.test_split()
    assert split.names_a == ["img08", "img09"] and all(torch.equal(a, 255 - b) for a, b in zip(split.a, split.b))


def test_an_unmatched_stem_is_a_one_line_error_naming_an_example_and_the_count(tmp_path):
    a_dir, b_dir = inverse_pairs(tmp_path, count=4)
    save(b_dir, "stray.png", noise_image(50))
    with pytest.raises(GanrunError, match=r"stray\.png has no partner stray_sketch\.\* in dataset\.a_dir=.*"
                                          r"\(1 of 5 images of dataset\.b_dir unmatched\); check dataset\.a_name"):
        load_paired(a_dir=str(a_dir), b_dir=str(b_dir), a_name="{stem}_sketch", holdout=0, load_size=24, crop_size=16)
    (b_dir / "stray.png").unlink()
    save(a_dir, "extra_sketch.png", noise_image(51))
    with pytest.raises(GanrunError, match=r"extra_sketch\.png has no partner extra\.\* in dataset\.b_dir=.*"
                                          r"\(1 of 5 images of dataset\.a_dir unmatched\)"):
        load_paired(a_dir=str(a_dir), b_dir=str(b_dir), a_name="{stem}_sketch", holdout=0, load_size=24, crop_size=16)


def test_empty_or_missing_folders_and_mixed_layouts_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    indexed_folder(tmp_path / "full", 4)
    cases = [
        (dict(b_dir=str(tmp_path / "empty"), make_a="edges"), r"dataset\.b_dir=.*empty' holds no images"),
        (dict(b_dir=str(tmp_path / "nowhere"), make_a="edges"), r"dataset\.b_dir=.*nowhere' is not a folder"),
        (dict(a_dir=str(tmp_path / "empty"), b_dir=str(tmp_path / "full")), r"dataset\.a_dir=.*empty' holds no images"),
        (dict(b_dir=str(tmp_path / "full")), r"dataset\.b_dir needs exactly one source of inputs"),
        (dict(), r"dataset=paired needs dataset\.root=DIR"),
        (dict(root=str(tmp_path / "full")), r"dataset\.root=.*full' has no train/ folder"),
        (dict(root=str(tmp_path), make_a="edges"), r"dataset\.root \(side-by-side A\|B files\) goes alone"),
        (dict(b_dir=str(tmp_path / "full"), make_a="edges", holdout=4), r"dataset\.holdout=4 leaves no training images"),
        (dict(b_dir=str(tmp_path / "full"), make_a="sketch"), r"dataset\.make_a='sketch' is not a maker; choose one of edges"),
        (dict(b_dir=str(tmp_path / "full"), make_a="edges", crop_size=32), r"dataset\.load_size=20 must be >= dataset\.crop_size=32"),
    ]
    for settings, message in cases:
        with pytest.raises(GanrunError, match=message) as error:
            load_paired(**{"load_size": 20, "crop_size": 16, "holdout": 1, **settings})
        assert "\n" not in str(error.value)
    unpaired_cases = [
        (dict(root=str(tmp_path)), r"dataset\.root=.* has no trainA/ folder"),
        (dict(a_dir=str(tmp_path / "full"), b_dir=str(tmp_path / "empty")), r"dataset\.b_dir=.*empty' holds no images"),
        (dict(a_dir=str(tmp_path / "full")), r"dataset=unpaired needs dataset\.root=DIR"),
    ]
    for settings, message in unpaired_cases:
        with pytest.raises(GanrunError, match=message):
            load_unpaired(load_size=20, crop_size=16, **settings)


def test_unreadable_files_are_skipped_and_counted_in_one_warning_and_gray_and_rgb_files_mix(tmp_path, capsys):
    folder = tmp_path / "photos"
    for index in range(5):
        save(folder, f"rgb{index}.png", noise_image(index, (20, 28)))
        save(folder, f"gray{index}.png", noise_image(10 + index, (28, 20), channels=1))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = load_paired(b_dir=str(folder), make_a="grayscale", holdout=2, load_size=20, crop_size=16,
                       preprocess="center_square")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"warning: skipped 1 of 9 images that could not be read (e.g. {folder / 'broken.png'})"]
    assert len(data) == 8 and data.b.shape == (8, 3, 20, 20)  # 11 files - 2 held out - 1 broken and data.b.dtype == torch.uint8
    gray = [index for index, name in enumerate(data.names) if name.startswith("gray")]
    assert gray and all(torch.equal(data.b[index, 0], data.b[index, 2]) for index in gray)
    assert not torch.equal(data.b[data.names.index("rgb0"), 0], data.b[data.names.index("rgb0"), 2])
    one_channel = load_paired(b_dir=str(folder), make_a="edges", holdout=2, load_size=20, crop_size=16, channels=1)
    assert one_channel.b.shape == (8, 1, 20, 20) and next(one_channel.batches(batch_size=2, seed=0, device=CPU))["A"].shape == (2, 1, 16, 16)
    with pytest.raises(GanrunError, match=r"dataset\.make_a=grayscale needs colour targets.*dataset\.channels=3"):
        load_paired(b_dir=str(folder), make_a="grayscale", holdout=2, load_size=20, crop_size=16, channels=1)


def test_center_square_keeps_the_aspect_ratio_and_resize_and_crop_squashes(tmp_path):
    wide = np.zeros((16, 32, 3), dtype=np.uint8)
    wide[:, 8:24] = 200  # a bright centre square between black sides
    save(tmp_path / "b", "wide.png", wide)
    save(tmp_path / "b", "other.png", noise_image(1))
    square = load_paired(b_dir=str(tmp_path / "b"), make_a="edges", holdout=0, load_size=16, crop_size=16,
                         preprocess="center_square")
    squashed = load_paired(b_dir=str(tmp_path / "b"), make_a="edges", holdout=0, load_size=16, crop_size=16)
    index = square.names.index("wide")
    assert bool((square.b[index] == 200).all())  # only the centre square
    assert int(squashed.b[index, :, :, 0].max()) == 0  # the whole width, squeezed: black sides remain


# input makers


def generators(count: int, seed: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, index]) for index in range(count)]


@pytest.mark.parametrize("channels", [3, 1])
def test_every_maker_returns_uint8_of_the_input_shape(channels):
    images = torch.from_numpy(np.stack([noise_image(i, (20, 20), channels) for i in range(3)]))
    images = images.permute(0, 3, 1, 2) if channels == 3 else images.unsqueeze(1)
    for name in MAKERS:
        if name == "grayscale" and channels == 1:
            continue
        made = Degradation(name, channels=channels)(images, generators(3))
        assert made.dtype == torch.uint8 and made.shape == images.shape, name
        assert not torch.equal(made, images), name
    assert torch.equal(Degradation({"name": "noise", "p": 0.0}, channels=channels)(images, generators(3)), images)


def test_each_maker_does_what_it_says():
    rng = np.random.default_rng(0)
    smooth = torch.from_numpy(rng.integers(60, 200, (2, 3, 4, 4), dtype=np.uint8))
    smooth = torch.nn.functional.interpolate(smooth.float(), size=(32, 32), mode="bilinear").round().to(torch.uint8)
    # edges: black 1-pixel lines on white around a bright square, none along the image border
    square = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    square[..., 10:22, 10:22] = 220
    edges = Degradation("edges", channels=3)(square, generators(1))
    assert set(edges.unique().tolist()) == {0, 255} and torch.equal(edges[:, 0], edges[:, 2])
    assert bool((edges[..., 0, :] == 255).all() and (edges[..., :, 0] == 255).all()), "a frame of edges at the border"
    lines = (edges[0, 0] == 0).nonzero()
    assert lines[:, 0].min() >= 8 and lines[:, 0].max() <= 23  # around the square's sides
    # grayscale: ITU-R 601 luma in every channel
    gray = Degradation("grayscale", channels=3)(smooth, generators(2))
    luma = (smooth.float() * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1).round()
    assert torch.equal(gray[:, 1].float(), luma) and torch.equal(gray[:, 0], gray[:, 2])
    # blur with a fixed sigma smooths a noise image; noise of sigma 10 levels has that spread
    noisy = torch.from_numpy(noise_image(0, (32, 32))).permute(2, 0, 1)[None]
    blurred = Degradation({"name": "blur", "sigma": 1.5}, channels=3)(noisy, generators(1))
    assert blurred.float().std() < 0.5 * noisy.float().std()
    added = Degradation({"name": "noise", "sigma": 10}, channels=3)(smooth, generators(2)).float() - smooth.float()
    assert 9.0 < float(added.std()) < 11.0 and abs(float(added.mean())) < 1.0
    # jpeg: quality 10 loses more than quality 95
    low = Degradation({"name": "jpeg", "quality": 10}, channels=3)(smooth, generators(2)).float()
    high = Degradation({"name": "jpeg", "quality": 95}, channels=3)(smooth, generators(2)).float()
    assert (high - smooth.float()).abs().mean() < (low - smooth.float()).abs().mean()


def test_maker_settings_are_checked_with_one_line_errors():
    cases = [
        ({"name": "blur", "sigma": [2.0, 1.0]}, r"dataset\.make_a\.sigma=\[2\.0, 1\.0\] must lie within"),
        ({"name": "jpeg", "quality": [0, 50]}, r"dataset\.make_a\.quality=\[0, 50\] must lie within \[1, 100\]"),
        ({"name": "jpeg", "quality": 50.5}, r"dataset\.make_a\.quality must be whole numbers"),
        ({"name": "noise", "strength": 3}, r"dataset\.make_a: noise has no parameter 'strength'; it takes p, sigma"),
        (["edges", {"name": "noise", "p": 2}], r"dataset\.make_a\[1\]\.p must be a probability in \[0, 1\]"),
        ([], r"dataset\.make_a is an empty list"),
        ({"sigma": 1}, r"dataset\.make_a must be a maker name or \{name: \.\.\., parameter: value\}"),
    ]
    for spec, message in cases:
        with pytest.raises(GanrunError, match=message):
            Degradation(spec, channels=3)
    chain = Degradation(["grayscale", {"name": "blur", "sigma": [1, 3]}, "jpeg"], channels=3)
    assert chain.describe() == "grayscale+blur(sigma 1-3)+jpeg"


def test_made_inputs_depend_on_seed_image_and_epoch_only(tmp_path):
    for index in range(6):
        save(tmp_path / "b", f"{index}.png", noise_image(index))
    spec = ["edges", {"name": "noise", "sigma": [2, 20]}, {"name": "blur", "sigma": [0.3, 1.0]}, "jpeg"]
    data = load_paired(b_dir=str(tmp_path / "b"), make_a=spec, holdout=0, load_size=24, crop_size=16)
    a, b = data.crops([4, 1, 2], epoch=3, seed=7)
    alone_a, alone_b = data.crops([1], epoch=3, seed=7)  # its batch neighbours do not matter
    assert torch.equal(a[1], alone_a[0]) and torch.equal(b[1], alone_b[0])
    again = load_paired(b_dir=str(tmp_path / "b"), make_a=spec, holdout=0, load_size=24, crop_size=16)
    assert torch.equal(again.crops([4, 1, 2], epoch=3, seed=7)[0], a)  # a fresh load, the same inputs
    for epoch, seed in ((4, 7), (3, 8)):  # another epoch or seed: other crops and other noise
        assert not torch.equal(data.crops([1], epoch=epoch, seed=seed)[0], alone_a)
    # the same crop (no room to move, no flips) in two epochs still gets two different inputs
    fixed = load_paired(b_dir=str(tmp_path / "b"), make_a=spec, holdout=0, load_size=16, crop_size=16, flip=False)
    first, second = fixed.crops([2], epoch=0, seed=1), fixed.crops([2], epoch=1, seed=1)
    assert torch.equal(first[1], second[1]) and not torch.equal(first[0], second[0])


# streams


def test_unpaired_domains_are_drawn_independently_and_each_epoch_covers_its_domain(tmp_path):
    root = tmp_path / "horse2zebra"
    indexed_folder(root / "trainA", 8)
    indexed_folder(root / "trainB", 12, offset=2)
    indexed_folder(root / "testA", 3)
    data = load_unpaired(root=str(root), load_size=20, crop_size=16)
    assert isinstance(data, UnpairedData) and data.kind == "unpaired" and data.resolution == 16
    assert data.source == f"unpaired: 8 A / 12 B train / 3 A held-out images from {root}, 16 px crops of 20 px"
    stream = data.batches(batch_size=4, seed=0, device=CPU)
    batches = draw(stream, 6)  # 3 epochs of A (2 batches each), 2 of B (3 batches each)
    a_order = [value for batch in batches for value in value_of(batch["A"])]
    b_order = [value for batch in batches for value in value_of(batch["B"])]
    for epoch in range(3):
        assert sorted(a_order[8 * epoch : 8 * epoch + 8]) == [5 * index for index in range(8)]
    for epoch in range(2):
        assert sorted(b_order[12 * epoch : 12 * epoch + 12]) == [5 * index + 2 for index in range(12)]
    assert a_order[:8] != a_order[8:16]  # reshuffled every epoch
    assert [(value - 2) // 5 for value in b_order[:8]] != [value // 5 for value in a_order[:8]]  # not one order for both
    assert stream.state_dict() == {"A": {"epoch": 2, "position": 2}, "B": {"epoch": 1, "position": 3}}
    with pytest.raises(GanrunError, match=r"the unpaired data has no held-out split: no .*testB/; add it to evaluate"):
        data.test_split()


def test_both_streams_resume_bit_identically_from_their_small_state(tmp_path):
    for index in range(7):
        save(tmp_path / "b", f"{index}.png", noise_image(index))
    paired = load_paired(b_dir=str(tmp_path / "b"), holdout=1, load_size=24, crop_size=16,
                         make_a=[{"name": "noise", "sigma": [2, 20]}, {"name": "blur", "p": 0.5}, "jpeg"])
    indexed_folder(tmp_path / "A", 5, size=24)
    for index in range(9):
        save(tmp_path / "B", f"{index}.png", noise_image(50 + index))
    unpaired = load_unpaired(a_dir=str(tmp_path / "A"), b_dir=str(tmp_path / "B"), load_size=24, crop_size=16)
    for data in (paired, unpaired):
        stream = data.batches(batch_size=2, seed=5, device=CPU, channels_last=True)
        draw(stream, 4)
        state = stream.state_dict()
        leaves = [value for value in state.values()] if "epoch" in state else [v for d in state.values() for v in d.values()]
        assert all(type(value) is int for value in leaves)  # the whole state: epochs and batch numbers
        expected = draw(stream, 7)  # across epoch boundaries
        resumed = data.batches(batch_size=2, seed=5, device=CPU, channels_last=True)
        resumed.load_state_dict(state)
        assert same_batches(draw(resumed, 7), expected)
        assert expected[0]["A"].is_contiguous(memory_format=torch.channels_last)
        assert expected[0]["A"].min() >= -1 and expected[0]["A"].max() <= 1
        other_seed = data.batches(batch_size=2, seed=6, device=CPU)
        other_seed.load_state_dict(state)
        assert not same_batches(draw(other_seed, 7), expected)


def test_unpaired_stream_converts_both_domains_positions_when_the_batch_size_changes(tmp_path):
    indexed_folder(tmp_path / "A", 8)
    indexed_folder(tmp_path / "B", 12, offset=2)
    data = load_unpaired(a_dir=str(tmp_path / "A"), b_dir=str(tmp_path / "B"), load_size=20, crop_size=16)
    stream = data.batches(batch_size=2, seed=0, device=CPU)
    seen = draw(stream, 3)  # 6 images into A's epoch 0 (of 8), 6 into B's (of 12)
    state = stream.state_dict()
    resumed = data.batches(batch_size=4, seed=0, device=CPU)
    resumed.load_state_dict(state)
    resumed.rebatch(old_batch_size=2, new_batch_size=4)
    # ceil(6 / 4) = 2: A's epoch 0 has only 2 batches of 4, so A starts epoch 1; B continues at its batch 2
    assert resumed.state_dict() == {"A": {"epoch": 0, "position": 2}, "B": {"epoch": 0, "position": 2}}
    nxt = draw(resumed, 1)[0]
    b_epoch0 = [value for batch in seen for value in value_of(batch["B"])]
    assert not set(value_of(nxt["B"])) & set(b_epoch0)  # no image of B's epoch 0 repeated
    fresh = data.batches(batch_size=4, seed=0, device=CPU)
    fresh.load_state_dict({"A": {"epoch": 1, "position": 0}, "B": {"epoch": 0, "position": 2}})
    assert same_batches([nxt], draw(fresh, 1))


def test_held_out_images_are_never_trained_on(tmp_path):
    indexed_folder(tmp_path / "b", 10)
    data = load_paired(b_dir=str(tmp_path / "b"), make_a="grayscale", holdout=3, load_size=20, crop_size=16)
    stream = data.batches(batch_size=2, seed=0, device=CPU)
    seen = {value for batch in draw(stream, 12) for value in value_of(batch["B"])}
    assert seen == {5 * index for index in range(7)}  # 4 epochs of 3 batches: the training images, no other
    split = data.test_split()
    assert split.names_b == ["007", "008", "009"] and [int(image[0, 0, 0]) for image in split.b] == [35, 40, 45]
    assert "the last 3 images of" in split.source and "(dataset.holdout)" in split.source
    with pytest.raises(GanrunError, match=r"the paired data has no held-out split .*dataset\.holdout > 0"):
        load_paired(b_dir=str(tmp_path / "b"), make_a="grayscale", holdout=0, load_size=20, crop_size=16).test_split()


def test_ranks_share_an_epoch_order_and_take_disjoint_slices(tmp_path):
    indexed_folder(tmp_path / "b", 9)
    data = load_paired(b_dir=str(tmp_path / "b"), make_a="grayscale", holdout=1, load_size=20, crop_size=16)
    ranks = [data.batches(batch_size=2, seed=4, device=CPU, rank=rank, world_size=2) for rank in (0, 1)]
    seen = [[value for batch in draw(stream, 2) for value in value_of(batch["B"])] for stream in ranks]
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0] + seen[1])) == 8  # one epoch: 4 images per rank
    with pytest.raises(GanrunError, match=r"the paired training set .* has 8 images, fewer than one batch per rank "
                                          r"\(5 x 2 ranks\); lower trainer\.batch_size"):
        data.batches(batch_size=5, seed=0, device=CPU, world_size=2)


# fixed examples


def test_grid_examples_test_split_and_first_images_are_fixed(tmp_path):
    for index in range(8):
        save(tmp_path / "photos", f"{index}.png", noise_image(index, (24, 30)))
        save(tmp_path / "test", f"t{index}.png", noise_image(20 + index, (30, 24)))
    settings = dict(b_dir=str(tmp_path / "photos"), make_a=["edges", "noise"], test_b_dir=str(tmp_path / "test"),
                    load_size=24, crop_size=16)
    data = load_paired(**settings)
    assert len(data) == 8  # test_b_dir given: nothing held out of b_dir
    grid = data.grid_examples(7)
    assert set(grid) == {"A", "B"} and grid["A"].shape == grid["B"].shape == (2, 3, 16, 16)
    assert grid["A"].dtype == torch.float32 and grid["A"].min() >= -1 and grid["A"].max() <= 1
    split = data.test_split()
    assert isinstance(split, TestSplit) and split.paired and len(split.a) == len(split.b) == 8
    assert split.a[0].shape == (3, 16, 16) and split.a[0].dtype == torch.uint8 and split.names_b[0] == "t0"
    assert torch.equal(to_uint8(grid["A"]), torch.stack(split.a[:2]))  # the grid shows held-out pairs
    assert data.first_images(5).shape == (5, 3, 16, 16)
    again = load_paired(**settings)  # a second run: the same held-out inputs, whatever its seed
    next(again.batches(batch_size=2, seed=123, device=CPU))
    assert all(torch.equal(x, y) for x, y in zip(again.test_split().a, split.a))
    assert torch.equal(again.grid_examples(7)["A"], grid["A"]) and torch.equal(again.first_images(5), data.first_images(5))

    root = tmp_path / "unpaired"
    indexed_folder(root / "trainA", 6)
    indexed_folder(root / "trainB", 6, offset=1)
    indexed_folder(root / "testA", 4, offset=2)
    indexed_folder(root / "testB", 5, offset=3)
    unpaired = load_unpaired(root=str(root), load_size=20, crop_size=16)
    grid = unpaired.grid_examples(12)
    assert grid["A"].shape == grid["B"].shape == (2, 3, 16, 16)
    assert value_of(grid["A"]) == [2, 7] and value_of(grid["B"]) == [3, 8]  # testA, testB
    assert value_of(unpaired.first_images(5)) == [2, 7, 3, 8, 13]  # count // 2 of A, then B
    split = unpaired.test_split()
    assert not split.paired and (len(split.a), len(split.b)) == (4, 5) and split.names_b[-1] == "004"


# config


@pytest.mark.parametrize("option, loader", [("paired", load_paired), ("unpaired", load_unpaired)])
def test_dataset_yaml_names_every_loader_argument_and_builds(tmp_path, option, loader):
    node = OmegaConf.load(REPO / "conf" / "dataset" / f"{option}.yaml")
    assert list(node.defaults) == [{"override /task@_global_.task": "translation"}, "_self_"]
    keys = {key for key in node if key not in ("defaults", "_target_")}
    assert keys == set(inspect.signature(loader).parameters)
    for name, value in inspect.signature(loader).parameters.items():
        if value.default is not inspect.Parameter.empty:
            assert node[name] == value.default, name
    del node["defaults"]
    indexed_folder(tmp_path / "A", 4)
    indexed_folder(tmp_path / "B", 4)
    node.update({"a_dir": str(tmp_path / "A"), "b_dir": str(tmp_path / "B"), "load_size": 20, "crop_size": 16})
    if option == "paired":
        node.update({"a_dir": None, "make_a": ["grayscale", {"name": "blur", "sigma": [0.5, 1.0]}], "holdout": 1})
    data = build(node)
    assert data.kind == option and data.resolution == 16 and data.channels == 3
