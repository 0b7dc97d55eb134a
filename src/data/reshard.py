"""A streamed run's position handed to another number of readers (devices x workers) at a checkpoint.

By files, a position is each file's completed passes and next row, whichever reader holds
it, so any reader count that still splits by files continues it without repeating or
skipping a document (the exact rule, and how the packers' remainders move, is in
`src/data/stream.py`). By examples, one reader in N keeps one document in N of the whole
stream: another N would need the positions of all N old readers to filter by, which we do
not keep, so that is a one-line error.
"""

from __future__ import annotations

from src.data.stream import ReaderState
from src.errors import UserError


def check_covers(saved: list[ReaderState], num_files: int) -> None:
    """A position by files names each of the dataset's files once: on another number of files
    it would read rows that are not the ones it counted."""
    files = sorted(file for state in saved for file, _, _ in state.files)
    if files != list(range(num_files)):
        raise UserError(
            f"the checkpoint's data position covers {len(files)} file(s), the dataset has {num_files}; "
            "resume on the same data.data_files (or dataset) as the checkpoint"
        )


def reshard(saved: list[ReaderState], reader: int, num_readers: int, num_files: int) -> ReaderState:
    """The state of reader `reader` of `num_readers` (at most `num_files`), continuing `saved`
    (every old reader, in order, all by files).

    It takes the files `f` with `f % num_readers == reader` as they stand, and the remainders
    and document counts of the old readers `g` with `g % num_readers == reader`.
    """
    check_covers(saved, num_files)
    files = sorted(entry for state in saved for entry in state.files)
    handed = saved[reader::num_readers]
    remainder: list[int] = []
    for state in handed:  # each old remainder's first token was already its last window's target
        remainder += state.remainder[1:] if remainder else state.remainder
    mine = [entry for entry in files if entry[0] % num_readers == reader]
    return ReaderState(
        epoch=min(passes for _, passes, _ in mine),
        remainder=remainder,
        documents=sum(state.documents for state in handed),
        unique=sum(state.unique for state in handed),
        files=mine,
        skipped=sorted(file for state in saved for file in state.skipped if file % num_readers == reader),
    )
