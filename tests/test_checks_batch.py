"""autograder.checks.batch (notebook 07) on the solution and on batch jobs and clients that are wrong in one way each."""
from __future__ import annotations

import csv
import math
from itertools import islice

import pytest

from autograder.checks import batch
from autograder.errors import CheckFailed, NotAnswered

from conftest import load_solution_module

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    return load_solution_module("07_batch_vs_online.ipynb", tmp_path_factory.mktemp("sol07"))


def iris(n, seed=0, fmt="{}"):
    return batch.iris_rows(seed=seed, id_format=fmt)[:n]


def with_bad(rows, bad):
    """A copy of ``rows`` with ``{index: (column, text)}`` put in."""
    rows = [list(r) for r in rows]
    for i, (col, text) in bad.items():
        rows[i][col] = text
    return rows


BAD = with_bad(iris(12, seed=1), {2: (2, "wide"), 7: (4, "nan")})
CASES_IDS = [
    {"why": "shuffled ids", "chunk_size": 7, "rows": iris(30)},
    {"why": "text ids with commas and quotes", "chunk_size": 2, "rows": [["a,b", *iris(1)[0][1:]], ['q"x', *iris(2)[1][1:]], ["007", *iris(3)[2][1:]]]},
    {"why": "an empty file", "chunk_size": 4, "text": ""},
    {"why": "a header only", "chunk_size": 4, "rows": []},
    {"why": "columns in another order", "chunk_size": 3, "header": ["petal_width", "id", "sepal_length", "petal_length", "sepal_width"],
     "rows": [[r[4], r[0], r[1], r[3], r[2]] for r in iris(5, seed=2)]},
]
CASE_BAD = {"why": "two bad values", "chunk_size": 5, "rows": BAD, "bad": {2: "sepal_width", 7: "petal_width"}}
CASE_MISSING = {"why": "no petal_width column", "chunk_size": 4, "header": ["id", *FEATURES[:3]], "rows": [r[:4] for r in iris(3)],
                "raises": "ValueError", "mentions": "petal_width"}


def make_score_file(drop_bad=False, renumber=False, one_call=False, naive_csv=False, decimals=6,
                    write_first=False, fixed_model_dir=None, by_position=False):
    """A batch job that is right unless one of the flags breaks it in one way."""

    def score_file(input_csv, output_csv, model_dir, chunk_size=256):
        from server_stub.handler import Context
        from server_stub.iris_handler import IrisHandler

        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError("chunk_size")
        handler = IrisHandler()
        handler.initialize(Context(fixed_model_dir or model_dir))
        with open(input_csv, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None) or ["id", *FEATURES]
            out = open(output_csv, "w", newline="", encoding="utf-8") if write_first else None
            for name in ["id", *FEATURES]:
                if name not in header:
                    if out:
                        out.close()
                    raise ValueError(f"no column {name}")
            out = out or open(output_csv, "w", newline="", encoding="utf-8")
            where = list(range(1, 5)) if by_position else [header.index(n) for n in FEATURES]
            id_at = header.index("id")
            writer = csv.writer(out)
            write = (lambda row: out.write(",".join(row) + "\n")) if naive_csv else writer.writerow
            write(["id", "label", "confidence", "error"])
            rows = (r for r in reader if r)
            counts = {"rows": 0, "scored": 0, "errors": 0}
            size = 10 ** 9 if one_call else chunk_size
            while chunk := list(islice(rows, size)):
                parsed = []
                for r in chunk:
                    try:
                        values = [float(r[k]) for k in where]
                        error = None if len(r) == len(header) and all(map(math.isfinite, values)) else "bad row"
                    except ValueError as exc:
                        values, error = None, str(exc)
                    parsed.append((r, values, error))
                good = [{"body": v} for _, v, e in parsed if e is None]
                results = iter(handler.handle(good, handler.context) if good else [])
                for n, (r, values, error) in enumerate(parsed):
                    row_id = str(counts["rows"] + 1) if renumber else r[id_at]
                    counts["rows"] += 1
                    if error is None:
                        p = next(results)
                        write([row_id, p["label"], f"{p['confidence']:.{decimals}f}", ""])
                        counts["scored"] += 1
                    elif not drop_bad:
                        write([row_id, "", "", error])
                        counts["errors"] += 1
            out.close()
        return counts

    return score_file


def test_the_solution_passes_every_batch_check(solution):
    batch.check_keeps_ids(solution.score_file, CASES_IDS)
    batch.check_bad_rows(solution.score_file, [CASE_BAD, CASE_MISSING, {"why": "chunk 0", "chunk_size": 0, "rows": iris(2), "raises": "ValueError"}])
    batch.check_chunks(solution.score_file, [{"why": "10 rows", "chunk_size": 3, "rows": iris(10)}, {**CASE_BAD, "chunk_size": 4}])
    batch.check_matches_api(solution.score_file, [CASES_IDS[0], CASE_BAD])


def test_the_test_double_is_right_when_no_flag_is_set():
    batch.check_keeps_ids(make_score_file(), CASES_IDS)
    batch.check_chunks(make_score_file(), [{"why": "10 rows", "chunk_size": 3, "rows": iris(10)}])


@pytest.mark.parametrize("flags, check, cases, message", [
    ({"renumber": True}, batch.check_keeps_ids, CASES_IDS[:1], r"output row \d+ has id '\d+'; expected '\d+', the id of input row"),
    ({"naive_csv": True}, batch.check_keeps_ids, CASES_IDS[1:2], "output row 1 has id 'a'"),
    ({"by_position": True}, batch.check_matches_api, CASES_IDS[4:], "has (label|confidence) .*; the model says"),
    ({"drop_bad": True}, batch.check_keeps_ids, [CASE_BAD], "the input has 12 rows, the output 10"),
    ({"one_call": True}, batch.check_chunks, [{"why": "10 rows", "chunk_size": 3, "rows": iris(10)}], "called the model on 10 rows at once"),
    ({"write_first": True}, batch.check_bad_rows, [CASE_MISSING], "left an output file behind"),
])
def test_a_wrong_batch_job_fails_with_what_went_wrong(flags, check, cases, message):
    with pytest.raises(CheckFailed, match=message):
        check(make_score_file(**flags), cases)


def test_bad_rows_need_an_error_that_names_the_feature():
    with pytest.raises(CheckFailed, match=r"the error for row 3 \(id '\d+'\) should name 'sepal_width'; it is \"could not convert"):
        batch.check_bad_rows(make_score_file(), [CASE_BAD])


def test_two_decimals_do_not_match_the_api():
    with pytest.raises(CheckFailed, match="Write it with at least 6 decimals"):
        batch.check_matches_api(make_score_file(decimals=2), CASES_IDS[:1])


def test_a_job_that_ignores_model_dir_fails_on_another_model(tmp_path):
    from autograder.checks.handler import relabeled_model
    from autograder.harness import DEFAULT_MODEL_DIR

    other = relabeled_model(tmp_path / "model", ["rosa", "versi", "virgo"])
    fixed = make_score_file(fixed_model_dir=str(DEFAULT_MODEL_DIR))
    batch.check_matches_api(fixed, CASES_IDS[:1])
    with pytest.raises(CheckFailed, match="the model says '(rosa|versi|virgo)'"):
        batch.check_matches_api(fixed, CASES_IDS[:1], model_dir=other)


def test_an_unwritten_batch_job_is_not_answered():
    def score_file(input_csv, output_csv, model_dir, chunk_size=256):
        raise NotImplementedError()

    for check, cases in [(batch.check_keeps_ids, CASES_IDS[:1]), (batch.check_bad_rows, [CASE_MISSING])]:
        with pytest.raises(NotAnswered):
            check(score_file, cases)


ONLINE = [{"why": "20 rows, two rejected", "batch_size": 4, "rows": with_bad(iris(20, seed=4, fmt="r{}"), {3: (1, "x"), 5: (3, "?")}),
           "bad": {3: "sepal_length", 5: "petal_length"}}]


def test_the_solution_online_client_passes(solution):
    batch.check_online(solution.predict_online, ONLINE + [{"why": "no rows", "batch_size": 3, "rows": []}])


def make_client(ignore_batch_size=False, drop_rejected=False):
    """An online client that is right unless one of the flags breaks it in one way."""

    def predict_online(base_url, input_csv, batch_size=32):
        import requests

        with open(input_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))

        def value(text):
            try:
                return float(text)
            except ValueError:
                return text

        out = []
        size = 10 ** 6 if ignore_batch_size else batch_size
        with requests.Session() as s:
            s.trust_env = False

            def post(chunk):
                r = s.post(base_url + "/predict", json={"instances": [[value(row[n]) for n in FEATURES] for row in chunk]}, timeout=10)
                if r.status_code not in (200, 400):
                    raise RuntimeError(f"POST /predict answered {r.status_code}: {r.text[:80]}")
                return r

            def ok(row, p):
                return {"id": row["id"], "label": p["label"], "confidence": p["confidence"], "error": None}

            for start in range(0, len(rows), size):
                chunk = rows[start:start + size]
                r = post(chunk)
                if r.status_code == 200:
                    out.extend(ok(row, p) for row, p in zip(chunk, r.json()["predictions"]))
                    continue
                for row in chunk:
                    r = post([row])
                    if r.status_code == 200:
                        out.append(ok(row, r.json()["predictions"][0]))
                    elif not drop_rejected:
                        out.append({"id": row["id"], "label": None, "confidence": None, "error": r.json()["error"]})
        return out

    return predict_online


def test_the_online_test_double_is_right_when_no_flag_is_set():
    batch.check_online(make_client(), ONLINE)


@pytest.mark.parametrize("flags, message", [
    ({"ignore_batch_size": True}, "raised RuntimeError: POST /predict answered 413"),
    ({"drop_rejected": True}, r"one result per input row \(20\); it returned 18"),
])
def test_a_wrong_online_client_fails(flags, message):
    with pytest.raises(CheckFailed, match=message):
        batch.check_online(make_client(**flags), ONLINE)
