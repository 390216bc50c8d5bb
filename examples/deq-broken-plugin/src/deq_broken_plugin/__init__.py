"""A deliberately broken deq plugin: importing :mod:`deq_broken_plugin.plugin` fails."""
