"""Worker process of :class:`relaypacs.dicom.pool.DicomValidator`.

``python -m relaypacs.dicom._worker '<DicomLimits as JSON>'``: caps its own address space
first, says ``"ready"``, then reads one JSON string (a path) per line on stdin and answers
one JSON object per line on stdout: ``{"ok": summary}``, ``{"rejected": [code, message]}``
or ``{"error": [exception type, errno, message]}``. A line holding a JSON list of paths (a
batch) gets one line ``{"batch": [answer, ...]}``, an answer per path in order. Exits at EOF
on stdin.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def main() -> int:
    settings = json.loads(sys.argv[1])
    memory = int(settings["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    # The protocol gets the real stdout; anything printed by accident goes to stderr.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    requests = sys.stdin.buffer

    from dataclasses import asdict
    from pathlib import Path

    from relaypacs.dicom.inspect import (
        RESOURCE_LIMIT,
        DicomLimits,
        DicomRejected,
        inspect_file,
    )

    limits = DicomLimits(**settings)
    # pydicom uses numpy only for pixel arrays, which are never decoded here; keeping numpy
    # out saves ~45 MiB and ~1 s of start-up per worker.
    sys.modules["numpy"] = None  # type: ignore[assignment]
    import pydicom  # noqa: F401  (imported once here, not on the first file)

    def answer(message: object) -> None:
        channel.write(json.dumps(message).encode() + b"\n")

    def inspect(path: str) -> dict[str, object]:
        try:
            return {"ok": asdict(inspect_file(Path(path), limits))}
        except DicomRejected as exc:
            return {"rejected": [exc.code, exc.message]}
        except MemoryError:
            return {"rejected": [RESOURCE_LIMIT, "Inspecting the file exceeded the memory limit."]}
        except Exception as exc:
            errno = exc.errno if isinstance(exc, OSError) else None
            return {"error": [type(exc).__name__, errno, str(exc)]}

    answer("ready")
    while line := requests.readline():
        request = json.loads(line)
        if isinstance(request, list):
            answer({"batch": [inspect(path) for path in request]})
        else:
            answer(inspect(request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
