from deq_core.plugins import TaskEntry, hookimpl


@hookimpl
def deq_tasks():
    from deq_task_example.task import MatchEquilibrium  # imported when plugins load, not with deq

    return [TaskEntry("match-equilibrium", MatchEquilibrium,
                      "Find the input whose DEQ equilibrium matches a target.", tags=("inverse", "example"))]
