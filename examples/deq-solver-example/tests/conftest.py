"""deq's shared Hypothesis profiles: ``dev`` (random), ``ci`` (derandomized, when ``CI`` is set) and ``explore``
(``pytest --hypothesis-profile=explore``: many random examples), as every deq test suite uses them."""

from deq_core.testing import register_profiles

register_profiles()
