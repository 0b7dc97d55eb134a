from pathlib import Path

import pytest

from src.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer
from src.errors import UserError


def test_vendored_tokenizer_matches_smollm2(tokenizer):
    assert tokenizer.encode("In 2024") == [788, 216, 34, 32, 34, 36]
    assert tokenizer.encode("Once upon a time") == [6403, 1980, 253, 655]
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    assert len(tokenizer) == 49152
    assert (Path(DEFAULT_TOKENIZER) / "PROVENANCE.md").is_file()


def test_round_trips_a_paragraph_of_shakespeare(tokenizer, shakespeare_path):
    paragraph = shakespeare_path.read_text()[:2000]
    assert tokenizer.decode(tokenizer.encode(paragraph)) == paragraph


def test_missing_tokenizer_is_a_one_line_error(tmp_path):
    """A path that does not exist says so, not Hugging Face's rules for a hub id."""
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as info:
        load_tokenizer(str(missing))
    assert str(info.value) == f"tokenizer '{missing}': no such folder; give a tokenizer folder or a hub id"
