"""gpugd.data: the embedded generators (two moons equal to scikit-learn's make_moons),
splits, standardization, mini-batches, and user files refused with a message that names
where they are wrong."""

from __future__ import annotations

import numpy as np
import pytest

from gpugd import data
from gpugd.data import DataError

# scikit-learn 1.9.1's make_moons(n_samples=250, noise=0.05, random_state=42) — the notes'
# data — printed in a scratch environment (scikit-learn is not a dependency); the whole
# arrays were equal bit for bit there, as for (7, 0.3, 0), (1000, 0.2, 42), (101, 0, 3)
SKLEARN_FIRST_ROWS = [
    [0.08415409737684063, 0.1133411965006934],
    [1.0509153592851068, 0.1547102354101379],
    [-0.7165552691358277, 0.6756078869007753],
    [0.0609316755390463, 0.9265423395862409],
]
SKLEARN_LAST_ROW = [-0.7787860361173102, 0.4944440461118752]
SKLEARN_FIRST_LABELS = [1, 0, 0, 0, 0, 1, 1, 1, 0, 0]


def test_two_moons_is_scikit_learns_make_moons():
    ds = data.two_moons(250, noise=0.05, seed=42)
    np.testing.assert_allclose(ds.X[:4], SKLEARN_FIRST_ROWS, rtol=1e-15)
    np.testing.assert_allclose(ds.X[-1], SKLEARN_LAST_ROW, rtol=1e-15)
    assert ds.y[:10].tolist() == SKLEARN_FIRST_LABELS


def test_two_moons_shapes_labels_and_determinism():
    ds = data.two_moons(250, noise=0.05, seed=42)
    assert ds.X.shape == (250, 2) and ds.X.dtype == np.float64 and ds.X.flags.c_contiguous
    assert ds.y.dtype == np.int64 and np.bincount(ds.y).tolist() == [125, 125]
    assert ds.n_classes == 2 and ds.name == "moons"
    again = data.two_moons(250, noise=0.05, seed=42)
    np.testing.assert_array_equal(ds.X, again.X)
    assert not np.array_equal(ds.X, data.two_moons(250, noise=0.05, seed=7).X)
    odd = data.two_moons(7, noise=0.0, seed=0)
    assert np.bincount(odd.y).tolist() == [3, 4]


def test_two_moons_without_noise_lie_on_the_half_circles():
    ds = data.two_moons(101, noise=0.0, seed=3)
    outer, inner = ds.X[ds.y == 0], ds.X[ds.y == 1]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, rtol=1e-14)
    assert (outer[:, 1] >= -1e-15).all()
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1, inner[:, 1] - 0.5), 1.0, rtol=1e-14)
    assert (inner[:, 1] <= 0.5 + 1e-15).all()


def test_spirals_and_circles():
    sp = data.spirals(301, noise=0.1, seed=0, n_classes=3)
    assert sp.X.shape == (301, 2) and sp.n_classes == 3
    assert np.bincount(sp.y).tolist() == [101, 100, 100]
    assert np.abs(sp.X).max() <= 1.0 + 1e-12  # radius ≤ 1 along every arm
    ci = data.circles(200, noise=0.0, factor=0.3, seed=1)
    r = np.hypot(*ci.X.T)
    np.testing.assert_allclose(r[ci.y == 0], 1.0, rtol=1e-14)
    np.testing.assert_allclose(r[ci.y == 1], 0.3, rtol=1e-14)
    np.testing.assert_array_equal(data.spirals(50, seed=4).X, data.spirals(50, seed=4).X)


@pytest.mark.parametrize(
    ("fn", "kw", "name"),
    [
        (data.two_moons, dict(n_samples=1), "n_samples"),
        (data.two_moons, dict(n_samples=True), "n_samples"),
        (data.two_moons, dict(noise=-0.1), "noise"),
        (data.two_moons, dict(noise=float("nan")), "noise"),
        (data.spirals, dict(n_classes=1), "n_classes"),
        (data.circles, dict(factor=1.0), "factor"),
    ],
)
def test_generator_arguments_are_checked(fn, kw, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        fn(**kw)


def test_get_by_name_or_path(tmp_path):
    assert data.get("moons", n_samples=20, seed=1).X.shape == (20, 2)
    assert data.get("circles").X.shape == (250, 2)
    p = tmp_path / "d.npz"
    np.savez(p, X=np.eye(3), y=np.array([0, 1, 1]))
    assert data.get(str(p)).name == "d.npz"
    with pytest.raises(DataError, match="moons"):
        data.get("mnist")


def test_split_is_seeded_disjoint_and_complete():
    ds = data.two_moons(100, seed=0)
    tr, va = data.train_val_split(ds, 0.2, seed=5)
    assert len(tr.X) == 80 and len(va.X) == 20
    rows = {tuple(r) for r in np.vstack([tr.X, va.X])}
    assert rows == {tuple(r) for r in ds.X}
    tr2, _ = data.train_val_split(ds, 0.2, seed=5)
    np.testing.assert_array_equal(tr.X, tr2.X)
    tr0, va0 = data.train_val_split(ds, 0.0, seed=5)
    assert len(tr0.X) == 100 and va0.X.shape == (0, 2)
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(ds, 1.0, seed=0)
    with pytest.raises(DataError, match="no validation"):
        data.train_val_split(data.two_moons(4), 0.1, seed=0)


def test_standardize_uses_the_training_statistics():
    ds = data.two_moons(200, seed=0)
    tr, va = data.train_val_split(ds, 0.25, seed=0)
    s_tr, s_va = data.standardize(tr, va)
    np.testing.assert_allclose(s_tr.X.mean(0), 0, atol=1e-14)
    np.testing.assert_allclose(s_tr.X.std(0), 1, rtol=1e-14)
    np.testing.assert_allclose(s_va.X, (va.X - tr.X.mean(0)) / tr.X.std(0), rtol=1e-14)
    const = data.Dataset(np.ones((4, 2)), np.array([0, 1, 0, 1]), 2, "c")
    np.testing.assert_array_equal(data.standardize(const)[0].X, 0)


@pytest.mark.parametrize("bs", [1, 7, 32, 100, 1000])
def test_minibatches_cover_every_index_once(bs):
    n = 100
    for rng in (None, np.random.default_rng(0)):
        parts = list(data.minibatches(n, bs, rng))
        assert [len(p) for p in parts[:-1]] == [bs] * (len(parts) - 1)
        allidx = np.concatenate(parts)
        assert sorted(allidx.tolist()) == list(range(n))
        if rng is None:
            assert allidx.tolist() == list(range(n))
    assert len(list(data.minibatches(n, 1, None))) == n
    with pytest.raises(ValueError, match="batch_size"):
        list(data.minibatches(n, 0, None))


def test_npz_and_csv_round_trips(tmp_path):
    X = np.random.default_rng(0).standard_normal((10, 3))
    y = np.arange(10) % 3
    np.savez(tmp_path / "a.npz", x=X, y=y.astype(np.float32))
    ds = data.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(ds.X, X)
    assert ds.y.tolist() == y.tolist() and ds.n_classes == 3
    for header in ("f1,f2,f3,label", ""):
        path = tmp_path / f"a{len(header)}.csv"
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="")
        ds = data.load(path)
        np.testing.assert_allclose(ds.X, X, rtol=1e-15)
        assert ds.y.tolist() == y.tolist()
    np.savez(tmp_path / "b.npz", X=X, y=np.array([True, False] * 5))
    assert data.load(tmp_path / "b.npz").n_classes == 2


def _csv(tmp_path, text: str):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,label\n1,2,0\n3,x,1\n", r"line 3, column 1: 'x' is not a number"),
        ("1,2,0\n3,4\n", r"line 2 has 2 columns, expected 3"),
        ("1,2,0\n3,nan,1\n", r"non-finite value \(nan\) at row 1, column 1"),
        ("1,2,0\n3,inf,1\n", r"non-finite value \(inf\) at row 1, column 1"),
        ("1,2,0\n3,4,0.5\n", r"row 1 has 0\.5"),
        ("1,2,0\n3,4,-1\n", r"≥ 0; row 1 has -1"),
        ("1,2,1\n3,4,1\n", r"at least 2 distinct classes"),
        ("1,2,0\n", r"at least 2 samples"),
        ("a,b\n", r"header but no data"),
        ("", r"empty"),
        ("0\n1\n", r"features and a label"),
    ],
)
def test_bad_csv_files_name_the_place(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        data.load(_csv(tmp_path, text))


def test_bad_npz_and_paths(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load(tmp_path / "missing.csv")
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unknown data format '\.txt'"):
        data.load(tmp_path / "d.txt")
    np.savez(tmp_path / "k.npz", features=np.eye(2), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"has \['features', 'y'\]"):
        data.load(tmp_path / "k.npz")
    np.savez(tmp_path / "s.npz", X=np.ones(4), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="2-D"):
        data.load(tmp_path / "s.npz")
    np.savez(tmp_path / "m.npz", X=np.ones((4, 2)), y=np.array([0, 1, 0]))
    with pytest.raises(DataError, match="4 rows but y has 3"):
        data.load(tmp_path / "m.npz")
    np.savez(tmp_path / "z.npz", X=np.ones((4, 0)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="no feature columns"):
        data.load(tmp_path / "z.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        data.load(tmp_path / "junk.npz")
