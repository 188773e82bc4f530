"""Passes as values and the `Pipeline` that runs them.

A pass is a frozen attrs record with a `name` and its parameters as fields, called as
`pass_(graph) -> graph` (as xDSL's `ModulePass`); a plain function `Graph -> Graph` is a pass too.
A `Pipeline` has a textual form that parses back to equal passes — a policy prints with all its
arguments, so the text of a plan is lossless:

>>> from edit.passes import Pipeline
>>> p = Pipeline.parse("regroup(granularity=2),apply_policy(policy=fbcache(rel_l1_thresh=0.3)),dce")
>>> str(p)
'regroup(granularity=2),apply_policy(policy=fbcache(rel_l1_thresh=0.3, warmup_steps=0)),dce'
>>> Pipeline.parse(str(p)) == p
True
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import attrs

from edit.graph import Graph, verify
from edit.graph.gcpause import paused_gc  # noqa: F401  (re-exported: passes and the runtime use it)

#: pass name -> pass class (or function), filled by `register_pass`; `Pipeline.parse` looks names up here.
PASSES: dict[str, Any] = {}


def register_pass(obj: Any) -> Any:
    """Make a pass class (or a `Graph -> Graph` function) known to `Pipeline.parse` by its name."""
    name = getattr(obj, "name", None) if isinstance(obj, type) else getattr(obj, "__name__", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"register_pass: {obj!r} has no identifier `name`")
    PASSES[name] = obj
    return obj


def bound(**metadata: Any) -> Any:
    """A pass field bound at pipeline build time (a policy object, a decision function): not parsed
    from text; `text=` says how it prints (None: not at all)."""
    return {"bind": True, **metadata}


@attrs.frozen
class Pass:
    """Base of the built-in passes: `name`, parameters as fields, `run(graph) -> graph`."""

    name: ClassVar[str] = "pass"

    def __call__(self, graph: Graph) -> Graph:
        if not isinstance(graph, Graph):
            raise TypeError(f"{self.name}: expected an edit.graph.Graph, got {type(graph).__name__}")
        return self.run(graph)

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError  # abstract: each pass defines its rewrite

    def to_text(self) -> str:
        args = []
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            printer = field.metadata.get("text", repr)
            if printer is None or (field.default is not attrs.NOTHING and value == field.default
                                   and not field.metadata.get("always")):
                continue
            args.append(f"{field.name}={printer(value)}")
        return f"{self.name}({', '.join(args)})" if args else self.name


def pass_text(pass_: Callable[[Graph], Graph]) -> str:
    """The textual form of one pass: a `Pass` record's `to_text()`, a function's name."""
    if isinstance(pass_, Pass):
        return pass_.to_text()
    return getattr(pass_, "name", None) or getattr(pass_, "__name__", type(pass_).__name__)


@attrs.frozen
class PassRecord:
    """What one pass did: whether it changed the graph and how many nodes it added/removed."""

    name: str
    changed: bool
    added: int
    removed: int
    seconds: float

    def __str__(self) -> str:
        what = f"+{self.added} -{self.removed} nodes" if self.changed else "unchanged"
        return f"{self.name}: {what} ({self.seconds * 1000:.1f} ms)"


def _check_passes(inst: Pipeline, attribute: attrs.Attribute, value: tuple) -> None:
    for p in value:
        if not callable(p):
            raise TypeError(f"passes: expected passes (callables Graph -> Graph), got {type(p).__name__}")


def _debug_default() -> bool:
    return os.environ.get("EDIT_DEBUG", "") not in ("", "0")


@attrs.frozen
class Pipeline:
    """Passes run in order. With `debug` (default: the EDIT_DEBUG environment variable) `verify`
    runs after every pass, so a pass that breaks the graph fails right there, named; otherwise the
    caller verifies the result once. `run` also reports what each pass changed."""

    passes: tuple = attrs.field(default=(), converter=tuple, validator=_check_passes)
    debug: bool = attrs.field(factory=_debug_default, eq=False)

    def __call__(self, graph: Graph) -> Graph:
        return self.run(graph)[0]

    def run(self, graph: Graph) -> tuple[Graph, list[PassRecord]]:
        with paused_gc():
            return self._run(graph)

    def _run(self, graph: Graph) -> tuple[Graph, list[PassRecord]]:
        records = []
        for p in self.passes:
            start = time.perf_counter()
            new = p(graph)
            if not isinstance(new, Graph):
                raise TypeError(f"{pass_text(p)}: a pass must return a Graph, got {type(new).__name__}")
            if _call_fields(new.spec) != _call_fields(graph.spec):  # a pass may regroup, not re-spec
                raise ValueError(f"{pass_text(p)}: a pass may not change the run spec ({_spec_change(graph.spec, new.spec)}); "
                                 "the call decides steps, timesteps, guidance and size")
            if self.debug:
                try:
                    verify(new)
                except ValueError as err:
                    raise type(err)(f"after pass {pass_text(p)}: {err}") from err
            seconds = time.perf_counter() - start
            if new is graph:
                records.append(PassRecord(pass_text(p), False, 0, 0, seconds))
            else:
                before, after = graph.nx._node.keys(), new.nx._node.keys()  # set algebra on key views, in C
                records.append(PassRecord(pass_text(p), True, len(after - before), len(before - after), seconds))
            graph = new
        return graph, records

    def to_text(self) -> str:
        return ",".join(pass_text(p) for p in self.passes)

    def __str__(self) -> str:
        return self.to_text()

    def __add__(self, other: Pipeline | Iterable) -> Pipeline:
        extra = other.passes if isinstance(other, Pipeline) else tuple(other)
        return Pipeline(self.passes + extra, debug=self.debug)

    @classmethod
    def parse(cls, text: str, *, debug: bool | None = None, **bindings: Any) -> Pipeline:
        """A pipeline from its text, e.g. `"regroup(granularity=2),apply_policy(policy=fbcache(rel_l1_thresh=0.3))"`.

        Arguments are Python literals; a bare word is a string. A policy is a registered name
        (its defaults) or a call of it with literal keyword arguments. `bindings` supply the fields
        that text cannot carry (`decisions=`), to every pass that has that field; a `policy=`
        binding replaces the policy the text names (the caller's policy is the one that decides).
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a pipeline string, got {type(text).__name__}")
        passes = [_parse_one(item, bindings) for item in _split(text)]
        return cls(passes) if debug is None else cls(passes, debug=debug)


def _call_fields(spec: Any) -> Any:
    return spec if spec is None else spec.call_fields()


def _spec_change(old: Any, new: Any) -> str:
    if old is None or new is None or type(old) is not type(new):
        return f"spec {old!r} -> {new!r}"
    for field in attrs.fields(type(old)):
        a, b = getattr(old, field.name), getattr(new, field.name)
        if a != b:
            return f"{field.name}: {a!r} -> {b!r}"
    return "spec"


def _split(text: str) -> list[ast.expr]:
    if not text.strip():
        return []
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"text: not a pipeline (name(arg=value, ...),...): {text!r} ({err.msg})") from None
    return list(tree.elts) if isinstance(tree, ast.Tuple) else [tree]


def _literal(node: ast.expr, where: str) -> Any:
    if isinstance(node, ast.Name):
        return node.id  # a bare word: granularity=stack, policy=teacache
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"text: {where}: expected a literal value, got {ast.unparse(node)!r}") from None


def _value(field: attrs.Attribute, node: ast.expr, name: str) -> Any:
    """One argument's value: a field with a `parse` hook (apply_policy's policy, which may be a
    call) reads the expression itself; every other field takes a literal."""
    hook = field.metadata.get("parse")
    if hook is None:
        return _literal(node, f"{name}({field.name}=...)")
    try:
        return hook(node)
    except (TypeError, ValueError) as err:
        raise ValueError(f"text: {name}: {err}") from None


def _parse_one(item: ast.expr, bindings: dict[str, Any]) -> Any:
    if isinstance(item, ast.Name):
        name, args, keywords = item.id, [], []
    elif isinstance(item, ast.Call) and isinstance(item.func, ast.Name):
        name, args, keywords = item.func.id, item.args, item.keywords
    else:
        raise ValueError(f"text: expected a pass name or name(arg=value, ...), got {ast.unparse(item)!r}")
    from edit.passes import builtin  # noqa: F401  (registers the built-in passes)

    if name not in PASSES:
        raise ValueError(f"text: unknown pass {name!r}; registered: {', '.join(sorted(PASSES))}")
    obj = PASSES[name]
    if not isinstance(obj, type):
        if args or keywords:
            raise ValueError(f"text: {name} is a function pass and takes no arguments")
        return obj
    fields = {f.name: f for f in attrs.fields(obj)}
    parsed = {f.name: f for f in fields.values()  # what text may give: not the bound-only fields
              if f.init and not (f.metadata.get("bind") and f.metadata.get("text", 0) is None)}
    if len(args) > len(parsed):
        raise ValueError(f"text: {name} takes at most {len(parsed)} positional arguments, got {len(args)}")
    nodes: dict[str, ast.expr] = {}
    for key, node in list(zip(parsed, args)) + [(k.arg, k.value) for k in keywords]:
        if key is None:
            raise ValueError(f"text: {name}: **{ast.unparse(node)} is not allowed; write {name}(arg=value, ...)")
        if key not in parsed:
            raise ValueError(f"text: {name} has no parameter {key!r} (parameters: {', '.join(parsed) or 'none'})")
        if key in nodes:
            raise ValueError(f"text: {name}: parameter {key!r} is given twice")
        nodes[key] = node
    supplied = {k: v for k, v in bindings.items() if k in fields and fields[k].metadata.get("bind")}
    # a binding decides its field: what the text says there is not read (as before policies printed in full)
    kwargs = {k: _value(parsed[k], node, name) for k, node in nodes.items() if k not in supplied}
    kwargs.update(supplied)
    try:
        return obj(**{getattr(fields[k], "alias", None) or k: v for k, v in kwargs.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"text: {name}: {err}") from None
