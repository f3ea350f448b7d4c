"""Task data: the file formats users have, label spaces, the on-disk token cache, batching."""

from .batching import EncodedData, encode, eval_loader, train_loader
from .cache import TokenCache, task_cache
from .formats import Example, Layout, Row, TaskData, open_task_file, read_task_file, report_bad_lines
from .options import DataOptions, TaskLabels, count_lines
from .labels import LabelSpace
from .sampling import EpochSampler
from .writing import format_row, header_line, marked

__all__ = ["DataOptions", "EncodedData", "EpochSampler", "Example", "LabelSpace", "Layout", "Row", "TaskData",
           "TaskLabels", "TokenCache", "count_lines", "encode", "eval_loader", "format_row", "header_line",
           "marked", "open_task_file", "read_task_file", "report_bad_lines", "task_cache", "train_loader"]
