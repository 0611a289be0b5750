"""Load a site file: YAML → plain data with line marks → validated :class:`Site`.

Every problem becomes a :class:`~orchestrator.errors.SiteError` naming the file, the line
(from the YAML parser's node marks) and the key path, e.g.
``site.yaml:14 media.nodes[0].ports: port_min 40000 must be below port_max 30000``.
"""

from __future__ import annotations

import json
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SiteError, SiteErrors
from .model import Site, short

Path_ = tuple[str | int, ...]
DEFAULT_SITE = "lab"  # the embedded default

# Bounded work for any input (a site file is a few KB): a YAML alias bomb, deep nesting or a
# huge file is refused with a located error instead of taking seconds and gigabytes.
MAX_BYTES = 256 << 10
MAX_DEPTH = 32  # the deepest real key path (recording.rules[0].match.header.pattern) is 6
MAX_ALIASES = 100  # alias uses (*name) in one document
MAX_VALUES = 20_000  # values after alias expansion (the carrier example has ~300)
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}
_TAG_NAMES = {"tag:yaml.org,2002:timestamp": "a date/timestamp",
              "tag:yaml.org,2002:binary": "binary data (!!binary)",
              "tag:yaml.org,2002:set": "a set (!!set)", "tag:yaml.org,2002:omap": "an !!omap",
              "tag:yaml.org,2002:pairs": "!!pairs"}


class _Doc:
    """Plain data plus the line of every key path (1-based)."""

    def __init__(self) -> None:
        self.value_line: dict[Path_, int] = {}
        self.key_line: dict[Path_, int] = {}

    def line(self, path: Path_) -> int | None:
        # the value's line, else the key's, else the nearest ancestor's
        for n in range(len(path), -1, -1):
            p = path[:n]
            if n == len(path) and p in self.key_line:
                return self.key_line[p]
            if p in self.value_line:
                return self.value_line[p]
        return None


class _Composer(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit and an alias budget, so composing is
    bounded too (its composer recurses once per nesting level)."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self._file = file
        self._depth = 0
        self._aliases = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        self._nodes += 1
        if self._nodes > MAX_VALUES:
            raise SiteError(f"too many values (more than {MAX_VALUES})", file=self._file,
                            line=line)
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SiteError(f"too many alias expansions (more than {MAX_ALIASES} aliases)",
                                file=self._file, line=line)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SiteError(f"nesting deeper than {MAX_DEPTH} levels", file=self._file,
                                line=line)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def _compose(text: str, file: str) -> yaml.Node | None:
    loader = _Composer(text, file)
    try:
        return loader.get_single_node()  # type: ignore[no-any-return]
    finally:
        loader.dispose()


class _Budget:
    def __init__(self) -> None:
        self.values = 0


def _to_data(node: yaml.Node, path: Path_, doc: _Doc, file: str,
             budget: _Budget | None = None) -> Any:
    budget = budget or _Budget()
    budget.values += 1
    if budget.values > MAX_VALUES:
        raise SiteError(f"too many alias expansions (the document expands to more than "
                        f"{MAX_VALUES} values)", file=file, line=node.start_mark.line + 1)
    if len(path) > MAX_DEPTH:  # aliases can nest deeper than the text does
        raise SiteError(f"nesting deeper than {MAX_DEPTH} levels", file=file,
                        line=node.start_mark.line + 1)
    doc.value_line[path] = node.start_mark.line + 1
    if node.tag in _TAG_NAMES or (not isinstance(node, yaml.ScalarNode)
                                  and node.tag not in ("tag:yaml.org,2002:map",
                                                       "tag:yaml.org,2002:seq")):
        what = _TAG_NAMES.get(node.tag, f"a value tagged {short(node.tag)}")
        shown = f" {short(str(node.value))}" if isinstance(node, yaml.ScalarNode) else ""
        raise SiteError(f"expected a plain value, got {what}{shown} (quote it if it is a "
                        f"string)", file=file, line=node.start_mark.line + 1,
                        path=_fmt(path) or None)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise SiteError("keys must be plain strings", file=file,
                                line=knode.start_mark.line + 1, path=_fmt(path) or None)
            key = knode.value
            if key in out:  # PyYAML silently keeps the last one; a site must be unambiguous
                raise SiteError(f"duplicate key '{key}' (first at line "
                                f"{doc.key_line[path + (key,)]})", file=file,
                                line=knode.start_mark.line + 1, path=_fmt(path + (key,)))
            doc.key_line[path + (key,)] = knode.start_mark.line + 1
            out[key] = _to_data(vnode, path + (key,), doc, file, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(v, path + (i,), doc, file, budget) for i, v in enumerate(node.value)]
    if node.tag not in _PLAIN_TAGS:  # a local tag (!foo): PyYAML's safe loader refuses it too
        raise SiteError(f"expected a plain value, got a value tagged {short(node.tag)}",
                        file=file, line=node.start_mark.line + 1, path=_fmt(path) or None)
    return yaml.SafeLoader.construct_object(_SCALAR_LOADER, node)  # type: ignore[arg-type]


class _ScalarLoader(yaml.SafeLoader):
    def __init__(self) -> None:  # no stream: only used to construct scalars
        yaml.SafeLoader.__init__(self, "")


_SCALAR_LOADER = _ScalarLoader()


def _fmt(path: Path_) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _show(v: Any) -> str:
    return short(json.dumps(v))


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "nothing"}.get(type(v), type(v).__name__)


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "string_type": "a string",
    "bool_type": "a boolean (true/false)", "bool_parsing": "a boolean (true/false)",
    "float_type": "a number", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
}


def _model_at(path: Path_) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (None if not a model)."""
    cls: Any = Site
    for p in path:
        if isinstance(p, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or p not in cls.model_fields:
            return None
        cls = cls.model_fields[p].annotation
        # unwrap Optional[...] and list[...] down to a model class
        while typing.get_origin(cls) in (list, typing.Union, types.UnionType):
            cls = next((a for a in typing.get_args(cls) if a is not type(None)), None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _message(err: Any, data_at: Any) -> str:
    t = err["type"]
    ctx = err.get("ctx") or {}
    if t == "extra_forbidden":
        model = _model_at(_loc_path(err["loc"])[:-1])
        if model is not None:
            return f"unknown key (expected one of: {', '.join(model.model_fields)})"
        return "unknown key"
    if t == "missing":
        return "required key is missing"
    if t in _EXPECTED:
        return f"expected {_EXPECTED[t]}, got {_type_name(data_at)} {_show(data_at)}"
    if t == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {_show(data_at)}"
    if t in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">",
                 "less_than": "<"}[t]
        lim = next(iter(ctx.values()))
        return f"must be {bound} {lim}, got {_show(data_at)}"
    if t == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if t == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if t == "string_too_long":
        return (f"must be at most {ctx.get('max_length')} characters, got "
                f"{len(data_at) if isinstance(data_at, str) else '?'}")
    return short(str(err["msg"]), 300)


def _lookup(data: Any, path: Path_) -> Any:
    for p in path:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _loc_path(loc: tuple[Any, ...]) -> Path_:
    # pydantic adds tags for unions ("str", "PortOnly"...) — keep only real keys/indices
    return tuple(p for p in loc if isinstance(p, int) or not p[:1].isupper() and p not in (
        "str", "int", "float", "bool", "list", "dict", "none"))


def _parse_path(s: str) -> Path_:
    out: list[str | int] = []
    for part in s.replace("[", ".[").split("."):
        if not part:
            continue
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


def validate_data(data: Any, *, file: str = "<site>", doc: _Doc | None = None) -> Site:
    """Validate already-parsed data; errors carry lines when ``doc`` has them."""
    doc = doc or _Doc()
    if not isinstance(data, dict):
        raise SiteError(f"expected a mapping at the top level, got {_type_name(data)}",
                        file=file, line=1)
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        errors: list[SiteError] = []
        for err in exc.errors(include_url=False):
            if err["type"] == "site_cross":
                for spath, msg in err["ctx"]["problems"]:
                    p = _parse_path(spath)
                    errors.append(SiteError(msg, file=file, line=doc.line(p), path=spath))
                continue
            p = _loc_path(err["loc"])
            if err["type"] == "extra_forbidden":
                line = doc.key_line.get(p, doc.line(p))
            else:
                line = doc.line(p)
            errors.append(SiteError(_message(err, _lookup(data, p)), file=file, line=line,
                                    path=_fmt(p) or None))
        errors.sort(key=lambda e: (e.line or 0, e.path or ""))
        if len(errors) == 1:
            raise errors[0] from None
        raise SiteErrors(errors) from None


def load_text(text: str, *, file: str = "<site>") -> Site:
    """Parse and validate a site document given as text."""
    if len(text) > MAX_BYTES:
        raise SiteError(f"the site file is larger than {MAX_BYTES >> 10} KiB", file=file)
    try:
        node = _compose(text, file)
    except RecursionError:  # not reached with MAX_DEPTH; kept as a last guard
        raise SiteError("nesting too deep", file=file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SiteError(f"YAML syntax error: {short(str(exc.problem or exc.context), 200)}",
                        file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SiteError(f"YAML error: {short(str(exc), 200)}", file=file) from None
    if node is None:
        raise SiteError("the site file is empty", file=file, line=1)
    doc = _Doc()
    try:
        data = _to_data(node, (), doc, file)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise SiteError(f"YAML error: {short(str(exc.problem), 200)}", file=file,
                        line=mark.line + 1 if mark else None) from None
    return validate_data(data, file=file, doc=doc)


def embedded_names() -> list[str]:
    """Names of the sites shipped with the package (``lab`` is the default)."""
    return sorted(p.name[:-5] for p in resources.files("orchestrator.site").joinpath(
        "embedded").iterdir() if p.name.endswith(".yaml"))


def embedded_text(name: str = DEFAULT_SITE) -> str:
    try:
        return resources.files("orchestrator.site").joinpath(f"embedded/{name}.yaml").read_text()
    except FileNotFoundError:
        raise SiteError(f"no embedded site named '{name}' (have: {', '.join(embedded_names())})"
                        ) from None


def load(source: str | Path | None = None) -> Site:
    """Load a site from a file path, ``-`` (stdin), an embedded name, or the default lab."""
    if source is None:
        return load_text(embedded_text(), file=f"<embedded:{DEFAULT_SITE}>")
    s = str(source)
    if s == "-":
        import sys

        return load_text(sys.stdin.read(MAX_BYTES + 1), file="<stdin>")
    path = Path(s)
    if not path.exists() and "/" not in s and not s.endswith((".yaml", ".yml")):
        return load_text(embedded_text(s), file=f"<embedded:{s}>")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteError(f"cannot read site file: {short(str(exc), 200)}", file=s) from None
    return load_text(text, file=s)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the site file, for editors (``siprecctl site schema``)."""
    schema = Site.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "siprecctl site"
    return schema
