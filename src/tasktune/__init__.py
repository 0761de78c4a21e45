"""tasktune: fine-tune LLMs for real tasks, measured properly."""

__version__ = "0.1.0"
