"""Experiment files as YAML: the line of every key (for errors that name it) and the checks
PyYAML skips (duplicate keys, keys that are not plain names)."""

from __future__ import annotations

from pathlib import Path

import yaml


class SearchSpaceError(ValueError):
    """A malformed or impossible experiment file; the message names file, line and field."""


def _field(keys: tuple) -> str:
    """``("claims", 0, "axis")`` -> ``claims[0].axis``."""
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


_STR_TAG = "tag:yaml.org,2002:str"


class Lines:
    """Parses a YAML document (``data``) and keeps the line of every key path (and list item),
    for error messages. Rejects what PyYAML would silently accept: a key given twice (PyYAML
    keeps the last), a key that is not a plain name (``1:``, ``yes:``, ``<<:``)."""

    def __init__(self, text: str, path: Path):
        self.path = path
        self.lines: dict[tuple, int] = {}
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            self.data = None if root is None else loader.construct_document(root)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            problem = getattr(e, "problem", None) or str(e)
            hint = ""
            if "\t" in (text.splitlines()[line - 1:line] or [""])[0]:
                hint = " (a tab: YAML indents with spaces only)"
            raise SearchSpaceError(f"{path}:{line}: not valid YAML: {problem}{hint}; allowed: "
                                   "a YAML mapping of sections, indented with spaces") from None
        except RecursionError:
            raise SearchSpaceError(f"{path}:1: not valid YAML: nested too deeply; allowed: an "
                                   "experiment file of a few levels") from None
        finally:
            loader.dispose()
        self._budget = 100_000  # nodes walked (aliases are walked again wherever used)
        if root is not None:
            self._walk(root, (), set())

    def _walk(self, node, prefix: tuple, on_path: set) -> None:
        if id(node) in on_path:
            raise self.error(prefix, "refers to itself (recursive YAML alias); allowed: plain "
                             "values")
        self._budget -= 1
        if self._budget < 0:
            raise self.error(prefix, "the document is too large (nested aliases?); allowed: "
                             "an experiment file of a few hundred lines")
        on_path = on_path | {id(node)}
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if not (isinstance(key, yaml.ScalarNode) and key.tag == _STR_TAG):
                    name = getattr(key, "value", "?")
                    raise SearchSpaceError(
                        f"{self.path}:{line}: {_field((*prefix, name))}: key {name!r} is not a "
                        "plain name (YAML reads it as a number, boolean, null or merge); "
                        "allowed: a name such as data.lambda_val (quote it if needed)")
                if key.value in first:
                    raise SearchSpaceError(
                        f"{self.path}:{line}: {_field((*prefix, key.value))}: given twice (first "
                        f"at line {first[key.value]}; YAML would silently keep only this one); "
                        "allowed: each key once")
                first[key.value] = line
                self.lines[(*prefix, key.value)] = line
                self._walk(value, (*prefix, key.value), on_path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*prefix, i)] = item.start_mark.line + 1
                self._walk(item, (*prefix, i), on_path)

    def error(self, keys: tuple, msg: str, at: tuple | None = None) -> SearchSpaceError:
        """``<file>:<line>: <keys>: msg``; the line is that of ``at`` (default ``keys``) or of
        its nearest written parent."""
        at = keys if at is None else at
        for n in range(len(at), 0, -1):
            if at[:n] in self.lines:
                return SearchSpaceError(f"{self.path}:{self.lines[at[:n]]}: {_field(keys)}: {msg}")
        return SearchSpaceError(f"{self.path}:1: {_field(keys)}: {msg}")
