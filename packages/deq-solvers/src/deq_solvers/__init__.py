"""deq-solvers: fixed-point solvers for deq.

:class:`Picard` (``picard``), :class:`Anderson` (``anderson``), :class:`Broyden` (``broyden``),
:class:`Neumann` (``neumann``) and :class:`FusedAnderson` (``fused-anderson``, alias ``fused``: Triton
kernels, own loop). All are frozen dataclasses of hyperparameters, subclasses of
:class:`deq_core.AbstractFixedPointSolver`, registered through the ``deq`` entry point; use them as objects
or by name (``deq_core.fixed_point(f, z0, solver="anderson")``).
"""

from ._anderson import Anderson
from ._broyden import Broyden
from ._fused import FusedAnderson, triton_status
from ._neumann import Neumann
from ._picard import Picard

__version__ = "0.1.0"

__all__ = ["Anderson", "Broyden", "FusedAnderson", "Neumann", "Picard", "triton_status", "__version__"]
