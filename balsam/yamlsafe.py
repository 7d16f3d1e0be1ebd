"""Reading YAML that a user wrote (settings.yml, job files, DAG files) safely and with bounds.

Only plain data is built (PyYAML's safe constructor: no tag makes an object), and the document is refused as it is
read, before anything past the bound is built, when it
- nests lists and maps deeper than ``max_depth`` (:class:`TooDeep`): libyaml's own composer recurses in C without a
  bound (100,000 nested brackets crashed the process), PyYAML's in Python took seconds to fail;
- expands to more than ``max_values`` values, an alias counted each time it is used (:class:`TooMany`): ten anchors
  of ten aliases each ("billion laughs") build in a moment, but every reader of the result then walks 10**9 values;
- names a key twice in one mapping, where the caller asks (:class:`DuplicateKey`): PyYAML keeps the last silently.
  A key merged in with ``<<: *base`` may still be given again (YAML's way to override a shared default);
- has an anchor or an alias, where the caller allows none (:class:`NoAliases`).

The parser is libyaml's where it is installed (events one at a time), else PyYAML's pure-Python one (the zipapp's);
the composer is PyYAML's in Python either way, which is what counts the levels and values as it builds the nodes.
Each refusal carries the line (1-based) and what was wrong; callers say it with the file's name, in their own words.
"""

from __future__ import annotations

from typing import Any, Tuple

__all__ = ["DuplicateKey", "NoAliases", "Refused", "TooDeep", "TooMany", "load", "loader"]


class Refused(Exception):
    """A YAML document refused before it was built: at ``line`` (1-based), ``what`` was wrong."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(f"line {line}: {what}")
        self.line = line
        self.what = what


class TooDeep(Refused):
    """Lists and maps nested deeper than the bound."""


class TooMany(Refused):
    """More values than the bound, aliases counted each time they are used (at the line of the collection that passed it)."""


class DuplicateKey(Refused):
    """A key given twice in one mapping (at the line of the second)."""


class NoAliases(Refused):
    """An anchor or an alias where the document may have none."""


def _bases() -> Tuple[Any, ...]:
    """A safe loader whose composer is Python's: libyaml's parser under PyYAML's composer where libyaml is there, else
    PyYAML's pure-Python loader, whose composer is that one already (naming it twice would make no class)."""
    import yaml
    from yaml.composer import Composer

    parser = getattr(yaml, "CSafeLoader", None)
    return (Composer, parser) if parser is not None else (yaml.SafeLoader,)


def loader(text: str, *, max_depth: int, max_values: int, unique_keys: bool = False, aliases: bool = True) -> Any:
    """A PyYAML loader over ``text`` that refuses what the module's docstring lists as it composes each node; each
    node built carries ``balsam_size`` (the values it expands to). The caller disposes of it (``loader.dispose()``)."""
    from yaml.composer import Composer
    from yaml.events import AliasEvent
    from yaml.nodes import MappingNode, ScalarNode

    bases = _bases()

    class BoundedLoader(*bases):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            bases[-1].__init__(self, stream)
            Composer.__init__(self)
            self.depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if not aliases and (isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None):
                raise NoAliases(event.start_mark.line + 1, "YAML anchors and aliases are not allowed here")
            if isinstance(event, AliasEvent):
                return Composer.compose_node(self, parent, index)  # a node built before: bounded and sized then
            self.depth += 1
            try:
                if self.depth > max_depth:
                    raise TooDeep(event.start_mark.line + 1, f"nested more than {max_depth} levels deep")
                node: Any = Composer.compose_node(self, parent, index)
            finally:
                self.depth -= 1
            if unique_keys and isinstance(node, MappingNode):
                _refuse_duplicate_keys(node, ScalarNode)
            size = 1
            if isinstance(node.value, list):
                for item in node.value:
                    for part in item if isinstance(item, tuple) else (item,):
                        size += getattr(part, "balsam_size", max_values + 1)  # not sized yet: a node that contains itself
                    if size > max_values:
                        raise TooMany(node.start_mark.line + 1, f"expands to more than {max_values:,} values")
            node.balsam_size = size
            return node

    return BoundedLoader(text)


def _refuse_duplicate_keys(node: Any, scalar: Any) -> None:
    seen = set()
    for key_node, _value in node.value:
        if not isinstance(key_node, scalar) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise DuplicateKey(key_node.start_mark.line + 1, f"the key {key_node.value!r} is given twice")
        seen.add(key)


def load(text: str, *, max_depth: int, max_values: int, unique_keys: bool = False, aliases: bool = True) -> Any:
    """The one document in ``text`` as plain data (``yaml.safe_load``), bounded as :func:`loader` says; raises
    :class:`Refused` or PyYAML's own errors (``yaml.YAMLError``) for text that is not YAML."""
    import yaml

    bounded = loader(text, max_depth=max_depth, max_values=max_values, unique_keys=unique_keys, aliases=aliases)
    try:
        return bounded.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None and "nesting depth" in str(getattr(exc, "problem", "")):
            # libyaml's own bound (PyYAML >= 6.0.4's wheels), met reading ahead past a long line of "[[[[..." before
            # the composer reached this one: the same refusal, at the line libyaml names
            raise TooDeep(mark.line + 1, f"nested more than {max_depth} levels deep") from None
        raise
    finally:
        bounded.dispose()
