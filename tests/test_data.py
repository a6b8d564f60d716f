"""``--data`` / ``--labels``: .npy (memory-mapped) and .npz files, per-sample shapes, and every way the
arrays can be wrong (one ``InputError`` line naming the flag and the file)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.data import iter_rows, labels_from_data_file, load_data, load_labels
from onnxcomp.errors import InputError


def one_line_error(fn, *args, match: str):
    with pytest.raises(InputError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)


def test_npy_is_memory_mapped(tmp_path):
    x = np.random.default_rng(0).uniform(size=(300, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got = load_data(str(tmp_path / "x.npy"), 8)
    assert isinstance(got, np.memmap)
    assert np.array_equal(np.asarray(got), x)
    batches = list(iter_rows(got, 128))
    assert [b.shape[0] for b in batches] == [128, 128, 44] and batches[0].dtype == np.float64


def test_per_sample_shape_is_flattened(tmp_path):
    x = np.arange(2 * 1 * 2 * 3, dtype=np.float64).reshape(2, 1, 2, 3)
    np.save(tmp_path / "img.npy", x)
    got = load_data(str(tmp_path / "img.npy"), 6)
    assert got.shape == (2, 6) and np.array_equal(got, x.reshape(2, 6))


def test_integer_data_is_accepted(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(12, dtype=np.int32).reshape(3, 4))
    assert load_data(str(tmp_path / "i.npy"), 4).shape == (3, 4)


def test_npz_x_and_y(tmp_path):
    x = np.random.default_rng(1).uniform(size=(20, 5))
    y = np.arange(20) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    path = str(tmp_path / "d.npz")
    assert np.array_equal(load_data(path, 5), x)
    assert np.array_equal(labels_from_data_file(path, 20), y)
    assert np.array_equal(load_labels(path, 20), y)


def test_npz_with_one_array_of_any_name(tmp_path):
    np.savez(tmp_path / "only.npz", samples=np.ones((4, 3)))
    assert load_data(str(tmp_path / "only.npz"), 3).shape == (4, 3)
    assert labels_from_data_file(str(tmp_path / "only.npz"), 4) is None


@pytest.mark.parametrize("array,match", [
    (np.ones((5, 7)), "samples have 7 features \\(shape \\(5, 7\\)\\) but the model takes 6"),
    (np.ones(6), "a single sample of shape \\(6,\\); give shape \\(N, 6\\)"),
    (np.ones((0, 6)), "has no rows"),
    (np.array(["a", "b"]), "dtype <U1 is not numeric"),
    (np.ones((3, 6), dtype=bool), "dtype bool is not numeric"),
    (np.ones((3, 6), dtype=np.complex64), "dtype complex64 is not numeric"),
])
def test_bad_data(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    one_line_error(load_data, str(tmp_path / "bad.npy"), 6, match=match)


def test_nan_and_inf_name_the_row(tmp_path):
    x = np.zeros((70000, 2), dtype=np.float32)
    x[66000, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    one_line_error(load_data, str(tmp_path / "nan.npy"), 2, match="row 66000 contains NaN or Inf")
    x[66000, 1] = 0
    x[5, 0] = np.inf
    np.save(tmp_path / "inf.npy", x)
    one_line_error(load_data, str(tmp_path / "inf.npy"), 2, match="row 5 contains NaN or Inf")


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    one_line_error(load_data, str(tmp_path / "obj.npy"), 1, match="--data .*obj.npy: cannot read")


@pytest.mark.parametrize("name,content,match", [
    ("missing.npy", None, "no such file"),
    ("x.csv", b"1,2\n", "expected a .npy or .npz file"),
    ("broken.npy", b"garbage", "cannot read"),
    ("broken.npz", b"garbage", "cannot read"),
])
def test_bad_files(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    one_line_error(load_data, str(path), 2, match=f"--data .*{match}")


def test_directory_and_ambiguous_npz(tmp_path):
    one_line_error(load_data, str(tmp_path), 2, match="is a directory")
    np.savez(tmp_path / "two.npz", a=np.ones((2, 2)), b=np.ones((2, 2)))
    one_line_error(load_data, str(tmp_path / "two.npz"), 2, match="has arrays a, b; expected 'x'")


# ---- labels -----------------------------------------------------------------------------------------
def test_labels_column_and_whole_floats(tmp_path):
    np.save(tmp_path / "col.npy", np.array([[1], [0], [2]]))
    assert np.array_equal(load_labels(str(tmp_path / "col.npy"), 3), [1, 0, 2])
    np.save(tmp_path / "f.npy", np.array([1.0, 0.0, 2.0]))
    got = load_labels(str(tmp_path / "f.npy"), 3)
    assert got.dtype == np.int64 and np.array_equal(got, [1, 0, 2])


@pytest.mark.parametrize("labels,match", [
    (np.arange(4), "has 4 labels for 5 data rows"),
    (np.array([0, 1, -1, 2, 0]), "negative class label -1"),
    (np.array([0, 1.5, 1, 2, 0]), "labels must be whole class numbers"),
    (np.array([0, np.nan, 1, 2, 0]), "labels must be whole class numbers"),
    (np.eye(5), "expected one label per row, got shape \\(5, 5\\)"),
    (np.array(["a"] * 5), "is not an integer class label"),
])
def test_bad_labels(tmp_path, labels, match):
    np.save(tmp_path / "y.npy", labels)
    one_line_error(load_labels, str(tmp_path / "y.npy"), 5, match=f"--labels .*{match}")


def test_labels_of_wrong_length_inside_the_data_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.zeros(5, dtype=np.int64))
    one_line_error(labels_from_data_file, str(tmp_path / "d.npz"), 6, match="has 5 labels for 6 data rows")
