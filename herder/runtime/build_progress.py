"""Progress of `herder images build` for people at a terminal.

The builder reports plain lines (`<image>: <output line>`). Elsewhere (a
pipe, a log) they are printed as they come. On a terminal `BuildReporter`
keeps one status line per image under way, redrawn in place: the build step
(`Step 3/7` from the engine), the bytes fetched from the Debian mirror (apt's
`Get:… [12.3 kB]` lines, and debootstrap's packages retrieved), the time
taken, and the line being worked on; the lines that matter (start, built,
present, errors) stay on screen.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from typing import TextIO

_STEP = re.compile(r"^Step (\d+)/(\d+) : ")
_APT_GET = re.compile(r"^Get:\d+ .*\[([\d.,]+) ([kMG]?B)\]\s*$")
_RETRIEVING = re.compile(r"^I: Retrieving ")
_UNITS = {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}
# Lines kept on screen rather than folded into the status line.
_KEPT = re.compile(
    r": (building |built |present|not present|made in|importing )|error|failed", re.I
)


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class _Image:
    name: str
    started: float = field(default_factory=time.monotonic)
    step: tuple[int, int] | None = None
    fetched: int = 0
    packages: int = 0
    last: str = ""


class BuildReporter:
    """A `progress` callback for `build_images` that draws on a terminal."""

    def __init__(self, out: TextIO, width: int | None = None) -> None:
        self.out = out
        self.width = width or shutil.get_terminal_size((100, 24)).columns
        self.image: _Image | None = None

    def __call__(self, line: str) -> None:
        name, _, rest = line.partition(": ")
        if self.image is None or self.image.name != name:
            self.image = _Image(name)
        image = self.image
        if step := _STEP.match(rest):
            image.step = (int(step.group(1)), int(step.group(2)))
        elif got := _APT_GET.match(rest):
            number, unit = got.groups()
            image.fetched += int(float(number.replace(",", "")) * _UNITS[unit])
        elif _RETRIEVING.match(rest):
            image.packages += 1
        if _KEPT.search(line):
            self._clear()
            print(line, file=self.out, flush=True)
            return
        image.last = rest.strip()
        self._draw(image)

    def status(self, image: _Image) -> str:
        parts = [image.name]
        if image.step:
            parts.append(f"step {image.step[0]}/{image.step[1]}")
        if image.fetched:
            parts.append(f"{size_text(image.fetched)} fetched")
        if image.packages:
            parts.append(f"{image.packages} packages retrieved")
        parts.append(f"{time.monotonic() - image.started:.0f}s")
        text = " · ".join(parts) + f"  {image.last}"
        return text[: max(10, self.width - 1)]

    def _draw(self, image: _Image) -> None:
        self.out.write("\r\x1b[K" + self.status(image))
        self.out.flush()

    def _clear(self) -> None:
        self.out.write("\r\x1b[K")

    def close(self) -> None:
        self._clear()
        self.out.flush()
