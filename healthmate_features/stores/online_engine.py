"""Feast's local compute engine, writing materialized tables to our online stores without a proto per value.

Named in `feature_store*.yaml` (`batch_engine: type: healthmate_features.stores.online_engine.
OnlineTableEngine`), it serves every Feast materialization entry point: `feast materialize`,
`feast materialize-incremental`, `FeatureStore.materialize` and our `materialize`.

It runs Feast's own plan for each view (`LocalFeatureBuilder`: the offline store's pull, with
`pull_latest_features` each user's latest row of the window only; Feast's filter, dedup and
validation nodes), and only its last step differs: where Feast's output node converts every row
to protobufs (one `ValueProto` per value, `utils._convert_arrow_to_proto`) and hands them to
`online_write_batch`, this one hands the Arrow table to the online store's `write_table`, which
serializes each column at once into the same bytes and writes in pipelined, bounded batches
(stores.encrypted_online). An online store without `write_table` (Feast's stock `redis`,
`sqlite`, any other) gets Feast's own engine, unchanged. The offline write of a view with
`offline=True` stays Feast's.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from healthmate_features import _feast

ENGINE_TYPE = "healthmate_features.stores.online_engine.OnlineTableEngine"
PARALLEL_VIEWS = 2  # views materialized at once: one pulling from the offline store while one writes


class OnlineTableEngineConfig(_feast.LocalComputeEngineConfig):
    """The engine's settings: those of Feast's local engine."""

    type: Literal["healthmate_features.stores.online_engine.OnlineTableEngine"] = ENGINE_TYPE  # type: ignore[assignment]


def writes_tables(online_store: Any) -> bool:
    """Whether an online store takes whole Arrow tables (`write_table(config, view, table)`)."""
    return callable(getattr(online_store, "write_table", None))


class OnlineTableEngine(_feast.LocalComputeEngine):
    """Feast's local engine whose online write is the online store's `write_table` (module docstring)."""

    @property
    def supports_batch(self) -> bool:
        """Feast hands all views of a materialization to one `materialize` call (whose views then
        run two at a time), when the online store writes tables; else Feast's loop, view by view."""
        return writes_tables(self.online_store)

    @property
    def applies_materialization(self) -> bool:
        """Whether the engine records each view's materialization in the registry itself (Feast's
        `ComputeEngine.applies_materialization`): yes when the online store writes tables. Feast
        records the same interval (`registry.apply_materialization(view, project, task start, task
        end)`) for every view that succeeded, after the last view; here each view's record is
        written as soon as its write is done, while the other views still pull and write (Feast's
        per-view registry update, tens of milliseconds on the SQL registry, overlaps them)."""
        return writes_tables(self.online_store)

    def materialize(self, registry: Any, tasks: Any, **kwargs: Any) -> list[Any]:
        """Feast's `ComputeEngine.materialize`: one job per task, in order, an error kept in its job
        as Feast keeps it. Several tasks run on two threads, so one view's pull from the offline
        store (waiting on the database) overlaps another view's write."""
        if not writes_tables(self.online_store):
            return super().materialize(registry, tasks, **kwargs)
        tasks = tasks if isinstance(tasks, list) else [tasks]
        recording = threading.Lock()  # registry reads and writes one at a time (a file registry rewrites its file)
        if len(tasks) < 2:
            return [self.materialize_task(registry, task, recording) for task in tasks]
        with ThreadPoolExecutor(max_workers=PARALLEL_VIEWS, thread_name_prefix="materialize") as pool:
            return list(pool.map(lambda task: self.materialize_task(registry, task, recording), tasks))

    def materialize_task(self, registry: Any, task: Any, recording: threading.Lock) -> Any:
        """Run Feast's plan of one view with our output node, then record the view's materialized
        interval in the registry as Feast would (`applies_materialization`); the job says whether
        both succeeded (a failed view is not recorded: Feast rolls its state back and raises)."""
        try:
            with recording:  # the plan reads the registry, which the other thread may be rewriting (a file registry)
                context = self.get_execution_context(registry, task)
                plan = _TableBuilder(registry, task, backend=_feast.pandas_backend()).build()
            plan.execute(context)
            with recording:
                registry.apply_materialization(task.feature_view, task.project, task.start_time, task.end_time)
        except Exception as exc:  # Feast's engine reports a task's error in its job, the provider raises it
            return _feast.materialization_job(task, exc)
        return _feast.materialization_job(task, None)


class _TableBuilder(_feast.LocalFeatureBuilder):
    """Feast's plan builder for the local engine, with our output node."""

    def build_output_nodes(self, view: Any, input_node: Any) -> Any:
        root: Any = self.dag_root.view  # the task's view (Feast's node is typed for batch and stream views)
        node = _TableOutputNode("output", root, inputs=[input_node])
        self.nodes.append(node)
        return node


class _TableOutputNode(_feast.LocalOutputNode):
    """Feast's output node whose online write is one `write_table` call with the whole table."""

    def execute(self, context: Any) -> Any:
        table = self.get_single_table(context).data
        view = self.feature_view
        if view.online and table.num_rows:
            context.online_store.write_table(context.repo_config, view, table)
        self.feature_view = copy.copy(view)
        self.feature_view.online = False  # Feast's node does the rest (the offline write), not the online one
        try:
            return super().execute(context)
        finally:
            self.feature_view = view
