"""Task data: the file formats users have, label spaces, tokenising and batching."""

from .batching import EncodedData, LengthGroupedEpochSampler, encode, eval_loader, train_loader
from .formats import DataOptions, Example, Layout, Row, TaskData, open_task_file, read_task_file, report_bad_lines
from .labels import LabelSpace
from .writing import format_row, header_line

__all__ = ["DataOptions", "EncodedData", "Example", "LabelSpace", "Layout", "LengthGroupedEpochSampler", "Row",
           "TaskData", "encode", "eval_loader", "format_row", "header_line", "open_task_file", "read_task_file",
           "report_bad_lines", "train_loader"]
