"""TokenTable (per-token metadata of token-level activations) and its HDF5 group."""
import h5py
import numpy as np
import pytest

from compexp_core.io.tokens import (TokenTable, append_tokens, read_tokens, tokens_written,
                                    truncate_tokens)


def table():
    return TokenTable.from_documents([["The", " cat", " sat"], ["No", "!"], ["é", "漢字"]],
                                     token_ids=[[1, 2, 3], [4, 5], [6, 7]])


def test_rows_neighbours_and_context():
    t = table()
    assert len(t) == 7 and repr(t) == "TokenTable(7 tokens, 3 documents)"
    assert t.previous_row().tolist() == [-1, 0, 1, -1, 3, -1, 5]
    assert t.next_row().tolist() == [1, 2, -1, 4, -1, 6, -1]
    assert t.context(4, before=3, after=3) == (["No", "!"], 1)
    assert t.context(1, before=0, after=0) == ([" cat"], 0)
    # A gap in positions (a dropped token inside a document) is not a neighbour.
    g = TokenTable([0, 0, 0], [0, 1, 3], [-1, -1, -1], ["a", "b", "c"])
    assert g.previous_row().tolist() == [-1, 0, -1] and g.next_row().tolist() == [1, -1, -1]
    assert TokenTable.concat([t.rows(0, 3), t.rows(3, 7)]) == t
    with pytest.raises(IndexError, match="row 7 out of range"):
        t.context(7)


@pytest.mark.parametrize("args, err, text", [
    (([0, 1], [0], [0, 0], ["a", "b"]), ValueError, "position has 1"),
    (([0, 0], [1, 0], [0, 0], ["a", "b"]), ValueError, "out of order at row 1"),
    (([1, 0], [0, 0], [0, 0], ["a", "b"]), ValueError, "out of order at row 1"),
    (([0, -1], [0, 0], [0, 0], ["a", "b"]), ValueError, r"doc\[1\] = -1 is negative"),
    (([0.5], [0], [0], ["a"]), TypeError, "integers"),
    (([0], [0], [0], [3]), TypeError, r"text\[0\] is int"),
    (([[0]], [0], [0], ["a"]), ValueError, "1-D"),
])
def test_bad_tables_are_named(args, err, text):
    with pytest.raises(err, match=text):
        TokenTable(*args)


def test_append_resume_and_read_back(tmp_path):
    t = table()
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        assert read_tokens(f) is None and tokens_written(f) == 0
        assert append_tokens(f, t.rows(0, 3)) == 3
        assert append_tokens(f, t.rows(3, 7)) == 7
        with pytest.raises(ValueError, match="not after the last written row"):
            append_tokens(f, t.rows(0, 1))
        truncate_tokens(f, 5)
        assert tokens_written(f) == 5
        append_tokens(f, t.rows(5, 7))
    assert read_tokens(path) == t
    with h5py.File(path, "a") as f:
        del f["tokens/text"]
    with pytest.raises(ValueError, match="lacks text"):
        read_tokens(path)


def test_rechunking_token_activations_keeps_the_token_table(tmp_path):
    from compexp_core.io.activations import ActivationsWriter, load_activations, rechunk_activations

    t = table()
    acts = np.arange(len(t) * 3, dtype=np.float32).reshape(len(t), 3)
    with ActivationsWriter(tmp_path / "a.h5", n_samples=len(t), dtype="float32",
                           tokens=True) as w:
        w.write(0, acts[:3], t.rows(0, 3))
        w.write(3, acts[3:], t.rows(3, 7))
        w.finish()
    rechunk_activations(tmp_path / "a.h5", tmp_path / "u.h5", memory_bytes=2 * 12,
                        chunk_bytes=4)
    np.testing.assert_array_equal(load_activations(tmp_path / "u.h5"), acts)
    assert read_tokens(tmp_path / "u.h5") == t
    with h5py.File(tmp_path / "u.h5", "r") as f:
        assert f["acts"].chunks == (2, 1)
    with pytest.raises(ValueError, match="chunk_bytes must be >= 1"):
        ActivationsWriter(tmp_path / "x.h5", n_samples=2, dtype="float32", chunk_bytes=0)
