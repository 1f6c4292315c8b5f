"""Inpainting networks of DeepFill v2 (Yu et al., ICCV 2019, "Free-Form Image Inpainting with Gated
Convolution"; reference code github.com/JiahuiYu/generative_inpainting, v2: inpaint_ops.py's
gen_conv / gen_deconv / dis_conv, inpaint_model.py's build_inpaint_net (stage 1) and
build_sn_patch_gan_discriminator).

- `GatedConv2d`: output = ELU(features) * sigmoid(gates), both halves of one convolution.
- `GatedGenerator`: the reference's coarse (first) stage as a one-stage generator; the second,
  contextual-attention stage is left out (the issue asks for one stage).
- `SNPatchDiscriminator`: SN-PatchGAN, stride-2 5x5 spectral-norm convs with leaky ReLU whose
  whole output feature map is the loss's input (every element one patch score).

Images are float (N, C, H, W) in [-1, 1]; masks float (N, 1, H, W), 1 = hole, 0 = valid. G takes
cat(x * (1 - m), m) (C + 1 channels), D takes cat(x_or_x_hat, m) (C + 1 channels). Both are fully
convolutional: G takes any H, W that are multiples of 4 (`size_multiple`), D any H, W.

Initialization (a departure): the reference's TF layers start Glorot-uniform, and through G's 16
gated layers, each scaling by sigmoid(~0) = 1/2 after an ELU, the signal dies: G's output starts
with a standard deviation of ~1e-8 (measured, width 8 at 32 px), and a CPU-sized budget never
leaves that plateau. Gated layers here start He-uniform (fan in, ReLU gain, as mmagic's
ConvModule uses Kaiming init) on the feature half, times 2 to undo the gate's 1/2, and LeCun-uniform
(variance 1 / fan in) on the gate half: activations keep their scale (output std ~0.2 at init).
Plain convs (G's output layer, D's) start Glorot-uniform as the reference's; biases 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ganrun.errors import GanrunError
from ganrun.models.layers import maybe_spectral

# helpers


def glorot_conv(
    in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, dilation: int = 1
) -> nn.Conv2d:
    """A zero-padded ('SAME' in the reference) conv with tf.layers.conv2d's initialization:
    Glorot-uniform weights, zero bias. Zero padding, not reflect (mmagic's choice): the dilation-16
    layer sees 16x16 maps at 64 px, narrower than the 16-pixel reflect padding it would need."""
    layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=dilation * (kernel_size - 1) // 2,
                      dilation=dilation)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def patch_layers_for(resolution: int) -> int:
    """SN-PatchGAN's stride-2 layer count at a training size: log2(resolution / 4), at most the
    reference's 6, at least 1. The reference's 6 layers turn its 256 px into a 4x4 score map;
    at smaller sizes fewer layers keep that 4x4 map (128 -> 5, 64 -> 4, 32 -> 3) instead of
    convolving 1x1 maps (their 5x5 kernels would see only padding). The receptive field of L
    layers is 1 + 4 * (2**L - 1) px: 61 at 64 px, 29 at 32 px, most of the image as in the paper."""
    if resolution < 8:
        raise GanrunError(f"the SN-PatchGAN needs a resolution of at least 8 px, got {resolution}")
    return max(1, min(6, int(math.log2(resolution)) - 2))


# classes


class GatedConv2d(nn.Module):
    """A gated convolution (Yu et al. 2019, sec. 3.1, eq. 1; the reference's gen_conv):
    one convolution makes 2 * out_channels maps, split in half (tf.split in the reference) into
    features and gates; output = ELU(features) * sigmoid(gates), float (N, out_channels, H', W').

    The gate is a learned soft mask per pixel and channel: where the input is a hole, the network
    can turn features off (partial convolution's fixed rule, learned). Zero padding
    `dilation * (kernel_size - 1) / 2` keeps H' = H / stride (H a multiple of stride).
    """

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1):
        super().__init__()
        self.out_channels = out_channels
        self.conv = glorot_conv(in_channels, 2 * out_channels, kernel_size, stride=stride, dilation=dilation)
        # Scale-keeping init (module docstring): He x 2 on the features, LeCun on the gates.
        fan_in = in_channels * kernel_size * kernel_size
        with torch.no_grad():
            feature_bound = 2 * math.sqrt(3 * 2 / fan_in)
            self.conv.weight[:out_channels].uniform_(-feature_bound, feature_bound)
            gate_bound = math.sqrt(3 / fan_in)
            self.conv.weight[out_channels:].uniform_(-gate_bound, gate_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, gates = self.conv(x).chunk(2, dim=1)
        return F.elu(features) * torch.sigmoid(gates)


class GatedUpsample(nn.Module):
    """The reference's gen_deconv: nearest-neighbour 2x resize, then a 3x3 gated conv (no
    transposed convolution, hence no checkerboard)."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = GatedConv2d(in_channels=in_channels, out_channels=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class GatedGenerator(nn.Module):
    """DeepFill v2's coarse network (build_inpaint_net's stage 1) as a one-stage inpainting G.

    Input: cat(x * (1 - m), m), float (N, channels + 1, H, W), H and W multiples of 4
    (`size_multiple`). Output: float (N, channels, H, W) in [-1, 1] (tanh, as the reference), the
    raw prediction for every pixel; the recipe composites it with the valid pixels.

    Layers (c = width, the reference's cnum = 48; the reference's gen_conv(x, k) yields k/2
    gated channels, so its cnum-named layers carry c/2, c, 2c channels here):
        5x5 gated c/2 | 3x3 s2 c | c | 3x3 s2 2c | 2c | 2c          (encoder, H/4)
        dilated 3x3 2c at dilations 2, 4, 8, 16 | 2c | 2c           (middle, H/4)
        up + gated c | c | up + gated c/2 | c/4 | 3x3 conv `channels`, tanh   (decoder)
    Departure: the reference's input has a third part, a channel of ones (it marks the image
    border to the zero padding); the repair contract gives G exactly C + 1 channels.

    Raises GanrunError for a width that is not a positive multiple of 4, or inputs of the wrong
    channel count or a size that is not a multiple of 4.
    """

    size_multiple = 4
    min_size = 4

    def __init__(self, *, channels: int = 3, width: int = 48, dilations: Sequence[int] = (2, 4, 8, 16)):
        super().__init__()
        if width < 4 or width % 4:
            raise GanrunError(f"model.G.width must be a positive multiple of 4 (the reference's cnum is 48), got {width}")
        if channels < 1:
            raise GanrunError(f"model.G.channels must be >= 1, got {channels}")
        self.channels, self.width = channels, width
        c = width
        encoder = [
            GatedConv2d(in_channels=channels + 1, out_channels=c // 2, kernel_size=5),
            GatedConv2d(in_channels=c // 2, out_channels=c, stride=2),
            GatedConv2d(in_channels=c, out_channels=c),
            GatedConv2d(in_channels=c, out_channels=2 * c, stride=2),
            GatedConv2d(in_channels=2 * c, out_channels=2 * c),
            GatedConv2d(in_channels=2 * c, out_channels=2 * c),
        ]
        # Dilated layers: a receptive field wide enough to reach across large holes at H/4.
        middle = [GatedConv2d(in_channels=2 * c, out_channels=2 * c, dilation=d) for d in dilations]
        middle += [GatedConv2d(in_channels=2 * c, out_channels=2 * c) for _ in range(2)]
        decoder = [
            GatedUpsample(in_channels=2 * c, out_channels=c),
            GatedConv2d(in_channels=c, out_channels=c),
            GatedUpsample(in_channels=c, out_channels=c // 2),
            GatedConv2d(in_channels=c // 2, out_channels=c // 4),
        ]
        self.body = nn.Sequential(*encoder, *middle, *decoder)
        # The output layer is a plain conv (gen_conv returns before gating when cnum == 3).
        self.to_image = glorot_conv(c // 4, channels, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        if inputs.shape[1] != self.channels + 1:
            raise GanrunError(
                f"the inpainting generator takes cat(masked image, mask) with {self.channels + 1} channels, "
                f"got {inputs.shape[1]}"
            )
        if height % self.size_multiple or width % self.size_multiple:
            raise GanrunError(
                f"image size {height}x{width} does not fit the inpainting generator: it needs multiples of "
                f"{self.size_multiple}; pad or crop to that"
            )
        return torch.tanh(self.to_image(self.body(inputs)))


class SNPatchDiscriminator(nn.Module):
    """DeepFill v2's SN-PatchGAN (sec. 3.3; build_sn_patch_gan_discriminator): stride-2 5x5
    convolutions with spectral norm (Miyato et al. 2018), each followed by leaky ReLU (0.2, TF's
    default; the last one too), widths 64, 128, 256, 256, 256, 256 (width = the reference's 64).

    Input: cat(image, mask), float (N, channels + 1, H, W), any H, W. Output: the last feature
    map, float (N, width', ceil(H / 2**layers), ceil(W / 2**layers)), no final linear layer: each
    element scores one patch, and the loss objects average over all of them (the reference's
    hinge loss on the flattened map). `layers`: the stride-2 count, None = derived from
    `resolution` (`patch_layers_for`: 6 at 256 px as the reference, 4 at 64, 3 at 32).
    """

    def __init__(self, *, channels: int = 3, width: int = 64, resolution: int = 256, layers: int | None = None):
        super().__init__()
        if layers is None:
            layers = patch_layers_for(resolution)
        if not 1 <= layers <= 6:
            raise GanrunError(f"model.D.layers must be 1..6 (null = from the resolution), got {layers}")
        if width < 1:
            raise GanrunError(f"model.D.width must be >= 1, got {width}")
        self.layers = layers
        widths = [width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width][:layers]
        blocks: list[nn.Module] = []
        previous = channels + 1
        for out_channels in widths:
            blocks += [maybe_spectral(glorot_conv(previous, out_channels, 5, stride=2), True), nn.LeakyReLU(0.2)]
            previous = out_channels
        self.body = nn.Sequential(*blocks)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs)
