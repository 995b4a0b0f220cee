"""Waiting for the child processes of a multi-process (`jax.distributed`) test."""

import json
import subprocess


def finish_all(processes: list[subprocess.Popen], marker: str, timeout: float = 300
               ) -> list[dict]:
    """Waits for every process (text stdout, stderr merged); kills all of them if one fails or
    time runs out. Returns the JSON each printed after `marker` ("SUMMARY "), in order."""
    outputs = []
    try:
        for p in processes:
            out, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, out[-4000:]
            outputs.append(out)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [json.loads(out.split(marker, 1)[1]) for out in outputs]
