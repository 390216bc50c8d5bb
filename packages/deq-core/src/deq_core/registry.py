"""TEMPORARY stub: replaced by the plugin-backed registry (issue 3, plugin system)."""
from __future__ import annotations

from ._errors import UnknownNameError
from ._picard import FixedPointIteration


def get_solver(name, **options):
    table = {"fixed-point": FixedPointIteration}
    if name not in table:
        raise UnknownNameError("solver", name, table)
    return table[name](**options)
