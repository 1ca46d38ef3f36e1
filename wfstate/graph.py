"""Drawing a run for the admin: the workflow graph as SVG, and the step timeline.

Drawing only: the run page that shows these (what it reads, from where) is built by
``wfstate.admin_pages``. Everything here is computed in Python from a state and a
graph, and rendered as plain SVG/HTML/CSS: no JavaScript, no layout library.

* :func:`layout` places a definition's graph in layers (longest path from the initial
  state over the edges that are not loops), orders each layer by the mean position of
  its predecessors, and routes edges as curves; :func:`render_svg` draws it, each node
  coloured by its step's status in the run, the current state with a thick outline.
* :func:`timeline` turns the steps' start times and durations into bars positioned in
  percent of the run's span.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from wfstate.formatting import human_duration
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, parse_time

# --- sizes of the drawing (px) ----------------------------------------------------------------

NODE_W = 156
NODE_H = 44
LAYER_GAP = 64  # vertical space between layers
NODE_GAP = 28  # horizontal space between nodes of a layer
MARGIN = 24
LOOP_LANE = 36  # room on the right for edges that go back up

EDGE_KINDS = ("success", "failure", "branch", "when", "default", "body", "timeout")


# --- the graph's shape ------------------------------------------------------------------------


@dataclass
class Node:
    id: str
    type: str = "step"
    terminal_status: str | None = None
    workflow: str | None = None  # a call_workflow state: the workflow it calls
    layer: int = 0
    x: float = 0.0
    y: float = 0.0
    status: str | None = None  # the step's status in the run, None if not reached
    current: bool = False


@dataclass
class Edge:
    source: str
    target: str
    kind: str = "default"
    label: str = ""
    back: bool = False  # goes to an earlier (or the same) layer: a loop
    long: bool = False  # skips layers: routed down a lane on the left, around the nodes
    lane: int = 0


@dataclass
class Layout:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    width: float = 0.0
    height: float = 0.0
    left_lane: float = 0.0


def graph_from_states(state: WorkflowState) -> dict[str, Any]:
    """A graph for a run whose definition is gone: its states, in the order they ran."""
    order = sorted(
        state.states.values(), key=lambda s: (s.started_at or "~", list(state.states).index(s.name))
    )
    names = [s.name for s in order]
    if state.current_state and state.current_state not in names:
        names.append(state.current_state)
    nodes = [{"id": n, "type": "step", "terminal_status": None} for n in names]
    edges = [
        {"source": a, "target": b, "kind": "default", "label": ""}
        for a, b in itertools.pairwise(names)
    ]
    return {"initial": names[0] if names else None, "nodes": nodes, "edges": edges}


def layout(graph: dict[str, Any]) -> Layout:
    """Place the nodes of ``graph`` (``WorkflowDefinition.graph()``'s shape) in layers."""
    result = Layout()
    for raw in graph.get("nodes", []):
        result.nodes[raw["id"]] = Node(
            id=raw["id"],
            type=raw.get("type") or "step",
            terminal_status=raw.get("terminal_status"),
            workflow=raw.get("workflow"),
        )
    for raw in graph.get("edges", []):
        if raw["source"] in result.nodes and raw["target"] in result.nodes:
            result.edges.append(
                Edge(
                    raw["source"],
                    raw["target"],
                    raw.get("kind") or "default",
                    raw.get("label") or "",
                )
            )
    if not result.nodes:
        return result
    successors: dict[str, list[str]] = {n: [] for n in result.nodes}
    for edge in result.edges:
        successors[edge.source].append(edge.target)

    # Discovery order: BFS from the initial state, then whatever it does not reach.
    initial = graph.get("initial")
    order: list[str] = []
    seen: set[str] = set()
    starts = ([initial] if initial in result.nodes else []) + list(result.nodes)
    for start in starts:
        if start in seen:
            continue
        seen.add(start)
        queue = deque([start])
        while queue:
            name = queue.popleft()
            order.append(name)
            for nxt in successors[name]:
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
    rank = {name: i for i, name in enumerate(order)}

    # Loops: an edge to a node on the current DFS path goes back; the rest form a DAG.
    back: set[tuple[str, str]] = set()
    state_of: dict[str, int] = {}  # 1 on the path, 2 done
    for root in order:
        if root in state_of:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state_of[root] = 1
        while stack:
            name, i = stack[-1]
            if i < len(successors[name]):
                stack[-1] = (name, i + 1)
                nxt = successors[name][i]
                if state_of.get(nxt) == 1:
                    back.add((name, nxt))
                elif nxt not in state_of:
                    state_of[nxt] = 1
                    stack.append((nxt, 0))
            else:
                state_of[name] = 2
                stack.pop()

    # Longest-path layers over the DAG (Kahn's order keeps it linear).
    preds: dict[str, list[str]] = {n: [] for n in result.nodes}
    indegree = dict.fromkeys(result.nodes, 0)
    for edge in result.edges:
        if (edge.source, edge.target) in back or edge.source == edge.target:
            edge.back = True
            continue
        preds[edge.target].append(edge.source)
        indegree[edge.target] += 1
    ready = deque(sorted((n for n, d in indegree.items() if d == 0), key=rank.__getitem__))
    layer = dict.fromkeys(result.nodes, 0)
    while ready:
        name = ready.popleft()
        for edge in result.edges:
            if edge.source == name and not edge.back:
                layer[edge.target] = max(layer[edge.target], layer[name] + 1)
                indegree[edge.target] -= 1
                if indegree[edge.target] == 0:
                    ready.append(edge.target)

    layers: dict[int, list[str]] = {}
    for name in order:
        layers.setdefault(layer[name], []).append(name)
    # Order each layer by the mean position of its predecessors (one barycentre pass).
    position: dict[str, float] = {}
    for depth in sorted(layers):
        members = layers[depth]
        if depth:

            def barycentre(name: str) -> tuple[float, int]:
                placed = [position[p] for p in preds[name] if p in position]
                return (sum(placed) / len(placed) if placed else float("inf"), rank[name])

            members.sort(key=barycentre)
        for i, name in enumerate(members):
            position[name] = i

    widest = max(len(m) for m in layers.values())
    content_w = widest * NODE_W + (widest - 1) * NODE_GAP
    has_loops = any(e.back for e in result.edges)
    long_targets: dict[str, int] = {}
    for edge in result.edges:
        if not edge.back and layer[edge.target] - layer[edge.source] > 1:
            edge.long = True
            edge.lane = long_targets.setdefault(edge.target, len(long_targets))
    left_lane = (LOOP_LANE + 8 * max(0, len(long_targets) - 1)) if long_targets else 0
    result.left_lane = left_lane
    result.width = content_w + 2 * MARGIN + (LOOP_LANE if has_loops else 0) + left_lane
    result.height = len(layers) * NODE_H + (len(layers) - 1) * LAYER_GAP + 2 * MARGIN
    for depth, members in layers.items():
        row_w = len(members) * NODE_W + (len(members) - 1) * NODE_GAP
        left = MARGIN + left_lane + (content_w - row_w) / 2
        for i, name in enumerate(members):
            node = result.nodes[name]
            node.layer = depth
            node.x = left + i * (NODE_W + NODE_GAP)
            node.y = MARGIN + depth * (NODE_H + LAYER_GAP)
    return result


# --- drawing --------------------------------------------------------------------------------------


def _edge_path(edge: Edge, nodes: dict[str, Node], lane_x: float, offset: float) -> str:
    src, dst = nodes[edge.source], nodes[edge.target]
    if edge.back:
        # Out of the source's right side, up the lane on the right, into the target's.
        x1, y1 = src.x + NODE_W, src.y + NODE_H / 2
        x2, y2 = dst.x + NODE_W + 2, dst.y + NODE_H / 2 + 6
        lane = lane_x + offset
        return (
            f"M{x1:.1f},{y1:.1f} C{lane:.1f},{y1:.1f} {lane:.1f},{y1:.1f} "
            f"{lane:.1f},{(y1 + y2) / 2:.1f}"
            f" C{lane:.1f},{y2:.1f} {lane:.1f},{y2:.1f} {x2 + 8:.1f},{y2:.1f}"
        )
    if edge.long:
        # Out of the source's left side, down a lane left of every node, into the top
        # of the target: edges that skip layers never cross the nodes between.
        lane = MARGIN / 2 + 4 + 8 * edge.lane
        x1, y1 = src.x, src.y + NODE_H / 2
        x2, y2 = dst.x + NODE_W / 2 - 16 - 6 * edge.lane, dst.y - 8
        return (
            f"M{x1:.1f},{y1:.1f} C{lane:.1f},{y1:.1f} {lane:.1f},{y1:.1f} {lane:.1f},{y1 + 22:.1f}"
            f" L{lane:.1f},{y2 - 30:.1f} C{lane:.1f},{y2 - 10:.1f} {x2:.1f},{y2 - 24:.1f}"
            f" {x2:.1f},{y2:.1f}"
        )
    x1 = src.x + NODE_W / 2 + offset
    y1 = src.y + NODE_H
    x2 = dst.x + NODE_W / 2 + offset / 2
    y2 = dst.y - 8  # leave room for the arrowhead
    mid = (y1 + y2) / 2
    return f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_svg(
    graph: dict[str, Any],
    step_status: dict[str, str] | None = None,
    current: str | None = None,
    *,
    title: str = "",
    captions: dict[str, str] | None = None,
) -> SafeString:
    """The graph as an inline ``<svg>``: status-coloured nodes, the current one outlined.

    Edge styles: success green, failure red, parallel branch dashed, conditional (when)
    blue with its condition as a tooltip, default grey, a loop's body dotted (a loop
    node is drawn with a double outline, ``captions`` under it: its iterations).
    Edges back to an earlier layer go up a lane on the right.
    """
    drawing = layout(graph)
    step_status = step_status or {}
    for node in drawing.nodes.values():
        node.status = step_status.get(node.id)
        node.current = node.id == current
    parts: list[str] = [
        f'<svg class="wf-graph" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{drawing.width:.0f}" height="{drawing.height:.0f}" '
        f'viewBox="0 0 {drawing.width:.0f} {drawing.height:.0f}">',
        f"<title>{escape(title or 'workflow graph')}</title>",
        "<defs>",
    ]
    for kind in EDGE_KINDS:
        parts.append(
            f'<marker id="wf-arrow-{kind}" class="wf-arrow wf-arrow-{kind}" viewBox="0 0 10 10" '
            'refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            '<path d="M0,0 L10,5 L0,10 z"/></marker>'
        )
    parts.append("</defs>")

    lane_x = drawing.width - MARGIN / 2 - LOOP_LANE / 2
    # Several edges between the same layers fan out a little so they stay readable.
    fan: dict[str, int] = {}
    parts.append('<g class="wf-edges">')
    for edge in drawing.edges:
        key = (
            f"back:{edge.target}"
            if edge.back
            else f"long:{edge.source}"
            if edge.long
            else edge.source
        )
        n = fan.get(key, 0)
        fan[key] = n + 1
        offset = (n % 2 * 2 - 1) * ((n + 1) // 2) * 8 if n else 0
        kind = edge.kind if edge.kind in EDGE_KINDS else "default"
        d = _edge_path(edge, drawing.nodes, lane_x, offset)
        tip = f"{edge.source} → {edge.target} ({kind}{': ' + edge.label if edge.label else ''})"
        parts.append(
            f'<path class="wf-edge wf-edge-{kind}" d="{d}" marker-end="url(#wf-arrow-{kind})">'
            f"<title>{escape(tip)}</title></path>"
        )
        if edge.label and not edge.back:
            src, dst = drawing.nodes[edge.source], drawing.nodes[edge.target]
            lx = (src.x + dst.x) / 2 + NODE_W / 2 + 6 + offset
            ly = (src.y + NODE_H + dst.y) / 2
            parts.append(
                f'<text class="wf-edge-label" x="{lx:.1f}" y="{ly:.1f}">'
                f"{escape(_clip(edge.label, 22))}</text>"
            )
    parts.append("</g>")

    parts.append('<g class="wf-nodes">')
    for node in drawing.nodes.values():
        classes = ["wf-node", f"wf-node-{node.type}", f"wf-status-{node.status or 'pending'}"]
        if node.terminal_status:
            classes.append(f"wf-terminal-{node.terminal_status}")
        if node.current:
            classes.append("wf-current")
        radius = NODE_H / 2 if node.type == "terminal" else 8
        if node.type == "call_workflow":
            # A call is a box within a box: the child run is a workflow of its own.
            parts.append(
                f'<rect class="wf-call-frame" x="{node.x - 3:.1f}" y="{node.y - 3:.1f}" '
                f'width="{NODE_W + 6}" height="{NODE_H + 6}" rx="11" ry="11"/>'
            )
        caption = node.type if node.type != "step" else ""
        if node.type == "terminal" and node.terminal_status:
            caption = f"end: {node.terminal_status}"
        if node.type == "call_workflow":
            caption = f"calls {node.workflow or '?'}"  # the sub-workflow, drawn as a call
        if captions and node.id in captions:
            caption = f"{caption} {captions[node.id]}".strip()
        status_text = node.status or "not reached"
        current_attr = ' aria-current="step"' if node.current else ""
        class_attr = " ".join(classes)
        parts.append(
            f'<g class="{class_attr}" data-state="{escape(node.id)}"'
            f"{current_attr}>"
            f"<title>{escape(node.id)}: {escape(status_text)}"
            f"{' (current state)' if node.current else ''}</title>"
            f'<rect x="{node.x:.1f}" y="{node.y:.1f}" width="{NODE_W}" height="{NODE_H}" '
            f'rx="{radius:.0f}" ry="{radius:.0f}"/>'
        )
        if node.type in ("for_each", "while"):
            parts.append(
                f'<rect class="wf-loop-inner" x="{node.x + 3:.1f}" y="{node.y + 3:.1f}" '
                f'width="{NODE_W - 6}" height="{NODE_H - 6}" rx="6" ry="6"/>'
            )
        cx = node.x + NODE_W / 2
        if caption or node.status:
            parts.append(
                f'<text class="wf-node-label" x="{cx:.1f}" y="{node.y + 19:.1f}">'
                f"{escape(_clip(node.id, 20))}</text>"
                f'<text class="wf-node-caption" x="{cx:.1f}" y="{node.y + 34:.1f}">'
                f"{escape(_clip(' · '.join(t for t in (caption, node.status or '') if t), 26))}"
                "</text>"
            )
        else:
            parts.append(
                f'<text class="wf-node-label" x="{cx:.1f}" y="{node.y + NODE_H / 2 + 5:.1f}">'
                f"{escape(_clip(node.id, 20))}</text>"
            )
        parts.append("</g>")
    parts.append("</g></svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text is escaped


# --- the timeline -------------------------------------------------------------------------------


@dataclass
class Bar:
    name: str
    status: str
    left: float  # percent of the run's span
    width: float  # percent
    started_at: datetime | None
    duration_ms: int | None
    attempt: int
    label: str
    rewound: bool = False  # an earlier attempt a resume rewound past (kept in history)


# Steps whose bar runs up to now: one executing, and a wait or sleep step parked.
_OPEN = (StepStatus.RUNNING, StepStatus.WAITING)


def timeline(state: WorkflowState, now: datetime | None = None) -> dict[str, Any]:
    """Bars for the steps that started, in percent of the run's span, plus axis ticks."""
    now = now or datetime.now(UTC)
    start = parse_time(state.started_at)
    final = RunStatus(state.status).is_final
    run_end = parse_time(state.completed_at) if final else now
    entries: list[tuple[StepResult, bool]] = []
    for event in state.history:
        for raw in (event.get("rewound") or []) if isinstance(event, dict) else []:
            try:
                entries.append((StepResult.from_dict(raw), True))
            except (KeyError, TypeError, ValueError):
                continue
    entries += [(step, False) for step in state.states.values()]
    steps = []
    for step, rewound in entries:
        s = parse_time(step.started_at)
        if s is None:
            continue
        e = parse_time(step.completed_at)
        if e is None:
            e = run_end if step.status in _OPEN and not rewound else s
        steps.append((step, s, e or s, rewound))
    if start is None:
        start = min((s for _, s, _, _ in steps), default=None)
    if start is None or not steps:
        return {"bars": [], "ticks": [], "span_ms": 0}
    end = max([e for _, _, e, _ in steps] + ([run_end] if run_end else []))
    span = max((end - start).total_seconds() * 1000, 1.0)
    bars = []
    for step, s, e, rewound in sorted(steps, key=lambda item: item[1]):
        left = max(0.0, (s - start).total_seconds() * 1000 / span * 100)
        width = max((e - s).total_seconds() * 1000 / span * 100, 0.4)
        duration = (
            step.duration_ms
            if step.duration_ms is not None
            else int((e - s).total_seconds() * 1000)
        )
        bars.append(
            Bar(
                name=step.name,
                status=str(step.status),
                left=round(min(left, 99.6), 3),
                width=round(min(width, 100 - min(left, 99.6)), 3),
                started_at=s,
                duration_ms=duration,
                attempt=step.attempt,
                label=human_duration(duration),
                rewound=rewound,
            )
        )
    ticks = [{"left": p, "label": human_duration(span * p / 100)} for p in (0, 25, 50, 75, 100)]
    return {"bars": bars, "ticks": ticks, "span_ms": int(span)}
