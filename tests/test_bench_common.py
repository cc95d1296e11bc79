"""benchmarks/common.py: the timing helpers the benchmarks share."""
import benchmarks.common as common


def test_interleaved_passes_time_every_network_in_turn_and_outvote_a_slow_spell(monkeypatch):
    clock, calls = [0.0], []
    reps, warmup = 3, 1
    ms = {"dense": [4.0, 40.0, 5.0], "ticket": [1.0, 10.0, 2.0]}  # pass 2 is a slow spell of the machine

    def runner(key):
        def run():
            calls.append(key)
            clock[0] += ms[key][(calls.count(key) - 1) // (reps + warmup)] / 1000
        return run

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    out = common.interleaved_latencies({k: runner(k) for k in ms}, reps, passes=3, warmup=warmup)
    per_pass = reps + warmup
    assert calls == (["dense"] * per_pass + ["ticket"] * per_pass) * 3  # each pass times every network in turn
    for key, times in ms.items():
        best, median, passes = out[key]
        assert [round(m, 9) for m in passes] == times  # each pass: the median of its timed runs
        assert round(median, 9) == sorted(times)[1] and round(best, 9) == min(times)  # the slow pass is outvoted
