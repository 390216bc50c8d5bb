"""deq-solvers: fixed-point solvers for deq.

:class:`Picard` (``picard``), :class:`Anderson` (``anderson``), :class:`Broyden` (``broyden``),
:class:`Neumann` (``neumann``) and :class:`FusedAnderson` (``fused-anderson``, alias ``fused``: Triton
kernels, own loop). All are frozen dataclasses of hyperparameters, subclasses of
:class:`deq_core.AbstractFixedPointSolver`, registered through the ``deq`` entry point; use them as objects
or by name (``deq_core.fixed_point(f, z0, solver="anderson")``).

Adjoints that need a solver's internals: :class:`ReversibleAdjoint` (exact backward of the
:class:`Reversible` iteration, ``reversible``), :class:`ShineAdjoint` (reuses the forward :class:`Broyden`'s
inverse estimate, ``shine``), and :func:`jfb` (Jacobian-free backward, a named phantom case).
"""

from ._anderson import Anderson
from ._broyden import Broyden
from ._fused import FusedAnderson, triton_status
from ._neumann import Neumann
from ._picard import Picard
from ._reversible import Reversible, ReversibleAdjoint
from ._shine import ShineAdjoint, jfb

__version__ = "0.1.0"

__all__ = [
    "Anderson", "Broyden", "FusedAnderson", "Neumann", "Picard", "Reversible", "ReversibleAdjoint", "ShineAdjoint",
    "__version__", "jfb", "triton_status",
]
