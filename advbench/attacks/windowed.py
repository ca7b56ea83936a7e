"""The logits of images that differ from known ones in one window, from the layers' outputs the window reaches.

Square (Linf) changes one window per query, at the same place in every image. In a network that opens with
convolutions, max-pooling and pointwise layers, a window reaches a little further at each layer (a 5x5
convolution widens it by 2 on each side, a 2x2 pool halves it) and every other output is the current point's.
``Windowed`` keeps those outputs for the current points, recomputes only the reached part of each layer from
them, and runs the rest of the network (flatten, linear layers) whole. On small_cnn at batch 64 (this project's
2-core CPU) a query with a 2-4 pixel window, as in the last 3,000 of AutoAttack's 5,000 iterations, takes 1.9-2.2
ms against 3.9-4.1 ms for a whole pass, with 6 pixels (iterations 501-1000) 2.6 ms; at 13 pixels (51-200) the two
are even, and above it (the first 50) the windowed query is slower: not worth a second code path. Each output
reads the same inputs as in a whole pass, so the logits agree with it up to float rounding (a kernel may sum in
another order on a smaller image).

It applies to an ``nn.Sequential`` whose first layers are ``Conv2d`` (zero padding), ``MaxPool2d`` and pointwise
layers (activations, advbench's ``Normalize``, batch norm and dropout in eval mode), on the CPU, without hooks
(they would not see the skipped work), and not while compiling.
"""
import torch
import torch.nn.functional as F
from torch import nn

from advbench.attacks.forwards import hooked
from advbench.models.image import Normalize

_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
              nn.Identity, Normalize)


def _pointwise(layer: nn.Module) -> bool:
    if type(layer) in (nn.BatchNorm2d, nn.Dropout, nn.Dropout2d):
        return not layer.training and (type(layer) is not nn.BatchNorm2d or layer.running_mean is not None)
    return type(layer) in _POINTWISE


def _local(layer: nn.Module) -> bool:
    """A layer whose output at a position reads a bounded neighbourhood of its input (convolution, pooling)."""
    if type(layer) is nn.Conv2d:
        return layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)
    return type(layer) is nn.MaxPool2d and not layer.ceil_mode and not layer.return_indices


def _geometry(layer: nn.Module) -> list:
    """(kernel, stride, padding, dilation) along each spatial axis."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return list(zip(*(pair(getattr(layer, key)) for key in ("kernel_size", "stride", "padding", "dilation"))))


def _span(geometry, lo: int, hi: int, size: int) -> tuple:
    """Along one axis: the outputs that read input positions [lo, hi), and the inputs those outputs read."""
    kernel, stride, pad, dilation = geometry
    reach = dilation * (kernel - 1)
    out_size = (size + 2 * pad - reach - 1) // stride + 1
    out_lo, out_hi = max(0, -((reach - lo - pad) // stride)), min(out_size, (hi - 1 + pad) // stride + 1)
    return (out_lo, out_hi), (out_lo * stride - pad, (out_hi - 1) * stride - pad + reach + 1)


def _run(layer: nn.Module, h: torch.Tensor, whole: bool = True) -> torch.Tensor:
    """The layer on ``h``; a convolution or pooling on a crop (``whole=False``) pads nothing: the crop holds it.
    A pointwise layer runs its class's own forward, not attack_mode's pool-first reordering."""
    if type(layer) is nn.Conv2d:
        return F.conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding if whole else 0, layer.dilation,
                        layer.groups)
    if type(layer) is nn.MaxPool2d:
        return F.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding if whole else 0, layer.dilation)
    return type(layer).forward(layer, h)


class Windowed:
    """Logits of the current points, and of copies of some of them with one window replaced (see the module)."""

    def __init__(self, head: list, tail: nn.Module):
        # Each head layer with its geometry along each axis, None for a pointwise layer: read at every query.
        self.head, self.tail = [(layer, _geometry(layer) if _local(layer) else None) for layer in head], tail
        self.kept, self.changes = [], []

    @classmethod
    def of(cls, model: nn.Module):
        """A ``Windowed`` for ``model``, or None where it does not apply (then query the model as usual)."""
        if type(model) is not nn.Sequential or torch.compiler.is_compiling() or hooked(*model.modules()):
            return None
        if any(t.device.type != "cpu" for t in list(model.parameters()) + list(model.buffers())):
            return None
        layers = list(model)
        n = next((i for i, layer in enumerate(layers) if not (_local(layer) or _pointwise(layer))), len(layers))
        if not any(_local(layer) for layer in layers[:n]):
            return None
        return cls(layers[:n], nn.Sequential(*layers[n:]))

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``x``, the current points; keeps the input of each convolution and pooling, and the
        input of the rest of the network, for later queries."""
        self.kept, h = [], x
        for layer, geometry in self.head:
            if geometry is not None:
                self.kept.append(h.clone() if h is x else h)
            h = _run(layer, h)
        self.kept.append(h)
        return self.tail(h)

    def kept_bytes(self, example: torch.Tensor) -> int:
        """The bytes ``start`` keeps per example shaped as ``example``'s first (one pass of it)."""
        self.start(example[:1])
        size = sum(t[0].numel() * t.element_size() for t in self.kept)
        self.kept = []
        return max(size, 1)

    def query(self, rows: torch.Tensor, top: int, left: int, window: torch.Tensor) -> torch.Tensor:
        """The logits of the current points ``rows`` with the window at (``top``, ``left``) replaced by
        ``window`` (one per row)."""
        spans, kept = ((top, top + window.shape[2]), (left, left + window.shape[3])), iter(self.kept)
        new = window.clone()  # an in-place activation (``ReLU(inplace=True)``) must not rewrite the caller's window
        self.changes = []
        for layer, geometry in self.head:
            if geometry is None:
                new = _run(layer, new)
                continue
            source = next(kept)
            axes = [_span(g, lo, hi, size) for g, (lo, hi), size in zip(geometry, spans, source.shape[2:])]
            crop = self._patched(source, rows, spans, new, [inputs for _, inputs in axes], layer)
            spans, new = [outputs for outputs, _ in axes], _run(layer, crop, whole=False)
        last = next(kept)
        return self.tail(self._patched(last, rows, spans, new, [(0, size) for size in last.shape[2:]], None))

    def _patched(self, source, rows, spans, new, region, layer) -> torch.Tensor:
        """``source``'s rows over ``region`` (padded as ``layer`` pads, where it leaves the image), with ``new``
        over ``spans``; remembers the change for ``accept``."""
        (h0, h1), (w0, w1) = [(max(lo, 0), min(hi, size)) for (lo, hi), size in zip(region, source.shape[2:])]
        # Gathered as NHWC, so the crop is channels_last: NCHW pooling is several times slower on the CPU.
        crop = source.permute(0, 2, 3, 1)[:, h0:h1, w0:w1].index_select(0, rows).permute(0, 3, 1, 2)
        (a0, a1), (b0, b1) = spans
        crop[:, :, a0 - h0:a1 - h0, b0 - w0:b1 - w0] = new
        self.changes.append((source, rows, (a0, a1), (b0, b1), new))
        if layer is not None:
            fill = 0.0 if type(layer) is nn.Conv2d else float("-inf")
            pads = (w0 - region[1][0], region[1][1] - w1, h0 - region[0][0], region[0][1] - h1)
            if any(pads):
                crop = F.pad(crop, pads, value=fill)
        return crop

    def accept(self, keep: torch.Tensor) -> None:
        """Make the last query's points with ``keep`` set the current ones."""
        for source, rows, (a0, a1), (b0, b1), new in self.changes:
            source[:, :, a0:a1, b0:b1].index_copy_(0, rows[keep], new[keep])
