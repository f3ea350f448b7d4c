"""What a training run reports while it runs, and when it stops.

Experiment trackers (``--report-to``) through accelerate's own tracking: the run's settings as
hyper-parameters, every logged loss part, the learning rate and the throughput under ``train/``,
each dev evaluation under ``eval/``; offline by default, under the output directory. Dev
evaluations at every epoch end and every ``--eval-every`` steps, the best one kept; early
stopping after ``--patience`` evaluations without improvement; a warning when the dev metric was
still rising at the last evaluation. What a resumed run needs (the evaluations so far and the
best one) lives in the training state the loop checkpoints, so a killed run resumes and stops
exactly where an uninterrupted one does.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from tqdm.auto import tqdm

from .errors import InputError
from .settings import flag_of

logger = logging.getLogger(__name__)

# the trackers' project: TensorBoard's folder in the output directory, MLflow's experiment, W&B's project
PROJECT = "tinybert"


# trackers that keep a run on this machine (under the output directory, W&B offline, trackio's local
# store); the others (Comet, ClearML, SwanLab) send it to their service unless their own settings
# say otherwise, so only naming them reports there
LOCAL_TRACKERS = ("tensorboard", "mlflow", "wandb", "aim", "dvclive", "trackio")


def trackers(report_to: list[str], setting: str = "--report-to") -> list[str]:
    """The trackers ``--report-to`` names (``all``: every one installed that keeps the run on this
    machine; ``none`` or nothing: none). A name accelerate does not know, or one whose package is
    missing, is an error before training (``setting``: how the message names the setting, e.g. a
    pipeline's ``prediction.report_to``)."""
    names = [name.strip().lower() for item in report_to for name in str(item).split(",")]
    names = [name for name in dict.fromkeys(names) if name and name != "none"]
    known = list(LOGGER_TYPE_TO_CLASS)
    installed = [str(tracker) for tracker in get_available_trackers()]
    unknown = [name for name in names if name not in known and name != "all"]
    if unknown:
        raise InputError(f"{setting} {unknown[0]}: not a tracker accelerate supports",
                         fix=f"use one or more of {', '.join(known)}, or all, or none")
    missing = [name for name in names if name not in installed and name != "all"]
    if missing:
        raise InputError(f"{setting} {missing[0]} needs the {missing[0]} package, which is not installed",
                         fix=f"pip install {missing[0]}, or leave {missing[0]} out of {setting}")
    if "all" not in names:
        return names
    chosen = [name for name in installed if name in LOCAL_TRACKERS or name in names]
    if not chosen:
        logger.warning("%s all: no tracker that keeps runs on this machine is installed, so nothing is tracked "
                       "(pip install tensorboard)", setting)
    left_out = [name for name in installed if name not in chosen]
    if left_out:
        logger.info("%s all leaves out %s, which report to a service: name them to use them", setting,
                    ", ".join(left_out))
    return chosen


def check_training(config, name: Callable[[str], str] = flag_of) -> list[str]:
    """Refuses what a ``TrainingConfig`` asks of reporting and stopping that no run can do, before
    anything is read or written; returns the trackers to log to. ``name(key)``: how a message names
    a setting (a flag; a pipeline's section.key)."""
    if config.patience < 0:
        raise InputError(f"{name('patience')} {config.patience} is no number of evaluations",
                         fix="give 0 (never stop early) or the evaluations without improvement to stop after")
    return trackers(config.report_to, name("report_to"))


def tracking_options(names: list[str], output_dir: str | os.PathLike | None) -> dict:
    """The ``Accelerator`` arguments that log to the trackers ``names`` (see ``trackers``), under ``output_dir``."""
    return {"log_with": names, "project_dir": str(output_dir)} if names else {}


def _offline(names: list[str], output_dir: Path, resumed_step: int) -> dict:
    """Each tracker's start arguments: files under the output directory unless its own environment
    variables say otherwise (MLflow's file store, W&B offline). TensorBoard hides the points of an
    earlier attempt that this run logs again: after the checkpoint a resumed run starts from, all of
    them when a run starts afresh where one ran before (killed before its first checkpoint, or its
    checkpoint deleted)."""
    options: dict[str, dict] = {}
    if "tensorboard" in names:
        options["tensorboard"] = {"purge_step": resumed_step + 1}
    if "mlflow" in names:
        store = output_dir.resolve() / "mlruns"
        if "MLFLOW_TRACKING_URI" not in os.environ:
            import mlflow
            mlflow.set_tracking_uri(store.as_uri())
        options["mlflow"] = {"logging_dir": str(store), "run_name": output_dir.name}
    if "dvclive" in names:
        options["dvclive"] = {"dir": str(output_dir / "dvclive")}
    if "wandb" in names:
        options["wandb"] = {"dir": str(output_dir), "name": output_dir.name,
                            "mode": os.environ.get("WANDB_MODE", "offline")}
    return options


def _hyperparameter(value):
    """A setting as trackers take it: a number, text, switch or None (lists joined by commas)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# a last evaluation this little above the best before it is noise, not a model still learning
# (CoNLL's teacher after 8 epochs: 0.8684 → 0.8692); metrics here lie in [-1, 1]
RISING_MARGIN = 0.002


def still_rising(history: list[dict], metric: str) -> tuple[float, float] | None:
    """(previous, last) dev metric when the last evaluation was the best so far, more than
    ``RISING_MARGIN`` above every one before it: the model was still learning when training
    stopped. None otherwise, or with fewer than two evaluations."""
    values = [record["eval"][metric] for record in history if metric in record.get("eval", {})]
    if len(values) < 2 or values[-1] <= max(values[:-1]) + RISING_MARGIN:
        return None
    return values[-2], values[-1]


class Monitor:
    """Trackers, dev evaluations, the best one, and early stopping for one run of the training loop.

    ``evaluate(unwrapped_module)`` returns dev metrics; ``on_improved(unwrapped_module, metrics)``
    is called on the main process when ``metric`` improves."""

    def __init__(self, accelerator, config, evaluate, metric: str | None, on_improved, batches_per_epoch: int,
                 total_steps: int):
        self.accelerator = accelerator
        self.total_steps = total_steps
        self.evaluate_model = evaluate
        self.metric = metric
        self.on_improved = on_improved
        self.patience = config.patience if evaluate is not None else 0
        self.eval_every = config.eval_every if evaluate is not None else None
        self.batches_per_epoch = batches_per_epoch
        self.examples_per_step = config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        self.last_tracked: tuple[int, float] | None = None  # (step, time): throughput between two records

    def start(self, state: dict, output_dir: Path, settings: dict) -> None:
        """Starts the trackers, with ``settings`` as the run's hyper-parameters."""
        if self.accelerator.log_with:
            self.accelerator.init_trackers(
                PROJECT, config={key: _hyperparameter(value) for key, value in settings.items()},
                init_kwargs=_offline([str(name) for name in self.accelerator.log_with], output_dir,
                                     state["global_step"]))
        self.last_tracked = (state["global_step"], time.perf_counter())

    def track(self, record: dict) -> None:
        """One record of the training log to the trackers: loss parts, learning rate and examples per
        second under ``train/``, or an evaluation's metrics under ``eval/``."""
        if not self.accelerator.trackers:
            return
        step, now = record["step"], time.perf_counter()
        if "eval" in record:
            values = {f"eval/{name}": value for name, value in record["eval"].items()
                      if isinstance(value, (int, float))}
        else:
            values = {f"train/{name}": value for name, value in record.items() if name != "step"}
            if self.last_tracked and step > self.last_tracked[0]:
                values["train/examples_per_s"] = ((step - self.last_tracked[0]) * self.examples_per_step
                                                  / (now - self.last_tracked[1]))
        self.accelerator.log(values, step=step)
        self.last_tracked = (step, now)  # after an evaluation too: its time is not training's

    def after_step(self, state: dict, module, log) -> None:
        """Evaluates every ``--eval-every`` optimizer steps, within epochs."""
        if self.eval_every and state["global_step"] % self.eval_every == 0:
            self.evaluate(state, module, log)

    def evaluate(self, state: dict, module, log) -> None:
        """Evaluates on the dev set (at most once per step), records it in ``state`` with the
        epochs trained (a fraction within an epoch), saves an improvement, and says when
        ``--patience`` has run out."""
        history = state["history"]
        if self.evaluate_model is None or (history and history[-1]["step"] == state["global_step"]):
            return
        epoch = state["epoch"] + state["batch_in_epoch"] / max(self.batches_per_epoch, 1)  # none: too few rows
        unwrapped = self.accelerator.unwrap_model(module)
        metrics = self.evaluate_model(unwrapped)
        module.train()
        record = {"step": state["global_step"], "epoch": epoch, "eval": metrics}
        history.append(record)
        log(record)
        improved = state["best"] is None or metrics[self.metric] > state["best"][self.metric]
        message = f"epoch {epoch:.4g} (step {state['global_step']}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items())
        if improved:
            state["best"] = {**metrics, "epoch": epoch, "step": state["global_step"]}
            if self.accelerator.is_main_process:
                self.on_improved(unwrapped, metrics)
            message += " (best so far, saved)"
        elif self.stopped(state):
            message += (f"; {self.patience} evaluation(s) without improvement on the best {self.metric} "
                        f"{state['best'][self.metric]:.4f}: stopping early (--patience {self.patience})")
        if self.accelerator.is_main_process:
            tqdm.write(message)
        self.accelerator.wait_for_everyone()

    def stopped(self, state: dict) -> bool:
        """Whether the last ``--patience`` evaluations all failed to improve on the best before the
        run's last step (a run that reaches it ends as planned: that is no early stop)."""
        best = state["best"]
        return bool(self.patience) and best is not None and state["global_step"] < self.total_steps and \
            sum(record["step"] > best["step"] for record in state["history"]) >= self.patience

    def finish(self, state: dict, cap: str) -> None:
        """Warns when the dev metric was still rising at the last evaluation (``cap``: the setting
        that ended training), and closes the trackers."""
        rising = still_rising(state["history"], self.metric) if self.evaluate_model is not None else None
        if rising and self.accelerator.is_main_process:
            logger.warning("dev %s was still rising at the last evaluation (%.4f → %.4f): the model is probably "
                           "under-trained; train longer (raise %s; with --patience training stops by itself once "
                           "dev stops improving)", self.metric, *rising, cap)
        for tracker in self.accelerator.trackers:
            tracker.finish()
