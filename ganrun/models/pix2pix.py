"""pix2pix's networks (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
Networks", appendix 6.1; junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py): the U-Net
generator and the PatchGAN discriminator (also CycleGAN's D).

Images are float (N, C, H, W) in [-1, 1]. Both networks are fully convolutional: the U-Net takes
any H, W that are multiples of 2**num_downs, the PatchGAN any H, W >= its `min_size`.
Weights start as the reference's `init_weights(init_type="normal", init_gain=0.02)`: conv weights
N(0, 0.02), BatchNorm gains N(1, 0.02), biases 0.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganrun.errors import GanrunError
from ganrun.models.srresnet import ResidualBlock

# helpers

NORMS = ("batch", "instance", "none")


def check_norm(norm: str, key: str) -> None:
    if norm not in NORMS:
        raise GanrunError(f"{key} must be one of {list(NORMS)}, got {norm!r}")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The reference's norm layers: BatchNorm2d (affine, running stats), or InstanceNorm2d
    without affine parameters or running stats (networks.get_norm_layer)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def init_normal(module: nn.Module, gain: float = 0.02) -> None:
    """networks.init_weights(init_type="normal"): conv weights N(0, gain), BatchNorm gains
    N(1, gain), every bias 0. Runs before spectral norm wraps a weight."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


def num_downs_for(resolution: int) -> int:
    """The U-Net's depth: log2(resolution), so the innermost features are 1x1 at the training
    size (64 -> 6, 128 -> 7, 256 -> 8 = the reference's unet_256)."""
    if resolution < 32 or resolution & (resolution - 1):
        raise GanrunError(
            f"the U-Net generator needs a resolution that is a power of two >= 32, got {resolution}; "
            "set dataset.crop_size to 32, 64, 128 or 256"
        )
    return int(math.log2(resolution))


# classes


class UNetGenerator(nn.Module):
    """pix2pix's U-Net: an encoder of `num_downs` stride-2 4x4 convs (LeakyReLU 0.2, norm), a
    mirror decoder of stride-2 4x4 transposed convs (ReLU, norm), each decoder block fed the
    concatenation of the block below and the encoder features of its size (the skips), tanh out.

    Widths: width * (1, 2, 4, 8, 8, ...); no norm on the first encoder conv, the innermost one
    or the last decoder conv, as the reference. The generator's noise is dropout(`dropout`) in
    the 3 innermost decoder blocks, the paper's "CD512-CD512-CD512" (appendix 6.1.1); the
    reference code puts it in the num_downs - 5 blocks just outside the innermost one (3 at
    256 px, 1 at 64 px). Convs before a BatchNorm have no bias (the norm's shift replaces it).

    resolution: the training size, a power of two >= 32; num_downs = log2(resolution).
    Input (N, in_channels, H, W) in [-1, 1], H and W multiples of `size_multiple` =
    2**num_downs; output (N, out_channels, H, W) in (-1, 1).

    residual: False (the paper's G) or True for restoration, where input and target differ
    little: the output is input + U(input) with no tanh and the last conv zero-initialised, so G
    starts as the identity and learns only the correction (residual learning, Zhang et al. 2017,
    "Beyond a Gaussian Denoiser", DnCNN). Needs in_channels == out_channels. Training outputs are
    not clamped (a clamp would stop the gradient at the range ends); eval-mode outputs are
    clamped to [-1, 1].

    full_res_blocks: 0 (the paper's G, whose finest conv already halves the size) or k > 0: a
    full-resolution level around the U-Net, as the original U-Net has (Ronneberger et al. 2015,
    two 3x3 convs per level): a 3x3 conv to `width` features and k residual blocks (SRResNet's,
    without BN) before it, and two 3x3 convs on [those features, the U-Net's output] after it.
    Restoration needs it: noise and JPEG blocks are undone pixel by pixel, and through the
    stride-2 first conv alone the restore_faces demo gained 0.9 dB in 6 minutes, then stalled.

    Raises GanrunError for a width or channel count < 1, dropout outside [0, 1), an unknown
    norm, a resolution that is not a power of two >= 32, residual with in_channels !=
    out_channels, or full_res_blocks < 0.
    """

    def __init__(
        self,
        *,
        resolution: int = 256,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        residual: bool = False,
        full_res_blocks: int = 0,
    ):
        super().__init__()
        check_norm(norm, "model.G.norm")
        if full_res_blocks < 0:
            raise GanrunError(f"model.G.full_res_blocks must be >= 0, got {full_res_blocks}; 0 is the paper's U-Net")
        if residual and in_channels != out_channels:
            raise GanrunError(
                f"model.G.residual=true needs as many input as output channels, got {in_channels} -> {out_channels}; "
                "set model.G.residual=false"
            )
        if width < 1 or in_channels < 1 or out_channels < 1:
            raise GanrunError(f"model.G.width and the channel counts must be >= 1, got {width}, {in_channels}, {out_channels}")
        if not 0.0 <= dropout < 1.0:
            raise GanrunError(f"model.G.dropout must be in [0, 1), got {dropout}; the paper uses 0.5")
        self.residual = residual
        self.stem: Optional[nn.Sequential] = None
        self.head: Optional[nn.Sequential] = None
        core_in, core_out = in_channels, out_channels
        if full_res_blocks:
            core_in = core_out = width
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.2),
                                      *[ResidualBlock(width=width, batch_norm=False) for _ in range(full_res_blocks)])
            self.head = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(width, out_channels, 3, padding=1))
        self.num_downs = num_downs_for(resolution)
        self.size_multiple = self.min_size = 2**self.num_downs
        self.in_channels, self.out_channels = in_channels, out_channels
        bias = norm != "batch"
        widths = [width * min(2**level, 8) for level in range(self.num_downs)]
        innermost = self.num_downs - 1
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for level, features in enumerate(widths):
            inputs = core_in if level == 0 else widths[level - 1]
            layers: list[nn.Module] = [] if level == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(inputs, features, 4, stride=2, padding=1, bias=bias))
            if 0 < level < innermost:
                layers.append(norm_layer(norm, features))
            self.down.append(nn.Sequential(*layers))
        for level, features in enumerate(widths):
            # every decoder block but the innermost reads [skip, block below]: twice its width
            inputs = features if level == innermost else 2 * features
            if level == 0:
                layers = [nn.ReLU(), nn.ConvTranspose2d(inputs, core_out, 4, stride=2, padding=1)]
                if full_res_blocks:
                    layers.append(nn.LeakyReLU(0.2))
                elif not residual:
                    layers.append(nn.Tanh())
            else:
                outputs = widths[level - 1]
                layers = [nn.ReLU(), nn.ConvTranspose2d(inputs, outputs, 4, stride=2, padding=1, bias=bias),
                          norm_layer(norm, outputs)]
                if dropout and level >= self.num_downs - 3:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        init_normal(self.down)
        init_normal(self.up)
        if residual:
            last = self.head[-1] if self.head is not None else self.up[0][1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = []
        h = features = images if self.stem is None else self.stem(images)
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = self.up[-1](skips[-1])
        for level in range(self.num_downs - 2, -1, -1):
            # The reference skips LeakyReLU(e) (an in-place activation); the decoder's ReLU makes
            # ReLU(LeakyReLU(e)) = ReLU(e), so skipping e itself is the same network.
            h = self.up[level](torch.cat([skips[level], h], dim=1))
        if self.head is not None:
            h = self.head(torch.cat([features, h], dim=1))
            if not self.residual:
                h = torch.tanh(h)
        if not self.residual:
            return h
        restored = images + h
        return restored if self.training else restored.clamp(-1.0, 1.0)


class PatchDiscriminator(nn.Module):
    """PatchGAN (the reference's NLayerDiscriminator): 4x4 convs, `n_layers` of stride 2 with
    widths width * (1, 2, 4, 8, 8, ...), then one stride-1 conv and a stride-1 conv to 1 channel;
    LeakyReLU 0.2; norm on every conv but the first and last. Each output logit judges one
    patch: 70x70 pixels for n_layers=3 (the paper's choice), 34 for 2, 16 for 1, 142 for 4.

    Input (N, condition_channels + channels, H, W): pix2pix passes cat(A, B) with
    condition_channels = A's channels (a conditional D, eq. 1); unconditional Ds (CycleGAN) use 0.
    Output: logits (N, 1, H', W'), H' = H // 2**n_layers - 2 (30x30 at 256 px for n_layers=3);
    the ganrun losses average over every element, as the reference's GANLoss does.
    H and W must be >= `min_size` = 3 * 2**n_layers. `spectral`: spectral norm on every conv.
    """

    def __init__(
        self,
        *,
        channels: int = 3,
        condition_channels: int = 0,
        width: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        spectral: bool = False,
    ):
        super().__init__()
        check_norm(norm, "model.D.norm")
        if n_layers < 1 or width < 1:
            raise GanrunError(f"model.D.n_layers and model.D.width must be >= 1, got {n_layers} and {width}; the paper uses 3 and 64")
        if channels < 1 or condition_channels < 0:
            raise GanrunError(f"model.D.channels must be >= 1 and condition_channels >= 0, got {channels} and {condition_channels}")
        self.channels, self.condition_channels, self.n_layers = channels, condition_channels, n_layers
        self.min_size = 3 * 2**n_layers  # n_layers halvings, then two stride-1 4x4 convs each take one pixel
        bias = norm != "batch"
        widths = [width * min(2**level, 8) for level in range(n_layers + 1)]
        layers: list[nn.Module] = [nn.Conv2d(channels + condition_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for level in range(1, n_layers + 1):
            stride = 2 if level < n_layers else 1
            layers += [nn.Conv2d(widths[level - 1], widths[level], 4, stride=stride, padding=1, bias=bias),
                       norm_layer(norm, widths[level]), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_normal(self)
        if spectral:
            for layer in self.model:
                if isinstance(layer, nn.Conv2d):
                    spectral_norm(layer)  # in place: the layer's weight becomes a parametrization

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < self.min_size:
            raise GanrunError(
                f"the PatchGAN with n_layers={self.n_layers} needs images of at least {self.min_size} px, "
                f"got {tuple(images.shape[-2:])}; lower model.D.n_layers or raise dataset.crop_size"
            )
        return self.model(images)

    @property
    def receptive_field(self) -> int:
        """Pixels of input one output logit sees, from the conv stack: r = 1 + sum (k - 1) * jump."""
        field, jump = 1, 1
        for layer in self.model:
            if isinstance(layer, nn.Conv2d):  # spectral norm keeps the class a Conv2d subclass
                field += (layer.kernel_size[0] - 1) * jump
                jump *= layer.stride[0]
        return field
