"""Export a trained model: merge (merge.py), int8 (quantize.py), GGUF (gguf.py), measured (measure.py).

`run.export_model(ExportOptions(...))` is the one path; `tasktune export` (args.py) is its command line.
"""

from tasktune.export.run import ExportOptions, export_model, format_summary

__all__ = ["ExportOptions", "export_model", "format_summary"]
