"""Experiment tracking: every metrics.jsonl record mirrored to TensorBoard and MLflow through Accelerate's trackers.

A run folder's ``recipe.yaml`` (written before anything trains; a variant's overrides applied) says which backends
to use, so resuming a folder tracks exactly as the first start did: the MLflow run id and URI are kept in the
stage's ``tracking.json`` and the run is continued, TensorBoard keeps writing into the same event folder.

A resume after a hard kill retrains the steps past the last checkpoint (bit-identically), and they were logged
already: TensorBoard purges its events past the checkpoint's step, MLflow skips every value at or below the highest
step its run holds for that key, so each step is in each backend once.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kdforge.engine.callbacks import Callback
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError, Interrupted
from kdforge.files import atomic_write_text
from kdforge.recipe import TrackConfig, apply_overrides, load_run_recipe

STATE_FILE = "tracking.json"
# Keys of a metrics.jsonl record that are bookkeeping, not metrics, in an evaluation record ("n": sample count).
_EVAL_SKIP = {"split", "step", "epoch", "n"}
# MLflow accepts letters, digits, _ - . / space and colon in metric and parameter names; TensorBoard anything.
_UNSAFE = re.compile(r"[^\w./\- :]")
# Recipe keys whose values may be credentials (an LLM teacher's api_key, request headers): never sent to a tracker.
# A token (hf_token, access_token) but not a tokenizer or a token count (max_new_tokens).
_SECRET = re.compile(r"(?i)(key|secret|passw|auth|header|cookie|credential|token$)")
_SECRET_SUBTREES = {"extra_body", "headers"}
MASK = "***"

Scalar = str | int | float | bool


@dataclass(frozen=True)
class TrackPlan:
    """Where and under which names one stage is tracked."""

    backends: tuple[str, ...]
    tensorboard_dir: Path  # this stage's event folder
    mlflow_uri: str  # file:<absolute path>/mlruns
    experiment: str
    run_name: str  # the variant (and link) path inside the run folder; the run folder's name for a plain run
    run_folder: Path
    params: dict[str, Scalar]


def metric_key(name: str) -> str:
    """``name`` with characters MLflow refuses (e.g. '@' of ``val@b``) replaced by '_', the same for every backend."""
    return _UNSAFE.sub("_", name)


def tracked_values(record: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """A metrics.jsonl record as (optimizer step, {key: value}): train keys as they are, evaluations split/metric."""
    step = int(record["step"])
    numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if record.get("split") == "train":
        values = {k: float(v) for k, v in numbers.items() if k != "step"}
    else:
        split = record.get("split", "eval")
        values = {f"{split}/{k}": float(v) for k, v in numbers.items() if k not in _EVAL_SKIP}
    return step, {metric_key(k): v for k, v in values.items()}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested mappings as dotted keys; lists and None as JSON text (trackers take scalars only)."""
    out: dict[str, Scalar] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, str | int | float | bool):
            out[metric_key(name)] = value
        else:
            out[metric_key(name)] = json.dumps(value)
    return out


def mask_secrets(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` with the value of every key that may name a credential (and every extra_body/headers subtree) "***"."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if value is not None and (_SECRET.search(str(key)) or key in _SECRET_SUBTREES):
            out[key] = MASK
        elif isinstance(value, Mapping):
            out[key] = mask_secrets(value)
        elif isinstance(value, list):
            out[key] = [mask_secrets(v) if isinstance(v, Mapping) else v for v in value]
        else:
            out[key] = value
    return out


def _recipe_tree(path: Path) -> dict[str, Any]:
    return load_run_recipe(path) if path.is_file() else {}


def stage_recipe(root_tree: Mapping[str, Any], inside: str) -> dict[str, Any]:
    """The recipe a stage ran: the run folder's, with its variant's overrides applied as the runner applies them."""
    variant = inside.split("/")[0] if inside else ""
    changes = (root_tree.get("variants") or {}).get(variant)
    if changes is None:
        return dict(root_tree)
    return apply_overrides({**root_tree, "variants": {}, "name": variant}, changes)


def plan_for(run_dir: RunDir) -> TrackPlan | None:
    """The tracking the run folder's recipe.yaml (written before anything trains) asks for this stage, or None."""
    root, here = run_dir.root.resolve(), run_dir.path.resolve()
    inside = here.relative_to(root).as_posix() if here.is_relative_to(root) and here != root else ""
    root_tree = _recipe_tree(root / "recipe.yaml")
    tree = stage_recipe(root_tree, inside)
    if not tree.get("track"):
        return None
    track = TrackConfig.model_validate(tree["track"])
    if not track.backends:
        return None
    # A relative dir is the run folder's (not the shell's): a resume from elsewhere finds the same trackers.
    base = (root / Path(track.dir).expanduser()).resolve() if track.dir else root / "tracking"
    return TrackPlan(
        backends=tuple(track.backends),
        tensorboard_dir=base / "tensorboard" / root.name / inside,
        mlflow_uri=f"file:{base / 'mlruns'}",
        experiment=track.experiment or str(root_tree.get("name") or "run"),
        run_name=inside or root.name,
        run_folder=here,
        params=flatten(mask_secrets(tree)),
    )


class Tracking(Callback):
    """Starts the plan's trackers at fit start, logs every record the Trainer writes, closes them however fit ends."""

    def __init__(self, plan: TrackPlan):
        self.plan = plan
        self.trackers: list[Any] = []
        self.logged: dict[str, int] = {}  # MLflow key -> the highest step its run held at a resume

    @property
    def state_path(self) -> Path:
        """The stage's ``tracking.json`` (the MLflow run id a resume continues)."""
        return self.plan.run_folder / STATE_FILE

    def _saved_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"{str(self.state_path)!r} is damaged ({err}); expected the JSON object a tracked run writes "
                "(delete it to start new tracker runs)"
            ) from None
        if not isinstance(state, dict) or not isinstance(state.get("mlflow_run_id"), str | None):
            raise ConfigError(
                f"{str(self.state_path)!r} is damaged; expected a JSON object with mlflow_run_id "
                "(delete it to start new tracker runs)"
            )
        return state

    def on_fit_start(self, trainer: Any) -> None:
        """Start (or, when resuming, continue) every backend's run on the main process; log the recipe once."""
        if not trainer.accelerator.is_main_process:
            return
        state = self._saved_state() if trainer.resume and self.state_path.is_file() else {}
        if state:  # the trackers the first start wrote to, wherever track.dir points now
            self.plan = replace(
                self.plan,
                mlflow_uri=str(state.get("mlflow_uri") or self.plan.mlflow_uri),
                tensorboard_dir=Path(state.get("tensorboard_dir") or self.plan.tensorboard_dir),
            )
        # Steps past the checkpoint were logged before a hard kill and are retrained: TensorBoard drops them.
        resumed = int(trainer.state.step) if trainer.resume else None
        try:
            for name in self.plan.backends:
                self.trackers.append(self._start(name, state.get("mlflow_run_id"), resumed))
            if not state:
                for tracker in self.trackers:
                    tracker.store_init_configuration(self._params(tracker.name))
            elif state.get("mlflow_run_id"):
                self.logged = _logged_steps(self.plan.mlflow_uri, state["mlflow_run_id"])
        except BaseException:
            self._close("FAILED")
            raise
        run_id = next((t.active_run.info.run_id for t in self.trackers if t.name == "mlflow"), None)
        saved = {"mlflow_run_id": run_id, "mlflow_uri": self.plan.mlflow_uri, "experiment": self.plan.experiment}
        saved["tensorboard_dir"] = str(self.plan.tensorboard_dir)
        atomic_write_text(self.state_path, json.dumps(saved, indent=2) + "\n")

    def _start(self, name: str, run_id: str | None, resumed: int | None) -> Any:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        if name == "tensorboard":
            folder = self.plan.tensorboard_dir
            # purge_step hides the folder's earlier events at or past it (readers drop them), as the trainer drops
            # metrics.jsonl lines past the checkpoint; a run killed before its first checkpoint resumes from step 0.
            purge = {} if resumed is None else {"purge_step": resumed + 1}
            tracker: Any = TensorBoardTracker(folder.name, folder.parent, **purge)
            tracker.start()
            return tracker
        import mlflow

        # MLflow 3 refuses a folder store unless asked (it prefers a database); a folder is what an offline run wants,
        # and readers (`mlflow ui`, MlflowClient) need the same variable.
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        mlflow.set_tracking_uri(self.plan.mlflow_uri)
        tracker = MLflowTracker(self.plan.experiment, run_id=run_id, run_name=None if run_id else self.plan.run_name)
        with warnings.catch_warnings():
            # MLflow 3 calls the file store deprecated in favour of a database; a folder is what an offline run wants.
            warnings.simplefilter("ignore")
            tracker.start()
        mlflow.set_tag("kdforge.run_folder", str(self.plan.run_folder))
        return tracker

    def _params(self, backend: str) -> dict[str, Scalar]:
        if backend != "mlflow":
            return self.plan.params
        # MLflow keeps parameter values up to 6000 characters; a longer one (a long prompt) is cut, marked.
        return {k: v if len(str(v)) <= 6000 else f"{str(v)[:5980]}... (cut)" for k, v in self.plan.params.items()}

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        """Send one metrics.jsonl record to every backend, at the record's optimizer step."""
        if not self.trackers:
            return
        step, values = tracked_values(record)
        for tracker in self.trackers:
            if tracker.name == "mlflow" and self.logged:
                values_now = {k: v for k, v in values.items() if step > self.logged.get(k, -1)}
                if values_now:
                    tracker.log(values_now, step=step)
            else:
                tracker.log(values, step=step)

    def on_fit_exit(self, trainer: Any, error: BaseException | None) -> None:
        """Flush and close every backend: FINISHED, KILLED (a signal) or FAILED (an error)."""
        stopped = isinstance(error, Interrupted | KeyboardInterrupt) or bool(trainer.stop)
        self._close("FAILED" if error is not None and not stopped else "KILLED" if stopped else "FINISHED")

    def _close(self, status: str) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                if tracker.name == "mlflow":
                    import mlflow

                    mlflow.end_run(status)
                else:
                    tracker.finish()
            except Exception as err:  # a tracker that fails to close must not hide the run's own outcome
                print(f"warning: closing the {tracker.name} tracker failed: {err}", file=sys.stderr)


def _logged_steps(uri: str, run_id: str) -> dict[str, int]:
    """The highest step an MLflow run holds for each of its metrics (what a hard-killed start already logged)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    keys = client.get_run(run_id).data.metrics
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}


def tracking_callbacks(run_dir: RunDir | None) -> list[Callback]:
    """The Tracking callback a run folder's recipe asks for (none without a folder or a ``track`` section)."""
    plan = plan_for(run_dir) if run_dir is not None else None
    return [Tracking(plan)] if plan is not None else []
