"""How a drawn plan looks: node, edge and cell styles, and the legend every drawing has."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from edit.graph.nodes import DATA, PREFETCH, REUSE, Embed, Guide, Head, Input, Output, Prefetch, Probe, Update

if TYPE_CHECKING:
    from edit.graph.core import Graph
    from edit.graph.draw_states import _Look

#: Fill colour, line style and legend text of a cell by state. M only comes from a trace.
CELL_STYLE = {"C": ("#b7e4c7", "solid", "computed"),
              "S": ("#dee2e6", "dashed", "reused (from sN: the step whose residual it reads)"),
              "R": ("#d0bfff", "dashed", "reused from another generation"),
              "?": ("#ffd8a8", "solid", "decided at run time"),
              "M": ("#ffa8a8", "solid", "reused, missed the store: recomputed")}
#: The border of a cell the policy decided at run time, once a trace says what it did.
RUNTIME_BORDER = "#e8590c"
REUSE_COLOR, PREFETCH_COLOR = "#1c7ed6", "#9c36b5"
# weight 0, not constraint=false: dot then routes them through its crossing minimisation, down the
# side of their own branch, instead of as free splines around everything in between
EDGE_STYLE = {DATA: {},
              REUSE: dict(color=REUSE_COLOR, style="dashed", weight="0"),
              PREFETCH: dict(color=PREFETCH_COLOR, style="dashed", weight="0")}
BLUE, YELLOW, PURPLE = "#d0ebff", "#fff3bf", "#eebefa"
NODE_STYLE: dict[type, dict[str, str]] = {
    Input: dict(shape="parallelogram"), Output: dict(shape="parallelogram"),
    Embed: dict(shape="box", style="rounded,filled", fillcolor=BLUE),
    Head: dict(shape="box", style="rounded,filled", fillcolor=BLUE),
    Probe: dict(shape="box", style="filled", fillcolor=YELLOW),
    Prefetch: dict(shape="cds", style="filled", fillcolor=PURPLE),
    Guide: dict(shape="ellipse"), Update: dict(shape="ellipse"),
}


def _cell_look(state: str, runtime: bool, look: _Look) -> dict[str, str]:
    fill, line, _ = CELL_STYLE[state]
    attrs = dict(shape="box", style=f"filled,{line}", fillcolor=fill)
    if runtime and look.traced:
        attrs.update(color=RUNTIME_BORDER, penwidth="2")
    return attrs


def _legend(level: str, look: _Look, graph: Graph) -> str:
    def swatch(fill: str, line: str, border: str = "") -> str:
        colour = f' COLOR="{border}"' if border else ""
        return f'<TD BGCOLOR="{fill}" STYLE="{line}"{colour} BORDER="1" WIDTH="18" HEIGHT="10"></TD>'

    def text(words: str, colour: str = "") -> str:
        words = html.escape(words)
        if colour:
            words = f'<FONT COLOR="{colour}">{words}</FONT>'
        return f'<TD ALIGN="LEFT">{words}</TD>'

    rows = [f"<TR>{swatch(fill, line)}{text(words)}</TR>" for fill, line, words in CELL_STYLE.values()]
    if look.traced:
        rows.append(f"<TR>{swatch('#ffffff', 'solid', RUNTIME_BORDER)}"
                    f"{text('decided at run time: filled with what the traced run did')}</TR>")
    if level == "nodes":
        rows.append(f"<TR>{text('- - ->', REUSE_COLOR)}"
                    f"{text('reuse: from the cell whose residual is read', REUSE_COLOR)}</TR>")
        if graph.nodes(Prefetch):
            rows.append(f"<TR>{text('- - ->', PREFETCH_COLOR)}"
                        f"{text('prefetch: stages a read, issued before a cell', PREFETCH_COLOR)}</TR>")
        rows.append(f"<TR>{swatch(BLUE, 'rounded')}{text('embed / head')}</TR>")
        if graph.nodes(Probe):
            rows.append(f"<TR>{swatch(YELLOW, 'solid')}{text('first-block probe (always computed)')}</TR>")
    elif graph.nodes(Prefetch):
        rows.append(f"<TR>{text('prefetched', PREFETCH_COLOR)}"
                    f"{text('its read is staged ahead (see level nodes)')}</TR>")
    title = {"nodes": "every node and edge", "units": "one box per cell",
             "steps": "one square per cell, a row per step"}[level]
    return (f'<<TABLE BORDER="1" COLOR="#adb5bd" CELLBORDER="0" CELLSPACING="2" CELLPADDING="1">'
            f'<TR><TD COLSPAN="2" ALIGN="LEFT"><B>legend</B> ({title})</TD></TR>{"".join(rows)}</TABLE>>')
