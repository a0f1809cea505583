"""int8 weight packing for a graph Inductor compiles with a free image size.

With freezing, Inductor hands oneDNN its int8 convolution and linear weights
pre-packed in the blocked layout its kernels read, and oneDNN picks that layout for
the input's shape. With a free image size torchao's x86 passes give it none
(``onednn.qconv_prepack`` and ``onednn.qlinear_prepack`` with ``x_shape=None``), and
the convolutions run slower at every size. Inductor packs float linear weights for the
traced input's size (its size hint) in that case; this does the same for int8: each
weight is packed for the shape its input had when the graph was traced.

The packing is a layout only: at another image size oneDNN still computes the same
convolution, so the results do not depend on the size traced. docs/benchmarks.md
measures the difference.

    with packed_for_example_size():
        torch._inductor.aoti_compile_and_package(program, ...)
"""

import contextlib
import functools
import logging
from typing import Iterator, List, Optional

import torch
from torch.fx.experimental.symbolic_shapes import has_free_symbols, optimization_hint

__all__ = ["pack_weights_for_example_size", "packed_for_example_size"]

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


def _int8_prepacks():
    """int8 weight packing op -> position of its input-shape argument."""
    return {torch.ops.onednn.qconv_prepack: 8, torch.ops.onednn.qlinear_prepack: 1}


def pack_weights_for_example_size(graph: torch.fx.Graph) -> int:
    """Gives each int8 weight packing in `graph` (after Inductor's freezing patterns,
    before its constants are folded) that has no input shape the shape its input had
    when the graph was traced. Returns how many it changed."""
    changed = 0
    prepacks = _int8_prepacks()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        position = prepacks.get(getattr(node.target, "overloadpacket", node.target))
        if position is None or len(node.args) <= position or node.args[position] is not None:
            continue
        activation = _input_of_consumer(node)
        shape = _example_shape(activation) if activation is not None else None
        if shape is not None:
            node.update_arg(position, shape)
            changed += 1
    return changed


@functools.lru_cache(maxsize=None)
def _warn_without_freezing_passes():
    logger.warning(
        "this torch's Inductor has no freezing.freezing_passes to follow: int8 weights "
        "of a free image size are packed for no size in particular (slower convolutions)"
    )


@contextlib.contextmanager
def packed_for_example_size() -> Iterator[None]:
    """Within it, Inductor's freezing packs int8 weights for the example input's size
    (pack_weights_for_example_size) in every graph it compiles."""
    from torch._inductor import freezing

    freezing_passes = getattr(freezing, "freezing_passes", None)
    if freezing_passes is None:
        _warn_without_freezing_passes()
        yield
        return

    def passes_then_packing(gm: torch.fx.GraphModule, example_inputs):
        freezing_passes(gm, example_inputs)
        if pack_weights_for_example_size(gm.graph):
            gm.graph.lint()
            gm.recompile()

    freezing.freezing_passes = passes_then_packing
    try:
        yield
    finally:
        freezing.freezing_passes = freezing_passes
