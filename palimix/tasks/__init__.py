"""palimix's task registry: `add_task` and the tasks that ship with palimix.

Importing this package registers (seqio style) the demo mixture `palimix_demo` and its
tasks (see `palimix.tasks.demo`). Benchmarks whose data a user has downloaded are
registered with `register_benchmarks(data_dir)`.

    import palimix.tasks
    palimix.tasks.add_task("my_captions", kind="caption", source=..., languages=["en", "de"])
"""

import seqio as _seqio

from palimix.tasks import demo
from palimix.tasks.benchmarks import register_benchmarks
from palimix.tasks.registry import TaskInfo, add_task, groups, remove, task_info, task_name

if demo.MIXTURE not in _seqio.MixtureRegistry.names():  # Importing twice (reload) is harmless.
    demo.register()

__all__ = ["TaskInfo", "add_task", "demo", "groups", "register_benchmarks", "remove", "task_info", "task_name"]
