#!/usr/bin/env bash
# Side environment for the LLaMA-Factory baseline of bench/train_throughput.py: .bench/lf-venv.
#
# Idempotent: a stamp records what was installed; re-running with the same pins does nothing.
#   bench/setup_llamafactory.sh                      # torch 2.13.0 + the newest llamafactory
#   LF=llamafactory==0.9.5 bench/setup_llamafactory.sh
#
# torch is pinned to tasktune's build and installed FIRST; llamafactory then brings the transformers /
# peft / trl / accelerate versions it pins itself. torchvision and torchaudio are NOT installed: PyPI has
# no build of them for torch 2.13 + CPU (the ones pip picks fail to load: "operator torchvision::nms does
# not exist", "_torchaudio.abi3.so"), and LLaMA-Factory's text SFT path does not use them. LLaMA-Factory
# imports torchaudio unconditionally (data/mm_plugin.py), so a stub package that raises on any use stands
# in for it; transformers sees no torchaudio distribution and treats audio as unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
TORCH=${TORCH:-2.13.0}
LF=${LF:-llamafactory}
VENV=.bench/lf-venv
STAMP="$VENV/.installed"
WANT="torch==$TORCH $LF (no torchvision/torchaudio, stub torchaudio, metrics) v3"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "$VENV ready: $(cat "$STAMP")"; exit 0
fi
mkdir -p .bench
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch==$TORCH"
echo "torch==$TORCH" > .bench/lf-constraints.txt
"${PIP[@]}" install --no-deps "$LF"
# llamafactory's own requirements, minus torchvision/torchaudio, with torch held where it is.
mapfile -t REQS < <("$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import requires
for req in requires("llamafactory") or []:
    if "extra ==" in req:
        continue
    name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()
    if name not in {"torchvision", "torchaudio"}:
        print(req)
PY
)
"${PIP[@]}" install -c .bench/lf-constraints.txt "${REQS[@]}"
# do_predict's metrics (bench/eval_speed.py) need LLaMA-Factory's "metrics" extra
"${PIP[@]}" install -c .bench/lf-constraints.txt jieba nltk rouge-chinese
"${PIP[@]}" uninstall -y torchvision torchaudio 2>/dev/null || true
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/torchaudio"
cat > "$SITE/torchaudio/__init__.py" <<'PY'
"""Stub written by tasktune's bench/setup_llamafactory.sh: LLaMA-Factory imports torchaudio at module
level, but no torchaudio build exists for this torch; text-only training never calls it."""


def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: torchaudio is a stub in this benchmark environment")
PY
"$VENV/bin/python" - <<'PY'
import torch, transformers, peft, trl, accelerate, llamafactory
from llamafactory.train.tuner import run_exp  # noqa: F401  (imports the whole SFT path)
print(f"LLaMA-Factory side venv: llamafactory {llamafactory.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}, "
      f"accelerate {accelerate.__version__}")
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
echo "$WANT" > "$STAMP"
