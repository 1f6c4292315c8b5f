"""Networks: every family at every supported size, conditioning that matters, spectral norm
that holds, self-attention that starts as the identity, and 2-step runs through the loop."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_train, run_train, tiny_overrides

from ganrun.config import build
from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import LAST, load_checkpoint
from ganrun.models import dcgan, mlp, sagan, sngan
from ganrun.models.layers import ClassBatchNorm2d, SelfAttention

Z_DIM = 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run fastest on one thread, above all on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_nets(family: str, *, resolution: int, channels: int = 3, num_classes: int = 0):
    if family == "mlp":
        shape = {"resolution": resolution, "channels": channels, "hidden": 16, "layers": 2, "num_classes": num_classes}
        return mlp.Generator(z_dim=Z_DIM, **shape), mlp.Discriminator(**shape)
    module = {"dcgan": dcgan, "sngan": sngan, "sagan": sagan}[family]
    shape = {"resolution": resolution, "channels": channels, "width": 8, "num_classes": num_classes}
    return module.Generator(z_dim=Z_DIM, **shape), module.Discriminator(**shape)


FAMILY_SIZES = [
    ("mlp", 0), ("mlp", 28),
    ("dcgan", 28), ("dcgan", 32), ("dcgan", 64),
    ("sngan", 28), ("sngan", 32), ("sngan", 64),
    ("sagan", 28), ("sagan", 32), ("sagan", 64),
]


@pytest.mark.parametrize("family,resolution", FAMILY_SIZES)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_forward_and_backward_at_each_size(family, resolution, num_classes):
    torch.manual_seed(0)
    channels = 2 if resolution == 0 else 3
    G, D = _tiny_nets(family, resolution=resolution, channels=channels, num_classes=num_classes)
    labels = torch.arange(4) % 10 if num_classes else None
    z = torch.randn(4, Z_DIM)
    fake = G(z) if labels is None else G(z, labels)
    expected = (4, 2) if resolution == 0 else (4, 3, resolution, resolution)
    assert fake.shape == expected
    if resolution:
        assert fake.abs().max() <= 1.0  # images come out of a tanh
    logits = D(fake) if labels is None else D(fake, labels)
    assert logits.shape == (4,)
    logits.sum().backward()
    for name, network in (("G", G), ("D", D)):
        grads = [p.grad for p in network.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), f"{name} got no gradient"


@pytest.mark.parametrize("family", ["mlp", "dcgan", "sngan", "sagan"])
def test_conditional_G_and_projection_D_use_the_label(family):
    torch.manual_seed(0)
    resolution = 0 if family == "mlp" else 32
    G, D = _tiny_nets(family, resolution=resolution, channels=2 if family == "mlp" else 3, num_classes=10)
    z = torch.randn(4, Z_DIM).repeat(2, 1)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    # Conditional BatchNorm starts as the identity for every class: one SGD step on a
    # label-dependent objective must make the classes differ (the label path trains).
    for network, inputs in ((G, (z, labels)), (D, (torch.randn(8, *G(z, labels).shape[1:]), labels))):
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        output = network(*inputs)
        (output * torch.randn_like(output)).sum().backward()
        optimizer.step()
    G.eval(), D.eval()  # BatchNorm on running stats: an output depends on its own label only
    with torch.no_grad():
        fake = G(z, labels)
        assert not torch.allclose(fake[:4], fake[4:]), "G ignores the label"
        images = fake[:4].repeat(2, *([1] * (fake.dim() - 1)))
        logits = D(images, labels)
        assert not torch.allclose(logits[:4], logits[4:]), "D ignores the label"


def test_unconditional_dcgan_state_dict_is_unchanged_by_the_conditional_option():
    # Checkpoints written before num_classes existed keep loading.
    G, D = _tiny_nets("dcgan", resolution=32)
    assert not any("embed" in key for key in (*G.state_dict(), *D.state_dict()))
    assert "main.0.weight" in G.state_dict() and any(key.startswith("main.") for key in D.state_dict())


def _effective_weights(network: torch.nn.Module) -> list[torch.Tensor]:
    """The weights layers actually use (spectral-normalized), as 2-D matrices."""
    weights = []
    for module in network.modules():
        if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
            weights.append(module.weight.detach().flatten(1))
    return weights


@pytest.mark.parametrize("family", ["sngan", "sagan"])
def test_spectral_norm_gives_unit_top_singular_value(family):
    torch.manual_seed(0)
    G, D = _tiny_nets(family, resolution=32, num_classes=10)
    for network, name in ((D, "D"), (G, "G")):
        weights = _effective_weights(network)
        if family == "sngan" and name == "G":
            assert weights == []  # SNGAN normalizes D only
            continue
        assert len(weights) > 5
        network.train()
        with torch.no_grad():
            for _ in range(30):  # power iterations run in train-mode forwards
                if name == "D":
                    network(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
                else:
                    network(torch.randn(2, Z_DIM), torch.tensor([0, 1]))
        top = torch.stack([torch.linalg.matrix_norm(w, 2) for w in _effective_weights(network)])
        assert torch.allclose(top, torch.ones_like(top), atol=0.05), f"{name}: {top}"


def test_self_attention_keeps_the_shape_and_starts_as_the_identity():
    torch.manual_seed(0)
    attention = SelfAttention(channels=16)
    x = torch.randn(2, 16, 8, 8)
    assert attention.gamma.item() == 0.0
    assert torch.equal(attention(x), x)
    with torch.no_grad():
        attention.gamma.fill_(1.0)
    out = attention(x)
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_sagan_places_attention_at_the_asked_resolution():
    G = sagan.Generator(z_dim=Z_DIM, resolution=64, channels=3, width=8, attention_resolution=16)
    sides = []
    x = G.input(torch.randn(1, Z_DIM)).view(1, G.first_width, G.start, G.start)
    G.eval()
    with torch.no_grad():
        for block in G.blocks:
            x = block(x)
            if isinstance(block, SelfAttention):
                sides.append(x.shape[-1])
    assert sides == [16]
    assert not any(isinstance(b, SelfAttention) for b in sngan.Generator(z_dim=Z_DIM, resolution=64, width=8).blocks)


def test_class_batch_norm_starts_as_plain_batch_norm():
    torch.manual_seed(0)
    conditional, plain = ClassBatchNorm2d(num_features=4, num_classes=3), ClassBatchNorm2d(num_features=4)
    x = torch.randn(6, 4, 5, 5)
    assert torch.allclose(conditional(x, torch.tensor([0, 1, 2, 0, 1, 2])), plain(x), atol=1e-6)


def test_unsupported_sizes_name_the_fix():
    with pytest.raises(GanrunError, match="dataset.resolution in"):
        sngan.Generator(resolution=48)
    with pytest.raises(GanrunError, match="dataset.resolution in"):
        dcgan.Discriminator(resolution=0)
    with pytest.raises(GanrunError, match="dropout"):
        mlp.Discriminator(dropout=1.5)


# through the loop


def _model_overrides(family: str) -> dict:
    if family == "mlp":
        return {"model": "mlp", "loss": "minimax", "model.z_dim": 8, "model.G.hidden": 16, "model.D.hidden": 16, "model.G.layers": 2, "model.D.layers": 2}
    return {"model": family, "model.z_dim": 8, "model.G.width": 4, "model.D.width": 4}


@pytest.mark.parametrize("family", ["mlp", "sngan", "sagan"])
@pytest.mark.parametrize("conditional", [False, True])
def test_two_steps_through_the_loop(family, conditional, mnist_root, tmp_path):
    overrides = tiny_overrides(mnist_root, **{"trainer.max_steps": 2, "conditional": str(conditional).lower()})
    overrides = [o for o in overrides if not o.startswith("model.")]  # dcgan's keys
    overrides += [f"{key}={value}" for key, value in _model_overrides(family).items()]
    run_dir = tmp_path / "run"
    result = run_train(overrides, run_dir)
    assert result.step == 2
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert checkpoint["config"]["model"]["num_classes"] == (10 if conditional else 0)
    weights = checkpoint["recipe"]["networks"]["G"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert (run_dir / "samples" / "step_0000002.png").is_file()


# configs


def test_model_sagan_alone_selects_hinge_and_ttur_and_the_command_line_still_wins():
    cfg = compose_train(["model=sagan"])
    assert cfg.loss._target_ == "ganrun.losses.HingeLoss"
    assert (cfg.optim.G.lr, cfg.optim.D.lr, list(cfg.optim.G.betas)) == (1e-4, 4e-4, [0.0, 0.9])
    cfg = compose_train(["model=sagan", "loss=bce", "optim.D.lr=1e-3"])
    assert cfg.loss._target_ == "ganrun.losses.NonSaturatingLoss" and cfg.optim.D.lr == 1e-3


@pytest.mark.parametrize("experiment,resolution,betas", [("sngan_cifar10", 32, (0.0, 0.9)), ("sagan_celeba64", 64, (0.0, 0.9))])
def test_experiments_compose_and_build(experiment, resolution, betas):
    cfg = compose_train([f"experiment={experiment}", "model.G.width=4", "model.D.width=4"])
    recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    assert recipe.optimizers["D"].param_groups[0]["betas"] == betas
    with torch.no_grad():
        images = recipe.render(recipe.generator.eval(), recipe.grid_inputs(2, generator=torch.Generator().manual_seed(0)))
    assert images.shape == (2, 3, resolution, resolution)


@pytest.mark.parametrize("family", ["dcgan", "mlp"])
def test_conditional_generator_starts_with_a_quiet_label_code(family):
    """At init the label code must not drown z: with nn.Embedding's N(0, 1) code cgan_mnist
    collapsed to one image per class by step 500, and the MLP cGAN by step 4,000 (G learned to
    ignore z)."""
    from ganrun.models import dcgan, mlp

    torch.manual_seed(0)
    if family == "dcgan":
        G = dcgan.Generator(z_dim=16, resolution=28, channels=1, width=8, num_classes=10)
    else:
        G = mlp.Generator(z_dim=16, resolution=28, channels=1, hidden=32, layers=2, num_classes=10)
        G.train()(torch.randn(64, 16), torch.randint(0, 10, (64,)))  # BatchNorm running statistics
    G.eval()
    z = torch.randn(32, 16)
    with torch.no_grad():
        across_z = G(z, torch.full((32,), 3)).std(dim=0).mean()
        across_labels = G(z[:1].expand(10, -1), torch.arange(10)).std(dim=0).mean()
    assert across_labels < 0.2 * across_z


def test_mlp_generator_uses_batch_norm_for_images_and_not_for_points():
    """Default (batch_norm=None): images get BatchNorm (without it the MNIST MLP GAN collapsed to
    one blob in 4k steps), 2-D points do not (the toy benchmarks' MLPs); explicit values win."""
    from ganrun.models.mlp import Generator

    def has_batch_norm(G: torch.nn.Module) -> bool:
        return any(isinstance(module, torch.nn.BatchNorm1d) for module in G.modules())

    assert has_batch_norm(Generator(resolution=28, channels=1))
    assert not has_batch_norm(Generator(resolution=0, channels=2))
    assert not has_batch_norm(Generator(resolution=28, channels=1, batch_norm=False))
    assert has_batch_norm(Generator(resolution=0, channels=2, batch_norm=True))


@pytest.mark.parametrize(
    ("overrides", "width", "hidden"),
    [
        # 28 px, a short run (3,000 steps): chosen by the quality-per-CPU-minute sweep; FC 16 x the width
        ([], 32, 512),
        (["dataset=fashion_mnist"], 32, 512),
        (["trainer.max_time=00:05:00", "trainer.max_steps=100000"], 16, 256),  # make train's budget
        (["trainer.max_time=300"], 16, 256),
        (["trainer.max_time=00:10:00", "trainer.max_steps=100000"], 64, 1024),  # longer: InfoGAN's MNIST layout
        (["trainer.max_time=5:01"], 64, 1024),
        (["trainer.max_steps=10000"], 32, 512),  # no time budget: the step count decides
        (["trainer.max_steps=10001"], 64, 1024),
        (["trainer.max_time=not-a-time"], 32, 512),  # no budget here (a step budget); the loop's check reports it
        (["dataset=celeba"], 64, 0),  # the paper's all-convolutional width-64 network everywhere else
        (["dataset=cifar10"], 64, 0),
        (["experiment=dcgan_mnist"], 64, 0),  # pinned recipes keep the paper's
        (["experiment=cgan_mnist"], 64, 0),
    ],
)
def test_dcgan_width_and_fully_connected_layer_follow_the_resolution_and_budget_and_pinned_experiments_keep_the_papers(
        overrides, width, hidden):
    cfg = compose_train(overrides)
    assert (cfg.model.G.width, cfg.model.D.width) == (width, width)
    assert (cfg.model.G.hidden, cfg.model.D.hidden) == (hidden, hidden)
    G, D = build(cfg.model.G), build(cfg.model.D)
    assert G.main[-2].in_channels == width  # the last transposed conv reads `width` channels
    linear_widths = [layer.out_features for layer in G.modules() if isinstance(layer, torch.nn.Linear)]
    assert linear_widths == ([hidden, 7 * 7 * 2 * width] if hidden else [])
    assert [layer.in_features for layer in D.modules() if isinstance(layer, torch.nn.Linear)] == (
        [7 * 7 * 2 * width, hidden] if hidden else [])


@pytest.mark.parametrize("num_classes", [0, 10])
def test_dcgan_with_a_fully_connected_layer_trains_both_networks_and_conditions_on_the_label(num_classes):
    torch.manual_seed(0)
    G = dcgan.Generator(z_dim=Z_DIM, resolution=28, channels=1, width=4, hidden=16, num_classes=num_classes)
    D = dcgan.Discriminator(resolution=28, channels=1, width=4, hidden=16, num_classes=num_classes)
    labels = torch.arange(6) % 10 if num_classes else None
    fake = G(torch.randn(6, Z_DIM), labels)
    assert fake.shape == (6, 1, 28, 28) and fake.abs().max() <= 1.0
    logits = D(fake, labels)
    assert logits.shape == (6,)
    logits.sum().backward()
    for name, network in (("G", G), ("D", D)):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters()), name
    if num_classes:  # the projection reads the 16 hidden units
        assert D.embed.weight.shape == (10, 16)


def test_dcgan_refuses_a_negative_fully_connected_width():
    with pytest.raises(GanrunError, match="model.G.hidden must be >= 0"):
        dcgan.Generator(resolution=28, channels=1, hidden=-1)
    with pytest.raises(GanrunError, match="model.D.hidden must be >= 0"):
        dcgan.Discriminator(resolution=28, channels=1, hidden=-1)


def test_dcgan_widths_stay_independent_on_the_command_line():
    cfg = compose_train(["model.G.width=48"])
    assert (cfg.model.G.width, cfg.model.D.width) == (48, 32)
    assert (cfg.model.G.hidden, cfg.model.D.hidden) == (768, 512)  # each follows its own network's width


@pytest.mark.parametrize("overrides, lrs", [
    ([], (4e-4, 2e-4)),  # DCGAN at 28 px: G at twice optim.lr
    (["trainer.max_time=600"], (4e-4, 2e-4)),
    (["optim.lr=1e-4"], (2e-4, 1e-4)),  # optim.lr sets D's, G's follows at 2x
    (["optim.G.lr=3e-4"], (3e-4, 2e-4)),  # an explicit G rate wins
    (["dataset=celeba"], (2e-4, 2e-4)),
    (["dataset=cifar10"], (2e-4, 2e-4)),
    (["model=sngan"], (2e-4, 2e-4)),  # another network at 28 px keeps equal rates
    (["experiment=dcgan_mnist"], (2e-4, 2e-4)),  # the pinned paper settings
    (["experiment=cgan_mnist"], (2e-4, 2e-4)),
])
def test_dcgan_g_learns_at_twice_the_rate_at_28_px_only(overrides, lrs):
    cfg = compose_train(overrides)
    assert (cfg.optim.G.lr, cfg.optim.D.lr) == pytest.approx(lrs)
