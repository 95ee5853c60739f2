"""YAML manifests read with a bound on nesting.

PyYAML composes and constructs recursively: a document nested a few hundred levels deep ends in a
RecursionError traceback instead of an answer. The loader here refuses anything deeper than
validation's MAX_DEPTH as a YAMLError naming the line, so `specpilot validate` reports it like any
other unreadable file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import Node

from specpilot.api.validation import MAX_DEPTH


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops at MAX_DEPTH nested mappings and lists, before it recurses deeper."""

    def __init__(self, stream: str | bytes | IO[str] | IO[bytes]) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        nests = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        if nests:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"mappings and lists nest more than {MAX_DEPTH} levels deep "
                    "(no SpeculativeInference needs that many)",
                    self.get_mark(),
                )
        try:
            return super().compose_node(parent, index)
        finally:
            if nests:
                self.depth -= 1


def safe_load_all(stream: str | IO[str]) -> Iterator[Any]:
    """yaml.safe_load_all with the nesting bound; raises yaml.YAMLError beyond it."""
    return yaml.load_all(stream, Loader=BoundedLoader)
