"""The text-file source: exact chunked tokenization, caching, windows, order and resume."""

import errno
import io
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from src.data import text_file
from src.data.packing import WindowPacker, num_windows
from src.data.text_datamodule import TextFileDataModule
from src.data.text_file import load_tokens, split_for_tokenization
from src.data.windows import OrderedWindows, ShuffledWindowBatches
from src.errors import UserError


def test_chunked_tokenization_equals_whole_text(tokenizer, shakespeare_path):
    text = shakespeare_path.read_text()[:200_000]
    chunks = split_for_tokenization(text, chunk_chars=5_000)
    assert len(chunks) > 10 and "".join(chunks) == text
    chunked = [t for chunk in chunks for t in tokenizer.encode(chunk)]
    assert chunked == tokenizer.encode(text)


def test_tokens_are_cached_by_content(tokenizer, tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("To be, or not to be.\n")
    first = load_tokens(path, tokenizer, tmp_path / "cache")
    assert list(first) == tokenizer.encode("To be, or not to be.\n") + [tokenizer.eos_token_id]
    assert first.dtype == np.uint16
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    path.write_text("That is the question.\n")
    assert list(load_tokens(path, tokenizer, tmp_path / "cache"))[:-1] == tokenizer.encode(
        "That is the question.\n"
    )
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "text file not found"), (b"  \n", "the file is empty"), (b"caf\xe9\n", "not UTF-8")],
)
def test_bad_text_files_are_one_line_errors(tokenizer, tmp_path, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_tokens(path, tokenizer, tmp_path / "cache")


def test_packer_windows_share_one_token_and_carry_the_rest():
    packer = WindowPacker(seq_len=4)
    windows = list(packer.feed([[1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]))
    assert windows == [[1, 2, 3, 4, 5], [5, 6, 7, 8, 9]]
    assert packer.buffer == [9, 10]
    assert num_windows(10, 4) == 2


TOKENS = np.arange(1000, dtype=np.uint16)


def take(dataset, n: int, workers: int = 0) -> list[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            return batches
    return batches


def test_one_epoch_sees_every_training_token_once():
    seq_len, batch = 10, 3
    dataset = ShuffledWindowBatches(TOKENS, seq_len, batch, seed=1)
    per_epoch = num_windows(len(TOKENS), seq_len)  # 99 windows = 33 batches
    rows = torch.cat(take(dataset, per_epoch // batch))
    targets = rows[:, 1:].flatten().tolist()
    assert sorted(targets) == list(range(1, 1 + per_epoch * seq_len))


def test_order_depends_only_on_seed_and_epoch():
    a = ShuffledWindowBatches(TOKENS, 10, 3, seed=1)
    b = ShuffledWindowBatches(TOKENS, 10, 3, seed=1)
    c = ShuffledWindowBatches(TOKENS, 10, 3, seed=2)
    assert torch.equal(a.batch(40), b.batch(40)) and not torch.equal(a.batch(40), c.batch(40))
    assert not torch.equal(a.epoch_order(0), a.epoch_order(1))


def test_workers_and_resume_serve_the_same_batches():
    straight = take(ShuffledWindowBatches(TOKENS, 10, 3, seed=1), 12)
    with_workers = take(ShuffledWindowBatches(TOKENS, 10, 3, seed=1), 12, workers=2)
    resumed = take(ShuffledWindowBatches(TOKENS, 10, 3, seed=1, start_window=5 * 3), 7, workers=2)
    assert all(torch.equal(x, y) for x, y in zip(straight, with_workers, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(straight[5:], resumed, strict=True))


def stub_trainer(step: int, world_size: int = 1, rank: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step,
        world_size=world_size,
        global_rank=rank,
        accumulate_grad_batches=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


def text_module(tmp_path, batch_size: int, trainer: SimpleNamespace) -> TextFileDataModule:
    module = TextFileDataModule(path=str(tmp_path / "input.txt"), seq_len=10, batch_size=batch_size, seed=1)
    module.train_tokens, module.trainer = TOKENS, trainer
    return module


def test_a_continuation_with_another_batch_size_takes_the_next_windows(tmp_path):
    """4 steps of 3 windows took the first 12 of the endless sequence; batches of 2 go on at 12."""
    first = text_module(tmp_path, 3, stub_trainer(step=4))
    state = first.state_dict()
    assert state["windows_consumed"] == 12
    continued = text_module(tmp_path, 2, stub_trainer(step=4))
    continued.load_state_dict(state)
    rows = torch.cat(take(continued.train_dataloader().dataset, 3))
    one_by_one = ShuffledWindowBatches(TOKENS, 10, 1, seed=1)
    assert torch.equal(rows, torch.cat([one_by_one.batch(i) for i in range(12, 18)]))
    continued.trainer.global_step = 6
    assert continued.run_counts()["windows_seen"] == 12 + 2 * 2
    continued.skip_batches(3)  # a rollback of 3 steps: the data goes on past them
    continued.trainer.global_step = 3
    assert continued.windows_consumed() == 16 and continued.state_dict()["skipped_batches"] == 3


def test_a_checkpoint_without_the_window_count_resumes_at_its_step_times_todays_batch(tmp_path):
    module = text_module(tmp_path, 3, stub_trainer(step=4, world_size=2))
    module.load_state_dict({"skipped_batches": 1})  # written before the count was kept
    assert module.windows_consumed() == (4 + 1) * 3 * 2


def test_ranks_split_a_global_batch():
    single = ShuffledWindowBatches(TOKENS, 10, 4, seed=1)
    ranks = [ShuffledWindowBatches(TOKENS, 10, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for b in range(5):
        assert torch.equal(torch.cat([ranks[0].batch(b), ranks[1].batch(b)]), single.batch(b))


def test_validation_windows_are_in_order_and_complete():
    val = OrderedWindows(TOKENS[900:], seq_len=10)
    assert len(val) == 9 and val[0][0].tolist() == list(range(900, 911)) and val[8][0][-1] == 990
    assert all(counted for _, counted in val)


def test_ranks_split_the_validation_windows_and_mark_the_repeats_that_even_their_shares():
    """9 windows on 2 ranks: rank 0 reads 0, 2, 4, 6, 8 and rank 1 reads 1, 3, 5, 7 and
    window 0 again, which does not count: together every window once."""
    ranks = [OrderedWindows(TOKENS[900:], seq_len=10, rank=r, world_size=2) for r in range(2)]
    assert [len(r) for r in ranks] == [5, 5]
    starts = [[(int(w[0]) - 900) // 10 for w, _ in r] for r in ranks]
    assert starts == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 0]]
    assert [counted for _, counted in ranks[1]] == [True, True, True, True, False]
    counted = sorted((int(w[0]) - 900) // 10 for r in ranks for w, c in r if c)
    assert counted == list(range(9))


def test_a_given_path_is_never_downloaded_to(tmp_path, monkeypatch):
    from src.data import text_datamodule

    monkeypatch.setattr(text_datamodule, "download", lambda *a: pytest.fail("must not download"))
    module = text_datamodule.TextFileDataModule(
        path=str(tmp_path / "typo.txt"), seq_len=8, batch_size=2, url="https://example.invalid/input.txt"
    )
    with pytest.raises(UserError, match="typo.txt: text file not found"):
        module.prepare_data()


def full_disk_after_some_bytes(f, *args, **kwargs):
    f.write(b"\x93NUMPY half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_caching_leaves_no_file_in_the_cache_folder(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "input.txt"
    path.write_text("To be, or not to be.\n")
    monkeypatch.setattr(np, "save", full_disk_after_some_bytes)
    with pytest.raises(OSError, match="No space left"):
        load_tokens(path, tokenizer, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert list(load_tokens(path, tokenizer, tmp_path / "cache"))[-1] == tokenizer.eos_token_id
    assert len(list((tmp_path / "cache").iterdir())) == 1


class CutConnection(io.BytesIO):
    """A response that sends some bytes, then loses the connection."""

    def read(self, size: int = -1) -> bytes:
        if self.tell():
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        return super().read(4)


def test_a_download_cut_off_midway_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(
        text_file.urllib.request, "urlopen", lambda url, timeout: CutConnection(b"First Citizen:")
    )
    with pytest.raises(UserError, match="cannot download .* reset by peer"):
        text_file.download("https://example.invalid/input.txt", tmp_path / "data" / "input.txt")
    assert list((tmp_path / "data").iterdir()) == []
