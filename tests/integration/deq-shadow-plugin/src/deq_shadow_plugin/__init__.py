"""A test plugin that claims deq's built-in names and adds its own adjoint, task and model."""
