"""The benchmark script's table helpers (benchmarks/bench_inr.py), on hand-made rows: fast, no training."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from deq_inr import write_wav

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inr.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_inr", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(key, image, seed, curve, set_="natural", family="siren"):
    return {"bench": "long", "set": set_, "family": family, "image": image, "seed": seed, "key": key,
            "curve": [(0.01 * s, p, s) for s, p in curve]}


def _finished(r, steps, held, **extra):
    """``r`` with the summary fields a finished benchmark run carries (held-out ``held``, train ``held + 5``)."""
    r.update(steps=steps, heldout_psnr=held, train_psnr=held + 5, ms_per_step_median=1.0, train_time_s=1.0,
             peak_mem_mb=1.0, params=10, model=r["key"], **extra)
    return r


def test_heldout_by_step_pairs_by_image_and_seed_at_common_steps(bench):
    rows = [_row("i1L-256D", "camera", 0, [(1, 5), (100, 20), (200, 22), (300, 23)]),
            _row("i1L-256D", "text", 0, [(1, 5), (100, 18), (200, 19), (300, 21)]),
            # the explicit model logs every 5 steps: only the steps both logged count
            _row("e4L-256D", "text", 0, [(1, 6), (5, 7), (100, 19), (200, 19.5), (300, 20)]),
            _row("e4L-256D", "camera", 0, [(1, 6), (5, 7), (100, 21), (200, 21), (300, 21)]),
            {"bench": "long", "set": "natural", "family": "siren", "image": "page", "seed": 0, "key": "e4L-256D"}]
    steps, table, diffs = bench.heldout_by_step(rows)
    assert steps == [100, 200, 300]
    assert table[("natural", "siren", "i1L-256D")][300] == [23, 21]
    d = diffs[("natural", "siren", "i1L-256D", "e4L-256D")]
    assert d[100] == [-1, -1]            # camera 20 - 21, text 18 - 19: paired by image, not by order
    assert d[300] == [2, 1]
    assert ("natural", "siren", "e4L-256D", "i1L-256D") not in diffs   # only the pairs of COMPARISONS


def test_report_prints_the_by_step_tables_for_long_runs(bench, capsys):
    rows = [_row("i1L-256D", "camera", 0, [(1, 5), (100, 20)]), _row("e4L-256D", "camera", 0, [(1, 6), (100, 21)])]
    for r, p in zip(rows, (20, 21)):
        _finished(r, 100, p)
    bench.report(rows)
    out = capsys.readouterr().out
    assert "at each logged step" in out
    assert "| natural | siren | i1L-256D − e4L-256D | -1.00 (min -1.00, 0/1 ≥ 0) |" in out


def test_report_pairs_only_rows_of_the_same_step_count(bench, capsys):
    """A 1 000-step implicit row and a 2 000-step explicit row of one image and seed are not a pair at equal steps
    (they were, silently, when rows were keyed by image and seed only); the by-step table compares them at step
    1 000 from the explicit run's curve."""
    imp = _row("i1L-512D", "camera", 0, [(1, 5), (500, 26), (1000, 27)])
    exp = _row("e4L-256D", "camera", 0, [(1, 6), (500, 28), (1000, 26.5), (2000, 25)])
    exp2 = _row("e4L-256D", "coffee", 0, [(1, 6), (500, 28), (1000, 26.5)])
    imp2 = _row("i1L-512D", "coffee", 0, [(1, 5), (500, 26), (1000, 28)])
    for r, steps, p in ((imp, 1000, 27), (exp, 2000, 25), (exp2, 1000, 26.5), (imp2, 1000, 28)):
        _finished(r, steps, p)
    bench.report([imp, exp, exp2, imp2])
    out = capsys.readouterr().out
    paired = next(line for line in out.splitlines() if line.startswith("| natural | siren | ") and "≥ 0)" in line)
    # coffee only (28 - 26.5); keyed by image and seed, camera's 27 - 25 made it +1.75 ± 0.35 over 2 "pairs"
    assert "| +1.50 (min +1.50, 1/1 ≥ 0) |" in paired
    by_step = out.split("at each logged step")[-1]
    assert "i1L-512D − e4L-256D | -2.00 ± 0.00 (min -2.00, 0/2 ≥ 0) | +1.00 ± 0.71 (min +0.50, 2/2 ≥ 0) |" in by_step


def test_rows_of_other_grids_neither_pair_nor_replace_each_other(bench, tmp_path, capsys):
    """A 128² and a 256² run of one image, seed and step count are two runs: --from-jsonl keeps both (its
    one-row-per-run rule keyed them as one) and pairs each only with its own grid, also in the by-step table."""
    def row(key, grid, held):
        return _finished(_row(key, "camera", 0, [(1, 5), (100, held)]), 100, held, grid=[grid, grid],
                         interp_heldout_psnr=20.0)
    rows = [row("i1L-256D", 128, 24.0), row("e4L-256D", 128, 25.0), row("i1L-256D", 256, 30.0),
            row("e4L-256D", 256, 27.0), {**row("e4L-256D", 64, 40.0), "grid": None}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.main(["--from-jsonl", str(path)]) == 0
    out = capsys.readouterr().out
    assert "+1.00 ± 2.83 (min -1.00, 1/2 ≥ 0)" in out      # 24 - 25 at 128², 30 - 27 at 256²: two pairs
    assert "| natural | siren | i1L-256D − e4L-256D | +1.00 ± 2.83 (min -1.00, 1/2 ≥ 0) |" in out  # by step 100
    assert bench.pair_key(rows[4])[-1] is None and bench.pair_key(rows[0])[-1] == (128, 128)


def test_ablation_rows_against_the_benchmark_rows_pair_by_family_image_seed(capsys):
    spec = importlib.util.spec_from_file_location("ablate_inr", _PATH.with_name("ablate_inr.py"))
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    b = lambda key, image, held, train: {"bench": "same-steps", "steps": 300, "family": "gabor", "image": image,  # noqa: E731
                                         "seed": 0, "key": key, "heldout_psnr": held, "train_psnr": train}
    bench_rows = [b("i1L-512D", "camera", 25.0, 29.0), b("e4L-256D", "camera", 24.5, 26.0),
                  b("i1L-512D", "text", 23.0, 31.0), b("e4L-256D", "text", 24.0, 25.0),
                  {**b("i1L-512D", "coffee", 1.0, 1.0), "steps": 1000}]   # another protocol: not a reference
    v = lambda image, held, train: {"family": "gabor", "variant": "w512-x", "image": image, "seed": 0,  # noqa: E731
                                    "heldout_psnr": held, "train_psnr": train}
    agg = ablate.versus_bench([v("camera", 25.5, 30.0), v("text", 22.5, 32.0), v("coffee", 9.0, 9.0)], bench_rows)
    a = agg[("gabor", "w512-x")]
    assert a["d_heldout"] == [0.5, -0.5] and a["d_train"] == [1.0, 1.0]
    assert a["vs_other"] == [1.0, -1.5] and a["ref_vs_other"] == [0.5, -1.0]
    assert "| gabor | w512-x | 2 | +1.00 | +0.00 (-0.50) | -0.25 / -0.25 |" in capsys.readouterr().out


def test_ablate_from_jsonl_takes_bench_rows_as_a_variant(tmp_path, capsys):
    import json

    spec = importlib.util.spec_from_file_location("ablate_inr", _PATH.with_name("ablate_inr.py"))
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    row = {"bench": "same-steps", "steps": 300, "family": "fourier", "image": "page", "seed": 1, "size": "1L-512D"}
    old = [{**row, "key": "i1L-512D", "heldout_psnr": 20.0, "train_psnr": 21.0},
           {**row, "key": "e4L-256D", "heldout_psnr": 20.5, "train_psnr": 22.0}]
    new = [{**row, "key": "i1L-512D", "heldout_psnr": 21.0, "train_psnr": 23.0}]
    for name, rows in (("old.jsonl", old), ("new.jsonl", new)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ablate.main(["--from-jsonl", str(tmp_path / "new.jsonl"), "--versus", str(tmp_path / "old.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "| fourier | i1L-512D (bench rows) | page s1 | 23.00 / 21.00 | +2.00 / +1.00 | +0.50 (-0.50) |" in out


def test_ablate_table_against_base_takes_bench_rows_too(tmp_path, capsys):
    # regression: bench rows (variant '<key> (bench rows)') crashed the table's sort, which knew only VARIANTS
    import json

    spec = importlib.util.spec_from_file_location("ablate_inr", _PATH.with_name("ablate_inr.py"))
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    base = {"variant": "base", "family": "siren", "image": "camera", "seed": 0, "size": 128, "steps": 2000,
            "heldout_psnr": 25.0, "train_psnr": 40.0}
    bench = {"bench": "long", "key": "e4L-256D", "family": "siren", "image": "camera", "seed": 0,
             "size": "4L-256D", "steps": 2000, "heldout_psnr": 25.5, "train_psnr": 60.0}
    (tmp_path / "a.jsonl").write_text(json.dumps(base) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(bench) + "\n")
    assert ablate.main(["--from-jsonl", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("| siren |")]
    assert [ln.split(" | ")[1] for ln in lines] == ["base", "e4L-256D (bench rows)"]
    assert "+0.50" in lines[1]


def test_bench_from_jsonl_prints_tables_and_closes_its_files(bench, tmp_path, capsys):
    import json

    rows = [_row("i1L-256D", "camera", 0, [(1, 5), (100, 20)]), _row("e4L-256D", "camera", 0, [(1, 6), (100, 21)])]
    for r, p in zip(rows, (20, 21)):
        _finished(r, 100, p)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.main(["--from-jsonl", str(tmp_path / "r.jsonl")]) == 0   # filterwarnings=error: no ResourceWarning
    assert "### Longer run (100 steps)" in capsys.readouterr().out


def test_bench_from_jsonl_merges_files_counting_a_repeated_run_once_and_pairs_only_complete_pairs(
        bench, tmp_path, capsys):
    import json

    def same(key, image, seed, held, set_="natural"):
        return {"bench": "same-steps", "set": set_, "family": "gabor", "image": image, "seed": seed, "key": key,
                "model": "imfn-gabor" if key.startswith("i") else "mfn-gabor", "steps": 300, "heldout_psnr": held,
                "train_psnr": held + 1, "ms_per_step_median": 1.0,
                "train_time_s": 1.0, "peak_mem_mb": 2.0 if key.startswith("i") else 4.0, "params": 10,
                "curve": [(1.0, held, 300)]}

    old = [same("i1L-256D", "camera", 0, 25.0), same("e4L-256D", "camera", 0, 24.0),
           same("i1L-256D", "camera", 1, 25.0), same("e4L-256D", "camera", 1, 26.0)]
    new = [same("e4L-256D", "camera", 0, 24.0),           # the same run again, in the second file: counts once
           same("e4L-256D-sn", "camera", 0, 23.0),        # only seed 0 has the -sn baseline: one pair, not two
           same("i1L-512D", "coffee", 0, 30.0),           # no e4L-256D on coffee: no pair at all
           same("i1L-256D", "astronaut", 0, 27.0), same("e4L-256D", "astronaut", 0, 26.5)]
    for name, rows in (("old.jsonl", old), ("new.jsonl", new)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.main(["--from-jsonl", str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "| natural | gabor | mfn-gabor 4L-256D | 3 |" in out                      # camera s0, s1, astronaut s0
    # i1L-256D − e4L-256D over 3 pairs (+1, −1, +0.5); − e4L-256D-sn one pair (+2); i1L-512D: none
    row = next(line for line in out.splitlines() if line.startswith("| natural | gabor | +"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "+0.17 ± 1.04 (min -1.00, 2/3 ≥ 0)"
    assert cells[3] == "+2.00 (min +2.00, 1/1 ≥ 0)"
    assert cells[4] == "n/a" and cells[5] == "n/a"
    assert cells[-1] == "0.50"                                                  # memory ratio, 3 pairs


def test_bench_media_rows_take_a_user_wav_and_every_seed(bench, tmp_path, capsys):
    """``--audio WAV`` replaces the synthesized clip, the row is named after the file, ``--media-rows`` picks the
    rows, and the media rows run over ``--seeds`` (they ran seed 0 only before)."""
    t = np.arange(600) / 4000
    wav = tmp_path / "tone.wav"
    write_wav(str(wav), 0.5 * np.sin(2 * np.pi * 330 * t), 4000)
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--skip-same-steps", "--long-steps", "0", "--media", "--media-rows", "audio", "--audio",
                       str(wav), "--media-steps", "2", "--families", "siren", "--models", "i1L-256D", "--seeds",
                       "0", "1", "--jsonl", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["image"], r["set"], r["seed"]) for r in rows] == [("audio:tone.wav", "audio", 0),
                                                                 ("audio:tone.wav", "audio", 1)]
    assert all(r["interp_heldout_psnr"] > 0 for r in rows)          # the interpolation reference travels along
    out = capsys.readouterr().out
    assert "against linear interpolation" in out
    assert "| audio | siren | isiren 1L-256D | 2 |" in out and "media rows only" in out and "128x128" not in out


def test_over_images_averages_seeds_first_and_uses_a_t_interval(bench, capsys):
    # camera's two seeds count as one image: mean over images of (2, 0, 1) = 1, std 1, t(0.975, 2) = 4.303
    assert bench.over_images({"camera": [1.0, 3.0], "coffee": [0.0], "text": [1.0]}) == \
        "+1.00 [-1.48, +3.48] (3 images)"
    assert bench.over_images({"camera": [1.0, 3.0]}) == "n/a"    # one image: no interval
    row = lambda key, image, seed, p: {"set": "natural", "family": "siren", "image": image, "seed": seed,  # noqa: E731
                                       "key": key, "heldout_psnr": p}
    rows = [row("i1L-256D", "camera", 0, 21.0), row("e4L-256D", "camera", 0, 20.0),
            row("i1L-256D", "camera", 1, 23.0), row("e4L-256D", "camera", 1, 20.0),
            row("i1L-256D", "coffee", 0, 20.0), row("e4L-256D", "coffee", 0, 20.0),
            row("i1L-256D", "text", 0, 30.0),   # unpaired: left out
            row("i1L-256D", "rocket", 0, 19.0), row("e4L-256D", "rocket", 0, 18.0)]
    bench.report_over_images(rows)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("| natural | siren |"))
    assert line.split(" | ")[2] == "+1.00 [-1.48, +3.48] (3 images)"
