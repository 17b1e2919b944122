"""``cupy.cuda.graph.Graph`` of the stand-in: the nodes a stream capture recorded, replayed
in order by ``launch``.

Mirrors ``cupy/cuda/graph.pyx``: a Graph cannot be built by the user (``__init__`` raises
``NotImplementedError``), only by ``Stream.end_capture()``; ``launch(stream=None)`` runs
it on the given stream, else on the current one; ``upload`` exists. Launching into a
stream that is itself capturing appends the nodes to that capture (a child graph).
A replay runs synchronously, node after node: the order of the capture, never reordered
or overlapped as a GPU may run independent branches.
"""

from __future__ import annotations

from typing import Any

from . import stream as _stream


class Graph:
    """A captured CUDA graph (``nodes``: the kernel launches and operations, in order)."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise NotImplementedError(
            "currently this class cannot be initiated by the user and must "
            "be created via stream capture"
        )

    @classmethod
    def _from_nodes(cls, nodes: list) -> Graph:
        g = cls.__new__(cls)
        g._nodes = tuple(nodes)
        g.launches = 0
        return g

    @property
    def nodes(self) -> tuple:
        return self._nodes

    def launch(self, stream: Any = None) -> None:
        s = _stream.get_current_stream() if stream is None else stream
        if s._capture is not None:
            s._capture.extend(self._nodes)
            return
        for node in self._nodes:
            node.run()
        self.launches += 1

    def upload(self, stream: Any = None) -> None:
        pass

    def debug_dot_str(self, flags: int = 0) -> str:
        lines = ["digraph gpugd_standin_graph {"]
        for i, node in enumerate(self._nodes):
            lines.append(f'  n{i} [label="{node}"];')
            if i:
                lines.append(f"  n{i - 1} -> n{i};")
        lines.append("}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<stand-in cupy.cuda.graph.Graph of {len(self._nodes)} nodes>"
