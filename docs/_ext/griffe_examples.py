"""Griffe extension for the API reference: render Google-style ``Example:`` sections like ``Examples:``.

deq's docstrings use the singular ``Example:`` heading; Griffe only recognizes ``Examples:`` as the section whose
``>>>`` lines are shown as code, and would otherwise parse the doctest as Markdown.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class SingularExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
