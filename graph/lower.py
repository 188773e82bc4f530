"""Lowering: a `RunSpec` to the graph of the plain (no-cache) denoising run."""

from __future__ import annotations

from edit.graph.core import Graph
from edit.graph.nodes import Embed, Guide, Head, Input, Node, Output, Unit, Update
from edit.graph.spec import RunSpec


def lower(spec: RunSpec) -> Graph:
    """Build the no-cache run: per step and CFG branch embed -> units -> head; guide; update.

    Executing this graph is bit-for-bit identical to diffusers' `WanPipeline` denoising loop.
    """
    if not isinstance(spec, RunSpec):
        raise TypeError(f"spec: expected a RunSpec, got {type(spec).__name__}")
    g = Graph(spec)
    latents: Node = g.add_node(Input("latents"))
    texts = {b: g.add_node(Input(f"text.{b}")) for b in spec.branches}
    conditions = {name: g.add_node(Input(name)) for name in spec.conditions}
    for step in range(spec.num_steps):
        heads = {}
        model = spec.model_at(step)
        for branch in spec.branches:
            embed = g.add_node(Embed(step, branch, model))
            g.add_edge(latents, embed, port="latents")
            g.add_edge(texts[branch], embed, port="text")
            for name, source in conditions.items():
                g.add_edge(source, embed, port=name)
            hidden, select = embed, "hidden"
            for index, blocks in enumerate(spec.units()):
                unit = g.add_node(Unit(step, branch, index, blocks, model))
                g.add_edge(hidden, unit, port="hidden", select=select)
                g.add_edge(embed, unit, port="ctx")
                hidden, select = unit, None
            head = g.add_node(Head(step, branch, model))
            g.add_edge(hidden, head, port="hidden")
            g.add_edge(embed, head, port="ctx")
            heads[branch] = head
        if spec.cfg:
            noise = g.add_node(Guide(step, spec.guidance_at(step)))
            g.add_edge(heads["cond"], noise, port="cond")
            g.add_edge(heads["uncond"], noise, port="uncond")
        else:
            noise = heads["cond"]
        update = g.add_node(Update(step))
        g.add_edge(noise, update, port="noise")
        g.add_edge(latents, update, port="latents")
        latents = update
    out = g.add_node(Output())
    g.add_edge(latents, out, port="latents")
    return g
