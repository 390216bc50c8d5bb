"""An example deq task plugin: the ``match-equilibrium`` task (see docs/how-to/write-a-task-plugin.md)."""
