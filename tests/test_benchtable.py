"""pytest-benchmark's terminal table: one row per matrix case, its blocks merged (semgap/bench/benchtable.py)."""
import statistics

from semgap.bench import benchtable


def block(case: str, index: int, median: float, low: float, high: float, rounds: int = 3) -> dict:
    return {"group": "decode", "name": f"test_semantic_gap[{case}-b{index:02d}]", "source": None,
            "fullname": f"benchmarks/test_semantic_gap.py::test_semantic_gap[{case}-b{index:02d}]",
            "param": f"{case}-b{index:02d}", "extra_info": {"case": case, "block": index, "blocks": 3},
            "median": median, "min": low, "max": high, "mean": median, "rounds": rounds, "total": median * rounds}


def test_each_case_becomes_one_row_in_its_first_blocks_place():
    other = {"group": "calibration", "name": "test_calibration[raw-small]", "extra_info": {}, "median": 1.0}
    rows = [block("semantic-decode", 0, 0.050, 0.045, 0.070), other, block("local-decode", 0, 0.040, 0.039, 0.041),
            block("semantic-decode", 1, 0.060, 0.055, 0.061), block("semantic-decode", 2, 0.052, 0.050, 0.090),
            block("local-decode", 1, 0.042, 0.041, 0.043)]
    merged = benchtable.one_row_per_case(rows)
    assert [row["name"] for row in merged] == ["test_semantic_gap[semantic-decode]", "test_calibration[raw-small]",
                                               "test_semantic_gap[local-decode]"]
    semantic = merged[0]
    assert semantic["median"] == statistics.median([0.050, 0.060, 0.052]) == 0.052  # of the blocks' medians
    assert (semantic["min"], semantic["max"], semantic["rounds"]) == (0.045, 0.090, 9)  # over every round
    assert abs(semantic["iqr"] - (0.056 - 0.051)) < 1e-12  # the blocks' medians' quartiles
    assert semantic["fullname"].endswith("::test_semantic_gap[semantic-decode]")


def test_a_comparison_row_is_left_as_it_is():
    compared = {**block("semantic-decode", 0, 0.05, 0.04, 0.06), "source": "0001"}
    assert benchtable.one_row_per_case([compared]) == [compared]
