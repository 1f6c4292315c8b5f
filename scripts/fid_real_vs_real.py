"""FID/KID between two sets of *real* images: the floor a generator's FID should be read against.

    python scripts/fid_real_vs_real.py mnist --root ../shared/data             # train vs test, 10k each
    python scripts/fid_real_vs_real.py celeba --root ../shared/data --split-at 5000   # images 1-5000 vs 5001-

Datasets with splits compare the first N of the train split with the first N of the test split,
through the same reference-feature cache `ganrun eval` uses (so the test-split features computed
here are reused by `ganrun eval ckpt=...` afterwards). A folder without splits (the CelebA subset)
is cut in two at --split-at, in file order. Prints the figures and the protocol; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganrun.config import build  # noqa: E402
from ganrun.data import ImageData  # noqa: E402
from ganrun.files import cache_dir  # noqa: E402
from ganrun.metrics.fidelity import FeatureExtractor, compute_metrics, format_result, reference_features  # noqa: E402

LOADERS = {
    "mnist": "ganrun.data.load_mnist_family",
    "fashion_mnist": "ganrun.data.load_mnist_family",
    "cifar10": "ganrun.data.load_cifar10",
    "celeba": "ganrun.data.load_celeba",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(LOADERS))
    parser.add_argument("--root", default="data")
    parser.add_argument("--resolution", type=int, default=None, help="default: the dataset config's")
    parser.add_argument("--num", type=int, default=10000, help="images per side")
    parser.add_argument("--split-at", type=int, default=None, help="cut one set in two at this index instead of train/test")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="Inception's arithmetic")
    args = parser.parse_args()

    options = {"_target_": LOADERS[args.dataset], "root": args.root}
    if args.dataset in ("mnist", "fashion_mnist"):
        options.update(name=args.dataset, download=False, fallback="none")
    if args.resolution:
        options["resolution"] = args.resolution
    extractor = FeatureExtractor(metrics=["fid", "kid"], cache_dir=cache_dir(), allow_download=True, device=torch.device("cpu"),
                                 precision=args.precision)
    start = time.perf_counter()
    if args.split_at is None:
        sides = {split: build({**options, "split": split}) for split in ("train", "test")}
    else:
        whole = build(options)
        cut = args.split_at
        sides = {
            f"first {cut}": ImageData(source=f"images 1-{cut} of {whole.source}", images=whole.images[:cut],
                                      resolution=whole.resolution, channels=whole.channels),
            f"rest {len(whole) - cut}": ImageData(source=f"images {cut + 1}-{len(whole)} of {whole.source}",
                                                  images=whole.images[cut:], resolution=whole.resolution, channels=whole.channels),
        }
    features, statuses = {}, {}
    for name, data in sides.items():
        features[name], statuses[name] = reference_features(
            extractor, data, dataset=args.dataset, split=name.replace(" ", ""), count=args.num,
            batch_size=args.batch_size, cache_dir=cache_dir(),
        )
    (name_a, a), (name_b, b) = features.items()
    values = compute_metrics(a, b, metrics=["fid", "kid"])
    protocol = {
        name: f"{len(features[name]['2048'])} images, {sides[name].source} (cache: {statuses[name]})" for name in sides
    }
    protocol.update(resolution=next(iter(sides.values())).resolution, feature_extractor=extractor.description)
    print(f"{args.dataset} {name_a} vs {name_b}: {format_result(values, protocol)}")
    print(f"time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
