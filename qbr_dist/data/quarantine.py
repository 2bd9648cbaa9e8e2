"""Bad records are skipped, counted by reason and listed in a JSON-lines quarantine file; a file that
cannot be read at all is a DataError.

The readers also count the rows they read in `read`, so that for one reader call on a fresh
quarantine `read == rows returned + total` holds exactly (what counts as a row: `readers.py`).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


VALUE_CHARS = 80


class DataError(ValueError):
    """A file that cannot be read as the expected table; the message names the file and field."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.splitlines()))  # one line, whatever the file's text held


class Quarantine:
    """Collects skipped records; the file is only created when the first record arrives."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else None
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # reason -> field, where (and value) of its first record since `mark`
        self.read = 0  # rows the readers consumed, each either accepted or quarantined
        self._handle = None

    def add(self, *, source: str, where: str, field: str, reason: str, value: str | None = None) -> None:
        """`value`: the text found, where it helps to see it (its first `VALUE_CHARS` characters)."""
        self.counts[reason] += 1
        value = None if value is None else value[:VALUE_CHARS]
        self.examples.setdefault(reason, ("" if field == "*" else f"field '{field}', ") + where +
                                 ("" if value is None else f" {value!r}"))
        if self.path is None:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")
        record = {"source": source, "where": where, "field": field, "reason": reason}
        self._handle.write(json.dumps(record | ({"value": value} if value is not None else {})) + "\n")

    def mark(self) -> tuple[int, Counter]:
        """Where the counts stand, for `require_some`; the examples start again (each names a line of one file)."""
        self.examples = {}
        return self.read, Counter(self.counts)

    def require_some(self, source: str, kept: int, since: tuple[int, Counter]) -> None:
        """A DataError naming the most common reason when every row read since the `mark` was quarantined."""
        read_before, counts_before = since
        if kept or self.read == read_before:
            return
        reason, times = (self.counts - counts_before).most_common(1)[0]
        listed = f"; each listed in {self.path}" if self.path else ""
        raise DataError(f"{source}: none of its {self.read - read_before:,} rows could be read; most often "
                        f"'{reason}' ({times:,} rows, e.g. {self.examples[reason]}){listed}")

    def keep_only(self, keep) -> None:
        """Rewrite the file with only the records `keep(record)` accepts: those of work that stays done
        when a stage runs again. Only before this quarantine has added any."""
        if self._handle is not None:
            raise RuntimeError("Quarantine.keep_only: records were already added in this run")
        if self.path is None or not self.path.is_file():
            return
        records = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
        kept = "".join(json.dumps(record) + "\n" for record in records if keep(record))
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(kept, encoding="utf-8")
        tmp.replace(self.path)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "Quarantine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
