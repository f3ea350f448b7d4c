"""One training loop for fine-tuning and distillation, on accelerate.

It owns what every stage needs: AdamW without decay on biases/LayerNorm, a linear or constant
schedule with warm-up, gradient clipping and accumulation, mixed precision, progress with
running losses, a JSONL log, checkpoints that a killed run resumes from exactly, and (through
``monitoring``) experiment trackers, dev evaluations with a callback when the tracked metric
improves, and early stopping.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Literal, TypeVar

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs,
                              broadcast_object_list, set_seed)
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from .artifacts import atomic_write, write_json
from .compiling import CompiledStep, CompileSetting, StaticShapes, compile_option, static_shapes
from .data import DataOptions
from .errors import InputError
from .monitoring import Monitor, check_training, tracking_options
from .settings import group, option, values_of

logger = logging.getLogger(__name__)
T = TypeVar("T")

STATE_FILE = "training_state.json"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoint"
# settings that do not change the trained weights, so a checkpoint may resume under other values
# (``compile`` is how the user said it; whether the run compiles, which shapes its batches, is checked)
RESUME_NEUTRAL = frozenset({"checkpoint_every", "log_every", "compile", "report_to"})
# how long processes wait at a collective (NCCL's default is 10 minutes): while the main process
# alone tokenises a large file or gathers the teacher's outputs; a process that dies ends the run sooner
COLLECTIVE_TIMEOUT_S = 4 * 3600


@dataclass
class TaskFiles:
    """The files a training command on task data reads and writes (fine-tuning, distillation)."""

    train: str | None = option(None, "training data file", flags=("--train_file_path",))
    eval: str | None = option(None, "dev data file: evaluated each epoch, the best epoch is kept")
    output: str | None = option(None, "output model directory", flags=("--output_dir",), required=True)
    data_options: DataOptions = group("reading data", DataOptions)


@dataclass
class TrainingConfig:
    epochs: float = option(3, "passes over the training data", flags=("--num_train_epochs",))
    max_steps: int | None = option(None, "stop after exactly this many optimizer steps (or at the end of the "
                                         "epochs, if sooner); the learning-rate schedule ends there")
    batch_size: int = option(32, "examples per optimizer step and process", flags=("--train_batch_size",))
    learning_rate: float = option(2e-5, "peak learning rate", key="lr", flags=("--learning_rate",))
    schedule: Literal["linear", "constant"] = option("linear", "after warm-up: linear decay to 0, or constant")
    warmup_ratio: float = option(0.1, "warm-up fraction of the steps", key="warmup")
    weight_decay: float = option(0.01, "AdamW weight decay (none on biases and LayerNorm)")
    max_grad_norm: float = option(1.0, "gradient clipping (0: none)")
    gradient_accumulation_steps: int = option(1, "batches per optimizer step", key="gradient_accumulation")
    seed: int = option(42, "random seed (initialisation, data order, dropout)")
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no", "bf16/fp16 autocast where the hardware gains "
                                                                  "from it")
    checkpoint_every: int = option(200, "optimizer steps between checkpoints")
    compile: CompileSetting = compile_option("each training step (and evaluation)")
    log_every: int = option(10, "optimizer steps between lines of train_log.jsonl")
    report_to: list[str] = option(help="experiment trackers, through accelerate: tensorboard, mlflow, wandb, aim, "
                                       "comet_ml, clearml, dvclive, swanlab, trackio, all or none (default none); "
                                       "files under the output directory unless a tracker's settings say otherwise",
                                  default_factory=list)
    patience: int = option(0, "with a dev set: stop after N evaluations without improvement (0: never); --epochs "
                              "is then the cap")
    eval_every: int | None = option(None, "with a dev set: also evaluate every N optimizer steps (default: at epoch "
                                          "ends only)")


def make_accelerator(config: TrainingConfig, output_dir: str | os.PathLike | None = None) -> Accelerator:
    names = check_training(config)
    # Distillation leaves the student's pooler and task head out of the loss: DDP must allow that.
    # Under torchrun without GPUs accelerate only goes distributed (gloo) when told it is on CPU.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if torch.cuda.is_available():
        # cuDNN's attention plans a new kernel for every new batch shape (~0.1 s each on an H100):
        # with batches of varying lengths it made bf16 steps 7x slower than fp32. PyTorch's own
        # flash and memory-efficient kernels have no such cost.
        torch.backends.cuda.enable_cudnn_sdp(False)
    # All stages of a pipeline run in one process, and accelerate keeps one global state that a
    # second Accelerator with another mixed precision may not change: start that state afresh
    # (the process group, in PartialState, stays).
    AcceleratorState._reset_state()
    # The schedule counts optimizer steps of the whole run: we step it ourselves, once per step
    # (accelerate would otherwise step it once per process).
    # Batches reach the GPU from pinned memory without waiting for the copy.
    return Accelerator(cpu=multi_cpu, mixed_precision=config.mixed_precision, step_scheduler_with_optimizer=False,
                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(non_blocking=True),
                       # the others wait at a collective while the main process builds a cache alone
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                                        InitProcessGroupKwargs(timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))],
                       **tracking_options(names, output_dir))


def frozen_teacher(teacher: torch.nn.Module, config: TrainingConfig, accelerator: Accelerator) -> torch.nn.Module:
    """The teacher on the device, cast once to bf16/fp16 under mixed precision: it is never
    trained, so autocast need not cast its weights again at every operation of every step."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    return teacher.to(accelerator.device, dtype=half) if half else teacher.to(accelerator.device)


def shapes_of_run(config: TrainingConfig, accelerator: Accelerator, examples: int,
                  max_length: int) -> StaticShapes | None:
    """The static shapes of a run's batches when its steps are compiled (``--compile``), else None."""
    rows_per_step = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    return static_shapes(config.compile, accelerator.device, rows=config.batch_size, max_length=max_length,
                         examples=examples, epochs=config.epochs, max_steps=config.max_steps,
                         rows_per_step=rows_per_step)


def main_process_first(accelerator: Accelerator, build: Callable[[], T]) -> T:
    """``build()`` on the main process, then on the others (which find what it made, e.g. a cache).
    When it fails on the main process the others stop with one message instead of waiting for it
    (accelerate's ``main_process_first`` leaves them at a barrier the main process never reaches)."""
    if accelerator.num_processes == 1:
        return build()
    result, failure = None, None
    if accelerator.is_main_process:
        try:
            result = build()
        except BaseException as error:  # re-raised below, once the others know
            failure = error
    # the main process's message goes to all: the launcher may stop the main process before it prints
    message = None if failure is None else str(failure) if isinstance(failure, InputError) else repr(failure)
    message = broadcast_object_list([message])[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise InputError("the main process stopped: " + message.replace("\n", "\n  "))
    return build() if not accelerator.is_main_process else result


def optimizer_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only, not on biases or LayerNorm (as BERT was trained)."""
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def is_complete(output_dir: str | os.PathLike) -> bool:
    state = Path(output_dir) / STATE_FILE
    return state.is_file() and json.loads(state.read_text()).get("complete", False)


def run_training(*, output_dir: str | os.PathLike, config: TrainingConfig, module: torch.nn.Module,
                 train_loader, compute_losses: Callable[[torch.nn.Module, dict], dict],
                 evaluate: Callable[[torch.nn.Module], dict] | None = None, metric: str | None = None,
                 on_improved: Callable[[torch.nn.Module, dict], None],
                 accelerator: Accelerator | None = None, description: str = "training",
                 inputs: dict | None = None, settings: dict | None = None, compiled: bool = False,
                 show_progress: bool = True) -> dict:
    """Train ``module`` and return a summary (best metrics, history).

    ``compute_losses(module, batch)`` returns a dict with the total ``"loss"`` and any parts to
    log. ``evaluate(unwrapped_module)`` returns metrics after each epoch (and every
    ``config.eval_every`` steps); ``on_improved`` is called with the unwrapped module when ``metric``
    improves (or at the end without evaluation). ``settings``: the run's, for experiment trackers.
    Re-running with the same ``output_dir`` resumes from the last checkpoint, if it was made with
    the same settings and ``inputs`` (the data's fingerprint, ...): otherwise it is an error.
    ``compiled``: ``compute_losses`` gets the module through torch.compile (the batches have
    static shapes, see ``shapes_of_run``).
    """
    output_dir = Path(output_dir)
    accelerator = accelerator or make_accelerator(config, output_dir)
    set_seed(config.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = output_dir / CHECKPOINT_DIR

    # the fused AdamW: one kernel for every parameter's update (on a CPU too: a third of the time of a
    # small model's update, which runs one operation per parameter otherwise)
    optimizer = torch.optim.AdamW(optimizer_groups(module, config.weight_decay), lr=config.learning_rate,
                                  fused=accelerator.device.type in ("cuda", "cpu"))
    # each process sees its shard of the batches (whole shards only when the loader drops short batches)
    shard = math.floor if train_loader.drop_last else math.ceil
    batches_per_epoch = shard(len(train_loader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    if config.max_steps is not None:
        if config.max_steps < 1:
            raise InputError(f"--max-steps {config.max_steps} trains nothing", fix="give 1 or more, or leave it out")
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup_ratio * total_steps)
    if config.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    elif config.schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup_steps)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}: use 'linear' or 'constant'")
    module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, train_loader, scheduler)
    step = CompiledStep(module, accelerator.device, description,
                        cuda_graphs=config.gradient_accumulation_steps == 1) if compiled else None

    run_inputs = json.loads(json.dumps({"training": {k: v for k, v in asdict(config).items() if k not in RESUME_NEUTRAL},
                                        "processes": accelerator.num_processes, "compiled": compiled, **(inputs or {})},
                                       default=str))
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "history": [], "inputs": run_inputs}
    previous = output_dir / (CHECKPOINT_DIR + ".old")
    if previous.is_dir() and not checkpoint.is_dir():  # killed between the two renames of a checkpoint swap
        os.replace(previous, checkpoint)
    if (checkpoint / STATE_FILE).is_file():
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        changes = _changes(saved.get("inputs", {}), run_inputs)
        if changes:
            raise InputError(f"the checkpoint in {checkpoint} was made with other settings: {changes}",
                             fix=f"run with the settings it was made with, or delete {checkpoint} to train from the start")
        accelerator.load_state(str(checkpoint))
        state = saved
        logger.info("resuming %s from step %d (epoch %d, batch %d)", output_dir, state["global_step"],
                    state["epoch"] + 1, state["batch_in_epoch"])
    if accelerator.is_main_process:  # a run starting afresh keeps no lines of an earlier attempt
        _truncate_log(output_dir / LOG_FILE, state["global_step"])
    monitor = Monitor(accelerator, config, evaluate, metric, on_improved, batches_per_epoch, total_steps)
    monitor.start(state, output_dir, settings or values_of(config))

    log_file = open(output_dir / LOG_FILE, "a") if accelerator.is_main_process else None
    progress = tqdm(total=total_steps, initial=state["global_step"], desc=description, unit="step",
                    disable=not (show_progress and accelerator.is_main_process), dynamic_ncols=True)
    running: dict[str, float] = {}
    total_epochs = math.ceil(config.epochs)

    def save_checkpoint() -> None:
        temporary = output_dir / (CHECKPOINT_DIR + ".tmp")
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        if accelerator.is_main_process:
            (temporary / STATE_FILE).write_text(json.dumps(state))
            # swap by two renames: a kill at any point leaves a complete checkpoint to resume from
            shutil.rmtree(previous, ignore_errors=True)
            if checkpoint.is_dir():
                os.replace(checkpoint, previous)
            os.replace(temporary, checkpoint)
            shutil.rmtree(previous, ignore_errors=True)
        accelerator.wait_for_everyone()

    def log(record: dict) -> None:
        if log_file:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        monitor.track(record)

    module.train()
    while state["epoch"] < total_epochs and state["global_step"] < total_steps and not monitor.stopped(state):
        epoch = state["epoch"]
        loader.set_epoch(epoch)
        epoch_loader = loader
        if state["batch_in_epoch"]:
            epoch_loader = accelerator.skip_first_batches(loader, state["batch_in_epoch"])
        for batch in epoch_loader:
            with accelerator.accumulate(module), step.first_of_shape(batch) if step else nullcontext():
                losses = step(compute_losses, batch) if step else compute_losses(module, batch)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(module.parameters(), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            state["batch_in_epoch"] += 1
            for name, value in losses.items():  # on the device: reading a loss back waits for the GPU
                value = value.detach()
                running[name] = value if name not in running else 0.9 * running[name] + 0.1 * value
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            progress.update(1)
            if state["global_step"] % config.log_every == 0:  # the loop's one wait for the GPU
                progress.set_postfix({name: f"{float(value):.4g}" for name, value in running.items()}, refresh=False)
                log({"step": state["global_step"], "epoch": epoch + state["batch_in_epoch"] / batches_per_epoch,
                     "lr": scheduler.get_last_lr()[0], **{k: float(v.detach()) for k, v in losses.items()}})
            monitor.after_step(state, module, log)
            if state["global_step"] >= total_steps or monitor.stopped(state):
                break
            if state["global_step"] % config.checkpoint_every == 0:
                save_checkpoint()
        monitor.evaluate(state, module, log)  # at the epoch's end, or where --max-steps stopped within it
        state["epoch"] += 1
        state["batch_in_epoch"] = 0
        if state["epoch"] < total_epochs and state["global_step"] < total_steps and not monitor.stopped(state):
            save_checkpoint()  # after the last epoch the run completes at once: no checkpoint to resume from
    progress.close()
    if step:
        step.summary()
    monitor.finish(state, "--max-steps" if state["global_step"] == config.max_steps else "--epochs")

    if evaluate is None:
        if accelerator.is_main_process:
            on_improved(accelerator.unwrap_model(module), {})
    summary = {"complete": True, "best": state["best"], "metric": metric, "history": state["history"],
               "steps": state["global_step"], "stopped_early": monitor.stopped(state), "config": asdict(config)}
    if accelerator.is_main_process:
        if log_file:
            log_file.close()
        write_json(output_dir / STATE_FILE, summary)
        shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()
    return summary


def _changes(old: dict, new: dict) -> str:
    """``name old → new`` for each setting that differs (by its last name)."""
    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}
    before, after = flat(old), flat(new)
    keys = list(after) + [key for key in before if key not in after]
    return ", ".join(f"{key.rsplit('.', 1)[-1]} {before.get(key)} → {after.get(key)}"
                     for key in keys if before.get(key) != after.get(key))


def _truncate_log(path: Path, last_step: int) -> None:
    """Drops log lines written after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # the half-written last line of a killed run
            continue
    atomic_write(path, "".join(line + "\n" for line in kept))
