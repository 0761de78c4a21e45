"""`quiet_known_noise`: the third-party lines every command printed are dropped, nothing else those libraries say."""

from __future__ import annotations

import logging
import warnings

from tasktune import runtime


def test_known_lines_are_dropped_and_the_rest_still_shows(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "_quiet", False)
    for name in runtime.KNOWN_NOISE:  # as in a fresh process (the `tasktune` command's tests may have run)
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        runtime.quiet_known_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                      stacklevel=1)
        warnings.warn("`something_else` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`something_else` is deprecated"]
    with caplog.at_level(logging.WARNING):
        for name, start in runtime.KNOWN_NOISE.items():
            logging.getLogger(name).warning(start + ": offline")
            logging.getLogger(name).warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"] * len(runtime.KNOWN_NOISE)
    runtime.quiet_known_noise()  # once is enough: no second filter
    assert all(len(logging.getLogger(name).filters) == 1 for name in runtime.KNOWN_NOISE)
