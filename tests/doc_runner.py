"""Run console-script commands one after another in this one Python process, so their imports are paid once.

``python doc_runner.py COMMANDS.json RESULTS.json``: COMMANDS is a list of ``{"argv": [...], "env": {...}}``;
each command's console script (an installed ``console_scripts`` entry point, ``ns-train`` or ``ns-3dae-bench``
alike) is called with ``sys.argv = argv`` and ``env`` added to the environment. RESULTS gets, after every command,
``{"code", "seconds", "output"}`` per command run so far (the exit code: 0, a ``SystemExit`` code, or 1 with the
traceback for an exception). Used by test_doc_commands.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from importlib.metadata import entry_points
from pathlib import Path


def _reset_nerfstudio_globals() -> None:
    """nerfstudio keeps its event writers and profiler in module globals; a new run must not inherit them."""
    from nerfstudio.utils import profiler, writer

    writer.EVENT_WRITERS.clear()
    writer.EVENT_STORAGE.clear()
    writer.GLOBAL_BUFFER.clear()
    profiler.PROFILER.clear()


def main(commands_file: str, results_file: str) -> None:
    commands = json.loads(Path(commands_file).read_text())
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    results = []
    for command in commands:
        argv, env = command["argv"], command["env"]
        saved_env = dict(os.environ)
        os.environ.update(env)
        sys.argv = list(argv)
        start, code, output = time.monotonic(), 0, ""
        print(f"\n===== {' '.join(argv)}", flush=True)
        try:
            scripts[argv[0]].load()()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported as the command's failure
            code, output = 1, traceback.format_exc()
            print(output, flush=True)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            _reset_nerfstudio_globals()
        results.append({"argv": argv, "code": code, "seconds": time.monotonic() - start, "output": output})
        Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
