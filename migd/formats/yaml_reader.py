"""The located-YAML reader: every YAML file migd reads goes through here.

PyYAML's safe loader composes the document into nodes, so every value keeps its line
and column; a :class:`YamlReader` then walks them for one format, reporting each
problem with its file, line, column and key path
(``mig-configs.all-balanced[1].mig-devices."1g.5gb"``) and going on, so a file's
every problem is reported at once. The formats read this way: the config file and
its settings, mig-parted's hooks file, the GPU Operator's gpu-clients file and the
GPU model tables migd ships.

The file may come from anyone, and a root daemon reads it, so everything is bounded:
size, nesting depth, alias expansion, the number of problems reported. Duplicate keys,
recursive aliases, tags that would build objects, text that is not UTF-8 (or UTF-16
with a BOM) and binary files are refused with a message. Any input yields a value or
a ConfigError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

from migd.errors import ConfigError, Problem, shorten

# ---------------------------------------------------------------------------
# Limits of the loader (the file is read by a root daemon: bound everything)
# ---------------------------------------------------------------------------

# Bytes of one file: far more than any config, hooks or model file needs.
MAX_CONFIG_BYTES = 1 << 20
# Far deeper than the schema (about six levels) and far shallower than Python's stack.
MAX_YAML_DEPTH = 64
# Nodes that aliases may add over those written in the file; a few shared layouts
# need a few hundred, a "billion laughs" document needs billions.
MAX_ALIAS_EXPANSION = 10_000
# Problems reported for one file; past this the first ones are what to fix.
MAX_PROBLEMS = 100

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"

T = TypeVar("T")


def read_yaml_document(
    data: bytes,
    source: str,
    read: Callable[[YamlReader, YamlNode | None], T],
    *,
    packaged: bool = False,
) -> T:
    """Parse YAML bytes safely and hand the root node (None if empty) to ``read``.

    Every YAML file migd reads goes through here, so all get the same limits (size,
    depth, aliases), encodings and located messages. ``read`` reports problems on the
    reader and may raise ``InvalidValue`` for a value it cannot use. Raises ConfigError
    listing every problem found (at most ``MAX_PROBLEMS``).

    ``packaged``: the file ships inside migd (the GPU model tables), so nobody can make
    it hostile; it is composed by libyaml where PyYAML has it, several times faster,
    since every simulated migd process reads one, and its aliases are not counted.
    Files from users always go through PyYAML's own composer, whose depth migd bounds
    and whose messages are the ones documented.
    """

    def fail(line: int | None, column: int | None, message: str) -> NoReturn:
        raise ConfigError.of_file(source, message, line, column)

    if len(data) > MAX_CONFIG_BYTES:
        fail(
            None,
            None,
            f"the file is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
            "migd refuses files that large (is it the right file?)",
        )
    text = _decode(data, source)
    loader: _Loader | None = None
    try:
        try:
            # PyYAML checks for unprintable characters as the loader is made.
            loader = _PACKAGED_LOADER(text) if packaged else _ComposingLoader(text)
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
            fail(line, column, _yaml_error_message(exc))
        except yaml.reader.ReaderError as exc:
            line, column = _line_column(text, exc.position)
            fail(
                line,
                column,
                f"the file contains the control character U+{exc.character:04X}, "
                "which YAML does not allow",
            )
        except _PARSER_FAILURES as exc:
            # PyYAML lets some malformed input escape as plain Python errors
            # (a "\U00110000" escape raises ValueError from chr()).
            mark = loader.get_mark() if isinstance(loader, _ComposingLoader) else None
            line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
            fail(line, column, f"invalid YAML: the parser stopped here ({exc})")
        # A packaged file is ours and tested (no model file uses an alias): walking
        # its few thousand nodes for alias expansion would only cost every start.
        if root is not None and not packaged:
            _check_aliases(root, source)
        reader = YamlReader(source, loader)
        ok, value = reader.attempt(lambda: read(reader, root))
    finally:
        if loader is not None:
            loader.dispose()
    if reader.problems:
        found = sorted(reader.problems, key=lambda p: (p.line or 0, p.column or 0))
        if len(found) > MAX_PROBLEMS:
            more = len(found) - MAX_PROBLEMS
            found = [*found[:MAX_PROBLEMS], Problem(source, None, None, "", f"… and {more} more")]
        raise ConfigError(found)
    assert ok, "a read that gave up has reported why"
    return value  # type: ignore[return-value]


# What PyYAML raises, besides YAMLError, on input it cannot read.
_PARSER_FAILURES = (ValueError, OverflowError, TypeError, IndexError, KeyError)


def _decode(data: bytes, source: str) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16, as YAML allows; else ConfigError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    elif b"\x00" not in data:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise ConfigError.of_file(
                source,
                f"the file is not UTF-8 text (byte 0x{data[exc.start]:02X} cannot "
                "start or continue a character here); save it as UTF-8",
                line,
                column,
            ) from None
    raise ConfigError.of_file(
        source, "this is a binary file, not a YAML text file (it contains NUL bytes)"
    )


def _line_column(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def _yaml_error_message(exc: yaml.MarkedYAMLError) -> str:
    context = exc.context
    mark, problem_mark = exc.context_mark, exc.problem_mark
    if context and mark and problem_mark and mark.line != problem_mark.line:
        context += f" (begun on line {mark.line + 1})"
    parts = [p for p in (context, exc.problem) if p]
    message = "invalid YAML: " + ", ".join(parts)
    if exc.problem and "'\\t'" in exc.problem:
        message += " (YAML does not allow tabs for indentation; use spaces)"
    return message


class _ComposingLoader(yaml.SafeLoader):
    """PyYAML's safe loader, used only to compose nodes, refusing deep nesting.

    The composer is recursive; without a bound a file of ten thousand ``[`` would
    exhaust Python's stack instead of producing a message.

    Its scanner skips tabs between tokens where libyaml does (and so go-yaml, which
    reads mig-parted's files): inside flow collections, and where no simple key may
    start. PyYAML skips only spaces, so tab-indented JSON (what ``jq`` and many
    ConfigMaps hold) would be refused although mig-parted reads it. Tabs that indent
    block YAML stay an error, as in both.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def scan_to_next_token(self) -> None:
        # PyYAML's Scanner.scan_to_next_token with libyaml's rule for tabs.
        if self.index == 0 and self.peek() == "\ufeff":
            self.forward()
        found = False
        while not found:
            while self.peek() == " " or (
                self.peek() == "\t" and (self.flow_level or not self.allow_simple_key)
            ):
                self.forward()
            if self.peek() == "#":
                while self.peek() not in "\0\r\n\x85\u2028\u2029":
                    self.forward()
            if self.scan_line_break():
                if not self.flow_level:
                    self.allow_simple_key = True
            else:
                found = True

    def compose_node(self, parent: YamlNode | None, index: object) -> YamlNode:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"the document is nested more than {MAX_YAML_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# The composer of packaged files: libyaml's where PyYAML was built with it. Both
# compose the same nodes, with their marks, and build scalars the same safe way.
_PACKAGED_LOADER: Any = getattr(yaml, "CSafeLoader", _ComposingLoader)
# A composing loader of either kind (libyaml's has no Python base class in common).
_Loader = Any


def _children(node: YamlNode) -> list[YamlNode]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_aliases(root: YamlNode, source: str) -> None:
    """Refuse recursive aliases and alias expansion beyond MAX_ALIAS_EXPANSION nodes.

    Composed nodes share aliased subtrees, so the graph stays small; this computes the
    size of the tree it stands for without building it (iteratively, as the graph may
    be deep through aliases).
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[YamlNode, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                # Aliases are not nodes: the closest position is the node holding one.
                mark = node.start_mark
                raise ConfigError.of_file(
                    source,
                    "an alias refers to a node that contains it (a recursive alias); "
                    "migd cannot read an infinite document",
                    mark.line + 1,
                    mark.column + 1,
                )
            if id(child) not in sizes:
                stack.append((child, False))
    added = sizes[id(root)] - len(sizes)
    if added > MAX_ALIAS_EXPANSION:
        raise ConfigError.of_file(
            source,
            f"aliases (*name) expand this document by {added} nodes; migd refuses "
            f"more than {MAX_ALIAS_EXPANSION} (an alias bomb?)",
        )


# ---------------------------------------------------------------------------
# Walking the node tree: the pieces every YAML format of migd is read with
# ---------------------------------------------------------------------------


class InvalidValue(Exception):
    """A value was invalid and its problems are already recorded; unwind that value."""


def join_key(path: str, key: str) -> str:
    """Append a key to a key path, quoting keys that are not plain words.

    JSON's quoting escapes newlines too, so a problem always stays on one line.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        key = json.dumps(key, ensure_ascii=False)
    return f"{path}.{key}" if path else key


def item_key(path: str, index: int) -> str:
    """The key path of item ``index`` of the list at ``path``: ``mig-configs.a[1]``."""
    return f"{path}[{index}]"


def _unsupported_tag(node: YamlNode) -> str:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    return f"the YAML tag {shorten(tag)} is not supported here (migd reads plain YAML only)"


def is_null(node: YamlNode) -> bool:
    """Whether a node is YAML's null (``~``, ``null``, or nothing after the colon)."""
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


class YamlReader:
    """The state of reading one document: the problems found so far."""

    def __init__(self, source: str, loader: _Loader) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self._loader = loader

    def report(self, node: YamlNode, path: str, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.source, mark.line + 1, mark.column + 1, path, message))

    def fail(self, node: YamlNode, path: str, message: str) -> NoReturn:
        self.report(node, path, message)
        raise InvalidValue

    def attempt(self, parse: Callable[[], object]) -> tuple[bool, object]:
        """Run one value's parse; ``(False, None)`` when it was invalid (already reported)."""
        try:
            return True, parse()
        except InvalidValue:
            return False, None

    def _construct(self, node: ScalarNode) -> object:
        """The value yaml.safe_load would build; YAMLError or a _PARSER_FAILURES if none."""
        return self._loader.construct_object(node)

    def check_tag(self, node: YamlNode, path: str) -> None:
        """Refuse tagged lists and mappings (``!!python/…``, ``!!set``): plain YAML only."""
        if isinstance(node, (SequenceNode, MappingNode)) and node.tag not in (_SEQ_TAG, _MAP_TAG):
            self.fail(node, path, _unsupported_tag(node))

    def scalar(self, node: YamlNode, path: str) -> object:
        """The Python value of a scalar node (as yaml.safe_load would build it).

        A list or mapping is returned as its node, for callers to describe.
        """
        self.check_tag(node, path)
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self._construct(node)
        except yaml.MarkedYAMLError as exc:
            self.fail(node, path, f"cannot read this value: {exc.problem}")
        except (yaml.YAMLError, *_PARSER_FAILURES):
            self.fail(node, path, f"cannot read the value {shorten(node.value)!r}")

    def describe(self, node: YamlNode) -> str:
        """What a node holds, for messages: 'a list', 'the number 7', …"""
        if isinstance(node, SequenceNode):
            return "a list"
        if isinstance(node, MappingNode):
            return "a mapping"
        try:
            value = self._construct(node)
        except (yaml.YAMLError, *_PARSER_FAILURES):
            return repr(shorten(node.value))
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return f"the boolean {node.value}"
        if isinstance(value, (int, float)):
            return f"the number {shorten(node.value)}"
        if isinstance(value, str):
            return f"the text {shorten(value)!r}"
        return f"{shorten(node.value)!r} (read by YAML as a {type(value).__name__})"

    def text(self, node: YamlNode, path: str, what: str) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str):
            self.fail(node, path, f"{what} must be text, not {self.describe(node)}")
        return value

    def sequence(self, node: YamlNode, path: str, expected: str) -> list[YamlNode]:
        """The items of a list; else ``expected`` (a phrase saying what belongs here)."""
        self.check_tag(node, path)
        if not isinstance(node, SequenceNode):
            self.fail(node, path, f"{expected}, not {self.describe(node)}")
        return list(node.value)

    def each(
        self, items: Sequence[YamlNode], path: str, read: Callable[[YamlNode, str], T]
    ) -> list[T]:
        """``read(item, "path[i]")`` for every item of a list, in order.

        Every item is read, so each bad one is reported; then InvalidValue if any was.
        """
        values: list[T] = []
        valid = True
        for i, item in enumerate(items):
            item_path = item_key(path, i)
            ok, value = self.attempt(lambda n=item, p=item_path: read(n, p))
            if ok:
                values.append(value)  # type: ignore[arg-type]
            valid = valid and ok
        if not valid:
            raise InvalidValue
        return values

    def mapping(self, node: YamlNode, path: str, what: str) -> list[tuple[str, YamlNode, YamlNode]]:
        """The ``(key, key node, value node)`` pairs of a mapping, merges applied.

        Duplicate keys are reported (YAML would silently keep the last one). Keys are
        taken as written, so ``7:`` and ``"7":`` are the same key, as in mig-parted.
        """
        self.check_tag(node, path)
        if not isinstance(node, MappingNode):
            self.fail(
                node,
                path,
                f"{what} must be a mapping of 'key: value' lines, not {self.describe(node)}",
            )
        own: dict[str, tuple[YamlNode, YamlNode]] = {}
        merged: list[tuple[str, YamlNode, YamlNode]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, "a key must be a plain name, not a list or mapping")
                continue
            key = key_node.value
            if key in own:
                first = own[key][0].start_mark.line + 1
                self.report(
                    key_node,
                    join_key(path, key),
                    f"duplicate key {key!r} (already set on line {first}); "
                    "YAML would silently keep only the last one",
                )
                continue
            own[key] = (key_node, value_node)
        pairs = [(key, k, v) for key, (k, v) in own.items()]
        seen = set(own)
        # Keys written in the mapping override merged ones; earlier merge sources win.
        for key, key_node, value_node in merged:
            if key not in seen:
                seen.add(key)
                pairs.append((key, key_node, value_node))
        return pairs

    def _merge_sources(self, node: YamlNode, path: str) -> list[tuple[str, YamlNode, YamlNode]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[str, YamlNode, YamlNode]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.fail(source, path, "'<<' merges mappings only (e.g. <<: *defaults)")
            pairs.extend(self.mapping(source, path, "a merged mapping"))
        return pairs

    def fields(
        self, node: YamlNode, path: str, what: str, allowed: Collection[str]
    ) -> dict[str, tuple[YamlNode, YamlNode]]:
        """A mapping whose keys must be among ``allowed``; unknown keys are reported."""
        found: dict[str, tuple[YamlNode, YamlNode]] = {}
        for key, key_node, value_node in self.mapping(node, path, what):
            if key in allowed:
                found[key] = (key_node, value_node)
                continue
            import difflib  # only for a key that is wrong: it is rare

            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.report(
                key_node,
                join_key(path, key),
                f"unknown key {shorten(key)!r} in {what}; {hint}allowed keys: {', '.join(allowed)}",
            )
        return found


def read_version(
    r: YamlReader,
    root: YamlNode,
    found: Mapping[str, tuple[YamlNode, YamlNode]],
    expected: str,
    *,
    reads: str,
) -> None:
    """Check the ``version:`` of a document whose top-level keys ``r.fields`` found.

    ``reads`` completes "migd reads …" in the message for another version.
    """
    if "version" not in found:
        r.report(root, "", f"version is missing; the file must start with 'version: {expected}'")
        return
    _, node = found["version"]
    ok, version = r.attempt(lambda: r.scalar(node, "version"))
    if ok and version != expected:
        r.report(
            node,
            "version",
            f"unknown version {shorten(str(node.value))!r}; migd reads {reads}",
        )


# ---------------------------------------------------------------------------
# Values several formats share
# ---------------------------------------------------------------------------


def read_path(r: YamlReader, node: YamlNode, path: str) -> str:
    """An absolute file path (settings files, a hook's workdir)."""
    text = r.text(node, path, "a file path")
    if not text.startswith("/") or "\x00" in text:
        r.fail(
            node,
            path,
            f"must be an absolute path (starting with /), not {shorten(text)!r}; the daemon "
            "runs from /, so a relative path would not mean what it says",
        )
    return text


def read_argument(r: YamlReader, node: YamlNode, path: str, *, what: str = "") -> str:
    """Text handed to a program (an argument, an environment value), read exactly.

    A number or boolean YAML would read is refused with the quoting that keeps it
    text (mig-parted, in Go, refuses them too), and so is a NUL, which no argv can
    carry. ``what`` ("argument") names the value in messages; else the key path does.
    """
    value = r.scalar(node, path)
    if not isinstance(value, str):
        hint = f' (quote it: "{node.value}")' if isinstance(node, ScalarNode) else ""
        subject = f"each {what} " if what else ""
        r.fail(node, path, f"{subject}must be text, not {r.describe(node)}{hint}")
    if "\x00" in value:
        subject = f"an {what} " if what else ""
        r.fail(node, path, f"{subject}cannot contain a NUL character")
    return value


_UNIT_RE = r"^[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]{0,255}$"


def read_units(r: YamlReader, node: YamlNode, path: str) -> tuple[str, ...]:
    """A list of systemd unit names (settings.gpu-clients, the gpu-clients file)."""
    items = r.sequence(node, path, "must be a list of systemd unit names such as [kubelet.service]")
    return tuple(r.each(items, path, lambda n, p: _read_unit(r, n, p)))


def _read_unit(r: YamlReader, node: YamlNode, path: str) -> str:
    unit = r.text(node, path, "a unit name")
    if not re.match(_UNIT_RE, unit):
        r.fail(
            node, path, f"{shorten(unit)!r} is not a systemd unit name (such as kubelet.service)"
        )
    return unit
