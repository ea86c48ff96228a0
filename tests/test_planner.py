"""The cost model against hand-computed cases, the planner's choices and refusals, and the
profile checks: all pure (no MPI). Profiles here are written by hand with round numbers
(1 GFLOP/s, 1 ms + 10 ns/byte collectives) so that every prediction can be computed by hand;
tests/test_profile.py makes a real one under mpiexec."""

import copy
import dataclasses
import json

import pytest

import kernels as K
from bench import cli, costmodel, machine as M, plan as plan_tool, planner, profiles, trial
from parallelism import STRATEGIES
from parallelism.schedule import Step, Work

TINY = K.preset("tiny")
GFLOPS = 1e9          # every kernel: 1 GFLOP/s at full speed
EMBED_S = 1e-6        # embeddings: 1 us per token
ALPHA, BETA = 1e-3, 1e-8          # every collective: 1 ms + 10 ns per byte
LATENCY, BANDWIDTH = 1e-4, 1e8    # every link: 100 us, 100 MB/s


def hand_profile(cfg=TINY, hosts=2, shapes=((1, 8), (2, 8)), quota=None, runtime=0):
    works, _ = planner.kernel_shapes(cfg, hosts, list(shapes))
    kernels = {}
    for key, w in works.items():
        flops = w.flops(cfg) // w.count  # one call
        kernels[key] = {"kernel": w.kernel, "batch": w.batch, "queries": w.queries, "keys": w.keys,
                        "width": w.width, "heads": w.heads, "ffn": w.ffn, "flops": flops,
                        "seconds": flops / GFLOPS if flops else EMBED_S * w.batch * w.queries}
    return profiles.validate({
        "schema": profiles.SCHEMA, "model": profiles.model_of(cfg), "shapes": [list(s) for s in shapes],
        "threads": 1, "profiling_s": 1.0,
        "hosts": [{"rank": r, "host": f"h{r}", "cpus": 2, "cpu_quota": quota, "memory_available_bytes": 2**34,
                   "runtime_bytes": runtime, "network": None, "kernels": kernels} for r in range(hosts)],
        "links": [{"a": a, "b": b, "latency_s": LATENCY, "bandwidth_Bps": BANDWIDTH}
                  for a in range(hosts) for b in range(a + 1, hosts)],
        "collectives": [{"op": op, "world": w, "alpha_s": ALPHA, "beta_s_per_byte": BETA, "residual": 0.0,
                         "cpu_fraction": 0.0} for op in profiles.FITTED_OPS for w in range(2, hosts + 1)]})


def predict(name, cfg, world, batch, seq, profile=None, **options):
    mach = M.build(profile or hand_profile(cfg, max(world, 2)))
    return costmodel.predict(name, cfg, options, tuple(range(world)), mach.hosts, mach.network, batch, seq)


# -- the cost model by hand ---------------------------------------------------------------------
def test_tp_by_hand():
    # tiny, P=2, b=1, s=8: a rank's layer shard (2 heads of 16, 128 FFN columns) is
    # qkv 2*8*64*96 + attention 4*8*8*32 + out 2*8*32*64 + ffn 4*8*64*128 = 401,408 FLOPs;
    # two allreduces of 8*64*4 = 2048 bytes, bus 2(P-1)/P * 2048 = 2048: 1 ms + 20.48 us each.
    layer = 401_408 / GFLOPS + 2 * (ALPHA + 2048 * BETA)
    p = predict("tp", TINY, 2, 1, 8)
    assert p.latency_s == pytest.approx(8 * EMBED_S + 4 * layer, rel=1e-12)
    assert p.timeline.comm_s == pytest.approx(8 * (ALPHA + 2048 * BETA), rel=1e-12)
    assert p.bus_bytes_by_rank == [8 * 2048, 8 * 2048]


def test_bp_by_hand():
    # tiny N_b=2 N_div=4, P=2, b=1, s=8, replicated boundary: per block one decoupled layer of
    # 2 sub-blocks (width 16: qkv 2*8*16*192 + attention 4*8*8*64 + out 2*8*64*16 + ffn
    # 4*8*16*256 = 212,992 FLOPs each), one allgather (whole 8*64*4 = 2048 B, bus 1024 B), and
    # the boundary layer (802,816 FLOPs) after it.
    cfg = TINY.replace(n_blocks=2, n_div=4)
    sub_block, boundary, gather = 212_992 / GFLOPS, 802_816 / GFLOPS, ALPHA + 1024 * BETA
    p = predict("bp", cfg, 2, 1, 8)
    assert p.latency_s == pytest.approx(8 * EMBED_S + 2 * (2 * sub_block + gather + boundary), rel=1e-12)


def test_pipeline_by_hand():
    # tiny, P=2, b=2 in 2 micro-batches, stages 2,2. A layer over 8 tokens: 802,816 FLOPs.
    # Stage 0 per micro-batch: 8 tokens embedded + 2 layers = 1.613632 ms; stage 1: 1.605632 ms;
    # each send of 2048 B: 100 us + 20.48 us. Stage 0: m0 0 -> 1.613632 (arrives 1.733712),
    # m1 -> 3.227264 (arrives 3.347744); stage 1: m0 1.733712 -> 3.339344, m1 waits for its
    # input until 3.347744 -> 4.953376 ms.
    p = predict("pp", TINY, 2, 2, 8, micro_batches=2, stages="2,2")
    assert p.latency_s == pytest.approx(4.953376e-3, rel=1e-9)


def test_dp_gathers_through_the_root_by_hand():
    # tiny, P=2, b=2: scatter of the root's 1 row of packed ids, mask and token types (3*8*4 = 96 B), then each rank
    # its row (8 embedded tokens + 4 layers of 802,816 FLOPs), then a gather of 2048 B.
    rank = 8 * EMBED_S + 4 * 802_816 / GFLOPS
    p = predict("dp", TINY, 2, 2, 8)
    assert p.latency_s == pytest.approx((ALPHA + 96 * BETA) + rank + (ALPHA + 2048 * BETA), rel=1e-12)


def test_cpu_quota_by_hand():
    cpu = costmodel.Cpu(0.5)          # 50 ms per 100 ms period
    assert cpu.run(0.0, 0.2) == pytest.approx(0.35)       # 4 periods of 50 ms: done at 0.3 + 0.05
    assert cpu.run(0.36, 0.02) == pytest.approx(0.42)     # the period at 0.3 is spent: waits until 0.4
    assert costmodel.Cpu(None).run(1.0, 0.2) == 1.2
    assert costmodel.Cpu(1.0).run(1.0, 0.2) == 1.2         # a whole core for one thread: no limit


def test_shared_cores_by_hand():
    cpu = costmodel.Cpu(None)
    assert cpu.run(1.0, 0.2, share=0.5) == pytest.approx(1.4)         # half a core: twice as long
    cpu = costmodel.Cpu(0.45)                                         # 45 ms of CPU per 100 ms period
    assert cpu.run(0.0, 0.02, share=0.5) == pytest.approx(0.04)       # a burst: at half speed
    assert costmodel.Cpu(0.45).run(0.0, 0.09, share=0.5) == pytest.approx(0.19)   # 45 ms in 90 ms, 45 more from 0.1
    hosts = [costmodel.Host(f"h{r}", None, {}, 0, 0, machine="m" if r < 3 else None, cores=2) for r in range(4)]
    assert costmodel.core_shares(hosts, [1, 1, 1, 1]) == [2 / 3, 2 / 3, 2 / 3, 1.0]   # h3: a machine of its own
    assert costmodel.core_shares(hosts, [1, 0, 1, 1]) == [1.0, 1.0, 1.0, 1.0]         # two computing on 2 cores


def test_shared_machine_slows_tp_by_hand():
    # test_tp_by_hand's case with both hosts on one 1-core machine: each layer's compute at half speed
    profile = hand_profile()
    for h in profile["hosts"]:
        h.update(machine_id="box", cpus=1)
    layer = 2 * 401_408 / GFLOPS + 2 * (ALPHA + 2048 * BETA)
    assert predict("tp", TINY, 2, 1, 8, profile).latency_s == pytest.approx(8 * 2 * EMBED_S + 4 * layer, rel=1e-12)
    assert M.build(profile, hosts=4).hosts[0].machine is None          # projections: a machine per host


def test_communication_cpu_by_hand():
    # dp, P=2, b=2 as in test_dp_gathers_through_the_root_by_hand, with every collective
    # costing each rank 20 ms of CPU: longer than its wire time (about 1 ms), so it sets
    # the scatter's and the gather's time.
    profile = hand_profile()
    for c in profile["collectives"]:
        c.update(cpu_alpha_s=0.02, cpu_beta_s_per_byte=0.0)
    rank = 8 * EMBED_S + 4 * 802_816 / GFLOPS
    assert predict("dp", TINY, 2, 2, 8, profile).latency_s == pytest.approx(0.02 + rank + 0.02, rel=1e-9)
    # under a 0.25-core quota (25 ms per 100 ms period) the two collectives and the compute
    # need 43.2 ms of CPU: the gather's last 18.2 ms wait for the next period
    for h in profile["hosts"]:
        h["cpu_quota"] = 0.25
    slow = predict("dp", TINY, 2, 2, 8, profile)
    assert slow.latency_s > 0.1 and slow.timeline.throttled_s > 0.09       # the wait is the quota's
    assert slow.timeline.comm_s == pytest.approx(0.04)                     # the two collectives' own CPU
    profile["wait_cpu_fraction"] = 0.3
    assert profiles.validate(profile) and M.build(profile).network.wait_fraction == 0.3
    profile["wait_cpu_fraction"] = 7
    with pytest.raises(cli.UsageError, match="wait_cpu_fraction"):
        profiles.validate(profile)


def test_polling_through_a_long_transfer_spends_the_quota_by_hand():
    # One 200 ms allgather between two hosts that only communicate. Each rank polls at 0.3 of
    # a core while the bytes move: 60 ms of CPU. Unlimited, the wire sets the time; under a
    # 0.2-core quota (20 ms per 100 ms period) the host runs its 20 ms at 0.3 of a core, in
    # 66.7 ms, then waits for the next period, three times: the collective ends at 0.2667 s.
    # (On the emulated cluster this is what a 0.2-core host does to bp(tp) and sp:
    # reports/emulated-4host-planner-run4.md, notes.)
    step = Step(((), ()), "allgather", (1000, 1000), 2000)
    wire = costmodel.cost_bytes("allgather", step.parts, step.whole, 2)
    fits = {("allgather", 2): costmodel.Fit(0.0, 0.2 / wire, cpu_alpha=0.0, cpu_beta=0.0),
            ("allreduce", 2): costmodel.Fit(0.0, 1e-15)}          # the barrier between forwards
    network = costmodel.Network(fits, {}, wait_fraction=0.3)

    def timeline(quota, network=network):
        hosts = [costmodel.Host("h0", quota, {}, 0, 0), costmodel.Host("h1", None, {}, 0, 0)]
        return costmodel.simulate([step], TINY, hosts, (0, 1), network, spread=0, forwards=0)

    assert timeline(None).latency_s == pytest.approx(0.2)
    assert timeline(0.5).latency_s == pytest.approx(0.2)          # 30 ms per period fits in its 50 ms
    slow = timeline(0.2)
    assert slow.latency_s == pytest.approx(0.2 + 0.2 / 3)
    assert (slow.comm_s, slow.throttled_s) == (pytest.approx(0.2), pytest.approx(0.2 / 3))   # the wait is the quota's
    # A rank that spins (wait ~1 core, MPICH's default when ranks <= cores) polls only while
    # the wire is busy: the collective takes max(wire, its own CPU work), not their sum.
    fits[("allgather", 2)] = costmodel.Fit(0.0, 0.2 / wire, cpu_alpha=0.05, cpu_beta=0.0)
    spinning = costmodel.Network(fits, {}, wait_fraction=1.0)
    assert timeline(None, spinning).latency_s == pytest.approx(0.2)
    fits[("allgather", 2)] = costmodel.Fit(0.0, 0.2 / wire, cpu_alpha=0.3, cpu_beta=0.0)
    assert timeline(None, costmodel.Network(fits, {}, wait_fraction=1.0)).latency_s == pytest.approx(0.3)


def test_quota_step_is_predicted_by_its_expected_value_by_hand():
    # One host under a 0.5-core quota (50 ms per 100 ms period) computing exactly one period's
    # budget, 50 ms, from a period's start: at the profiled time it finishes at 50 ms, but
    # 7.5% more work waits for the next period. Kernel times x 0.85, 0.925, 1, 1.075, 1.15
    # end at 42.5, 46.25, 50, 103.75 and 107.5 ms: the prediction is their mean, 70 ms.
    class Fixed(costmodel.Host):
        def seconds(self, work, cfg):
            return 0.05

    step = Step(((Work("ffn", 1, 8, 8, 64, 4, 256),),))   # any kernel: Fixed says its time
    network = costmodel.Network({}, {})
    one = [Fixed("h0", 0.5, {}, 0, 0)]
    assert costmodel.simulate([step], TINY, one, (0,), network, spread=0, forwards=0).latency_s == pytest.approx(0.05)
    assert costmodel.simulate([step], TINY, one, (0,), network, forwards=0).latency_s == pytest.approx(0.07)
    # no quota: latency is linear in compute, the profiled time is the prediction
    free = [Fixed("h0", None, {}, 0, 0)]
    assert costmodel.simulate([step], TINY, free, (0,), network).latency_s == pytest.approx(0.05)


def test_quota_slows_long_compute_not_short_bursts():
    slow = predict("serial", TINY, 1, 2, 8, hand_profile(quota=0.001))
    fast = predict("serial", TINY, 1, 2, 8)
    assert slow.timeline.throttled_s > 0.5 and fast.timeline.throttled_s == pytest.approx(0, abs=1e-15)
    assert slow.timeline.compute_s == pytest.approx(fast.timeline.compute_s)


def test_memory_uses_the_strategies_weights():
    cfg = TINY.replace(n_blocks=2, n_div=4)
    for boundary in ("replicate", "tp"):
        p = predict("bp", cfg, 2, 1, 8, boundary=boundary)
        assert p.weights_by_rank == [STRATEGIES["bp"].weights_bytes(cfg, 2, r, boundary=boundary) for r in range(2)]
        assert all(m > w for m, w in zip(p.memory_by_host.values(), p.weights_by_rank))


def test_projection_is_labelled_and_scales():
    profile = hand_profile(hosts=2)
    base = M.build(profile)
    assert not base.is_projection
    big = M.build(profile, hosts=8, speeds=[2.0], rate_bit=None)
    assert big.is_projection and len(big.hosts) == 8
    f2, f8 = big.network.fit("allreduce", 2), big.network.fit("allreduce", 8)
    assert f8.projected and f8.alpha == pytest.approx(ALPHA * 14 / 2) and f8.beta == BETA
    # twice the speed halves the compute
    a = costmodel.predict("serial", TINY, {}, (0,), base.hosts, base.network, 1, 8)
    b = costmodel.predict("serial", TINY, {}, (0,), big.hosts, big.network, 1, 8)
    assert b.timeline.compute_s == pytest.approx(a.timeline.compute_s / 2)


# -- the planner --------------------------------------------------------------------------------
def test_unequal_hosts_get_more_work_on_faster_ones():
    cfg = K.preset("tiny")
    profile = hand_profile(cfg, hosts=2)
    mach = M.build(profile, speeds=[1.0, 0.25])
    ranked, _ = planner.plan(cfg, mach, 1, 8, strategies=["bp"], nb=2, ndiv=4)
    best = next(r.placement for r in ranked if len(r.placement.hosts) == 2)
    assert best.opts["assignment"] == "0,1,2/3"
    ranked, _ = planner.plan(cfg, mach, 2, 8, strategies=["pp"])
    assert any(r.placement.opts.get("stages") == "3,1" for r in ranked)


def test_a_slow_host_is_left_idle():
    mach = M.build(hand_profile(hosts=2), speeds=[1.0, 0.01])
    ranked, _ = planner.plan(TINY, mach, 1, 8)
    assert ranked[0].placement.hosts == (0,)


def test_dp_never_runs_on_more_hosts_than_requests():
    mach = M.build(hand_profile(hosts=2))
    for batch, most in ((1, 0), (2, 2)):
        ranked, refused = planner.plan(TINY, mach, batch, 8, strategies=["dp"])
        assert max((len(r.placement.hosts) for r in ranked), default=0) == most
        assert [r.label for r in refused] == (["dp on more than 1 host(s)"] if batch == 1 else [])
    # 16 hosts, batch 10: host counts 1..8 then 16 (a projection), so k = batch + 1 never comes up
    ranked, refused = planner.plan(TINY, M.build(hand_profile(hosts=2), hosts=16), 10, 8, strategies=["dp"])
    assert max(len(r.placement.hosts) for r in ranked) == 8
    assert [r.label for r in refused] == ["dp on more than 10 host(s)"]


def test_contenders_are_the_best_of_each_family_then_of_each_block_count_within_the_margin():
    mach = M.build(hand_profile(hosts=2))
    ranked, _ = planner.plan(TINY, mach, 1, 8)
    best = planner.best_per_family(ranked)
    win = best[0].prediction.latency_s
    kind = lambda r: (r.placement.strategy, r.placement.opts.get("boundary"), r.placement.n_blocks)  # noqa: E731
    wide = trial.contenders(ranked, margin=10.0, limit=64)
    assert wide == sorted(wide, key=ranked.index)                   # best predicted first
    assert all(r in wide for r in best)                             # every family's best
    assert len({kind(r) for r in wide}) == len(wide) == len({kind(r) for r in ranked})  # one per block count
    assert all(ranked.index(r) <= min(ranked.index(o) for o in ranked if kind(o) == kind(r)) for r in wide)
    assert len({kind(r) for r in ranked if r.placement.strategy == "bp"}) > 2   # the case is not empty
    within = trial.contenders(ranked, margin=0.2, limit=64)
    assert within[0] is ranked[0] and all(r.prediction.latency_s <= 1.2 * win for r in within)
    assert all(r.prediction.latency_s > 1.2 * win for r in best if r not in within)   # none left out inside it
    assert trial.contenders(ranked, margin=10.0, limit=len(best)) == best   # families before block counts
    assert trial.contenders(ranked, margin=10.0, limit=2) == best[:2]
    assert trial.contenders(ranked, margin=10.0, limit=1) == [ranked[0]]
    assert trial.contenders([], margin=1.0, limit=3) == []


def test_contenders_are_timed_together_only_when_they_fit_together():
    """Memory per machine: hosts of one machine share it; a host's runtime counts once."""
    runtime = 2**28
    mach = M.build(hand_profile(hosts=2, runtime=runtime))
    ranked, _ = planner.plan(TINY, mach, 1, 8)
    rivals = trial.contenders(ranked, margin=10.0, limit=3)
    assert len(rivals) == 3 and sum(len(r.placement.hosts) == 2 for r in rivals) >= 2
    need = [sum(r.prediction.memory_by_host[h] - runtime for r in rivals if h in r.prediction.memory_by_host)
            + runtime for h in (0, 1)]
    own = lambda memory, machine=None: [dataclasses.replace(h, memory_available=memory, machine=machine)  # noqa: E731
                                        for h in mach.hosts]
    assert trial.fit_together(rivals, own(max(need)))
    assert not trial.fit_together(rivals, own(max(need) - 1))
    assert not trial.fit_together(rivals, own(max(need), machine="vm"))     # both hosts in one memory
    assert trial.fit_together(rivals, own(sum(need), machine="vm"))
    assert trial.fit_together([], own(0))


def test_the_fastest_trial_runs_and_one_that_cannot_run_never_does():
    row = lambda seconds: {"plan": "p", "predicted_latency_s": 0.1, "trial_latency_s": seconds}  # noqa: E731
    assert trial.fastest([row(0.3), row(0.2), row(0.25)]) == 1
    assert trial.fastest([row(None), row(0.4)]) == 1        # the best predicted could not run this shape
    assert trial.fastest([row(None), row(None)]) == 0       # none could: the best predicted (its run gives the reason)


BASE = K.preset("bert-base")


def base_plan(budget, **options):
    profile = hand_profile(BASE, hosts=4, shapes=((1, 128),), runtime=0)
    mach = M.build(profile)
    return planner.plan(BASE, mach, 1, 128, [budget] * 4, nb=4, ndiv=4, **options)


def test_memory_budget_below_replicated_boundaries_picks_what_fits():
    replicate = STRATEGIES["bp"].weights_bytes(BASE.replace(n_blocks=4, n_div=4), 4, 0)
    sharded = STRATEGIES["bp"].weights_bytes(BASE.replace(n_blocks=4, n_div=4), 4, 0, boundary="tp")
    budget = (replicate + sharded) // 2
    ranked, refused = base_plan(budget)
    assert ranked and all(max(r.prediction.memory_by_host.values()) <= budget for r in ranked)
    assert not any(r.placement.opts.get("boundary") == "replicate" for r in ranked)
    assert any(r.placement.opts.get("boundary") == "tp" for r in ranked)
    assert any("bp(replicate)" in r.label and "budget" in r.reason for r in refused)
    unlimited, _ = base_plan(2**40)
    assert any(r.placement.opts.get("boundary") == "replicate" for r in unlimited)


def test_no_plan_fits_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(hand_profile(TINY, hosts=2)))
    code = run_tool(["--profile", str(path), "--seq", "8", "--memory-budget", "1KiB"], capsys)
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no placement fits")


def run_tool(argv, capsys=None):
    with pytest.raises(SystemExit) as info:
        cli.run(plan_tool.main, argv)
    return info.value.code


def test_plan_cli_prints_a_ranking_and_why(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(hand_profile(TINY, hosts=2)))
    out = tmp_path / "ranking.json"
    assert run_tool(["--profile", str(path), "--seq", "8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "winner" in text and "dominant term" in text
    ranking = json.loads(out.read_text())["results"][0]["ranked"]
    assert ranking[0]["predicted_latency_s"] <= ranking[-1]["predicted_latency_s"]
    assert run_tool(["--profile", str(path), "--seq", "8", "--project-hosts", "4,8", "--rates", "10mbit"]) == 0
    assert "PROJECTION" in capsys.readouterr().out


# -- bad profiles: one line, exit 2 ---------------------------------------------------------------
def spoil(profile, how):
    bad = copy.deepcopy(profile)
    how(bad)
    return bad


BAD = [
    ("missing field", lambda p: p["hosts"][1].pop("kernels"), r"hosts\[1\] lacks field 'kernels'"),
    ("missing model", lambda p: p.pop("model"), "lacks field 'model'"),
    ("wrong host count", lambda p: p["links"].append({"a": 0, "b": 5, "latency_s": 1, "bandwidth_Bps": 1}),
     "wrong host count"),
    ("fit beyond the hosts", lambda p: p["collectives"][0].update(world=3), "wrong host count"),
    ("zero bandwidth", lambda p: p["links"][0].update(bandwidth_Bps=0), r"bandwidth_Bps must be > 0"),
    ("negative kernel time", lambda p: next(iter(p["hosts"][0]["kernels"].values())).update(seconds=-1.0),
     "seconds must be > 0"),
    ("zero beta", lambda p: p["collectives"][0].update(beta_s_per_byte=0), "beta_s_per_byte must be > 0"),
    ("nan", lambda p: p["links"][0].update(latency_s=float("nan")), "must be a finite number"),
    ("schema", lambda p: p.update(schema="other/2"), "expected 'detr-profile/1'"),
]


@pytest.mark.parametrize("what,how,message", BAD, ids=[b[0] for b in BAD])
def test_bad_profiles_give_one_line_and_exit_2(tmp_path, capsys, what, how, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spoil(hand_profile(TINY, hosts=2), how)))
    assert run_tool(["--profile", str(path), "--seq", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: profile ")
    import re
    assert re.search(message, err), err


def test_profile_of_another_model_and_other_hosts(tmp_path, capsys):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(hand_profile(TINY, hosts=2)))
    assert run_tool(["--profile", str(path), "--model", "minilm-l6"]) == 2
    assert "was measured for tiny" in capsys.readouterr().err
    assert run_tool(["--profile", str(path), "--seq", "8", "--hosts", "3"]) == 2
    assert "has 2 host(s)" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{not json")
    assert run_tool(["--profile", str(tmp_path / "junk.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    with pytest.raises(cli.UsageError, match="wrong host count"):
        profiles.check_hosts(hand_profile(TINY, hosts=2), 3)


def test_two_profiles_differ_per_term():
    a = hand_profile(TINY, hosts=2)
    b = spoil(a, lambda p: p["collectives"][0].update(alpha_s=2 * ALPHA))
    diff = {term: ratio for term, _, _, ratio in profiles.compare(a, b)}
    assert diff["allreduce P=2 alpha_s"] == 2.0 and diff["link 0-1 bandwidth_Bps"] == 1.0


def test_a_checkpoint_fixes_what_may_run():
    from pathlib import Path
    from bench.models import Model
    decoupled = TINY.replace(n_blocks=2, n_div=4)
    trained = Model("t", TINY, decoupled, None, Path("ckpt"), 0, original_error="ckpt holds a decoupled model")
    mach = M.build(hand_profile(TINY, hosts=2))
    ranked, refused = planner.plan(TINY, mach, 1, 8, **planner.limits(trained))
    assert ranked and {(r.placement.strategy, r.placement.n_blocks, r.placement.n_div) for r in ranked} == {
        ("bp", 2, 4)}
    assert {r.label for r in refused} >= {"serial", "dp", "pp", "tp", "sp"}
    original = Model("o", TINY, None, "bp needs decoupled weights", Path("ckpt"), 0)
    ranked, refused = planner.plan(TINY, mach, 1, 8, **planner.limits(original))
    assert ranked and not any(r.placement.strategy == "bp" for r in ranked)
    assert any(r.label == "bp" and "decoupled weights" in r.reason for r in refused)


def test_driver_args_of_the_best_placement_on_all_hosts(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(hand_profile(TINY, hosts=2)))
    assert run_tool(["--profile", str(path), "--seq", "8", "--strategies", "bp", "--nb", "2", "--ndiv", "4",
                     "--speeds", "1,0.25", "--driver-args"]) == 0
    assert capsys.readouterr().out.split() == ["--strategies", "bp", "--nb", "2", "--ndiv", "4", "--boundary",
                                               "replicate", "--assignment", "0,1,2/3"]
