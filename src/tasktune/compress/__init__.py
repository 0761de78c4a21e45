"""Compression with the task metric re-checked: quantize.py, prune.py, distill.py (heal, logit KD), head.py
(LLM -> encoder head), measure.py (size, memory, speed), report.py; run.py ties them into `tasktune compress`."""
