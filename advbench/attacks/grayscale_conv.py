"""A faster input gradient for convolutions that read one channel (a grayscale model's first layer), on the CPU.

Every gradient attack differentiates the loss in the input, so the first layer's input gradient is computed at
every step, and never in training (which differentiates in the parameters). For a layer that reads one channel,
that gradient is a transposed convolution into a single output channel, which oneDNN runs about 10x slower than
the layer's own forward pass (small_cnn on Fashion-MNIST in channels_last, on this project's 2-core CPU), and
took about 40% of an APGD step there. The same sum computed as a
depthwise convolution with the flipped kernel, then a sum over the layer's output channels, is as fast as the
forward pass. Equal up to float rounding (a different summation order); tested against autograd's.
"""
import torch
import torch.nn.functional as F

from advbench.attacks.forwards import replaceable, replaced_forwards


class _OneChannelConv(torch.autograd.Function):
    """conv2d (stride 1, no dilation, one group) whose input gradient is a depthwise conv plus a channel sum."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        out_channels, _, kh, kw = weight.shape
        flipped = weight.flip(2, 3).reshape(out_channels, 1, kh, kw)
        padding = (kh - 1 - ctx.padding[0], kw - 1 - ctx.padding[1])
        per_channel = F.conv2d(grad, flipped.contiguous(memory_format=torch.channels_last), padding=padding,
                               groups=out_channels)
        return per_channel.sum(1, keepdim=True), None, None, None


def _applies(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Conv2d and module.in_channels == 1 and module.groups == 1
            and module.stride == (1, 1) and module.dilation == (1, 1) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple) and module.weight.device.type == "cpu"
            and all(0 <= p <= k - 1 for p, k in zip(module.padding, module.kernel_size)))


def _forward(module: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if (x.requires_grad and not module.weight.requires_grad and x.dim() == 4 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()):
        return _OneChannelConv.apply(x, module.weight, module.bias, module.padding)
    return type(module).forward(module, x)


def fast_input_grad(model: torch.nn.Module):
    """A context in which the model's one-channel CPU convolutions compute their input gradient as above; their
    ``forward`` is put back on exit. Parameters must be frozen (as ``attack_mode`` does): no weight gradient."""
    return replaced_forwards([(m, _forward.__get__(m)) for m in model.modules() if _applies(m) and replaceable(m)])
