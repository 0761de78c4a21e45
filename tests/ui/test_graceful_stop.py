"""Stop = graceful: SIGTERM during training saves a checkpoint and returns; the run resumes from it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tasktune.config.load import load_config
from tasktune.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path, tiny_llama_dir):
    out = tmp_path / "run"
    overrides = [f"model.name_or_path={tiny_llama_dir}", "data.datasets=[demo_ner_instruct]",
                 f"data.dataset_dir={ROOT / 'data'}", "data.max_samples=16", "data.cutoff_len=128",
                 "train.batch_size=2", "train.max_steps=4", "train.logging_steps=1", "train.eval_steps=1",
                 "train.mixed_precision=no", f"output.dir={out}"]
    cfg = load_config(None, overrides)

    def stop_at_step_2(model, tokenizer, step):  # runs inside the loop, in the main thread
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    previous = signal.getsignal(signal.SIGTERM)
    result = train(cfg, evaluator=stop_at_step_2)
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored
    assert result.stopped and result.global_step == 2
    assert (out / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert not (out / "adapter").exists()
    last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["stopped"] is True and last["step"] == 2

    resumed = train(load_config(None, [*overrides, "train.resume_from_checkpoint=latest"]),
                    evaluator=lambda *_: {})
    assert not resumed.stopped and resumed.global_step == 4
    assert (out / "adapter" / "adapter_config.json").is_file()
