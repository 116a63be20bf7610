"""The compiler: QuantModel -> decode graph -> HBM layout (-> mapper, kernel looping, bitstream).

- :mod:`sw.compiler.graph`: the decode step as a dataflow graph of patterns, with an
  interpreter bit-exact with :class:`sw.golden.GoldenDecoder`;
- :mod:`sw.compiler.layout`: where every parameter, the KV cache and the I/O words live in HBM,
  with one constant stride per decoder layer (kernel looping).
"""

from sw.compiler.graph import (Graph, GraphError, Node, Param, ParamRef, Tensor, build_graph,
                               execute, run_graph)

__all__ = ["Graph", "GraphError", "Node", "Param", "ParamRef", "Tensor", "build_graph", "execute",
           "run_graph"]
from sw.compiler.layout import HbmLayout, LayoutError, Region, plan_layout  # noqa: E402

__all__ += ["HbmLayout", "LayoutError", "Region", "plan_layout"]
