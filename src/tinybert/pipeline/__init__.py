"""`tinybert pipeline CONFIG.yaml`: every stage from one config (``config``), run in order in
its own directory of the run, skipped when done, resumed when interrupted (``run``)."""

from dataclasses import dataclass

from ..settings import option
from .config import SECTIONS, Config, format_config, load_config
from .run import DONE_FILE, run_pipeline

__all__ = ["DONE_FILE", "SECTIONS", "Config", "PipelineArguments", "format_config", "load_config", "run_pipeline"]


@dataclass
class PipelineArguments:
    config: str | None = option(None, "YAML config file", positional=True)
    overrides: list[str] = option(None, "override one config value (repeatable), e.g. --set finetune.epochs=1",
                                  key="set", repeat=True, default_factory=list)
    quick: bool = option(False, "apply the config's `quick:` overrides")
    show_config: bool = option(False, "print every section and key with the value it will use, then stop")

    def load(self) -> Config:
        return load_config(self.config, self.overrides, quick=self.quick)

    def run(self) -> dict:
        return run_pipeline(self.load())
