"""A small MNIST classifier that checks whether image translation keeps the digit.

    # once: train on the real MNIST train split (about 1-2 minutes on one CPU thread)
    OMP_NUM_THREADS=1 python scripts/digit_classifier.py train --mnist-root ../shared/data --out digit_classifier.pt

    # the task (scripts/make_mnistm.py) and a CycleGAN on it
    python scripts/make_mnistm.py mnistm/
    ganrun train experiment=cyclegan_mnistm dataset.root=mnistm/

    # 1. the untranslated MNIST-M-style test digits: the domain gap, the baseline
    python scripts/digit_classifier.py score --classifier digit_classifier.pt \
        --images mnistm/testB --labels mnistm/labels/testB.csv
    # 2. the same digits translated to MNIST style by G_BA: does the digit survive translation?
    ganrun sample ckpt=RUN input_dir=mnistm/testB out_dir=translated_BtoA direction=BtoA
    python scripts/digit_classifier.py score --classifier digit_classifier.pt \
        --images translated_BtoA --labels mnistm/labels/testB.csv
    # (scoring mnistm/testA with labels/testA.csv checks the classifier itself on real held-out MNIST)

What the figures mean. `train` reports the accuracy on the 10,000 real MNIST test digits (a
LeNet-style network reaches about 99 %; it should be >= 98.5 %). `score` reads every PNG of a
folder as the classifier sees MNIST (grayscale luminance, ITU-R 601 weights as Pillow's
convert("L"); resized to the classifier's size if it differs; no other normalization) and prints
"accuracy: 0.953 (953 / 1000) on DIR" and the accuracy per true class. On untranslated testB the
classifier meets coloured, textured backgrounds it never saw, so its accuracy is low (Ganin &
Lempitsky's Table 1: 52.25 % on MNIST-M for their network trained on MNIST only; this one reads
43.2 % of make_mnistm's default testB, seed 0). On G_BA(testB) a high accuracy (issue 12 asks >= 90 %) says the
translation produced MNIST-like digits *of the same class*: a CycleGAN can map every B image to a
plausible but different digit and still look good in a grid, which this number catches. The
per-class lines show which digits the translation confuses.

Labels are looked up by file name in the side CSV ("file,label") that make_mnistm writes;
`ganrun sample` keeps file names and writes PNG, so testB's labels score its translation.
`--match-by stem` matches by name without extension (for folders whose files were re-encoded).
An image without a label is an error naming it, not a silent skip.

Sources: MNIST (LeCun et al., 1998); MNIST-M, the difference blend of MNIST over BSDS500 patches
(Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015); the classify-
the-translation check follows the FCN/classifier scores of CycleGAN (Zhu et al., ICCV 2017) and
CyCADA (Hoffman et al., ICML 2018). The checkpoint is {"state_dict", "size", "test_accuracy",
"epochs", "seed"}, loadable with torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_mnistm import ScriptError, place_digit, read_mnist  # noqa: E402  (the one MNIST reader and padding)

# classes


class DigitNet(nn.Module):
    """LeNet-style: 2 conv (5x5, ReLU, 2x2 max-pool) + 2 fully connected layers.

    Input float (N, 1, size, size) in [-1, 1] (white digit on black at +1 / -1); output logits (N, 10).
    size must be divisible by 4.
    """

    def __init__(self, *, size: int = 32):
        super().__init__()
        self.size = size
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 128), nn.ReLU(inplace=True), nn.Dropout(0.25), nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# helpers


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S) -> float (N, 1, S, S) in [-1, 1]."""
    return torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)


def mnist_at_size(root: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST `split` placed on a size x size canvas as make_mnistm places it: float (N, 1, S, S) in [-1, 1], labels (N,)."""
    images, labels = read_mnist(root, split)
    return to_input(np.stack([place_digit(image, size) for image in images])), torch.from_numpy(labels)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light augmentation so the classifier is not brittle on generated digits: a random shift of up
    to 2 px, rotation of up to 10 degrees, scale 0.9-1.1, and a stroke brightness of 70-100 %."""
    n, size = x.shape[0], x.shape[-1]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * 2 / size)  # 2 px in affine_grid's [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Shift to [0, 1] so the zero padding outside the image is black, as the background.
    moved = F.grid_sample((x + 1) / 2, grid, align_corners=False, padding_mode="zeros")
    brightness = 0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator)
    return (moved * brightness) * 2 - 1


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[start : start + batch_size]).argmax(1) for start in range(0, len(x), batch_size)])


def load_classifier(path: Path) -> DigitNet:
    if not path.is_file():
        raise ScriptError(f"classifier {path} not found; make it with: python scripts/digit_classifier.py train --out {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "size" not in checkpoint:
        raise ScriptError(f"{path} is not a digit_classifier.py checkpoint (no state_dict/size); retrain it with the train subcommand")
    model = DigitNet(size=int(checkpoint["size"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def read_labels(path: Path) -> dict[str, int]:
    """A "file,label" CSV as {file name: label}."""
    if not path.is_file():
        raise ScriptError(f"labels file {path} not found; make_mnistm.py writes OUT/labels/{{trainA,trainB,testA,testB}}.csv")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [cell.strip() for cell in rows[0][:2]] != ["file", "label"]:
        raise ScriptError(f"{path} does not start with the header 'file,label'; it must be a make_mnistm.py labels file")
    try:
        return {row[0]: int(row[1]) for row in rows[1:] if row}
    except (IndexError, ValueError):
        raise ScriptError(f"{path} has a row that is not 'file,label' with an integer label; fix or regenerate it") from None


def read_folder(folder: Path, size: int) -> tuple[list[str], np.ndarray]:
    """Every PNG of `folder` (sorted) as uint8 grayscale (N, size, size): luminance, resized if needed."""
    if not folder.is_dir():
        raise ScriptError(f"image folder {folder} not found; pass --images DIR (e.g. OUT/testB or ganrun sample's out_dir)")
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() == ".png")
    if not paths:
        raise ScriptError(f"no PNG files in {folder}; pass the folder of images to score")
    images = []
    for path in paths:
        with Image.open(path) as image:
            gray = image.convert("L")  # luminance: L = (299 R + 587 G + 114 B) / 1000
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(gray))
    return [path.name for path in paths], np.stack(images)


# subcommands


def train(*, mnist_root: Path, out: Path, epochs: int, size: int, seed: int, batch_size: int = 128) -> float:
    """Train on real MNIST train, report and return the accuracy on real MNIST test, save to `out`."""
    if size % 4 or size < 16:
        raise ScriptError(f"--size must be a multiple of 4 and >= 16, got {size}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = mnist_at_size(mnist_root, "train", size)
    test_x, test_y = mnist_at_size(mnist_root, "test", size)
    model = DigitNet(size=size)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total_loss = 0.0
        for first in range(0, len(order), batch_size):
            index = order[first : first + batch_size]
            loss = F.cross_entropy(model(augment(train_x[index], generator)), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(index)
        accuracy = float((predict(model, test_x) == test_y).float().mean())
        print(f"epoch {epoch + 1}/{epochs}: train loss {total_loss / len(order):.4f}, "
              f"MNIST test accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
    correct = int((predict(model, test_x) == test_y).sum())
    print(f"MNIST test accuracy: {correct / len(test_y):.4f} ({correct} / {len(test_y)}), {size}x{size} input, "
          f"{epochs} epochs, {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} thread(s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), "size": size, "test_accuracy": correct / len(test_y),
                "epochs": epochs, "seed": seed}, temporary)
    os.replace(temporary, out)
    print(f"saved {out}")
    return correct / len(test_y)


def score(*, classifier: Path, images: Path, labels: Path, match_by: str = "name") -> float:
    """Print the accuracy of `classifier` on the PNGs of `images` against `labels`; returns it."""
    model = load_classifier(classifier)
    names, pixels = read_folder(images, model.size)
    table = read_labels(labels)
    if match_by == "stem":
        table = {Path(name).stem: label for name, label in table.items()}
        keys = [Path(name).stem for name in names]
    else:
        keys = names
    missing = [name for name, key in zip(names, keys) if key not in table]
    if missing:
        raise ScriptError(
            f"{len(missing)} of {len(names)} images in {images} have no label in {labels} (first: {', '.join(missing[:3])}); "
            f"pass the labels file of the folder that was translated (OUT/labels/testB.csv for testB), or --match-by stem"
        )
    truth = torch.tensor([table[key] for key in keys])
    predicted = predict(model, to_input(pixels))
    hits = predicted == truth
    accuracy = float(hits.float().mean())
    print(f"accuracy: {accuracy:.3f} ({int(hits.sum())} / {len(hits)}) on {images}")
    counts, wrong_as = Counter(truth.tolist()), Counter()
    for true_label, guess in zip(truth.tolist(), predicted.tolist()):
        if true_label != guess:
            wrong_as[(true_label, guess)] += 1
    for digit in sorted(counts):
        correct = int(hits[truth == digit].sum())
        confusions = [(guess, count) for (true_label, guess), count in wrong_as.most_common() if true_label == digit]
        confused = f"  (most often read as {confusions[0][0]}: {confusions[0][1]})" if confusions else ""
        print(f"  digit {digit}: {correct / counts[digit]:.3f} ({correct} / {counts[digit]}){confused}")
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train on real MNIST, report its test accuracy, save the weights")
    train_parser.add_argument("--mnist-root", type=Path, default=Path("../shared/data"), help="folder with MNIST/raw/*.gz (torchvision layout) or the IDX files")
    train_parser.add_argument("--out", type=Path, required=True, help="where to save the classifier (.pt)")
    train_parser.add_argument("--epochs", type=int, default=2)
    train_parser.add_argument("--size", type=int, default=32, help="input side; 28 px digits are centred and zero padded, as make_mnistm.py does")
    train_parser.add_argument("--seed", type=int, default=0)
    score_parser = commands.add_parser("score", help="accuracy on a folder of PNGs against a labels CSV")
    score_parser.add_argument("--classifier", type=Path, required=True)
    score_parser.add_argument("--images", type=Path, required=True, help="folder of PNG digits (any channels, any size)")
    score_parser.add_argument("--labels", type=Path, required=True, help="'file,label' CSV (make_mnistm.py's OUT/labels/*.csv)")
    score_parser.add_argument("--match-by", choices=("name", "stem"), default="name", help="match files to labels by full name or by stem")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            if args.epochs < 1:
                raise ScriptError(f"--epochs must be >= 1, got {args.epochs}")
            train(mnist_root=args.mnist_root, out=args.out, epochs=args.epochs, size=args.size, seed=args.seed)
        else:
            score(classifier=args.classifier, images=args.images, labels=args.labels, match_by=args.match_by)
    except ScriptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
