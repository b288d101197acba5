"""The store seam: the parent's store and a reader's view, opened through chatd.stores."""

from __future__ import annotations

from pathlib import Path

from chatd.stores import BACKENDS, history_location, open_history, open_reads


def test_what_the_parent_flushes_a_reader_opened_through_the_seam_sees(tmp_path: Path) -> None:
    assert set(BACKENDS) == {"sqlite"}  # the embedded default; a cluster store adds one
    where = history_location(tmp_path)
    store = open_history(where)
    first = store.add_message(1000, "ann", "hello", False, room="#a")
    store.add_message(1001, "ann", "again", False, room="#a")
    assert store.flush()
    reads = open_reads(where)
    try:
        with reads.snapshot():
            rows, more = reads.history(room="#a", after=first - 1, limit=1)
            newest = reads.last_id()
        assert [row[0] for row in rows] == [first] and more and newest == first + 1
    finally:
        reads.close()
        store.close()
