"""`--strategies auto` and `--profile` in the drivers: plan from a profile, run the winner on
its hosts, and write the prediction beside the measurement, so every run checks the model.

- `--profile FILE`: the hosts' profile (bench.profile); without it `auto` profiles the
  launched hosts first (their kernels at this request shape, links, collectives).
- `--strategies auto`: the planner (bench.planner) ranks every placement on the profile;
  placements predicted within the model's error of the winner are timed briefly first
  (bench.trial; latency objective, `--trials 1` turns it off) and the fastest runs, on a
  sub-communicator of the hosts it uses (in its order; hosts it leaves idle wait without
  spinning). Its record carries `plan`, `predicted_*` and `trial`.
- `--profile` without auto: every record carries the prediction of its own placement
  (`predicted_latency_s` ...), for measured-against-predicted checks of every strategy.

Profile host i is world rank i: the profile must be of the hosts this job runs on
(same count and host names), and of this model.
"""

from __future__ import annotations

from dataclasses import dataclass

from parallelism import STRATEGIES, UsageError

from . import costmodel, machine as M, planner, profiles, trial
from .models import Model


def on_root(session, work):
    """`work()` on rank 0, its result (or its UsageError, raised alike) on every rank."""
    result, problem = None, None
    if session.rank == 0:
        try:
            result = work()
        except UsageError as err:
            problem = str(err)
    result, problem = session.comm.bcast_object((result, problem))
    if problem:
        raise UsageError(problem)
    return result


def obtain_profile(session, opts, model: Model, shapes) -> dict:
    """The profile to plan with, the same on every rank: --profile (read on rank 0) or measured now."""
    if opts.profile:
        def read():
            profile = profiles.load(opts.profile)
            profiles.check_model(profile, model.original, opts.profile)
            profiles.check_hosts(profile, session.size, opts.profile, session.env["hostnames"])
            return profile
        return on_root(session, read)
    from .profile import run_profile
    session.say("--strategies auto without --profile: profiling the hosts first")
    return run_profile(session.comm, model.original, shapes, say=session.say)


def fields_of(placement: planner.Placement, prediction: costmodel.Prediction, names: list[str],
              mach: M.Machine) -> dict:
    t = prediction.timeline
    return {"plan": {**placement.record(names), "label": placement.label(names), "of_hosts": names},
            "predicted_latency_s": prediction.latency_s, "predicted_throughput_rps": prediction.throughput_rps,
            "predicted": {"compute_s": t.compute_s, "throttled_s": t.throttled_s, "comm_s": t.comm_s,
                          "dominant": t.dominant(), "projection": mach.projection or None,
                          "memory_by_host": {names[h]: m for h, m in prediction.memory_by_host.items()}}}


@dataclass
class Choice:
    placement: planner.Placement
    fields: dict
    why: list[str]
    contenders: list[tuple[planner.Placement, dict]]   # to time before committing (bench.trial)
    names: list[str]
    together: bool = False   # the contenders fit in memory all at once: timed interleaved


def choose(session, opts, model: Model, profile: dict, objective: str, batch: int, seq: int) -> Choice:
    """The planner's winner and its contenders (computed on rank 0, the same on every rank)."""
    def pick():
        mach = M.build(profile)
        names = [h.name for h in mach.hosts]
        fixed = (opts.nb, opts.ndiv) if opts.nb else (None, None)
        ranked, refused = planner.plan(model.original, mach, batch, seq, objective=objective,
                                       **planner.limits(model, *fixed))
        if not ranked:
            reasons = "; ".join(f"{r.label}: {r.reason}" for r in refused[:3])
            raise UsageError(f"--strategies auto: no placement fits ({reasons})")
        win = ranked[0]
        trials = opts.trials if objective == "latency" else 1  # a trial times single forwards
        rivals = trial.contenders(ranked, opts.trial_margin, trials)
        return Choice(win.placement, fields_of(win.placement, win.prediction, names, mach),
                      planner.why(ranked, names)[:4],
                      [(r.placement, fields_of(r.placement, r.prediction, names, mach)) for r in rivals], names,
                      trial.fit_together(rivals, mach.hosts))
    return on_root(session, pick)


def enter(session, opts, model: Model, objective: str, batch: int, seq: int, make_session):
    """Plan and move to the winner's hosts. Returns (session of the chosen hosts, or None on a
    rank the plan leaves idle; the model to build; [the plan to run]). Every world rank must
    call `leave(world_session)` at the end."""
    profile = obtain_profile(session, opts, model, [(batch, seq)])
    choice = choose(session, opts, model, profile, objective, batch, seq)
    for line in choice.why:
        session.say(line)
    p, fields = choice.placement, choice.fields
    if len(choice.contenders) > 1:
        session.say(f"--strategies auto: timing the {len(choice.contenders)} placements predicted within "
                    f"{100 * opts.trial_margin:.0f}% of the winner ({trial.TRIAL_ITERS} forwards each, median, "
                    + ("in interleaved rounds)" if choice.together else "one after another: together they "
                       "would not fit in memory)"))
        best, rows = trial.run_trials(session, opts, model, choice.contenders, batch, seq, choice.names,
                                      choice.together)
        p, fields = choice.contenders[best]
        fields = {**fields, "trial": rows}
    session.say(f"--strategies auto: running {fields['plan']['label']}, predicted "
                f"{fields['predicted_latency_s'] * 1e3:.1f} ms")
    model, plan = trial.model_for(opts, model, p), trial.plan_of(p)
    ranks = list(p.hosts)
    if ranks == list(range(session.size)):
        chosen = session
    else:
        sub = session.comm.split(0 if session.rank in ranks else None,
                                 key=ranks.index(session.rank) if session.rank in ranks else 0)
        chosen = make_session(sub) if sub is not None else None
    if chosen is not None:
        chosen.predict = lambda record: fields
    return chosen, model, [plan]


def leave(world_session) -> None:
    """The end of an auto run on every world rank: idle ranks wait here without spinning."""
    world_session.comm.idle_barrier()


def predict_record(record: dict, original, mach: M.Machine, hosts=None) -> dict:
    """The predicted_* fields of a record's own placement (its strategy, options and
    decoupled shape; on `hosts`, default the first world_size ones). Pure."""
    world = record.get("devices") or record["world_size"]
    decoupled = STRATEGIES[record["strategy"]].decoupled
    options = {k: v for k, v in (record.get("options") or {}).items() if v is not None}
    if "assignment" in options and not isinstance(options["assignment"], str):
        options["assignment"] = "/".join(",".join(map(str, part)) for part in options["assignment"])
    placement = planner.Placement(record["strategy"], tuple(hosts or range(world))[:world],
                                  tuple(sorted(options.items())), record["n_blocks"] if decoupled else None,
                                  record["n_div"] if decoupled else None)
    pred = costmodel.predict(record["strategy"], placement.config(original), options, placement.hosts,
                             mach.hosts, mach.network, record["batch"], record["seq"])
    return fields_of(placement, pred, [h.name for h in mach.hosts], mach)


def predictor(session, opts, model: Model):
    """For --profile without auto: a function record -> the prediction of its own placement."""
    mach = M.build(obtain_profile(session, opts, model, []))
    return lambda record: predict_record(record, model.original, mach)
