"""What every benchmark script prints and writes: package versions and the report file."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import sys


def versions(*packages: str) -> dict[str, str]:
    """{"python": ..., package: version or "not installed"} for `packages`."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def command(script: str, argv: list[str] | None) -> str:
    """The command line that ran `script` (`argv` None: this process's own)."""
    return shlex.join(["python", *(sys.argv if argv is None else [script, *argv])])


def machine() -> str:
    """Platform, processor, CPUs (and how many this process may use) and jax backend."""
    import jax

    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable by this "
            f"process), jax backend {jax.default_backend()} "
            f"({jax.devices()[0].device_kind})")


def write(path: str, header: list[str], body: str) -> None:
    """Write the report (header lines, then the body) to `path`, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(header) + "\n" + body)
    print(f"wrote {path}")
