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
from concurrent.futures import Future, ThreadPoolExecutor
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
        end)`) for every view that succeeded, after the last view; here a thread of its own
        records each view as soon as its write is done, while the views after it pull and write
        (Feast's per-view registry update, several SQL round trips on the SQL registry)."""
        return writes_tables(self.online_store)

    def materialize(self, registry: Any, tasks: Any, **kwargs: Any) -> list[Any]:
        """Feast's `ComputeEngine.materialize`: one job per task, in order, an error kept in its job
        as Feast keeps it (a view whose write or record failed is not recorded: Feast rolls its
        state back and raises). Several tasks run on two threads, so one view's pull from the
        offline store (waiting on the database) overlaps another view's write; a third thread
        records the written views in the registry."""
        if not writes_tables(self.online_store):
            return super().materialize(registry, tasks, **kwargs)
        tasks = tasks if isinstance(tasks, list) else [tasks]
        turns = threading.Lock()  # registry reads and writes take turns (a file registry rewrites its file)
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="materialize-record") as recorder,
            ThreadPoolExecutor(max_workers=PARALLEL_VIEWS, thread_name_prefix="materialize") as pool,
        ):

            def run(task: Any) -> tuple[BaseException | None, Future[None] | None]:
                error = self.write_task(registry, task, turns)
                return error, (recorder.submit(self.record_task, registry, task, turns) if error is None else None)

            outcomes = list(pool.map(run, tasks))
            errors = [error if record is None else record.exception() for error, record in outcomes]
        return [_feast.materialization_job(task, error) for task, error in zip(tasks, errors, strict=True)]

    def write_task(self, registry: Any, task: Any, turns: threading.Lock) -> BaseException | None:
        """Run Feast's plan of one view with our output node; the error, if any (Feast's engine
        reports a task's error in its job, and the provider raises it)."""
        try:
            with turns:  # the plan reads the registry, which the recorder may be rewriting
                context = self.get_execution_context(registry, task)
                plan = _TableBuilder(registry, task, backend=_feast.pandas_backend()).build()
            plan.execute(context)
        except Exception as exc:
            return exc
        return None

    @staticmethod
    def record_task(registry: Any, task: Any, turns: threading.Lock) -> None:
        """Record a written view's materialized interval in the registry, as Feast would record it."""
        with turns:
            registry.apply_materialization(task.feature_view, task.project, task.start_time, task.end_time)


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
