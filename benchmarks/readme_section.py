"""Replace one marked section of benchmarks/README.md with new results."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).with_name("README.md")


def write_section(name: str, text: str, readme: Path = README) -> None:
    """Put ``text`` between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` (appended if absent)."""
    content = readme.read_text() if readme.exists() else ""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin in content:
        content = content[: content.index(begin)] + begin + "\n" + text + "\n" + content[content.index(end):]
    else:
        content += f"\n{begin}\n{text}\n{end}\n"
    readme.write_text(content)
