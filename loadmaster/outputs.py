"""The files a run leaves: the result file (``--out``) and the reports rendered from it
(``--html``, ``--csv PREFIX``, ``--json``). ``loadmaster run`` writes them at its end
from the document it builds once; ``loadmaster report`` from a result file read back:
both go through ``write_reports``, so a re-report equals the report written by the run.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadmaster.csv_report import CSV_SUFFIXES, csv_reports
from loadmaster.html_report import render_html
from loadmaster.result import ResultFileError, check_writable, write_result, write_text
from loadmaster.summary import summarize

__all__ = ["Outputs", "save_outputs", "summary_text", "write_reports"]


@dataclass(frozen=True)
class Outputs:
    out: Path | None = None  # the result file
    html: Path | None = None
    csv: str | None = None  # a prefix: PREFIX_stats.csv, PREFIX_failures.csv, ...
    json: Path | None = None  # the summary

    @property
    def wanted(self) -> bool:
        """Whether the run must build its document."""
        return any(x is not None for x in (self.out, self.html, self.csv, self.json))

    def files(self) -> list[tuple[str, Path]]:
        """Every file to write, with the option that names it."""
        out = [(opt, p) for opt, p in (("--out", self.out), ("--html", self.html),
                                        ("--json", self.json)) if p is not None]
        if self.csv is not None:
            out += [("--csv", Path(self.csv + suffix)) for suffix in CSV_SUFFIXES]
        return out

    def check(self) -> None:
        """Each file can be written, and no two are the same (ResultFileError)."""
        seen: dict[Path, str] = {}
        for opt, path in self.files():
            check_writable(path, opt)
            key = path.resolve()
            if key in seen:
                raise ResultFileError(f"{opt} {path}: also the file of {seen[key]}")
            seen[key] = opt


def summary_text(doc: Mapping[str, Any]) -> str:
    return json.dumps(summarize(doc), indent=2, allow_nan=False) + "\n"


def write_reports(doc: Mapping[str, Any], outputs: Outputs) -> None:
    """Render the reports asked for from ``doc`` and write them (ResultFileError)."""
    if outputs.html is not None:
        write_text(outputs.html, [render_html(doc)], "the HTML report")
    if outputs.csv is not None:
        for suffix, text in csv_reports(doc).items():
            write_text(Path(outputs.csv + suffix), [text], "the CSV report")
    if outputs.json is not None:
        write_text(outputs.json, [summary_text(doc)], "the JSON summary")


def save_outputs(outputs: Outputs, build: Callable[[], dict[str, Any]]) -> bool:
    """Build the document and write every file asked for; False, once the user was told
    why on stderr, when one could not be written (the run's own outcome stands)."""
    if not outputs.wanted:
        return True
    ok = True
    try:
        doc = build()
    except Exception:  # our own bug
        _tell(f"{traceback.format_exc()}internal error: the result file and reports were "
              f"not written (the traceback above is ours: please report it)")
        return False
    steps: list[Callable[[], None]] = []
    if (out := outputs.out) is not None:
        steps.append(lambda: write_result(out, doc))
    steps.append(lambda: write_reports(doc, outputs))
    for step in steps:
        try:
            step()
        except ResultFileError as e:
            _tell(str(e))
            ok = False
        except Exception:  # our own bug
            _tell(f"{traceback.format_exc()}internal error: a report was not written (the "
                  f"traceback above is ours: please report it)")
            ok = False
    return ok


def _tell(problem: str) -> None:
    print(f"loadmaster: {problem}", file=sys.stderr, flush=True)
