"""ganrun/data/decode.py: the inputs real users have (phone photos, 16-bit scans, transparent
sprites, truncated files, paired test sets in one folder), decoded by one policy in every reader:
training folders (images.py), SR pairs and `sample input_dir=` inputs (paired_sr.py), FID
reference images (metrics/fidelity.py `data_batches`) and reconstruction grids (`first_images`).
Generated files only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train
from fixtures_data import (  # noqa: F401  (data_cache is an autouse fixture: no network, cache in tmp)
    QUADRANT_COLOURS,
    data_cache,
    gray16_ramp,
    green_sprite,
    png_rgb16_bytes,
    save_as_phone_photo,
    save_palette_with_transparent_index,
    truncate_file,
    upright_pattern,
)
from PIL import Image, ImageFile

from ganrun.config import build
from ganrun.data.decode import file_is_complete, open_rgb_or_gray
from ganrun.data.images import ImageData, load_image_folder
from ganrun.data.paired_sr import load_paired_sr, load_pairs, read_image
from ganrun.errors import GanrunError
from ganrun.metrics.fidelity import data_batches


def warning_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) tensor -> (H, W, C) array, to compare with the arrays files were made from."""
    return image.permute(1, 2, 0).numpy()


def decoded_array(path: Path, *, channels: int = 3, alpha_background="white") -> np.ndarray:
    return np.asarray(open_rgb_or_gray(path, channels=channels, alpha_background=alpha_background).image)


# phone photos


def test_exif_orientation_6_png_is_upright_in_every_reader(tmp_path, capsys):
    upright = upright_pattern()  # 24 tall, 40 wide
    phone = save_as_phone_photo(tmp_path / "photos" / "phone.png", upright)
    assert Image.open(phone).size == (24, 40), "stored sideways: 24 wide, 40 tall"

    np.testing.assert_array_equal(decoded_array(phone), upright)
    np.testing.assert_array_equal(hwc(read_image(phone, channels=3)), upright)  # SR pairs, sample input_dir=

    Image.fromarray(upright).save(tmp_path / "plain.png")  # the same picture without EXIF
    plain = load_image_folder(root=str(tmp_path), resolution=24, in_memory=True)  # reads both files
    assert len(plain) == 2 and torch.equal(plain.images[0], plain.images[1])  # phone.png == plain.png
    streamed = load_image_folder(root=str(tmp_path / "photos"), resolution=24, in_memory=False)
    assert torch.equal(streamed.first_images(1), plain.images[:1].float().div(127.5).sub(1))
    assert torch.equal(next(data_batches(streamed, count=1, batch_size=1)), plain.images[:1])
    assert warning_lines(capsys) == []


def test_exif_orientation_6_jpeg_is_upright(tmp_path):
    upright = upright_pattern()
    phone = save_as_phone_photo(tmp_path / "phone.jpg", upright, quality=95)
    decoded = decoded_array(phone).astype(np.int16)
    assert decoded.shape == (24, 40, 3)
    # quadrant interiors (JPEG's half-resolution chroma bleeds across the borders)
    quadrants = [decoded[:8, :16], decoded[:8, 24:], decoded[16:, :16], decoded[16:, 24:]]
    for quadrant, colour in zip(quadrants, QUADRANT_COLOURS):  # within a few levels of each colour
        assert np.abs(quadrant.reshape(-1, 3).mean(0) - colour).max() < 4, (quadrant.reshape(-1, 3).mean(0), colour)
    assert np.abs(hwc(read_image(phone, channels=3)).astype(np.int16) - decoded).max() == 0


# bit depth


def test_16bit_gray_scan_scales_to_8_bits(tmp_path, capsys):
    ramp = gray16_ramp()  # (16, 20): 0 -> 65535
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    assert Image.open(tmp_path / "scan.png").mode == "I;16"
    expected = np.round(ramp / 257).astype(np.uint8)
    assert np.asarray(Image.open(tmp_path / "scan.png").convert("L")).mean() > 240, "PIL's convert clips (the bug)"

    np.testing.assert_array_equal(decoded_array(tmp_path / "scan.png", channels=1), expected)
    np.testing.assert_array_equal(decoded_array(tmp_path / "scan.png", channels=3), np.repeat(expected[..., None], 3, -1))
    np.testing.assert_array_equal(read_image(tmp_path / "scan.png", channels=1)[0].numpy(), expected)
    data = load_image_folder(root=str(tmp_path), resolution=16, channels=1)  # 16 tall: center crop of 16 columns
    np.testing.assert_array_equal(data.images[0, 0].numpy(), expected[:, 2:18])
    assert warning_lines(capsys) == []


def test_32bit_integer_and_float_images_scale_by_the_documented_rule(tmp_path):
    signed = np.linspace(0, 2**31 - 1, 64).round().astype(np.int64)
    signed[0] = -5  # negatives are black
    Image.fromarray(signed.astype(np.int32).reshape(8, 8)).save(tmp_path / "int32.tif")
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    top = 2**31 - 1  # TIFF SampleFormat 2 (signed), 32 bits
    expected = np.round(np.clip(signed, 0, None) * 255 / top).astype(np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(decoded_array(tmp_path / "int32.tif", channels=1), expected)

    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)  # [0, 1] floats: scaled by 255
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(decoded_array(tmp_path / "unit.tif", channels=1), np.round(unit * 255).astype(np.uint8))
    wide = np.linspace(-20, 300, 64, dtype=np.float32).reshape(8, 8)  # beyond 1: taken as 0..255, clipped
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(decoded_array(tmp_path / "wide.tif", channels=1),
                                  np.clip(np.round(wide), 0, 255).astype(np.uint8))


def test_16bit_rgb_png_is_within_one_level_of_value_over_257(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    (tmp_path / "rgb48.png").write_bytes(png_rgb16_bytes(pixels))
    decoded = decoded_array(tmp_path / "rgb48.png")
    np.testing.assert_array_equal(decoded, pixels >> 8)  # PIL keeps the high byte...
    assert np.abs(decoded.astype(np.int32) - np.round(pixels / 257)).max() <= 1  # ...within 1 of value / 257


# transparency


def sprite_expected(background: int) -> np.ndarray:
    """green_sprite() composited onto a gray level by hand: round((c a + b (255 - a)) / 255)."""
    sprite = green_sprite().astype(np.int64)
    colour, alpha = sprite[..., :3], sprite[..., 3:]
    return ((colour * alpha + background * (255 - alpha) + 127) // 255).astype(np.uint8)


@pytest.mark.parametrize(("option", "level", "name"), [(None, 255, "white"), ("black", 0, "black"), (128, 128, "gray 128")])
def test_transparent_sprite_is_composited_onto_the_background(tmp_path, capsys, option, level, name):
    Image.fromarray(green_sprite()).save(tmp_path / "sprite.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "opaque.png")
    options = {} if option is None else {"alpha_background": option}
    expected = sprite_expected(level)
    assert (expected[0, -1] == level).all() and (expected[0, 0] == (255, 0, 0)).all()
    assert tuple(expected[0, 6]) == {255: (255, 127, 127), 0: (128, 0, 0), 128: (192, 64, 64)}[level]  # the alpha-128 edge

    for in_memory in (True, False):
        data = load_image_folder(root=str(tmp_path), resolution=16, in_memory=in_memory, **options)
        pixels = data.images[1] if in_memory else ((data.first_images(2)[1] + 1) * 127.5).round().to(torch.uint8)
        np.testing.assert_array_equal(hwc(pixels), expected)
        sprite = tmp_path / "sprite.png"
        assert warning_lines(capsys) == [
            f"warning: 1 of 2 images have transparent pixels, composited onto {name} (dataset.alpha_background) (e.g. {sprite})"
        ]
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "sprite.png", channels=3, **options)), expected)


def test_alpha_untouched_for_callers_that_want_the_mask(tmp_path):
    Image.fromarray(green_sprite()).save(tmp_path / "sprite.png")
    decoded = open_rgb_or_gray(tmp_path / "sprite.png", channels=3, alpha_background=None)
    assert decoded.image.mode == "RGBA" and decoded.transparent
    np.testing.assert_array_equal(np.asarray(decoded.image), green_sprite())


def test_palette_png_with_a_transparent_index_gets_the_background(tmp_path):
    path = save_palette_with_transparent_index(tmp_path / "icon.png")
    red, white, black = (255, 0, 0), (255, 255, 255), (0, 0, 0)
    default = decoded_array(path)
    assert (default[:, :4] == red).all() and (default[:, 4:] == white).all(), "the transparent index is not black"
    assert (decoded_array(path, alpha_background="black")[:, 4:] == black).all()
    assert (decoded_array(path, channels=1)[:, 4:] == 255).all()
    assert open_rgb_or_gray(path, channels=3, alpha_background="white").transparent


def test_an_alpha_that_is_the_same_everywhere_is_ignored(tmp_path, capsys):
    """All-zero alpha (some exporters write it) would otherwise turn the whole picture into the background."""
    Image.new("RGBA", (8, 8), (10, 200, 30, 0)).save(tmp_path / "flat.png")
    decoded = open_rgb_or_gray(tmp_path / "flat.png", channels=3, alpha_background="white")
    assert not decoded.transparent and (np.asarray(decoded.image) == (10, 200, 30)).all()
    load_image_folder(root=str(tmp_path), resolution=8)
    assert warning_lines(capsys) == []


def test_a_bad_alpha_background_is_a_one_line_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    message = "dataset.alpha_background must be white, black or a gray level 0-255, got 'pink'"
    with pytest.raises(GanrunError, match=message):
        load_image_folder(root=str(tmp_path), alpha_background="pink")
    with pytest.raises(GanrunError, match="got 300"):
        load_paired_sr(hr_dir=str(tmp_path), hr_patch=4, alpha_background=300)


def test_alpha_background_is_in_the_dataset_configs_with_white_by_default(tmp_path):
    Image.fromarray(green_sprite()).save(tmp_path / "sprite.png")
    cfg = compose_train(["dataset=image_folder", f"dataset.root={tmp_path}", "dataset.resolution=16"])
    assert cfg.dataset.alpha_background == "white"
    assert (hwc(build(cfg.dataset).images[0]) == sprite_expected(255)).all()
    cfg = compose_train(["dataset=image_folder", f"dataset.root={tmp_path}", "dataset.resolution=16",
                         "dataset.alpha_background=black"])
    assert (hwc(build(cfg.dataset).images[0]) == sprite_expected(0)).all()
    assert compose_train(["dataset=celeba"]).dataset.alpha_background == "white"


# truncated files


@pytest.fixture
def folder_with_a_cut_jpeg(tmp_path) -> tuple[Path, Path]:
    """a.jpg, b.jpg, d.jpg, e.jpg solid colours and c_cut.jpg: a JPEG cut to half its bytes."""
    root = tmp_path / "photos"
    root.mkdir()
    for index, name in enumerate("abde"):
        Image.new("RGB", (16, 16), (60 * index, 255 - 60 * index, 100)).save(root / f"{name}.jpg", quality=95)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "c_cut.jpg", quality=95)
    return root, truncate_file(root / "c_cut.jpg")


def test_a_truncated_jpeg_is_skipped_and_counted_the_same_in_training_and_evaluation(folder_with_a_cut_jpeg, capsys):
    root, cut = folder_with_a_cut_jpeg
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False, "a half image must never be read as if whole"
    Image.open(cut).verify()  # PIL's own check passes a cut JPEG: why ganrun looks for its end marker
    skipped = f"warning: skipped 1 of 5 images that could not be read (e.g. {cut})"

    in_memory = load_image_folder(root=str(root), resolution=16, in_memory=True)
    assert len(in_memory) == 4 and warning_lines(capsys) == [skipped]
    streamed = load_image_folder(root=str(root), resolution=16, in_memory=False)
    assert cut not in streamed.files and len(streamed) == 4 and warning_lines(capsys) == [skipped]

    # evaluation reading files that still list it (cut after the check, or on another machine): same skip, same line
    listed = ImageData(source=f"image folder {root}", files=sorted(root.iterdir()), resolution=16, channels=3)
    batches = list(data_batches(listed, count=5, batch_size=2))
    assert [len(batch) for batch in batches] == [2, 2]
    assert torch.equal(torch.cat(batches), in_memory.images)
    assert warning_lines(capsys) == [skipped]
    assert torch.equal(listed.first_images(5), in_memory.images.float().div(127.5).sub(1))
    assert warning_lines(capsys) == [skipped]
    assert torch.equal(listed.first_images(3), in_memory.images[:3].float().div(127.5).sub(1))  # d.jpg takes c's place
    assert warning_lines(capsys) == [f"warning: skipped 1 of 4 images that could not be read (e.g. {cut})"]


def test_jpeg_completeness_check_accepts_data_after_the_end_marker(tmp_path):
    """Phone "motion photos" append a video after the JPEG: complete, not truncated."""
    Image.fromarray(upright_pattern()).save(tmp_path / "motion.jpg", quality=90)
    (tmp_path / "motion.jpg").write_bytes((tmp_path / "motion.jpg").read_bytes() + b"ftypmp42" + bytes(5000))
    assert file_is_complete(tmp_path / "motion.jpg")
    assert decoded_array(tmp_path / "motion.jpg").shape == (24, 40, 3)
    Image.fromarray(upright_pattern()).save(tmp_path / "cut.jpg", quality=90)
    assert file_is_complete(tmp_path / "cut.jpg") and not file_is_complete(truncate_file(tmp_path / "cut.jpg", 0.9))


# super-resolution pairs


def test_sr_pairs_use_the_same_policy_and_skip_unreadable_pairs(tmp_path, capsys):
    hr = tmp_path / "HR"
    upright = upright_pattern()
    save_as_phone_photo(hr / "phone.png", upright)
    Image.fromarray(gray16_ramp(16, 20)).save(hr / "scan.png")
    Image.fromarray(green_sprite()).save(hr / "sprite.png")
    Image.fromarray(upright).save(hr / "zcut.jpg", quality=95)
    cut = truncate_file(hr / "zcut.jpg")

    pairs = {pair.name: pair for pair in load_pairs(hr_dir=str(hr), lr_dir=None, lr_name="{stem}", scale=4, channels=3)}
    assert sorted(pairs) == ["phone", "scan", "sprite"]
    np.testing.assert_array_equal(hwc(pairs["phone"].hr), upright)
    np.testing.assert_array_equal(pairs["scan"].hr[0].numpy(), np.round(gray16_ramp(16, 20) / 257).astype(np.uint8))
    np.testing.assert_array_equal(hwc(pairs["sprite"].hr), sprite_expected(255))
    assert warning_lines(capsys) == [
        f"warning: skipped 1 of 4 pairs that could not be read (e.g. {cut})",
        f"warning: 1 of 3 images have transparent pixels, composited onto white (dataset.alpha_background) "
        f"(e.g. {hr / 'sprite.png'})",
    ]
    black = load_paired_sr(hr_dir=str(hr), scale=4, hr_patch=8, alpha_background="black")
    np.testing.assert_array_equal(hwc(next(p for p in black.pairs if p.name == "sprite").hr), sprite_expected(0))
    with pytest.raises(GanrunError, match=r"zcut\.jpg could not be read as an image .*; remove or replace it"):
        read_image(cut, channels=3)


# paired test sets in one folder


def write_one_folder(folder: Path, names: list[tuple[str, str]], scale: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each (HR name, LR name): an HR texture and its every-`scale`-th-pixel LR, side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    written = {}
    for hr_name, lr_name in names:
        hr = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
        lr = np.ascontiguousarray(hr[::scale, ::scale])
        Image.fromarray(hr).save(folder / f"{hr_name}.png")
        Image.fromarray(lr).save(folder / f"{lr_name}.png")
        written[hr_name] = (hr, lr)
    return written


def test_paired_images_in_one_folder_are_matched_by_name_templates(tmp_path):
    folder = tmp_path / "Urban"
    written = write_one_folder(folder, [("img_001_HR", "img_001_LR"), ("img_002_HR", "img_002_LR")])
    Image.new("RGB", (24, 16)).save(folder / "img_001_SR.png")  # another method's output: neither side
    for lr_dir in (None, str(folder)):  # null means "beside the HR files"
        data = load_paired_sr(hr_dir=str(folder), lr_dir=lr_dir, hr_name="{stem}_HR", lr_name="{stem}_LR", hr_patch=8,
                              val_hr_dir=str(folder))
        assert [pair.name for pair in data.pairs] == ["img_001", "img_002"]
        assert [pair.name for pair in data.validation] == ["img_001", "img_002"]  # val_hr_name null = hr_name
        for pair in data.pairs:
            hr, lr = written[f"{pair.name}_HR"]
            np.testing.assert_array_equal(hwc(pair.hr), hr)
            np.testing.assert_array_equal(hwc(pair.lr), lr)
        assert data.source == (f"paired SR x4: 2 HR images from {folder} ({{stem}}_HR), LR from {folder} ({{stem}}_LR); "
                               f"validation: 2 from {folder}")

    div2k = tmp_path / "div2k"  # baby.png beside babyx4.png: HR is '{stem}', and an LR partner is never HR
    write_one_folder(div2k, [("baby", "babyx4"), ("bird", "birdx4")])
    data = load_paired_sr(hr_dir=str(div2k), hr_name="{stem}", lr_name="{stem}x4", hr_patch=8)
    assert [pair.name for pair in data.pairs] == ["baby", "bird"] and all(p.lr.shape == (3, 4, 6) for p in data.pairs)

    cfg = compose_train(["experiment=srresnet_x4", f"dataset.hr_dir={folder}", "dataset.hr_name='{stem}_HR'",
                         "dataset.lr_name='{stem}_LR'", "dataset.hr_patch=8"])
    assert [pair.name for pair in build(cfg.dataset).pairs] == ["img_001", "img_002"]


def test_a_folder_holding_both_sides_without_a_template_is_an_error(tmp_path):
    folder = tmp_path / "Urban"
    write_one_folder(folder, [("img_001_HR", "img_001_LR"), ("img_002_HR", "img_002_LR")])
    expected = (f"dataset.hr_dir={str(folder)!r} holds both sides of 2 pairs (e.g. img_001_HR and img_001_LR) but "
                "no template says which is which; set dataset.hr_name='{stem}_HR' dataset.lr_name='{stem}_LR' "
                "(lr_dir=null then reads LR from the same folder)")
    for lr_dir in (None, str(folder)):
        with pytest.raises(GanrunError) as raised:
            load_paired_sr(hr_dir=str(folder), lr_dir=lr_dir, lr_name="{stem}_LR", hr_patch=8)
        assert str(raised.value) == expected

    div2k = tmp_path / "div2k"
    write_one_folder(div2k, [("baby", "babyx4")])
    for lr_name in ("{stem}", "{stem}x4"):  # found by the x4 suffix, or by lr_name naming a file of the folder
        with pytest.raises(GanrunError) as raised:
            load_paired_sr(hr_dir=str(div2k), lr_dir=str(div2k) if lr_name != "{stem}" else None, lr_name=lr_name, hr_patch=8)
        assert str(raised.value) == (
            f"dataset.hr_dir={str(div2k)!r} holds both sides of 1 pair (e.g. baby and babyx4) but no template says "
            "which is which; set dataset.hr_name='{stem}' dataset.lr_name='{stem}x4' (lr_dir=null then reads LR from the "
            "same folder)"
        )

    with pytest.raises(GanrunError, match=r"dataset.hr_name and dataset.lr_name are both '\{stem\}_HR'"):
        load_paired_sr(hr_dir=str(folder), hr_name="{stem}_HR", lr_name="{stem}_HR", hr_patch=8)
    with pytest.raises(GanrunError, match=r"dataset.hr_name='HR' must contain \{stem\} once"):
        load_paired_sr(hr_dir=str(folder), hr_name="HR", lr_name="{stem}_LR", hr_patch=8)
    with pytest.raises(GanrunError, match=r"holds no images named like dataset.hr_name='\{stem\}_GT'"):
        load_paired_sr(hr_dir=str(folder), hr_name="{stem}_GT", lr_name="{stem}_LR", hr_patch=8)
