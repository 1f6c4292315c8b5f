"""scripts/make_mnistm.py and scripts/digit_classifier.py on tiny generated fixtures.

A fake MNIST (binary 28x28 digits whose first row is a barcode of their index, so every written
image can be traced back to the MNIST image it came from) and fake "BSDS" photos in tmp_path;
never ../shared, never the network.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TRAIN, TEST = 40, 20
FLAT_COLOURS = [(200, 60, 30), (20, 120, 240)]  # no channel equals 255 - itself: the blend is invertible


# helpers


def load_script(name: str):
    """Import scripts/NAME.py once under its own name (digit_classifier imports make_mnistm by name)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_digits(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary (0/255) 28x28 'digits': a box whose size and place follow the label, and in row 0 the
    bits of offset + index (a barcode telling which fake MNIST image an output came from)."""
    labels = (np.arange(count) * 7 + offset) % 10
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, 6 + label : 16 + label, 4 + label : 12 + label] = 255
        for bit in range(8):
            if (offset + index) >> bit & 1:
                images[index, 0, 2 + bit] = 255
    return images, labels


def barcode(digit: np.ndarray) -> int:
    """The index written by fake_digits into row 0 of a binary 28x28 digit."""
    return sum(1 << bit for bit in range(8) if digit[0, 2 + bit] > 127)


@pytest.fixture
def sources(tmp_path):
    """Fake MNIST (torchvision layout, gzipped) and two background folders: textured and flat colour."""
    root = tmp_path / "data"
    for prefix, count, offset in (("train", TRAIN, 0), ("t10k", TEST, 100)):
        images, labels = fake_digits(count, offset)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    rng = np.random.default_rng(0)
    textured, flat = tmp_path / "bsds", tmp_path / "flat"
    textured.mkdir()
    flat.mkdir()
    for index, shape in enumerate([(40, 50), (60, 36), (33, 33)]):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(textured / f"img_{index:03d}.png")
    for index, colour in enumerate(FLAT_COLOURS):
        Image.new("RGB", (45, 38), colour).save(flat / f"img_{index:03d}.png")
    return root, textured, flat


def run_make(sources, out: Path, *, flat: bool = False, seed: int = 0, **overrides) -> dict[str, int]:
    root, textured, flat_folder = sources
    settings = dict(mnist_root=root, bsds=flat_folder if flat else textured, train=10, test=5, size=32, seed=seed)
    return load_script("make_mnistm").make_mnistm(out, **{**settings, **overrides})


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# make_mnistm


def test_layout_sizes_channels_and_labels(sources, tmp_path):
    out = tmp_path / "task"
    assert run_make(sources, out) == {"trainA": 10, "trainB": 10, "testA": 5, "testB": 5}
    fake_train_labels, fake_test_labels = fake_digits(TRAIN, 0)[1], fake_digits(TEST, 100)[1]
    for split, count in {"trainA": 10, "trainB": 10, "testA": 5, "testB": 5}.items():
        files = sorted(path.name for path in (out / split).iterdir())
        assert files == [f"{index:05d}.png" for index in range(count)]
        rows = read_csv(out / "labels" / f"{split}.csv")
        assert rows[0] == ["file", "label"] and [row[0] for row in rows[1:]] == files
        for name, label in rows[1:]:
            with Image.open(out / split / name) as image:
                assert image.size == (32, 32)
                assert image.mode == ("L" if split.endswith("A") else "RGB")
                pixels = np.asarray(image)
            if split.endswith("A"):
                # A is the MNIST digit itself, centred with 2 px of black all round.
                assert pixels[:2].max() == pixels[-2:].max() == pixels[:, :2].max() == pixels[:, -2:].max() == 0
                index = barcode(pixels[2:30, 2:30])
                expected = fake_train_labels[index] if split == "trainA" else fake_test_labels[index - 100]
                assert int(label) == expected


def test_difference_blend_on_one_pixel():
    make_mnistm = load_script("make_mnistm")
    digit = np.full((1, 1), 100, dtype=np.uint8)
    patch = np.array([[[10, 200, 128]]], dtype=np.uint8)
    assert make_mnistm.difference_blend(digit, patch).tolist() == [[[90, 100, 28]]]


def test_b_is_the_blend_of_other_digits_than_a(sources, tmp_path):
    """Over flat-colour photos the patch is known, so each B image is checked pixel for pixel against
    |colour - digit| and its digit traced back to its MNIST image: never one that A uses."""
    out = tmp_path / "task"
    run_make(sources, out, flat=True)
    train_digits, test_digits = fake_digits(TRAIN, 0)[0], fake_digits(TEST, 100)[0]
    make_mnistm = load_script("make_mnistm")
    used: dict[str, set[int]] = {}
    for split in ("trainA", "trainB", "testA", "testB"):
        used[split] = set()
        for path in sorted((out / split).iterdir()):
            pixels = np.asarray(Image.open(path))
            if split.endswith("A"):
                index = barcode(pixels[2:30, 2:30])
            else:
                colour = pixels[0, 0]  # the padding (digit 0) shows the photo itself
                assert tuple(colour) in FLAT_COLOURS
                digit = np.where((pixels == colour).all(-1), 0, 255).astype(np.uint8)
                index = barcode(digit[2:30, 2:30])
                source = train_digits[index] if split == "trainB" else test_digits[index - 100]
                expected = np.abs(colour.astype(np.int16) - make_mnistm.place_digit(source, 32)[:, :, None].astype(np.int16))
                np.testing.assert_array_equal(pixels, expected)
            used[split].add(index)
        assert len(used[split]) == len(list((out / split).iterdir())), f"{split} repeats a digit"
    assert not used["trainA"] & used["trainB"]
    assert not used["testA"] & used["testB"]
    # testA from the first half of the test split, testB from the second
    assert max(used["testA"]) < 100 + TEST // 2 <= min(used["testB"])


def test_deterministic_given_seed(sources, tmp_path):
    run_make(sources, tmp_path / "first", seed=3)
    run_make(sources, tmp_path / "again", seed=3)
    run_make(sources, tmp_path / "other", seed=4)
    first = folder_bytes(tmp_path / "first")
    assert first == folder_bytes(tmp_path / "again")
    assert first != folder_bytes(tmp_path / "other")


def test_cli_errors_name_the_path_and_the_fix(sources, tmp_path):
    root, textured, _ = sources
    script = str(SCRIPTS / "make_mnistm.py")
    missing = subprocess.run([sys.executable, script, str(tmp_path / "out"), "--mnist-root", str(tmp_path / "nowhere"),
                              "--bsds", str(textured)], capture_output=True, text=True)
    assert missing.returncode == 1
    assert "nowhere" in missing.stderr and "--mnist-root" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    no_photos = subprocess.run([sys.executable, script, str(tmp_path / "out"), "--mnist-root", str(root),
                                "--bsds", str(tmp_path / "no_bsds"), "--train", "4", "--test", "2"], capture_output=True, text=True)
    assert no_photos.returncode == 1 and "no_bsds" in no_photos.stderr and "--bsds" in no_photos.stderr
    too_many = subprocess.run([sys.executable, script, str(tmp_path / "out"), "--mnist-root", str(root), "--bsds", str(textured)],
                              capture_output=True, text=True)
    assert too_many.returncode == 1 and "--train 10000 needs 20000" in too_many.stderr
    made = subprocess.run([sys.executable, script, str(tmp_path / "out"), "--mnist-root", str(root), "--bsds", str(textured),
                           "--train", "4", "--test", "2"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert f"ganrun train experiment=cyclegan_mnistm dataset.root={tmp_path / 'out'}" in made.stdout
    again = subprocess.run(made.args, capture_output=True, text=True)
    assert again.returncode == 1 and "--overwrite" in again.stderr


# digit_classifier


def constant_classifier(path: Path, *, answer: int, size: int = 32) -> None:
    """A DigitNet that reads every image as `answer`: zero weights, one positive output bias."""
    model = load_script("digit_classifier").DigitNet(size=size)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.classifier[-1].bias[answer] = 1.0
    torch.save({"state_dict": model.state_dict(), "size": size}, path)


def test_score_prints_the_accuracy_against_the_labels(sources, tmp_path, capsys):
    out = tmp_path / "task"
    run_make(sources, out)
    constant_classifier(tmp_path / "three.pt", answer=3)
    digit_classifier = load_script("digit_classifier")
    for split in ("testB", "testA"):  # RGB and grayscale folders alike
        labels = [int(row[1]) for row in read_csv(out / "labels" / f"{split}.csv")[1:]]
        assert digit_classifier.main(["score", "--classifier", str(tmp_path / "three.pt"), "--images", str(out / split),
                                      "--labels", str(out / "labels" / f"{split}.csv")]) == 0
        printed = capsys.readouterr().out
        match = re.search(r"^accuracy: ([0-9.]+) \((\d+) / (\d+)\) on (.+)$", printed, re.MULTILINE)
        assert match and match.group(4) == str(out / split)
        assert (int(match.group(2)), int(match.group(3))) == (labels.count(3), len(labels))
        assert float(match.group(1)) == pytest.approx(labels.count(3) / len(labels), abs=5e-4)
        for digit in set(labels):
            assert f"  digit {digit}: {1.0 if digit == 3 else 0.0:.3f}" in printed


def test_score_reads_luminance_and_resizes(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (28, 28), (200, 100, 50)).save(folder / "colour.png")
    names, pixels = load_script("digit_classifier").read_folder(folder, 32)
    assert names == ["colour.png"] and pixels.shape == (1, 32, 32)
    assert abs(int(pixels[0, 16, 16]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1


def test_score_errors_on_images_without_labels(sources, tmp_path, capsys):
    out = tmp_path / "task"
    run_make(sources, out)
    constant_classifier(tmp_path / "three.pt", answer=3)
    Image.new("L", (32, 32)).save(out / "testB" / "stray.png")
    code = load_script("digit_classifier").main(["score", "--classifier", str(tmp_path / "three.pt"), "--images", str(out / "testB"),
                                                 "--labels", str(out / "labels" / "testB.csv")])
    error = capsys.readouterr().err
    assert code == 1
    assert "1 of 6 images" in error and "stray.png" in error and "testB.csv" in error and len(error.strip().splitlines()) == 1


def test_train_saves_a_checkpoint_score_can_load(sources, tmp_path, capsys):
    root, _, _ = sources
    digit_classifier = load_script("digit_classifier")
    accuracy = digit_classifier.train(mnist_root=root, out=tmp_path / "tiny.pt", epochs=1, size=32, seed=0, batch_size=20)
    assert 0.0 <= accuracy <= 1.0 and "MNIST test accuracy:" in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert checkpoint["size"] == 32 and checkpoint["epochs"] == 1 and "state_dict" in checkpoint
    assert digit_classifier.load_classifier(tmp_path / "tiny.pt").size == 32


def test_mnist_reader_accepts_extracted_files_and_rejects_cut_off_ones(tmp_path):
    make_mnistm = load_script("make_mnistm")
    images, labels = fake_digits(6, 0)
    raw = tmp_path / "raw"  # the IDX files themselves, extracted, as --mnist-root
    raw.mkdir()
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (raw / stem).write_bytes(header + array.astype(np.uint8).tobytes())
    read_images, read_labels = make_mnistm.read_mnist(raw, "test")
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(make_mnistm.ScriptError, match="cut off, replace it"):
        make_mnistm.read_mnist(raw, "test")
