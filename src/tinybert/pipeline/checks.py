"""The pipeline's checks before any stage runs: every training stage's settings, and every
student's shape against the teacher, refused now rather than when the run reaches them, perhaps
hours in, with the file and line (or --set) that gave the setting."""

from __future__ import annotations

from ..distillation.distillers import check_losses
from ..distillation.start import check_pruned_rate, check_pruning, check_static
from transformers import AutoConfig

from ..errors import InputError
from ..models.loading import check_model_dir
from ..models.static import STATIC
from ..models.students import check_layers
from ..monitoring import check_training
from .config import STUDENT_SHAPE, STUDENTS, Config

# where a section's unset keys come from: the section it shares them with
SHARES_WITH = {"prediction": "intermediate", "baseline": "finetune"}


def check_training_sections(config: Config) -> None:
    """Every training stage the run will reach checks its settings (trackers installed, layer and
    relation-head counts, ...) now, not when it reaches them, perhaps hours in."""
    values, sections = config.values, config.sections
    training = {"intermediate": sections["intermediate"].config.training,
                "prediction": config.prediction_section().config.training}
    if values["general"]["run"] and not values["general"]["student_dir"]:
        training["general"] = sections["general"].arguments.config.training
    if not values["finetune"]["teacher_dir"]:
        training["finetune"] = sections["finetune"].arguments.config.training
    if values["baseline"]["run"]:
        training["baseline"] = config.baseline_section().arguments.config.training
    distilling = {"intermediate": sections["intermediate"].config}
    if "general" in training:
        distilling["general"] = sections["general"].arguments.config
    for name, section in config.students.items():
        static = section.student == STATIC
        training[f"{STUDENTS}.{name}"] = (config.student_stage2(name) if static else section).config.training
        if not static:
            distilling[f"{STUDENTS}.{name}"] = section.config
    checks = [(section, lambda named, settings=settings: check_training(settings, named))
              for section, settings in training.items()]
    for section, settings in distilling.items():
        checks += [(section, lambda named, settings=settings: check_layers(settings.layers, named)),
                   (section, lambda named, settings=settings: check_losses(settings.losses, named))]
    rates = {section: settings.pruned_lr_scale for section, settings in distilling.items() if section != "general"}
    rates["prediction"] = config.prediction_section().config.pruned_lr_scale
    checks += [(section, lambda named, scale=scale: check_pruned_rate(scale, named)) for section, scale in rates.items()]
    _run(config, checks)


def _run(config: Config, checks) -> None:
    """Each ``(section, check)``: ``check(named)`` with ``named(key)`` the setting as the config
    gives it; a refusal names the file and line (or --set) that gave the setting."""
    for section, check in checks:
        def named(key, section=section):  # where it was given: stage 2's value may be stage 1's
            return _where(config, section, key)
        try:
            check(named)
        except InputError as error:  # its message starts with the setting's section.key: say where that was given
            setting = tuple(error.problem.split(" ", 1)[0].rsplit(".", 1))
            raise InputError(error.problem, path=config.origins.get(setting, config.path), fix=error.fix) from None


def _where(config: Config, section: str, key: str) -> str:
    """``section.key`` as the config gives it: where it was set, else the section its unset keys
    come from (a student's: stage 1's; a static student's: its own for its shape, stage 2's for the rest)."""
    if (section, key) in config.origins:
        return f"{section}.{key}"
    if section.startswith(STUDENTS + "."):
        static = config.students[section[len(STUDENTS) + 1:]].student == STATIC
        home = (section if key in STUDENT_SHAPE else "prediction") if static else "intermediate"
        return f"{home}.{key}"
    return f"{SHARES_WITH.get(section, section)}.{key}"


def check_student_widths(config: Config, teacher_dir, data_task: tuple[str, str] | None = None) -> None:
    """Every student's shape (stage 1's and each of `students:`: pruned widths, a static student's
    settings), checked against the teacher (or the model it is fine-tuned from, on ``data_task``:
    the training file and its task), naming the setting as the config gave it."""
    if config.sections["intermediate"].student == STATIC:
        raise InputError("intermediate.student static: the main student takes both stages, and a static student "
                         "has no stage 1", path=config.origins.get(("intermediate", "student"), config.path),
                         fix="put it beside the main student: students: {static: {student: static}}")
    teacher_config = AutoConfig.from_pretrained(check_model_dir(teacher_dir))
    stage1 = {"intermediate": config.sections["intermediate"],
              **{f"{STUDENTS}.{name}": config.student_stage2(name) if section.student == STATIC else section
                 for name, section in config.students.items()}}
    checks = []
    for section, arguments in stage1.items():
        def check(named, arguments=arguments):
            check_pruning(arguments.config.pruning, arguments.config.init_from_teacher, teacher_config, named,
                          static=arguments.student == STATIC)
            check_static(arguments.config, arguments.student, teacher_dir, named, data_task)
        checks.append((section, check))
    _run(config, checks)
