"""tasktune: fine-tune LLMs for real tasks, measured properly."""

import logging

from tasktune.runtime import set_wait_policy

set_wait_policy()  # before anything imports torch: OpenMP reads it once

__version__ = "0.1.0"

# transformers imports torchao (the int8 export extra) whenever it is installed; torchao then logs missing
# GPU kernels and torch's pytree deprecations on every model load. Keep real errors, drop that noise.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
