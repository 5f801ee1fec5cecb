"""What every benchmark script prints and writes: package versions and the report file."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def versions(*packages: str) -> dict[str, str]:
    """{"python": ..., package: version or "not installed"} for `packages`."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write(path: str, header: list[str], body: str) -> None:
    """Write the report (header lines, then the body) to `path`, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(header) + "\n" + body)
    print(f"wrote {path}")
