import numpy as np
import pytest

import cosdpo.data.letor as letor
from cosdpo.data import DataError, RankingSet, load_split, make_schema, read_letor, split_queries
from cosdpo.data.objectives import apply_grade_transform, parse_grade_overrides
from cosdpo.data.synthetic import generate, write_fold

from .conftest import MSLR_SAMPLE, requires_shared


def _python_parse(path, n_features):
    """An independent, slow reader of LETOR text for cross-checks."""
    X, y, q = [], [], []
    for raw in open(path, encoding="ascii"):
        body = raw.split("#")[0].strip()
        if not body:
            continue
        tok = body.split()
        row = np.zeros(n_features)
        for t in tok[2:]:
            i, v = t.split(":")
            row[int(i) - 1] = float(v)
        X.append(row)
        y.append(float(tok[0]))
        q.append(int(tok[1].split(":")[1]))
    return np.array(X), np.array(y), np.array(q)


@requires_shared()
def test_real_mslr_sample_parses_like_a_python_reader():
    lf = read_letor(MSLR_SAMPLE, n_features=136)
    X, y, q = _python_parse(MSLR_SAMPLE, 136)
    assert lf.X.shape == (5000, 136) and len(np.unique(lf.qid)) == 43
    np.testing.assert_allclose(lf.X, X.astype(np.float32))
    np.testing.assert_array_equal(lf.y, y)
    np.testing.assert_array_equal(lf.qid, q)
    assert open(MSLR_SAMPLE, "rb").readline().endswith(b" \r\n")  # the bytes really are CRLF + trailing space


@requires_shared()
def test_real_mslr_sample_schema_and_split():
    schema = make_schema(136, ["quality1", "url_clicks"])
    assert schema.inputs == list(range(1, 132))
    parts = {s: RankingSet.load(MSLR_SAMPLE, s, schema, seed=0) for s in ("train", "vali", "test")}
    qids = [set(p.qids.tolist()) for p in parts.values()]
    assert sum(map(len, qids)) == 43 and not (qids[0] & qids[1]) and not (qids[1] & qids[2])
    assert [len(p) for p in parts.values()] == [26, 9, 8]
    tr = parts["train"]
    assert tr.features.shape[1] == 131 and tr.aux.shape[1] == 2
    assert tr.aux.min() >= 0 and tr.aux.max() <= 4


def test_a_damaged_or_unwritable_cache_costs_a_parse_not_the_run(tmp_path, monkeypatch):
    path = write_fold(tmp_path / "f", n_queries=5, seed=0) / "train.txt"
    first = read_letor(path)
    cached = letor._cache_path(path)
    (cached / "X.npy").write_bytes(b"not an array")  # damaged: parsed again, and the cache rewritten
    again = read_letor(path)
    np.testing.assert_array_equal(first.X, again.X)
    assert isinstance(read_letor(path).X, np.memmap)
    np.save(cached / "y.npy", first.y[:-1])  # arrays that disagree in length: parsed again
    np.testing.assert_array_equal(read_letor(path).y, first.y)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("COSDPO_CACHE", str(tmp_path / "not-a-folder"))  # the cache cannot be written
    with pytest.warns(UserWarning, match="could not cache the parsed rows"):
        uncached = read_letor(path)
    np.testing.assert_array_equal(first.X, uncached.X)


def test_cache_skips_the_parser(tmp_path, monkeypatch):
    path = write_fold(tmp_path / "f", n_queries=5, seed=0) / "train.txt"
    first = read_letor(path)

    def boom(*a, **k):
        raise AssertionError("parser called although the file is cached")

    monkeypatch.setattr(letor, "load_svmlight_file", boom)
    second = read_letor(path)
    np.testing.assert_array_equal(first.X, second.X)
    np.testing.assert_array_equal(first.qid, second.qid)
    assert isinstance(second.X, np.memmap) and not second.X.flags.writeable  # mapped from disk, not read whole
    schema = make_schema(136)
    grouped = RankingSet.from_letor(second, schema)
    assert np.shares_memory(grouped.features, second.X)  # MSLR's inputs 1..131: a view, no copy
    # the same rows shuffled (queries interleaved) group to the same sets, in order of first appearance
    perm = np.random.default_rng(0).permutation(len(first.y))
    shuffled = RankingSet.from_letor(letor.LetorFile("x", first.X[perm], first.y[perm], first.qid[perm]), schema)
    assert sorted(shuffled.qids.tolist()) == sorted(grouped.qids.tolist())
    for q in grouped.qids:
        a, b = (int(np.flatnonzero(r.qids == q)[0]) for r in (grouped, shuffled))
        rows = [np.asarray(r.features[r.offsets[g] : r.offsets[g + 1]]) for r, g in ((grouped, a), (shuffled, b))]
        np.testing.assert_array_equal(np.sort(rows[0], axis=0), np.sort(rows[1], axis=0))
    path.write_text(path.read_text() + "0 qid:99 1:1\n")  # a changed file is parsed again
    with pytest.raises(AssertionError, match="parser called"):
        read_letor(path)


def _bad(tmp_path, text):
    p = tmp_path / "bad.txt"
    p.write_bytes(text.encode())
    return p


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("# header\n1 qid:1 1:0.5 2:1\n\n2 qid:1 1:abc\n", 4, "not a number"),
        ("1 qid:1 1:0.5\n1 qid:1 2:0.1 1:0.3\n", 2, "rise"),
        ("1 qid:1 1:0.5\nx qid:1 1:1\n", 2, "label"),
        ("1 qid:1 1:0.5\n2 1:0.3\n", 2, "missing qid"),
        ("1 qid:1 1:0.5\n# c\n0 qid:2 1:nan\n", 3, "NaN"),
        ("1 qid:1 1:0.5\n0 qid:2 1:inf\n", 2, "NaN or infinite"),
        ("1 qid:1 1:0.5\n7 qid:2 1:1\n", 2, "out of range"),
        ("1 qid:1 1:0.5\n1.5 qid:2 1:1\n", 2, "out of range"),
        ("1 qid:1 1:0.5\n1 qid:2 1:1 5:2\n", 2, "beyond the schema"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, text, line, words):
    p = _bad(tmp_path, text)
    with pytest.raises(DataError, match=words) as err:
        read_letor(p, n_features=3, max_label=4)
    assert err.value.line == line and str(err.value).startswith(f"{p}:{line}:")


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no data rows"):
        read_letor(_bad(tmp_path, "# only a comment\n\n"))
    with pytest.raises(DataError, match="no such file"):
        read_letor(tmp_path / "nope.txt")
    (tmp_path / "fold").mkdir()
    (tmp_path / "fold" / "train.txt").write_text("1 qid:1 1:1\n")
    with pytest.raises(DataError, match="vali.txt"):
        load_split(tmp_path / "fold", "train")


def test_single_file_split_is_seeded_and_by_query():
    qid = np.repeat(np.arange(100), 3)
    a, b = split_queries(qid, seed=1), split_queries(qid, seed=1)
    assert [len(v) for v in a.values()] == [60, 20, 20]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert set(np.concatenate(list(a.values()))) == set(range(100))
    assert not np.array_equal(split_queries(qid, seed=2)["test"], a["test"])


def test_schema_names_and_feature_indices():
    s = make_schema(136, ["dwell_time", "quality2"])
    assert [o.feature for o in s.objectives] == [136, 133] and s.objectives[0].grade == "log4"
    g = make_schema(46, ["f44", "f45"])
    assert 44 not in g.inputs and 45 not in g.inputs and len(g.inputs) == 44
    with pytest.raises(ValueError, match="MSLR name"):
        make_schema(46, ["quality1"])
    with pytest.raises(ValueError, match="unknown objective"):
        make_schema(136, ["clicks"])
    with pytest.raises(ValueError, match="features 1..46"):
        make_schema(46, ["f47"])
    with pytest.raises(ValueError, match="not chosen"):
        make_schema(136, ["quality1"], {"quality2": "log4"})


def test_grade_transforms():
    v = np.array([0, 1, 7, 8, 63, 64, 511, 512, 1e6])
    np.testing.assert_array_equal(apply_grade_transform("log8", v), [0, 1, 1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(
        apply_grade_transform("linear:0:255", np.array([0, 50, 51, 254, 300])), [0, 0, 1, 4, 4]
    )
    np.testing.assert_array_equal(apply_grade_transform("identity", np.array([-1, 2.4, 9])), [0, 2, 4])
    assert parse_grade_overrides("a=log2, b=linear:1:254") == {"a": "log2", "b": "linear:1:254"}
    for bad in ("log1", "linear:5:1", "sqrt"):
        with pytest.raises(ValueError, match="bad grade transform"):
            parse_grade_overrides(f"x={bad}")
    with pytest.raises(ValueError, match="NAME=SPEC"):
        parse_grade_overrides("x")


def test_synthetic_data_is_seeded_and_conflicting():
    X1, y1, q1 = generate(200, seed=5)
    X2, y2, _ = generate(200, seed=5)
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2) and X1.shape[1] == 136
    counts = np.bincount(y1.astype(int), minlength=5)
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0  # skewed labels
    assert len(np.unique(np.bincount(q1))) > 5  # variable group sizes
    # within a query, quality1 and quality2 disagree beyond what relevance explains
    q1g = apply_grade_transform("log4", X1[:, 131])
    q2g = apply_grade_transform("log4", X1[:, 132])
    res = [
        np.corrcoef(a - a.mean(), b - b.mean())[0, 1]
        for a, b in ((q1g[q1 == q], q2g[q1 == q]) for q in range(1, 201))
        if a.std() > 0 and b.std() > 0
    ]
    assert np.mean(res) < 0


def test_ranking_set_batches(tmp_path):
    fold = write_fold(tmp_path / "f", n_queries=20, seed=1, mean_size=6, max_size=12)
    schema = make_schema(136, ["quality1", "url_clicks"])
    rs = RankingSet.load(fold, "train", schema)
    raw = read_letor(fold / "train.txt")
    assert rs.sizes.sum() == len(raw.y) and len(rs) == 12
    b = rs.batch([3, 0])
    g = 3
    rows = raw.X[raw.qid == rs.qids[g]]
    n = rs.sizes[g]
    assert b["mask"][0].sum() == n and not b["mask"][0, n:].any()
    np.testing.assert_array_equal(b["x"][0, :n].numpy(), rows[:, :131])
    np.testing.assert_array_equal(b["aux"][0, :n, 1].numpy(), apply_grade_transform("log8", rows[:, 134]))
    assert b["x"][0, n:].abs().sum() == 0
    e0 = rs.epoch_batches(4, seed=0, epoch=0)
    assert sorted(np.concatenate(e0).tolist()) == list(range(12))
    assert all(np.array_equal(a, c) for a, c in zip(e0, rs.epoch_batches(4, seed=0, epoch=0)))
    assert not all(np.array_equal(a, c) for a, c in zip(e0, rs.epoch_batches(4, seed=0, epoch=1)))


def test_eval_batches_cover_every_group_once_within_the_budget(tmp_path):
    fold = write_fold(tmp_path / "f", n_queries=40, seed=2, mean_size=10, max_size=40)
    rs = RankingSet.load(fold, "train", make_schema(136))
    batches = rs.eval_batches(max_items=60)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(rs)))
    for b in batches:
        assert len(b) * rs.sizes[b].max() <= 60 or len(b) == 1
    assert len(rs.eval_batches(10**9)) == 1


def test_query_ids_are_read_as_sklearn_reads_them(tmp_path):
    """Our linear-time qid reader against sklearn's own (query_id=True), on comments, blank lines, tabs,
    CRLF, negative qids and a comment that mentions a qid."""
    from sklearn.datasets import load_svmlight_file

    text = (
        "# header qid:7 in a comment\n"
        "2 qid:10 1:0.5 3:1 # note qid:99\n"
        "\n"
        "0\tqid:-3\t2:1.5\r\n"
        "  1 qid:10 1:2\n"
        "4 qid:5 1:1 2:2 3:3\n"
    )
    path = tmp_path / "odd.txt"
    path.write_bytes(text.encode())
    _, _, expected = load_svmlight_file(str(path), query_id=True, zero_based=False)
    np.testing.assert_array_equal(letor._query_ids(path), expected)
    assert letor._query_ids(path).tolist() == [10, -3, 10, 5]
