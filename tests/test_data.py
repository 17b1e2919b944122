"""gpugd.data: the embedded generators (two moons equal to scikit-learn's make_moons),
splits, standardization, mini-batches, and user files refused with a message that names
where they are wrong."""

from __future__ import annotations

import numpy as np
import pytest

from gpugd import data
from gpugd.data import DataError

# From scikit-learn's make_moons: scikit-learn 1.9.1 (NumPy 2.4.6),
# make_moons(n_samples=250, noise=0.05, random_state=42) — the notes' data — printed in a
# scratch environment (scikit-learn is not a dependency). There the whole arrays were equal
# to two_moons' bit for bit, as for 47 other (n_samples, noise, seed) triples from n = 2 to
# 9999. Compared to 1e-12 here: NumPy's SIMD cos/sin may differ in the last bits by CPU.
SKLEARN_FIRST_ROWS = [
    [0.08415409737684063, 0.1133411965006934],
    [1.0509153592851068, 0.1547102354101379],
    [-0.7165552691358277, 0.6756078869007753],
    [0.0609316755390463, 0.9265423395862409],
    [-1.0055247996044732, 0.33642515472561896],
]
SKLEARN_LAST_ROW = [-0.7787860361173102, 0.4944440461118752]
SKLEARN_FIRST_LABELS = [1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_two_moons_is_scikit_learns_make_moons():
    ds = data.two_moons(250, noise=0.05, seed=42)
    np.testing.assert_allclose(ds.X[:5], SKLEARN_FIRST_ROWS, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.X[-1], SKLEARN_LAST_ROW, rtol=0, atol=1e-12)
    assert ds.y[:12].tolist() == SKLEARN_FIRST_LABELS
    np.testing.assert_array_equal(data.two_moons().X, ds.X)  # the defaults are the notes'


def test_two_moons_shapes_labels_and_determinism():
    ds = data.two_moons(250, noise=0.05, seed=42)
    assert ds.X.shape == (250, 2) and ds.X.dtype == np.float64 and ds.X.flags.c_contiguous
    assert ds.y.dtype == np.int64 and np.bincount(ds.y).tolist() == [125, 125]
    assert ds.n_classes == 2 and ds.name == "moons"
    again = data.two_moons(250, noise=0.05, seed=42)
    np.testing.assert_array_equal(ds.X, again.X)
    np.testing.assert_array_equal(ds.y, again.y)
    assert not np.array_equal(ds.X, data.two_moons(250, noise=0.05, seed=7).X)
    odd = data.two_moons(7, noise=0.0, seed=0)
    assert np.bincount(odd.y).tolist() == [3, 4]  # n//2 outer, the rest inner


def test_two_moons_without_noise_lie_on_the_half_circles():
    ds = data.two_moons(101, noise=0.0, seed=3)
    outer, inner = ds.X[ds.y == 0], ds.X[ds.y == 1]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, rtol=1e-14)
    assert (outer[:, 1] >= -1e-15).all()
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1, inner[:, 1] - 0.5), 1.0, rtol=1e-14)
    assert (inner[:, 1] <= 0.5 + 1e-15).all()
    # the end points of both arcs are there: (1, 0), (-1, 0) and (0, 0.5), (2, 0.5)
    for point in ([1, 0], [-1, 0]):
        assert np.abs(outer - point).sum(axis=1).min() < 1e-12
    for point in ([0, 0.5], [2, 0.5]):
        assert np.abs(inner - point).sum(axis=1).min() < 1e-12


def test_spirals():
    sp = data.spirals(301, noise=0.1, seed=0, n_classes=3)
    assert sp.X.shape == (301, 2) and sp.X.dtype == np.float64 and sp.X.flags.c_contiguous
    assert sp.y.dtype == np.int64 and sp.n_classes == 3 and sp.name == "spirals"
    assert np.bincount(sp.y).tolist() == [101, 100, 100]
    assert np.isfinite(sp.X).all()
    assert np.hypot(*sp.X.T).max() <= 1.0 + 1e-12  # radius ≤ 1 along every arm
    default = data.spirals()
    assert default.X.shape == (300, 2) and np.bincount(default.y).tolist() == [150, 150]
    a, b = data.spirals(50, seed=4), data.spirals(50, seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, data.spirals(50, seed=5).X)
    # without noise the arms are disjoint curves: point k of arm c at radius r has angle
    # 4r + 2πc/K, so rotating each arm back by 2πc/K puts all arms on one curve
    clean = data.spirals(90, noise=0.0, seed=1, n_classes=3)
    r = np.hypot(*clean.X.T)
    angle = np.arctan2(clean.X[:, 0], clean.X[:, 1]) - 2 * np.pi * clean.y / 3
    np.testing.assert_allclose(np.cos(angle) * r, np.cos(4 * r) * r, atol=1e-12)
    np.testing.assert_allclose(np.sin(angle) * r, np.sin(4 * r) * r, atol=1e-12)


def test_circles():
    ci = data.circles(200, noise=0.0, factor=0.3, seed=1)
    assert ci.X.shape == (200, 2) and ci.X.dtype == np.float64 and ci.X.flags.c_contiguous
    assert ci.y.dtype == np.int64 and ci.n_classes == 2 and ci.name == "circles"
    assert np.bincount(ci.y).tolist() == [100, 100]
    r = np.hypot(*ci.X.T)
    np.testing.assert_allclose(r[ci.y == 0], 1.0, rtol=1e-14)
    np.testing.assert_allclose(r[ci.y == 1], 0.3, rtol=1e-14)
    assert np.bincount(data.circles(7).y).tolist() == [3, 4]
    a, b = data.circles(seed=2), data.circles(seed=2)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, data.circles(seed=3).X)
    noisy = data.circles(2000, noise=0.05, seed=0)
    spread = np.hypot(*noisy.X.T)[noisy.y == 0] - 1.0
    assert 0.03 < spread.std() < 0.07  # N(0, 0.05²) per coordinate: radial std ≈ 0.05


@pytest.mark.parametrize(
    ("fn", "kw", "name"),
    [
        (data.two_moons, dict(n_samples=1), "n_samples"),
        (data.two_moons, dict(n_samples=True), "n_samples"),
        (data.two_moons, dict(n_samples=10.0), "n_samples"),
        (data.two_moons, dict(noise=-0.1), "noise"),
        (data.two_moons, dict(noise=float("nan")), "noise"),
        (data.two_moons, dict(noise=float("inf")), "noise"),
        (data.spirals, dict(n_samples=0), "n_samples"),
        (data.spirals, dict(n_samples=3, n_classes=4), "n_samples"),
        (data.spirals, dict(noise=-1.0), "noise"),
        (data.spirals, dict(n_classes=1), "n_classes"),
        (data.spirals, dict(n_classes=False), "n_classes"),
        (data.circles, dict(n_samples=-5), "n_samples"),
        (data.circles, dict(noise="0.1"), "noise"),
        (data.circles, dict(factor=1.0), "factor"),
        (data.circles, dict(factor=0.0), "factor"),
        (data.circles, dict(factor=True), "factor"),
    ],
)
def test_generator_arguments_are_checked(fn, kw, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        fn(**kw)


def test_generators_take_numpy_scalars():
    ds = data.circles(np.int64(10), noise=np.float32(0.1), factor=np.float32(0.5))
    assert ds.X.shape == (10, 2)


def test_get_by_name_or_path(tmp_path):
    moons = data.get("moons", n_samples=20, noise=0.0, seed=1)
    np.testing.assert_array_equal(moons.X, data.two_moons(20, noise=0.0, seed=1).X)
    # None: the generator's own defaults; the seed is always passed
    np.testing.assert_array_equal(data.get("moons").X, data.two_moons(seed=42).X)
    np.testing.assert_array_equal(data.get("spirals", seed=3).X, data.spirals(seed=3).X)
    circles = data.get("circles", noise=0.2, seed=5)
    np.testing.assert_array_equal(circles.X, data.circles(noise=0.2, seed=5).X)
    p = tmp_path / "d.npz"
    np.savez(p, X=np.eye(3), y=np.array([0, 1, 1]))
    assert data.get(str(p)).name == "d.npz"
    with pytest.raises(DataError, match=r"'moons', 'spirals', 'circles'.*'mnist'"):
        data.get("mnist")
    with pytest.raises(DataError, match="no such file"):
        data.get(str(tmp_path / "absent.csv"))


def test_split_is_seeded_disjoint_and_complete():
    ds = data.two_moons(100, seed=0)
    tr, va = data.train_val_split(ds, 0.2, seed=5)
    assert len(tr.X) == 80 and len(va.X) == 20 and len(tr.y) == 80 and len(va.y) == 20
    assert tr.n_classes == va.n_classes == 2 and tr.name == va.name == "moons"
    assert tr.X.flags.c_contiguous and va.X.flags.c_contiguous
    rows = [tuple(r) for r in np.vstack([tr.X, va.X])]
    assert len(set(rows)) == 100 and set(rows) == {tuple(r) for r in ds.X}
    # each row keeps its label
    label_of = {tuple(x): int(c) for x, c in zip(ds.X, ds.y, strict=True)}
    for part in (tr, va):
        assert all(label_of[tuple(x)] == c for x, c in zip(part.X, part.y, strict=True))
    tr2, va2 = data.train_val_split(ds, 0.2, seed=5)
    np.testing.assert_array_equal(tr.X, tr2.X)
    np.testing.assert_array_equal(va.y, va2.y)
    assert not np.array_equal(va.X, data.train_val_split(ds, 0.2, seed=6)[1].X)
    tr0, va0 = data.train_val_split(ds, 0.0, seed=5)
    assert len(tr0.X) == 100 and va0.X.shape == (0, 2) and va0.y.shape == (0,)


def test_split_refuses_empty_parts():
    ds = data.two_moons(4)
    with pytest.raises(ValueError, match=r"^val_fraction:"):
        data.train_val_split(ds, 1.0, seed=0)
    with pytest.raises(ValueError, match=r"^val_fraction:"):
        data.train_val_split(ds, -0.1, seed=0)
    with pytest.raises(DataError, match=r"0\.1 of 4 samples leaves no validation"):
        data.train_val_split(ds, 0.1, seed=0)
    with pytest.raises(DataError, match=r"0\.9 of 2 samples leaves no training"):
        data.train_val_split(data.two_moons(2), 0.9, seed=0)


def test_standardize_uses_the_training_statistics():
    ds = data.two_moons(200, seed=0)
    tr, va = data.train_val_split(ds, 0.25, seed=0)
    s_tr, s_va = data.standardize(tr, va)
    np.testing.assert_allclose(s_tr.X.mean(0), 0, atol=1e-14)
    np.testing.assert_allclose(s_tr.X.std(0), 1, rtol=1e-14)
    np.testing.assert_allclose(s_va.X, (va.X - tr.X.mean(0)) / tr.X.std(0), rtol=1e-14)
    # the validation part's own statistics are not used: it is not centred exactly
    assert np.abs(s_va.X.mean(0)).max() > 1e-6
    np.testing.assert_array_equal(s_va.y, va.y)
    assert s_va.n_classes == va.n_classes and s_va.name == va.name
    np.testing.assert_array_equal(tr.X, data.train_val_split(ds, 0.25, seed=0)[0].X)  # no copy
    const = data.Dataset(np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 4.0]]), np.arange(3), 3, "c")
    other = data.Dataset(np.array([[3.0, 2.0]]), np.array([0]), 3, "c")
    s_c, s_o = data.standardize(const, other)
    np.testing.assert_array_equal(s_c.X[:, 0], 0)  # std 0 → divided by 1
    np.testing.assert_allclose(s_o.X, [[2.0, 0.0]])
    empty = data.train_val_split(ds, 0.0, seed=0)[1]
    assert data.standardize(tr, empty)[1].X.shape == (0, 2)


@pytest.mark.parametrize("bs", [1, 7, 32, 99, 100, 1000])
def test_minibatches_cover_every_index_once(bs):
    n = 100
    for rng in (None, np.random.default_rng(0)):
        parts = list(data.minibatches(n, bs, rng))
        assert len(parts) == -(-n // bs)
        assert [len(p) for p in parts[:-1]] == [bs] * (len(parts) - 1)
        assert 1 <= len(parts[-1]) <= bs
        allidx = np.concatenate(parts)
        assert sorted(allidx.tolist()) == list(range(n))
        if rng is None:
            assert allidx.tolist() == list(range(n))
        elif bs < n:
            assert allidx.tolist() != list(range(n))


def test_minibatches_batch_sgd_and_arguments():
    (whole,) = data.minibatches(10, 10, None)
    assert whole.tolist() == list(range(10))
    assert [p.tolist() for p in data.minibatches(3, 1, None)] == [[0], [1], [2]]
    a = np.concatenate(list(data.minibatches(50, 8, np.random.default_rng(3))))
    b = np.concatenate(list(data.minibatches(50, 8, np.random.default_rng(3))))
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(3)
    first = np.concatenate(list(data.minibatches(50, 8, rng)))
    second = np.concatenate(list(data.minibatches(50, 8, rng)))
    assert first.tolist() != second.tolist()  # a fresh order every epoch
    assert list(data.minibatches(0, 4, None)) == []
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"^batch_size:"):
            data.minibatches(10, bad, None)  # checked at the call, before iterating
    with pytest.raises(ValueError, match=r"^n:"):
        data.minibatches(-1, 4, None)


def test_npz_and_csv_round_trips(tmp_path):
    X = np.random.default_rng(0).standard_normal((10, 3))
    y = np.arange(10) % 3
    np.savez(tmp_path / "a.npz", x=X, y=y.astype(np.float32))
    ds = data.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(ds.X, X)
    assert ds.X.dtype == np.float64 and ds.X.flags.c_contiguous
    assert ds.y.dtype == np.int64 and ds.y.tolist() == y.tolist()
    assert ds.n_classes == 3 and ds.name == "a.npz"
    np.savez(tmp_path / "f.npz", X=X.astype(np.float32).T.copy().T, y=y)  # Fortran order
    assert data.load(str(tmp_path / "f.npz")).X.flags.c_contiguous
    for header in ("f1,f2,f3,label", ""):
        path = tmp_path / f"a{len(header)}.csv"
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="")
        ds = data.load(path)
        assert ds.X.shape == (10, 3) and ds.X.dtype == np.float64
        np.testing.assert_allclose(ds.X, X, rtol=1e-15)
        assert ds.y.dtype == np.int64 and ds.y.tolist() == y.tolist() and ds.n_classes == 3
        assert ds.name == path.name
    np.savez(tmp_path / "b.npz", X=X, y=np.array([True, False] * 5))
    assert data.load(tmp_path / "b.npz").n_classes == 2


def test_csv_details(tmp_path):
    # a byte-order mark, spaces, blank lines, upper-case extension, integral float labels
    p = tmp_path / "P.CSV"
    p.write_bytes("\ufeff1, 2 ,0\n\n3,4, 1.0\n5,6,2\n".encode())
    ds = data.load(p)
    assert ds.X.tolist() == [[1, 2], [3, 4], [5, 6]] and ds.y.tolist() == [0, 1, 2]
    # labels need not use every class: {1, 3} → 4 classes
    q = tmp_path / "gaps.csv"
    q.write_text("x,label\n0.5,1\n0.25,3\n")
    ds = data.load(q)
    assert ds.y.tolist() == [1, 3] and ds.n_classes == 4


def _csv(tmp_path, text: str):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,label\n1,2,0\n3,x,1\n", r"bad\.csv: line 3, column 1: 'x' is not a number"),
        ("1,2,0\n3,4\n", r"line 2 has 2 columns, expected 3"),
        ("a,b,c\n1,2,0\n\n3,4,1,5\n", r"line 4 has 4 columns, expected 3"),
        ("1,2,0\n3,nan,1\n", r"non-finite value \(nan\) at row 1 \(line 2\), column 1"),
        ("h,h,h\n1,2,0\n-inf,4,1\n", r"non-finite value \(-inf\) at row 1 \(line 3\), column 0"),
        ("1,2,0\n3,4,nan\n", r"non-finite label \(nan\) at row 1 \(line 2\)"),
        ("1,2,0\n3,4,0.5\n", r"integers 0…K−1; row 1 \(line 2\) has 0\.5"),
        ("1,2,0\n3,4,-1\n", r"≥ 0; row 1 \(line 2\) has -1"),
        ("1,2,0\n3,4,1e12\n", r"≤ 2147483647; row 1 \(line 2\) has 1e\+12"),
        ("1,2,1\n3,4,1\n", r"at least 2 distinct classes, all labels are 1"),
        ("1,2,0\n", r"at least 2 samples, got 1"),
        ("a,b\n", r"header but no data"),
        ("", r"empty"),
        ("0\n1\n", r"line 1: expected features and a label, got 1 column"),
    ],
)
def test_bad_csv_files_name_the_place(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        data.load(_csv(tmp_path, text))


def _npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (dict(features=np.eye(2), y=np.array([0, 1])), r"'X' and 'y'.*has \['features', 'y'\]"),
        (dict(X=np.eye(2), labels=np.array([0, 1])), r"has \['X', 'labels'\]"),
        (dict(X=np.ones(4), y=np.array([0, 1, 0, 1])), r"X must be 2-D.*shape \(4,\)"),
        (dict(X=np.ones((2, 2)), y=np.array([[0], [1]])), r"y must be 1-D.*shape \(2, 1\)"),
        (dict(X=np.ones((4, 2)), y=np.array([0, 1, 0])), r"4 rows but y has 3"),
        (dict(X=np.ones((1, 2)), y=np.array([0])), r"at least 2 samples, got 1"),
        (dict(X=np.ones((4, 0)), y=np.array([0, 1, 0, 1])), r"no feature columns"),
        (
            dict(X=np.array([[0, 1], [2, np.inf]]), y=np.array([0, 1])),
            r"non-finite value \(inf\) at row 1, column 1",
        ),
        (dict(X=np.eye(2), y=np.array([0.0, np.nan])), r"non-finite label \(nan\) at row 1"),
        (dict(X=np.eye(3), y=np.array([0, 1.5, 1])), r"integers 0…K−1; row 1 has 1\.5"),
        (dict(X=np.eye(3), y=np.array([0, 1, -2])), r"≥ 0; row 2 has -2"),
        (dict(X=np.eye(2), y=np.array([3, 3])), r"at least 2 distinct classes, all labels are 3"),
        (dict(X=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1])), r"must be numeric"),
    ],
)
def test_bad_npz_files_name_the_place(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        data.load(_npz(tmp_path, **arrays))


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match=r"missing\.csv: no such file"):
        data.load(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="no such file"):
        data.load(tmp_path)  # a directory
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unknown data format '\.txt'; expected \.npz or \.csv"):
        data.load(tmp_path / "d.txt")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        data.load(tmp_path / "junk.npz")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match=r"bin\.csv: not a readable \.csv"):
        data.load(tmp_path / "bin.csv")


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
