"""The input shapes int8 weights are packed for, in the graphs Inductor compiles.

With freezing, Inductor hands oneDNN its int8 convolution and linear weights
pre-packed in the blocked layout its kernels read, and oneDNN picks that layout for
the input's shape. With a free image size torchao's x86 passes give it none
(``onednn.qconv_prepack`` and ``onednn.qlinear_prepack`` with ``x_shape=None``), and
the convolutions run slower at every size. Inductor packs float linear weights for the
traced input's size (its size hint) in that case; this does the same for int8: each
weight is packed for the shape its input had when the graph was traced.

oneDNN's packing also assumes a float32 output, while the fused int8 convolutions
mostly write uint8: for some shapes (R50's last 512 -> 2048 convolution at the 25x42
of an 800x1333 image, on AVX-512 VNNI) it then picks a padded layout (48 output
channels a block for 2048) that the convolution itself does not use, and the weight is
reordered at every call, a slow reorder between two blocked layouts. So each int8
convolution weight gets the layout packed for its input's shape unless that layout is
padded and the layout for a larger input of the same channels is not
(unpadded_packing_shape).

The packing is a layout only: at another image size oneDNN still computes the same
convolution, so the results do not depend on the size traced. docs/benchmarks.md
measures the difference.

Float32 linear layers: for a graph of fixed sizes compiled in the process (not an
AOTInductor package) Inductor packs their weights for MKL's matrix product
(``mkl._mkl_linear``), which on AMD CPUs runs far slower than oneDNN's
(``mkldnn._linear_pointwise``, what packages and free sizes get);
linear_layers_on_onednn hands them to oneDNN everywhere.

    with packed_for_example_size():
        torch._inductor.aoti_compile_and_package(program, ...)
"""

import contextlib
import functools
import logging
from typing import Callable, Iterator, List, Optional

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.symbolic_shapes import has_free_symbols, optimization_hint

__all__ = [
    "linear_layers_on_onednn",
    "pack_weights_for_example_size",
    "packed_for_example_size",
    "unpadded_packing_shape",
]

# input shapes tried after the traced one, as spatial scales of it (a larger input
# leads oneDNN's choice of output-channel block towards the one its int8 kernels use)
SPATIAL_SCALES_TRIED = (2, 4)

logger = logging.getLogger(__name__)


def _example_shape(node: torch.fx.Node) -> Optional[List[int]]:
    """The shape `node`'s value had when the graph was traced, or None when it is
    unknown or fixed already (nothing to do then)."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or not has_free_symbols(value.shape):
        return None
    return [optimization_hint(size) for size in value.shape]


def _input_of_consumer(prepack: torch.fx.Node) -> Optional[torch.fx.Node]:
    """The activation of the int8 kernel that takes the packed weight `prepack`."""
    users = list(prepack.users)
    if not users or not isinstance(users[0].args[0], torch.fx.Node):
        return None
    return users[0].args[0]


def _packet(target):
    """The op overload packet of an fx call target (Inductor's passes use both)."""
    return getattr(target, "overloadpacket", target)


def _int8_prepacks():
    """int8 weight packing op -> position of its input-shape argument."""
    return {torch.ops.onednn.qconv_prepack: 8, torch.ops.onednn.qlinear_prepack: 1}


def unpadded_packing_shape(shape: List[int], packed_bytes: Callable[[List[int]], int]) -> List[int]:
    """The input shape to pack a convolution weight for: `shape` (N, C, H, W), unless
    packed_bytes(shape), the size of the layout packed for it, exceeds that of an input
    SPATIAL_SCALES_TRIED times larger; then the first of those with the fewest bytes
    (the others hold padding)."""
    candidates = [shape] + [
        shape[:2] + [size * scale for size in shape[2:]] for scale in SPATIAL_SCALES_TRIED
    ]
    sizes = [packed_bytes(candidate) for candidate in candidates]
    return candidates[sizes.index(min(sizes))]


def _constant(node) -> Optional[torch.Tensor]:
    """The value of a frozen constant of the graph being compiled, else None."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = getattr(node.graph.owning_module, node.target, None)
    return value if isinstance(value, torch.Tensor) else None


def _conv_packing_shape(prepack: torch.fx.Node, shape: List[int]) -> List[int]:
    """unpadded_packing_shape for an ``onednn.qconv_prepack`` node whose weight and
    scales are frozen constants; `shape` when they are not."""
    weight, scales = _constant(prepack.args[0]), _constant(prepack.args[1])
    nbytes = getattr(torch.ops.mkldnn, "_nbytes", None)
    if weight is None or scales is None or nbytes is None:
        return shape

    def packed_bytes(candidate):
        return nbytes(torch.ops.onednn.qconv_prepack(weight, scales, *prepack.args[2:8], candidate))

    # the freezing passes run under the compile's fake tensor mode; this packs for real
    with unset_fake_temporarily():
        return unpadded_packing_shape(shape, packed_bytes)


def pack_weights_for_example_size(graph: torch.fx.Graph) -> int:
    """Gives each int8 weight packing in `graph` (after Inductor's freezing patterns,
    before its constants are folded) that has no input shape the shape its input had
    when the graph was traced, and each convolution's packing a shape whose layout is
    not padded (unpadded_packing_shape). Returns how many it changed."""
    changed = 0
    prepacks = _int8_prepacks()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        packet = _packet(node.target)
        position = prepacks.get(packet)
        if position is None or len(node.args) <= position:
            continue
        shape = node.args[position]
        if shape is None:
            activation = _input_of_consumer(node)
            shape = _example_shape(activation) if activation is not None else None
        if shape is None:
            continue
        shape = list(shape)
        if packet is torch.ops.onednn.qconv_prepack and len(shape) == 4:
            shape = _conv_packing_shape(node, shape)
        if node.args[position] is None or shape != list(node.args[position]):
            node.update_arg(position, shape)
            changed += 1
    return changed


def linear_layers_on_onednn(graph: torch.fx.Graph) -> int:
    """Replaces each float linear layer Inductor's freezing gave MKL (its weight
    packing ``mkl._mkl_reorder_linear_weight(w, batch)`` and product
    ``mkl._mkl_linear(x, packed, w, bias, batch)``) by oneDNN's packing and product,
    as Inductor builds them for packages. Returns how many it replaced."""
    mkl = getattr(torch.ops, "mkl", None)
    if mkl is None or not hasattr(mkl, "_mkl_linear") or not torch._C._has_mkldnn:
        return 0
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or _packet(node.target) is not mkl._mkl_linear:
            continue
        activation, packed, weight, bias, batch_size = node.args
        if _packet(getattr(packed, "target", None)) is not mkl._mkl_reorder_linear_weight:
            continue
        with graph.inserting_before(node):
            repacked = graph.call_function(
                torch.ops.mkldnn._reorder_linear_weight.default, (weight, batch_size)
            )
            linear = graph.call_function(
                torch.ops.mkldnn._linear_pointwise.default,
                (activation, repacked, bias, "none", [], ""),
            )
        linear.meta.update(node.meta)
        node.replace_all_uses_with(linear)
        graph.erase_node(node)
        if not packed.users:
            graph.erase_node(packed)
        replaced += 1
    return replaced


@functools.lru_cache(maxsize=None)
def _warn_without_freezing_passes():
    logger.warning(
        "this torch's Inductor has no freezing.freezing_passes to follow: int8 weights "
        "of a free image size are packed for no size in particular (slower convolutions)"
    )


@contextlib.contextmanager
def packed_for_example_size() -> Iterator[None]:
    """Within it, Inductor's freezing packs int8 weights for the example input's size,
    and int8 convolution weights without padding (pack_weights_for_example_size), and
    gives float linear layers to oneDNN (linear_layers_on_onednn), in every graph it
    compiles, free-size or not."""
    from torch._inductor import freezing

    freezing_passes = getattr(freezing, "freezing_passes", None)
    if freezing_passes is None:
        _warn_without_freezing_passes()
        yield
        return

    def passes_then_packing(gm: torch.fx.GraphModule, example_inputs):
        freezing_passes(gm, example_inputs)
        changed = pack_weights_for_example_size(gm.graph)
        if linear_layers_on_onednn(gm.graph) + changed:
            gm.graph.lint()
            gm.recompile()

    freezing.freezing_passes = passes_then_packing
    try:
        yield
    finally:
        freezing.freezing_passes = freezing_passes
