//! Reconciler unit tests: feed events, read the actions.

use super::*;
use crate::events::ExitStatus;
use crate::name::{Extensions, NamePolicy};
use crate::protocol::VassalMessage as M;
use crate::protocol::{MSG_GRACEFUL_STOP, MSG_RELOAD, MSG_STOP};
use crate::spec::{Change, ChangeKey};
use std::time::Duration;

fn name(n: &str) -> VassalName {
    VassalName::parse(n, &Extensions::default(), NamePolicy::Plain).unwrap()
}

fn file(n: &str, mtime: i128) -> VassalSpec {
    VassalSpec {
        name: name(n),
        config: ConfigSource::File(n.into()),
        key: ChangeKey::File {
            mtime_ns: mtime,
            ino: 1,
            size: 10,
        },
        owner: None,
        socket: None,
        workdir: None,
        limits: None,
    }
}

fn inline(n: &str, text: &str, ts: i128) -> VassalSpec {
    VassalSpec::inline(name(n), text, ChangeKey::Stamp(ts))
}

fn rec() -> Reconciler {
    Reconciler::new(ReconcilerConfig::default(), vec!["m0".into(), "m1".into()])
}

/// Applies a change and acknowledges every spawn with a pid; returns the
/// actions and the instances spawned.
fn apply(
    r: &mut Reconciler,
    m: MonitorId,
    c: Change,
    now: Instant,
) -> (Vec<Action>, Vec<InstanceId>) {
    let acts = r.monitor_change(m, c, now);
    let ids = ack(r, &acts);
    (acts, ids)
}

fn ack(r: &mut Reconciler, acts: &[Action]) -> Vec<InstanceId> {
    let mut ids = Vec::new();
    for a in acts {
        if let Action::Spawn { instance, .. } = a {
            r.spawned(*instance, 1000 + *instance as u32, "uwsgi");
            ids.push(*instance);
        }
    }
    ids
}

fn sends(acts: &[Action]) -> Vec<(InstanceId, u8)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { instance, byte } => Some((*instance, *byte)),
            _ => None,
        })
        .collect()
}

#[test]
fn new_spec_spawns_once_and_same_key_does_nothing() {
    let mut r = rec();
    let t = Instant::now();
    let (acts, ids) = apply(
        &mut r,
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    assert_eq!(ids.len(), 2);
    assert_eq!(acts.len(), 2);
    let (acts, _) = apply(
        &mut r,
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Running
    );
}

#[test]
fn changed_file_key_reloads_even_when_mtime_goes_backwards() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 100)), t);
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", 50)), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_RELOAD)]);
    assert_eq!(r.vassal("a.ini").unwrap().reloads, 1);
}

#[test]
fn stamp_key_reloads_only_when_larger_and_config_request_gets_new_text() {
    let mut r = rec();
    let t = Instant::now();
    let (acts, ids) = apply(&mut r, 0, Change::Upsert(inline("db.ini", "v1", 10)), t);
    assert!(
        matches!(&acts[0], Action::Spawn { spec, .. } if spec.config == ConfigSource::Inline("v1".into()))
    );
    assert!(r
        .monitor_change(0, Change::Upsert(inline("db.ini", "v0", 5)), t)
        .is_empty());
    assert!(r
        .monitor_change(0, Change::Upsert(inline("db.ini", "vX", 10)), t)
        .is_empty());
    let acts = r.monitor_change(0, Change::Upsert(inline("db.ini", "v2", 11)), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_RELOAD)]);
    let acts = r.vassal_message(ids[0], M::ConfigRequest, t);
    assert_eq!(
        acts,
        vec![Action::PushConfig {
            instance: ids[0],
            config: "v2".into()
        }]
    );
}

#[test]
fn removal_stops_then_exit_deletes() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    let acts = r.monitor_change(0, Change::Snapshot(vec![file("b.ini", 1)]), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Stopping
    );
    let acts = r.exited(ids[0], ExitStatus::Code(0), t);
    assert!(acts.is_empty());
    assert!(r.vassal("a.ini").is_none());
    assert!(r.vassal("b.ini").is_some());
}

#[test]
fn graceful_shutdown_option_uses_byte_2() {
    let mut r = Reconciler::new(
        ReconcilerConfig {
            graceful_shutdown: true,
            ..Default::default()
        },
        vec!["m".into()],
    );
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let acts = r.monitor_change(0, Change::Remove(name("a.ini")), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_GRACEFUL_STOP)]);
}

#[test]
fn unexpected_death_respawns_and_blacklist_throttles_non_loyal() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    // first death: immediate respawn
    let acts = r.exited(ids[0], ExitStatus::Signal(9), t);
    let ids = ack(&mut r, &acts);
    assert_eq!(ids.len(), 1);
    // second death: throttled by 1 s, scheduled on a timer
    let t1 = t + Duration::from_millis(10);
    let acts = r.exited(ids[0], ExitStatus::Code(1), t1);
    assert!(acts.is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Throttled
    );
    assert_eq!(r.next_deadline(), Some(t1 + Duration::from_secs(1)));
    assert!(r.tick(t1 + Duration::from_millis(999)).is_empty());
    let acts = r.tick(t1 + Duration::from_secs(1));
    assert_eq!(ack(&mut r, &acts).len(), 1);
    assert_eq!(r.vassal("a.ini").unwrap().restarts, 2);
}

#[test]
fn exit_26_exiles_until_the_config_changes() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    assert!(r.exited(ids[0], ExitStatus::Code(26), t).is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Exiled
    );
    assert!(r
        .monitor_change(0, Change::Snapshot(vec![file("a.ini", 1)]), t)
        .is_empty());
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 2)]), t);
    assert_eq!(ids.len(), 1);
}

#[test]
fn loyal_vassal_clears_blacklist_and_gets_backoff() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let acts = r.exited(ids[0], ExitStatus::Code(1), t);
    let mut id = ack(&mut r, &acts)[0];
    assert!(r.blacklist().allowed_at(&name("a.ini")).is_some());
    r.vassal_message(id, M::Loyal, t);
    assert!(r.blacklist().allowed_at(&name("a.ini")).is_none());
    // first loyal crash: immediate
    let acts = r.exited(id, ExitStatus::Code(1), t);
    id = ack(&mut r, &acts)[0];
    r.vassal_message(id, M::Loyal, t);
    // second crash in a row: delayed with backoff
    let acts = r.exited(id, ExitStatus::Code(1), t);
    assert!(acts.is_empty());
    let at = r.next_deadline().unwrap();
    assert!(
        at > t && at <= t + Duration::from_millis(125),
        "{:?}",
        at - t
    );
}

#[test]
fn stop_past_curse_tolerance_is_killed_and_repeated() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    r.monitor_change(0, Change::Remove(name("a.ini")), t);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(30)));
    assert!(r.tick(t + Duration::from_secs(29)).is_empty());
    assert_eq!(
        r.tick(t + Duration::from_secs(30)),
        vec![Action::Kill { instance: ids[0] }]
    );
    assert_eq!(
        r.tick(t + Duration::from_secs(60)),
        vec![Action::Kill { instance: ids[0] }]
    );
}

#[test]
fn pipe_eof_curses_and_the_death_respawns() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    assert!(r.pipe_closed(ids[0], t).is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Stopping
    );
    let acts = r.exited(ids[0], ExitStatus::Code(1), t);
    assert_eq!(ack(&mut r, &acts).len(), 1);
}

#[test]
fn heartbeat_watchdog_kills_after_the_required_interval() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    // no heartbeat yet: no watchdog
    assert!(r.tick(t + Duration::from_secs(100)).is_empty());
    r.vassal_message(ids[0], M::Heartbeat, t);
    assert!(r.tick(t + Duration::from_secs(29)).is_empty());
    assert_eq!(
        r.tick(t + Duration::from_secs(30)),
        vec![Action::Kill { instance: ids[0] }]
    );
    // disarmed until the next heartbeat
    assert!(r.tick(t + Duration::from_secs(90)).is_empty());
}

#[test]
fn a_stopping_vassal_is_judged_by_the_curse_tolerance_not_its_heartbeat() {
    let mut r = Reconciler::new(
        ReconcilerConfig {
            required_heartbeat: Duration::from_secs(5),
            ..Default::default()
        },
        vec!["m0".into()],
    );
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    r.vassal_message(ids[0], M::Heartbeat, t);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(5)));
    // removed at t+1: the heartbeat deadline (t+5) no longer counts, the
    // curse tolerance (30 s) does; an expired heartbeat deadline would make
    // the loop spin on a deadline that tick never clears
    let t1 = t + Duration::from_secs(1);
    r.monitor_change(0, Change::Remove(name("a.ini")), t1);
    assert_eq!(r.next_deadline(), Some(t1 + Duration::from_secs(30)));
    assert!(r.tick(t + Duration::from_secs(6)).is_empty());
}

#[test]
fn monitor_degraded_never_removes_vassals() {
    let mut r = rec();
    let t = Instant::now();
    apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    let acts = r.monitor_change(0, Change::Health(MonitorHealth::Degraded("down".into())), t);
    assert!(acts.is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Running
    );
}

#[test]
fn second_monitor_cannot_steal_a_name() {
    let mut r = rec();
    let t = Instant::now();
    apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    assert!(r
        .monitor_change(1, Change::Upsert(file("a.ini", 9)), t)
        .is_empty());
    // and its removal pass does not touch monitor 0's vassal
    assert!(r.monitor_change(1, Change::Snapshot(vec![]), t).is_empty());
    assert_eq!(r.vassal("a.ini").unwrap().monitor, 0);
}

#[test]
fn readded_while_stopping_restarts_after_exit() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    r.monitor_change(0, Change::Remove(name("a.ini")), t);
    assert!(r
        .monitor_change(0, Change::Upsert(file("a.ini", 2)), t)
        .is_empty());
    let acts = r.exited(ids[0], ExitStatus::Code(0), t);
    assert_eq!(ack(&mut r, &acts).len(), 1);
}

#[test]
fn oversized_inline_config_is_refused_not_truncated() {
    let mut r = rec();
    let t = Instant::now();
    let big = "x".repeat(70_000);
    let (acts, _) = apply(&mut r, 0, Change::Upsert(inline("big.ini", &big, 1)), t);
    assert!(acts.is_empty());
    assert_eq!(
        r.vassal("big.ini").unwrap().phase.state(),
        VassalState::Refused
    );
    // a fixed config is accepted
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Upsert(inline("big.ini", "[uwsgi]", 2)),
        t,
    );
    assert_eq!(ids.len(), 1);
}

#[test]
fn ragnarok_stops_all_and_respawns_nothing() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    let acts = r.shutdown(t);
    assert_eq!(sends(&acts).len(), 2);
    assert!(r.exited(ids[0], ExitStatus::Signal(9), t).is_empty());
    assert!(r
        .monitor_change(0, Change::Upsert(file("c.ini", 1)), t)
        .is_empty());
    assert_eq!(r.kill_all(), vec![Action::Kill { instance: ids[1] }]);
    assert!(r.exited(ids[1], ExitStatus::Signal(9), t).is_empty());
    assert_eq!(r.running(), 0);
}

#[test]
fn sighup_reloads_every_running_vassal() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    let mut got = sends(&r.reload_all());
    got.sort();
    assert_eq!(got, vec![(ids[0], MSG_RELOAD), (ids[1], MSG_RELOAD)]);
}

#[test]
fn spawn_failure_is_retried_through_the_blacklist() {
    let mut r = rec();
    let t = Instant::now();
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", 1)), t);
    let Action::Spawn { instance, .. } = acts[0] else {
        panic!()
    };
    // a binary that cannot be executed (a package upgrade in progress) is
    // not exiled: it is tried again, never sooner than SPAWN_RETRY_MIN
    assert!(r.spawn_failed(instance, "no such file", t).is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Throttled
    );
    assert_eq!(r.counters().spawn_failures, 1);
    assert_eq!(r.next_deadline(), Some(t + SPAWN_RETRY_MIN));
    assert!(r.tick(t + SPAWN_RETRY_MIN / 2).is_empty());
    let acts = r.tick(t + SPAWN_RETRY_MIN);
    let Action::Spawn { instance, .. } = acts[0] else {
        panic!("{acts:?}")
    };
    // the second failure in a row waits longer (the blacklist widens)
    let t2 = t + SPAWN_RETRY_MIN;
    r.spawn_failed(instance, "no such file", t2);
    let next = r.next_deadline().unwrap();
    assert!(next > t2 + SPAWN_RETRY_MIN, "{:?}", next - t2);
    // once it starts, it runs as usual
    let acts = r.tick(next);
    let Action::Spawn { instance, .. } = acts[0] else {
        panic!("{acts:?}")
    };
    r.spawned(instance, 42, "uwsgi");
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Running
    );
}

// ----- tyrant mode -----------------------------------------------------------

fn tyrant_rec() -> Reconciler {
    Reconciler::new(
        ReconcilerConfig {
            tyrant: Some(TyrantConfig::default()),
            ..Default::default()
        },
        vec!["m0".into()],
    )
}

fn owned(n: &str, mtime: i128, uid: u32, gid: u32) -> VassalSpec {
    VassalSpec {
        owner: Some(Owner { uid, gid }),
        ..file(n, mtime)
    }
}

fn spawned_owner(acts: &[Action]) -> Vec<Option<Owner>> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn { spec, .. } => Some(spec.owner),
            _ => None,
        })
        .collect()
}

#[test]
fn tyrant_runs_as_the_owner_and_owner_is_ignored_otherwise() {
    let mut r = tyrant_rec();
    let t = Instant::now();
    let (acts, _) = apply(&mut r, 0, Change::Upsert(owned("a.ini", 1, 1001, 1002)), t);
    assert_eq!(
        spawned_owner(&acts),
        vec![Some(Owner {
            uid: 1001,
            gid: 1002
        })]
    );
    // without tyrant mode the source's owner is not used
    let mut r = rec();
    let (acts, _) = apply(&mut r, 0, Change::Upsert(owned("a.ini", 1, 1001, 1002)), t);
    assert_eq!(spawned_owner(&acts), vec![None]);
    // and an owner change does nothing
    assert!(r
        .monitor_change(0, Change::Upsert(owned("a.ini", 1, 0, 0)), t)
        .is_empty());
}

#[test]
fn tyrant_refuses_root_once_per_change_and_accepts_a_fixed_owner() {
    let mut r = tyrant_rec();
    let t = Instant::now();
    for (uid, gid) in [(0, 1000), (1000, 0), (0, 0)] {
        let n = format!("r{uid}{gid}.ini");
        let (acts, _) = apply(&mut r, 0, Change::Upsert(owned(&n, 1, uid, gid)), t);
        assert!(acts.is_empty(), "{uid}:{gid} {acts:?}");
        let v = r.vassal(&n).unwrap();
        assert_eq!(v.phase.state(), VassalState::Refused);
        assert!(
            v.phase
                .refused()
                .unwrap()
                .contains("never runs a vassal as root"),
            "{:?}",
            v.phase
        );
    }
    assert_eq!(r.counters().refused, 3);
    // every later scan with the same owner: no new refusal (no log spam)
    for _ in 0..5 {
        r.monitor_change(0, Change::Snapshot(vec![owned("r00.ini", 1, 0, 0)]), t);
    }
    assert_eq!(r.counters().refused, 3);
    // chown to an unprivileged user: it starts
    let (acts, _) = apply(
        &mut r,
        0,
        Change::Upsert(owned("r00.ini", 1, 1000, 1000)),
        t,
    );
    assert_eq!(
        spawned_owner(&acts),
        vec![Some(Owner {
            uid: 1000,
            gid: 1000
        })]
    );
    // no owner at all (a source without uid/gid) is refused with its reason
    let (acts, _) = apply(&mut r, 0, Change::Upsert(file("none.ini", 1)), t);
    assert!(acts.is_empty());
    assert!(r
        .vassal("none.ini")
        .unwrap()
        .phase
        .refused()
        .unwrap()
        .contains("gives no uid/gid"));
}

#[test]
fn tyrant_minimum_uid_and_gid_are_configurable() {
    let mut r = Reconciler::new(
        ReconcilerConfig {
            tyrant: Some(TyrantConfig {
                min_uid: 1000,
                min_gid: 100,
            }),
            ..Default::default()
        },
        vec!["m0".into()],
    );
    let t = Instant::now();
    let (acts, _) = apply(&mut r, 0, Change::Upsert(owned("sys.ini", 1, 33, 33)), t);
    assert!(acts.is_empty());
    let why = r
        .vassal("sys.ini")
        .unwrap()
        .phase
        .refused()
        .unwrap()
        .to_string();
    assert!(why.contains("1000/100"), "{why}");
    let (acts, _) = apply(&mut r, 0, Change::Upsert(owned("ok.ini", 1, 1000, 100)), t);
    assert_eq!(spawned_owner(&acts).len(), 1);
}

#[test]
fn tyrant_owner_change_stops_and_starts_under_the_new_owner() {
    let mut r = tyrant_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(owned("a.ini", 1, 1001, 1001)), t);
    // same mtime, new owner (chown does not touch mtime)
    let acts = r.monitor_change(0, Change::Snapshot(vec![owned("a.ini", 1, 1002, 1002)]), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    assert!(spawned_owner(&acts).is_empty());
    let acts = r.exited(ids[0], ExitStatus::Code(0), t);
    assert_eq!(
        spawned_owner(&acts),
        vec![Some(Owner {
            uid: 1002,
            gid: 1002
        })]
    );
    // a change to root stops it and refuses the restart
    let ids = ack(&mut r, &acts);
    let acts = r.monitor_change(0, Change::Upsert(owned("a.ini", 1, 0, 0)), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    assert!(r.exited(ids[0], ExitStatus::Code(0), t).is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Refused
    );
}

// ----- on demand -------------------------------------------------------------

fn on_demand(n: &str, mtime: i128, socket: &str) -> VassalSpec {
    VassalSpec {
        socket: Some(socket.to_string()),
        ..file(n, mtime)
    }
}

fn listens(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Listen { address, .. } => Some(address.clone()),
            _ => None,
        })
        .collect()
}

fn unlistens(acts: &[Action]) -> usize {
    acts.iter()
        .filter(|a| matches!(a, Action::Unlisten { .. }))
        .count()
}

#[test]
fn on_demand_waits_for_a_connection_then_spawns_with_the_socket() {
    let mut r = rec();
    let t = Instant::now();
    let (acts, ids) = apply(
        &mut r,
        0,
        Change::Upsert(on_demand("a.ini", 1, "127.0.0.1:9000")),
        t,
    );
    assert!(ids.is_empty(), "nothing runs before a connection");
    assert_eq!(listens(&acts), ["127.0.0.1:9000"]);
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::OnDemand
    );
    // rescans change nothing
    assert!(r
        .monitor_change(
            0,
            Change::Snapshot(vec![on_demand("a.ini", 1, "127.0.0.1:9000")]),
            t
        )
        .is_empty());
    let acts = r.on_demand_connection(&name("a.ini"), t);
    let ids = ack(&mut r, &acts);
    assert_eq!(ids.len(), 1);
    assert!(
        matches!(&acts[0], Action::Spawn { spec, .. } if spec.socket.as_deref() == Some("127.0.0.1:9000"))
    );
    // a stale second report does nothing
    assert!(r.on_demand_connection(&name("a.ini"), t).is_empty());
    assert_eq!(r.counters().on_demand_activations, 1);
}

#[test]
fn on_demand_idle_goes_back_to_waiting_on_the_same_socket() {
    let mut r = rec();
    let t = Instant::now();
    apply(
        &mut r,
        0,
        Change::Upsert(on_demand("a.ini", 1, "/run/a.sock")),
        t,
    );
    let acts = r.on_demand_connection(&name("a.ini"), t);
    let id = ack(&mut r, &acts)[0];
    let acts = r.vassal_message(id, M::IdleShutdown, t);
    assert_eq!(sends(&acts), vec![(id, MSG_STOP)]);
    let acts = r.exited(id, ExitStatus::Code(0), t);
    // re-armed, not unbound; no spawn until the next connection
    assert_eq!(listens(&acts), ["/run/a.sock"]);
    assert_eq!(unlistens(&acts), 0);
    assert!(ack(&mut r, &acts).is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::OnDemand
    );
    let acts = r.on_demand_connection(&name("a.ini"), t);
    assert_eq!(ack(&mut r, &acts).len(), 1);
}

#[test]
fn on_demand_crash_keeps_the_socket_and_waits_again() {
    let mut r = rec();
    let t = Instant::now();
    apply(&mut r, 0, Change::Upsert(on_demand("a.ini", 1, ":9000")), t);
    let acts = r.on_demand_connection(&name("a.ini"), t);
    let id = ack(&mut r, &acts)[0];
    let acts = r.exited(id, ExitStatus::Signal(9), t);
    assert_eq!(unlistens(&acts), 0, "the socket (and its backlog) is kept");
    assert_eq!(listens(&acts), [":9000"]);
    // a second crash is blacklisted: it waits for the window (the socket
    // keeps queueing) instead of spinning, then waits for connections again
    let acts = r.on_demand_connection(&name("a.ini"), t);
    let id = ack(&mut r, &acts)[0];
    let acts = r.exited(id, ExitStatus::Signal(9), t);
    assert!(acts.is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Throttled
    );
    assert!(r.on_demand_connection(&name("a.ini"), t).is_empty());
    let acts = r.tick(t + Duration::from_secs(1));
    assert_eq!(listens(&acts), [":9000"]);
    let acts = r.on_demand_connection(&name("a.ini"), t + Duration::from_secs(1));
    assert_eq!(ack(&mut r, &acts).len(), 1);
}

#[test]
fn on_demand_removal_and_socket_changes() {
    let mut r = rec();
    let t = Instant::now();
    apply(&mut r, 0, Change::Upsert(on_demand("a.ini", 1, ":9000")), t);
    // a new socket while waiting: rebind there
    let acts = r.monitor_change(0, Change::Upsert(on_demand("a.ini", 1, ":9001")), t);
    assert_eq!(listens(&acts), [":9001"]);
    // an empty socket means "not on demand": unbind and run normally
    let (acts, ids) = apply(&mut r, 0, Change::Upsert(on_demand("a.ini", 1, "")), t);
    assert_eq!(unlistens(&acts), 1);
    assert_eq!(ids.len(), 1);
    // back to on demand while running: restart into waiting
    let acts = r.monitor_change(0, Change::Upsert(on_demand("a.ini", 1, ":9002")), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    let acts = r.exited(ids[0], ExitStatus::Code(0), t);
    assert_eq!(listens(&acts), [":9002"]);
    // removal while waiting closes the socket
    let acts = r.monitor_change(0, Change::Snapshot(vec![]), t);
    assert_eq!(unlistens(&acts), 1);
    assert!(r.vassal("a.ini").is_none());
    // an empty socket from the start is a normal vassal
    let (acts, ids) = apply(&mut r, 0, Change::Upsert(on_demand("b.ini", 1, " ")), t);
    assert_eq!(ids.len(), 1);
    assert!(listens(&acts).is_empty());
}

#[test]
fn a_change_of_the_records_limits_restarts_the_vassal() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(inline("a.ini", "A", 1)), t);
    assert_eq!(ids.len(), 1);
    // the same ts, the same config, new limits: a restart, so that the
    // new process starts under them
    let mut limited = inline("a.ini", "A", 1);
    limited.limits = Some(Box::new(crate::cgroup::limits::Limits {
        memory_max: Some(64 << 20),
        ..Default::default()
    }));
    let acts = r.monitor_change(0, Change::Upsert(limited.clone()), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    let acts = r.exited(ids[0], ExitStatus::Code(0), t);
    let spawned: Vec<&VassalSpec> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { spec, .. } => Some(spec),
            _ => None,
        })
        .collect();
    assert_eq!(spawned.len(), 1, "{acts:?}");
    assert_eq!(spawned[0].limits, limited.limits);
    ack(&mut r, &acts);
    // the same limits again: nothing
    let acts = r.monitor_change(0, Change::Upsert(limited), t);
    assert!(sends(&acts).is_empty(), "{acts:?}");
}

#[test]
fn on_demand_bind_failure_refuses_only_that_vassal() {
    let mut r = rec();
    let t = Instant::now();
    apply(
        &mut r,
        0,
        Change::Snapshot(vec![on_demand("a.ini", 1, "bad:port"), file("b.ini", 1)]),
        t,
    );
    r.listen_failed(&name("a.ini"), "not a valid TCP address");
    let v = r.vassal("a.ini").unwrap();
    assert_eq!(v.phase.state(), VassalState::Refused);
    assert!(v.phase.refused().unwrap().contains("bad:port"));
    assert_eq!(
        r.vassal("b.ini").unwrap().phase.state(),
        VassalState::Running
    );
    // fixing the socket retries
    let acts = r.monitor_change(0, Change::Upsert(on_demand("a.ini", 1, ":9000")), t);
    assert_eq!(listens(&acts), [":9000"]);
}

// ----- broodlord ---------------------------------------------------------------

fn brood_rec(n: usize) -> Reconciler {
    Reconciler::new(
        ReconcilerConfig {
            broodlord: n,
            ..Default::default()
        },
        vec!["m0".into()],
    )
}

fn spawned_names(acts: &[Action]) -> Vec<(String, ConfigSource)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn { spec, .. } => Some((spec.name.to_string(), spec.config.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn sos_adds_distinct_zergs_up_to_the_limit() {
    let mut r = brood_rec(2);
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let acts = r.vassal_message(ids[0], M::Sos, t);
    assert_eq!(
        spawned_names(&acts),
        [(
            "a.ini:zerg:1".to_string(),
            ConfigSource::File("a.ini:zerg".into())
        )]
    );
    ack(&mut r, &acts);
    let acts = r.vassal_message(ids[0], M::Sos, t);
    assert_eq!(spawned_names(&acts)[0].0, "a.ini:zerg:2");
    ack(&mut r, &acts);
    // the limit counts zergs in total
    assert!(r.vassal_message(ids[0], M::Sos, t).is_empty());
    assert_eq!(r.zergs(), 2);
    assert_eq!(r.counters().zergs_added, 2);
    // without broodlord mode SOS does nothing
    let mut r = rec();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    assert!(r.vassal_message(ids[0], M::Sos, t).is_empty());
}

#[test]
fn idle_zergs_are_removed_and_free_their_slot() {
    let mut r = brood_rec(1);
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let acts = r.vassal_message(ids[0], M::Sos, t);
    let z = ack(&mut r, &acts)[0];
    let acts = r.vassal_message(z, M::IdleShutdown, t);
    assert_eq!(sends(&acts), vec![(z, MSG_STOP)]);
    assert!(r.exited(z, ExitStatus::Code(0), t).is_empty());
    assert!(r.vassal("a.ini:zerg:1").is_none());
    assert_eq!(r.zergs(), 0);
    let acts = r.vassal_message(ids[0], M::Sos, t);
    assert_eq!(spawned_names(&acts)[0].0, "a.ini:zerg:2");
}

#[test]
fn removal_passes_keep_zergs_while_the_base_exists() {
    let mut r = brood_rec(4);
    let t = Instant::now();
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Upsert(inline("db.ini", "[uwsgi]\n[zerg]\n", 1)),
        t,
    );
    let acts = r.vassal_message(ids[0], M::Sos, t);
    // config text: the zerg gets the same text (launched as db.ini:zerg)
    assert_eq!(
        spawned_names(&acts),
        [(
            "db.ini:zerg:1".to_string(),
            ConfigSource::Inline("[uwsgi]\n[zerg]\n".into())
        )]
    );
    let z = ack(&mut r, &acts)[0];
    // a database snapshot only lists db.ini: the zerg stays
    let acts = r.monitor_change(
        0,
        Change::Snapshot(vec![inline("db.ini", "[uwsgi]\n[zerg]\n", 1)]),
        t,
    );
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(
        r.vassal("db.ini:zerg:1").unwrap().phase.state(),
        VassalState::Running
    );
    // a changed base reloads its zergs with the new text
    let acts = r.monitor_change(
        0,
        Change::Upsert(inline("db.ini", "[uwsgi]\n[zerg]\nx=1\n", 2)),
        t,
    );
    let mut s = sends(&acts);
    s.sort();
    assert_eq!(s, vec![(ids[0], MSG_RELOAD), (z, MSG_RELOAD)]);
    assert_eq!(
        r.vassal_message(z, M::ConfigRequest, t),
        vec![Action::PushConfig {
            instance: z,
            config: "[uwsgi]\n[zerg]\nx=1\n".into()
        }]
    );
    // the base goes away: its zergs go with it
    let acts = r.monitor_change(0, Change::Snapshot(vec![]), t);
    let mut s = sends(&acts);
    s.sort();
    assert_eq!(s, vec![(ids[0], MSG_STOP), (z, MSG_STOP)]);
    r.exited(z, ExitStatus::Code(0), t);
    r.exited(ids[0], ExitStatus::Code(0), t);
    assert_eq!(r.vassals().count(), 0);
}

#[test]
fn a_crashed_zerg_respawns_and_an_exiled_one_is_dropped() {
    let mut r = brood_rec(2);
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let acts = r.vassal_message(ids[0], M::Sos, t);
    let z = ack(&mut r, &acts)[0];
    let acts = r.exited(z, ExitStatus::Signal(9), t);
    let z = ack(&mut r, &acts)[0];
    assert!(r.exited(z, ExitStatus::Code(26), t).is_empty());
    assert!(r.vassal("a.ini:zerg:1").is_none());
}

// ----- operator commands (imperium ctl) ---------------------------------------

fn spawns(acts: &[Action]) -> usize {
    acts.iter()
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .count()
}

/// A held change is kept when an older stamp is delivered again (a kv
/// watch replaying, a pg ts moved back), and is dropped when a change is
/// applied while paused (the config removed and added back).
#[test]
fn a_held_change_survives_an_older_stamp_and_goes_with_an_applied_change() {
    let mut r = rec();
    let t = Instant::now();
    let v1 = inline("a.ini", "[uwsgi]\nx = 1\n", 10);
    apply(&mut r, 0, Change::Snapshot(vec![v1.clone()]), t);
    r.pause("a.ini").unwrap();
    apply(
        &mut r,
        0,
        Change::Snapshot(vec![inline("a.ini", "[uwsgi]\nx = 2\n", 20)]),
        t,
    );
    // the older stamp again: not "back to what it runs"
    apply(
        &mut r,
        0,
        Change::Snapshot(vec![inline("a.ini", "[uwsgi]\nx = 0\n", 5)]),
        t,
    );
    let held = r
        .vassal("a.ini")
        .unwrap()
        .held_change
        .as_ref()
        .map(|h| h.key);
    assert_eq!(held, Some(ChangeKey::Stamp(20)));
    // removed and added back while paused: the new one is applied, the
    // held one goes
    apply(&mut r, 0, Change::Remove(name("a.ini")), t);
    apply(
        &mut r,
        0,
        Change::Snapshot(vec![inline("a.ini", "[uwsgi]\nx = 3\n", 30)]),
        t,
    );
    let v = r.vassal("a.ini").unwrap();
    assert!(v.held_change.is_none(), "{:?}", v.held_change);
    assert_eq!(v.applied_key, ChangeKey::Stamp(30));
}

/// A change held while paused that the source undoes (a pg row's socket
/// set and set back, with the same ts) is not applied at resume.
#[test]
fn a_held_change_the_source_undoes_is_not_applied_at_resume() {
    let mut r = rec();
    let t = Instant::now();
    let a = file("a.ini", 1);
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![a.clone()]), t);
    r.pause("a.ini").unwrap();
    let mut other = a.clone();
    other.socket = Some("127.0.0.1:9000".into());
    let (acts, _) = apply(&mut r, 0, Change::Snapshot(vec![other]), t);
    assert!(acts.is_empty(), "{acts:?}");
    assert!(r.vassal("a.ini").unwrap().held_change.is_some());
    // back to what it runs
    let (acts, _) = apply(&mut r, 0, Change::Snapshot(vec![a.clone()]), t);
    assert!(acts.is_empty(), "{acts:?}");
    assert!(r.vassal("a.ini").unwrap().held_change.is_none());
    let acts = r.resume("a.ini", t).unwrap();
    assert!(acts.is_empty(), "nothing to apply: {acts:?}");
    let v = r.vassal("a.ini").unwrap();
    assert_eq!(v.desired.as_ref().unwrap().socket, None);
    assert!(matches!(v.phase, Phase::Running { .. }), "{:?}", v.phase);
    assert_eq!(v.proc().unwrap().instance, ids[0]);
}

#[test]
fn paused_vassal_holds_changes_until_resumed() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    r.pause("a.ini").unwrap();
    assert!(r
        .pause("a.ini")
        .unwrap_err()
        .to_string()
        .contains("already paused"));
    // two edits while paused: nothing is sent, the newest is kept
    for m in [2, 3, 3] {
        let (acts, _) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", m)]), t);
        assert!(acts.is_empty(), "{acts:?}");
    }
    let v = r.vassal("a.ini").unwrap();
    assert!(v.paused);
    assert_eq!(v.held_change.as_ref().unwrap().key, file("a.ini", 3).key);
    assert_eq!(v.reloads, 0);
    // a crash while paused respawns with the config it ran
    let acts = r.exited(ids[0], ExitStatus::Signal(9), t);
    let Some(Action::Spawn { spec, instance }) = acts.first().cloned() else {
        panic!("{acts:?}")
    };
    assert_eq!(spec.key, file("a.ini", 1).key);
    r.spawned(instance, 4242, "uwsgi");
    // resume applies the held change once: one graceful reload
    let acts = r.resume("a.ini", t).unwrap();
    assert_eq!(sends(&acts), vec![(instance, MSG_RELOAD)]);
    let v = r.vassal("a.ini").unwrap();
    assert!(!v.paused && v.held_change.is_none());
    assert_eq!(v.applied_key, file("a.ini", 3).key);
    assert!(r
        .resume("a.ini", t)
        .unwrap_err()
        .to_string()
        .contains("not paused"));
    // after resuming, changes reload at once again
    let (acts, _) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 4)]), t);
    assert_eq!(sends(&acts), vec![(instance, MSG_RELOAD)]);
}

#[test]
fn resume_without_held_change_does_nothing_and_removal_still_stops() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    r.pause("a.ini").unwrap();
    assert!(r.resume("a.ini", t).unwrap().is_empty());
    r.pause("a.ini").unwrap();
    let (acts, _) = apply(&mut r, 0, Change::Snapshot(vec![]), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    assert!(r
        .pause("nope.ini")
        .unwrap_err()
        .to_string()
        .contains("no vassal named nope.ini"));
}

#[test]
fn operator_stop_keeps_a_vassal_down_until_started() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    let acts = r.stop_one("a.ini", t).unwrap();
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    assert!(r
        .stop_one("a.ini", t)
        .unwrap_err()
        .to_string()
        .contains("already stopped"));
    // its exit is expected and nothing respawns it: no timer, no rescan,
    // not even a config change
    assert!(r.exited(ids[0], ExitStatus::Code(0), t).is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Stopped
    );
    assert_eq!(r.counters().deaths_unexpected, 0);
    assert_eq!(r.counters().deaths.get("requested"), Some(&1));
    assert!(r.next_deadline().is_none());
    let (acts, _) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 2)]), t);
    assert!(acts.is_empty(), "{acts:?}");
    // start runs the newest config
    let acts = r.start_one("a.ini", t).unwrap();
    assert_eq!(spawns(&acts), 1);
    let Action::Spawn { spec, instance } = &acts[0] else {
        panic!()
    };
    assert_eq!(spec.key, file("a.ini", 2).key);
    r.spawned(*instance, 5000, "uwsgi");
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Running
    );
    assert!(r
        .start_one("a.ini", t)
        .unwrap_err()
        .to_string()
        .contains("already running"));
}

#[test]
fn start_while_an_operator_stop_is_in_progress_restarts_after_the_exit() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    r.stop_one("a.ini", t).unwrap();
    assert!(r.start_one("a.ini", t).unwrap().is_empty());
    let acts = r.exited(ids[0], ExitStatus::Code(0), t);
    assert_eq!(spawns(&acts), 1);
}

#[test]
fn start_one_overrides_exile_and_blacklist() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    assert!(r.exited(ids[0], ExitStatus::Code(26), t).is_empty());
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Exiled
    );
    let acts = r.start_one("a.ini", t).unwrap();
    assert_eq!(spawns(&acts), 1);
}

#[test]
fn clear_blacklist_for_one_vassal_starts_it_now() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    // two quick non-loyal deaths each: the second is throttled by 1 s
    let mut cur = ids.clone();
    for _ in 0..2 {
        for (i, id) in cur.clone().iter().enumerate() {
            let acts = r.exited(*id, ExitStatus::Code(1), t);
            cur[i] = ack(&mut r, &acts).first().copied().unwrap_or(0);
        }
    }
    assert_eq!(cur, vec![0, 0], "both wait for a throttled respawn");
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Throttled
    );
    assert_eq!(r.counters().throttled_respawns, 2);
    let acts = r.clear_blacklist_one("a.ini", t).unwrap();
    assert_eq!(spawns(&acts), 1);
    let Action::Spawn { spec, .. } = &acts[0] else {
        panic!()
    };
    assert_eq!(spec.name.as_str(), "a.ini");
    assert!(r.blacklist().allowed_at(&name("b.ini")).is_some());
    assert!(r
        .clear_blacklist_one("a.ini", t)
        .unwrap_err()
        .to_string()
        .contains("not blacklisted"));
    // clearing everything starts the other one too
    let (n, acts) = r.clear_blacklist_all(t);
    assert_eq!((n, spawns(&acts)), (1, 1));
    assert_eq!(r.blacklist().entries().count(), 0);
}

#[test]
fn deaths_are_counted_by_cause() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    let acts = r.exited(ids[0], ExitStatus::Signal(9), t);
    let id = ack(&mut r, &acts)[0];
    r.vassal_message(id, M::Loyal, t);
    let acts = r.exited(id, ExitStatus::Code(3), t);
    let id = ack(&mut r, &acts)[0];
    r.exited(id, ExitStatus::Code(26), t);
    let d = &r.counters().deaths;
    assert_eq!(
        (d.get("signal"), d.get("exit"), d.get("exile")),
        (Some(&1), Some(&1), Some(&1))
    );
    assert_eq!(r.counters().deaths_unexpected, 3);
}

#[test]
fn operator_commands_are_refused_during_shutdown() {
    let mut r = rec();
    let t = Instant::now();
    apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    r.shutdown(t);
    assert!(r
        .start_one("a.ini", t)
        .unwrap_err()
        .to_string()
        .contains("shutting down"));
}

#[test]
fn a_name_freed_by_its_owner_asks_the_other_claimant_to_rescan() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    // monitor 1 also has a.ini: refused (logged once), nothing started
    let (acts, _) = apply(&mut r, 1, Change::Snapshot(vec![file("a.ini", 5)]), t);
    assert!(acts.is_empty());
    assert!(!r.take_rescan_wanted());
    // monitor 0 drops it: stopped, and once reaped, the name is free
    apply(&mut r, 0, Change::Snapshot(vec![]), t);
    assert!(!r.take_rescan_wanted(), "not while the old process runs");
    r.exited(ids[0], ExitStatus::Code(0), t);
    assert!(r.vassal("a.ini").is_none());
    assert!(r.take_rescan_wanted());
    assert!(!r.take_rescan_wanted(), "asked once");
    // monitor 1's resent snapshot now starts it, with its own owner
    let (_, ids) = apply(&mut r, 1, Change::Snapshot(vec![file("a.ini", 5)]), t);
    assert_eq!(ids.len(), 1);
    assert_eq!(r.vassal("a.ini").unwrap().monitor, 1);
}

#[test]
fn wall_clock_times_come_from_the_inputs() {
    use std::time::UNIX_EPOCH;
    let mut r = rec();
    let t = Instant::now();
    let epoch = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    r.set_wall_anchor(t, epoch(1_000));
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Upsert(file("a.ini", 1)),
        t + Duration::from_secs(5),
    );
    r.vassal_message(ids[0], M::Ready, t + Duration::from_secs(7));
    let v = r.vassal("a.ini").unwrap();
    assert_eq!(v.born, epoch(1_005));
    assert_eq!(v.proc().unwrap().started_wall, epoch(1_005));
    assert_eq!(v.last_ready, Some(epoch(1_007)));
    assert_eq!(v.last_loyal, None);
}

#[test]
fn a_spawn_deferred_by_a_resource_error_backs_off_without_the_blacklist() {
    let mut r = rec();
    let t = Instant::now();
    let mut instances = Vec::new();
    for n in ["a.ini", "b.ini", "c.ini"] {
        let acts = r.monitor_change(0, Change::Upsert(file(n, 1)), t);
        let Action::Spawn { instance, .. } = acts[0] else {
            panic!("{acts:?}")
        };
        instances.push(instance);
    }
    // three deferrals in a row: the shared backoff doubles
    for i in &instances {
        assert!(r.spawn_deferred(*i, "Too many open files", t).is_empty());
    }
    let at = |r: &Reconciler, n: &str| match r.vassal(n).unwrap().phase {
        Phase::Throttled { respawn_at, .. } => respawn_at - t,
        ref p => panic!("{n}: {p:?}"),
    };
    assert_eq!(at(&r, "a.ini"), SPAWN_DEFER_MIN);
    assert_eq!(at(&r, "b.ini"), SPAWN_DEFER_MIN * 2);
    assert_eq!(at(&r, "c.ini"), SPAWN_DEFER_MIN * 4);
    let c = r.counters();
    assert_eq!((c.spawns_deferred, c.spawn_failures), (3, 0));
    assert_eq!(
        r.vassal("a.ini").unwrap().restarts,
        0,
        "not the vassal's fault"
    );
    // the retry starts it; a success ends the burst and resets the backoff
    let acts = r.tick(t + SPAWN_DEFER_MIN);
    let Action::Spawn { instance, .. } = acts[0] else {
        panic!("{acts:?}")
    };
    r.spawned(instance, 42, "uwsgi");
    let acts = r.tick(t + SPAWN_DEFER_MIN * 2);
    let Action::Spawn { instance, .. } = acts[0] else {
        panic!("{acts:?}")
    };
    let t2 = t + SPAWN_DEFER_MIN * 2;
    r.spawn_deferred(instance, "Too many open files", t2);
    match r.vassal("b.ini").unwrap().phase {
        Phase::Throttled { respawn_at, .. } => assert_eq!(respawn_at - t2, SPAWN_DEFER_MIN),
        ref p => panic!("{p:?}"),
    }
    // never longer than the maximum, however long the burst
    let mut t3 = t2;
    for _ in 0..10 {
        t3 = r.next_deadline().unwrap();
        let acts = r.tick(t3);
        for a in acts {
            if let Action::Spawn { instance, .. } = a {
                r.spawn_deferred(instance, "Too many open files", t3);
            }
        }
    }
    assert!(r.next_deadline().unwrap() - t3 <= SPAWN_DEFER_MAX);
}

fn check(failures: u32, grace: Duration) -> crate::health::HealthCheck {
    crate::health::HealthCheck {
        probe: crate::health::Probe::Tcp("127.0.0.1:9".into()),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        failures,
        grace,
    }
}

fn health_of(r: &Reconciler, n: &str) -> ProcHealth {
    r.vassal(n)
        .unwrap()
        .proc()
        .unwrap()
        .health
        .as_deref()
        .unwrap()
        .clone()
}

#[test]
fn a_vassal_that_stays_unhealthy_past_its_grace_is_killed_and_throttled() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let i = ids[0];
    r.health_watch(i, &check(2, Duration::from_secs(5)), t);
    r.vassal_message(i, M::Accepting, t);
    // byte 5 alone does not make it serve: the check has not passed yet
    assert!(!r.vassal("a.ini").unwrap().proc().unwrap().serving());
    // failures within the grace period do not count
    for s in 1..5 {
        let acts = r.health_result(i, Err("refused".into()), t + Duration::from_secs(s));
        assert!(acts.is_empty(), "{acts:?}");
    }
    assert_eq!(health_of(&r, "a.ini").failures, 0);
    // in grace, a failure shows but does not count
    assert_eq!(health_of(&r, "a.ini").state(), HealthState::Failing);
    // a pass: serving; a failure after the grace: counted, not yet fatal
    assert!(r
        .health_result(i, Ok(()), t + Duration::from_secs(6))
        .is_empty());
    assert!(r.vassal("a.ini").unwrap().proc().unwrap().serving());
    assert!(r
        .health_result(i, Err("500".into()), t + Duration::from_secs(7))
        .is_empty());
    let h = health_of(&r, "a.ini");
    assert_eq!((h.failures, h.state()), (1, HealthState::Failing));
    assert_eq!(h.last_error.as_deref(), Some("500"));
    // a pass resets the count
    r.health_result(i, Ok(()), t + Duration::from_secs(8));
    assert_eq!(health_of(&r, "a.ini").failures, 0);
    r.health_result(i, Err("500".into()), t + Duration::from_secs(9));
    let acts = r.health_result(i, Err("500".into()), t + Duration::from_secs(10));
    assert!(
        matches!(acts[..], [Action::Kill { instance }] if instance == i),
        "{acts:?}"
    );
    assert_eq!(health_of(&r, "a.ini").state(), HealthState::Unhealthy);
    assert!(!r.vassal("a.ini").unwrap().proc().unwrap().serving());
    // condemned: no second kill
    assert!(r
        .health_result(i, Err("500".into()), t + Duration::from_secs(11))
        .is_empty());
    assert_eq!(r.counters().health_restarts, 1);
    assert_eq!(r.counters().health_failures, 7);
    // its death goes through the throttling like any other
    let acts = r.exited(i, ExitStatus::Signal(9), t + Duration::from_secs(12));
    assert_eq!(r.vassal("a.ini").unwrap().restarts, 1);
    assert!(
        !acts.is_empty() || r.vassal("a.ini").unwrap().phase.respawn_at().is_some(),
        "{acts:?}"
    );
}

#[test]
fn a_reload_starts_a_new_grace_period_and_must_pass_again() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let i = ids[0];
    r.health_watch(i, &check(1, Duration::from_secs(2)), t);
    r.vassal_message(i, M::Accepting, t);
    r.health_result(i, Ok(()), t + Duration::from_secs(3));
    assert!(r.vassal("a.ini").unwrap().proc().unwrap().serving());
    let acts = r.monitor_change(
        0,
        Change::Upsert(file("a.ini", 2)),
        t + Duration::from_secs(4),
    );
    assert_eq!(sends(&acts), vec![(i, MSG_RELOAD)]);
    let h = health_of(&r, "a.ini");
    assert!(!h.passed && h.grace_until.is_none());
    r.vassal_message(i, M::Accepting, t + Duration::from_secs(5));
    assert!(!r.vassal("a.ini").unwrap().proc().unwrap().serving());
    // the grace period starts again with the first result after the
    // reload: one failure allowed, and yet not fatal
    assert!(r
        .health_result(i, Err("loading".into()), t + Duration::from_secs(5))
        .is_empty());
    assert!(r
        .health_result(i, Err("loading".into()), t + Duration::from_secs(6))
        .is_empty());
    r.health_result(i, Ok(()), t + Duration::from_secs(6));
    assert!(r.vassal("a.ini").unwrap().proc().unwrap().serving());
    // past it, one failure is fatal
    let acts = r.health_result(i, Err("down".into()), t + Duration::from_secs(9));
    assert!(matches!(acts[..], [Action::Kill { .. }]), "{acts:?}");
}

#[test]
fn results_for_a_stopping_or_unknown_process_are_ignored() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let i = ids[0];
    r.health_watch(i, &check(1, Duration::ZERO), t);
    r.monitor_change(0, Change::Remove(name("a.ini")), t);
    assert!(r.health_result(i, Err("x".into()), t).is_empty());
    assert!(r.health_result(999, Err("x".into()), t).is_empty());
}

fn checked_rec() -> Reconciler {
    Reconciler::new(
        ReconcilerConfig {
            reload_mode: ReloadMode::Checked,
            ..ReconcilerConfig::default()
        },
        vec!["m0".into()],
    )
}

fn checks(acts: &[Action]) -> Vec<ChangeKey> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Check { spec } => Some(spec.key),
            _ => None,
        })
        .collect()
}

#[test]
fn checked_mode_reloads_only_after_the_check_passes() {
    let mut r = checked_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", 2)), t);
    assert!(
        sends(&acts).is_empty(),
        "nothing sent before the check: {acts:?}"
    );
    let key = file("a.ini", 2).key;
    assert_eq!(checks(&acts), vec![key]);
    assert!(r.vassal("a.ini").unwrap().checking.is_some());
    // the same change again is not checked twice
    assert!(r
        .monitor_change(0, Change::Upsert(file("a.ini", 2)), t)
        .is_empty());
    let acts = r.check_done(&name("a.ini"), key, Ok(()), Duration::from_millis(40), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_RELOAD)]);
    let v = r.vassal("a.ini").unwrap();
    assert!(v.checking.is_none() && v.rejected.is_none());
    assert_eq!(r.counters().reload_checks, 1);
}

#[test]
fn checked_mode_rejects_a_failing_change_and_checks_the_next_one() {
    let mut r = checked_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let bad = file("a.ini", 2).key;
    r.monitor_change(0, Change::Upsert(file("a.ini", 2)), t);
    let acts = r.check_done(
        &name("a.ini"),
        bad,
        Err("exit 22".into()),
        Duration::ZERO,
        t,
    );
    assert!(acts.is_empty(), "{acts:?}");
    let v = r.vassal("a.ini").unwrap();
    assert_eq!(v.rejected.as_ref().unwrap().reason, "exit 22");
    assert_eq!(v.phase.state(), VassalState::Running);
    assert_eq!(v.reloads, 0);
    assert_eq!(r.counters().changes_rejected, 1);
    // SIGHUP does not load the rejected config
    assert!(sends(&r.reload_all()).is_empty());
    // nor does ctl reload, unless forced
    assert!(matches!(
        r.reload_one("a.ini", false, t),
        Err(OperatorError::Unchecked { .. })
    ));
    // the next change is checked again; a stale result is ignored
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", 3)), t);
    let fixed = file("a.ini", 3).key;
    assert_eq!(checks(&acts), vec![fixed]);
    assert!(r
        .check_done(&name("a.ini"), bad, Ok(()), Duration::ZERO, t)
        .is_empty());
    let acts = r.check_done(&name("a.ini"), fixed, Ok(()), Duration::ZERO, t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_RELOAD)]);
    assert!(r.vassal("a.ini").unwrap().rejected.is_none());
}

#[test]
fn a_forced_reload_applies_a_rejected_change() {
    let mut r = checked_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    r.monitor_change(0, Change::Upsert(file("a.ini", 2)), t);
    let key = file("a.ini", 2).key;
    // while the check runs, an unforced reload is refused too
    assert!(r.reload_one("a.ini", false, t).is_err());
    r.check_done(&name("a.ini"), key, Err("bad".into()), Duration::ZERO, t);
    let acts = r.reload_one("a.ini", true, t).unwrap();
    assert_eq!(sends(&acts), vec![(ids[0], MSG_RELOAD)]);
    let v = r.vassal("a.ini").unwrap();
    assert!(v.rejected.is_none() && v.checking.is_none());
    assert_eq!(sends(&r.reload_all()), vec![(ids[0], MSG_RELOAD)]);
}

#[test]
fn checked_mode_starts_a_vassal_without_a_process_at_once() {
    let mut r = checked_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    // exiled (code 26), it has no process: a change just starts it
    r.exited(ids[0], ExitStatus::Code(26), t);
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", 2)), t);
    assert!(checks(&acts).is_empty(), "{acts:?}");
    assert!(r.vassal("a.ini").unwrap().checking.is_none());
    // a new vassal is started, not checked
    let (acts, ids) = apply(&mut r, 0, Change::Upsert(file("b.ini", 1)), t);
    assert!(checks(&acts).is_empty());
    assert_eq!(ids.len(), 1);
}

fn swap_rec() -> Reconciler {
    Reconciler::new(
        ReconcilerConfig {
            reload_mode: ReloadMode::Swap,
            swap_timeout: Duration::from_secs(10),
            ..ReconcilerConfig::default()
        },
        vec!["m0".into()],
    )
}

fn spawned_instances(acts: &[Action]) -> Vec<InstanceId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn { instance, .. } => Some(*instance),
            _ => None,
        })
        .collect()
}

/// Starts a.ini in `r` and changes it: its first instance, and the
/// successor's (spawned as pid 2000).
fn swap_started(r: &mut Reconciler, t: Instant) -> (InstanceId, InstanceId) {
    let (_, ids) = apply(r, 0, Change::Upsert(file("a.ini", 1)), t);
    (ids[0], next_swap(r, 2, 2000, t))
}

/// Changes a.ini to mtime `to`; returns the successor, spawned as `pid`.
fn next_swap(r: &mut Reconciler, to: i128, pid: u32, t: Instant) -> InstanceId {
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", to)), t);
    let new = spawned_instances(&acts)[0];
    r.spawned(new, pid, "uwsgi");
    new
}

#[test]
fn swap_mode_starts_a_successor_and_retires_the_old_process_once_it_serves() {
    let mut r = swap_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    let old = ids[0];
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", 2)), t);
    assert!(
        sends(&acts).is_empty(),
        "the old process is left alone: {acts:?}"
    );
    let new = spawned_instances(&acts)[0];
    assert_ne!(new, old);
    assert_eq!(r.running(), 2);
    r.spawned(new, 2000, "uwsgi");
    assert!(r.vassal("a.ini").unwrap().successor.is_some());
    // ready is not enough: it must accept requests
    assert!(r.vassal_message(new, M::Ready, t).is_empty());
    let acts = r.vassal_message(new, M::Accepting, t);
    assert_eq!(sends(&acts), vec![(old, MSG_GRACEFUL_STOP)]);
    let v = r.vassal("a.ini").unwrap();
    assert_eq!(v.pid(), Some(2000));
    assert!(v.successor.is_none());
    assert_eq!(v.reloads, 1);
    assert_eq!(r.counters().swaps, 1);
    // the old one's exit is expected: nothing respawns
    let acts = r.exited(old, ExitStatus::Code(0), t);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(r.running(), 1);
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Running
    );
}

#[test]
fn a_successor_that_never_serves_is_stopped_and_the_change_rejected() {
    let mut r = swap_rec();
    let t = Instant::now();
    let (first, new) = swap_started(&mut r, t);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(10)));
    let acts = r.tick(t + Duration::from_secs(10));
    assert_eq!(sends(&acts), vec![(new, MSG_GRACEFUL_STOP)]);
    let v = r.vassal("a.ini").unwrap();
    assert!(v
        .rejected
        .as_ref()
        .unwrap()
        .reason
        .contains("--emperor-swap-timeout"));
    assert_eq!(v.pid(), Some(1000 + first as u32));
    // past the curse tolerance it is killed; its exit changes nothing
    let acts = r.tick(t + Duration::from_secs(41));
    assert!(acts.contains(&Action::Kill { instance: new }), "{acts:?}");
    assert!(r.exited(new, ExitStatus::Signal(9), t).is_empty());
    assert_eq!(r.running(), 1);
    // a successor that dies is a rejection too; the next change swaps again
    let third = next_swap(&mut r, 3, 3000, t);
    assert!(r.exited(third, ExitStatus::Code(22), t).is_empty());
    let why = &r.vassal("a.ini").unwrap().rejected.as_ref().unwrap().reason;
    assert!(why.contains("exited with code 22"), "{why}");
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Running
    );
}

#[test]
fn the_successor_takes_over_when_the_old_process_dies_and_removal_stops_both() {
    let mut r = swap_rec();
    let t = Instant::now();
    let (first, new) = swap_started(&mut r, t);
    // the old one crashes: no respawn, the successor is the process now
    let acts = r.exited(first, ExitStatus::Signal(9), t);
    assert!(spawned_instances(&acts).is_empty(), "{acts:?}");
    assert_eq!(r.vassal("a.ini").unwrap().pid(), Some(2000));
    // another swap, then the config goes: both processes are told to stop
    let third = next_swap(&mut r, 3, 3000, t);
    let acts = r.monitor_change(0, Change::Snapshot(vec![]), t);
    let stopped: Vec<InstanceId> = sends(&acts).iter().map(|(i, _)| *i).collect();
    assert!(
        stopped.contains(&new) && stopped.contains(&third),
        "{acts:?}"
    );
    assert_eq!(r.running(), 2);
    r.exited(third, ExitStatus::Code(0), t);
    r.exited(new, ExitStatus::Code(0), t);
    assert_eq!(r.running(), 0);
    assert!(r.vassal("a.ini").is_none());
}

#[test]
fn a_check_whose_vassal_restarted_meanwhile_is_ignored() {
    let mut r = checked_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    r.monitor_change(0, Change::Upsert(file("a.ini", 2)), t);
    // it crashes during the check and respawns with the new config
    let acts = r.exited(ids[0], ExitStatus::Code(1), t);
    assert_eq!(spawns(&acts), 1, "{acts:?}");
    ack(&mut r, &acts);
    let key = file("a.ini", 2).key;
    let acts = r.check_done(&name("a.ini"), key, Err("bad".into()), Duration::ZERO, t);
    assert!(acts.is_empty(), "{acts:?}");
    assert!(r.vassal("a.ini").unwrap().rejected.is_none());
}

#[test]
fn successors_and_checks_get_no_owner_outside_tyrant_mode() {
    let owned_file = |mtime| VassalSpec {
        owner: Some(Owner {
            uid: 1000,
            gid: 1000,
        }),
        ..file("a.ini", mtime)
    };
    let t = Instant::now();
    let mut r = swap_rec();
    apply(&mut r, 0, Change::Upsert(owned_file(1)), t);
    let acts = r.monitor_change(0, Change::Upsert(owned_file(2)), t);
    assert_eq!(spawned_owner(&acts), vec![None], "{acts:?}");
    let mut r = checked_rec();
    apply(&mut r, 0, Change::Upsert(owned_file(1)), t);
    let acts = r.monitor_change(0, Change::Upsert(owned_file(2)), t);
    assert!(
        matches!(&acts[..], [Action::Check { spec }] if spec.owner.is_none()),
        "{acts:?}"
    );
}

#[test]
fn a_rejection_ends_when_the_vassal_restarts_from_its_source() {
    let mut r = checked_rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 0, Change::Upsert(file("a.ini", 1)), t);
    r.monitor_change(0, Change::Upsert(file("a.ini", 2)), t);
    r.check_done(
        &name("a.ini"),
        file("a.ini", 2).key,
        Err("bad".into()),
        Duration::ZERO,
        t,
    );
    assert!(r.vassal("a.ini").unwrap().rejected.is_some());
    // it dies: the respawn runs what the source says, rejected or not
    let acts = r.exited(ids[0], ExitStatus::Code(1), t);
    assert_eq!(spawns(&acts), 1);
    assert!(r.vassal("a.ini").unwrap().rejected.is_none());
}

#[test]
fn a_saved_table_is_restored_as_it_was_and_the_same_scan_changes_nothing() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(
        &mut r,
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    r.vassal_message(ids[0], M::Loyal, t);
    r.vassal_message(ids[0], M::Accepting, t);
    // b dies and waits for its blacklist window
    r.exited(ids[1], ExitStatus::Code(1), t);
    r.pause("a.ini").unwrap();
    let (table, blacklist) = r.save_table(t);
    let mut back = rec();
    let gone = back
        .restore_table(
            &table,
            &blacklist,
            (r.next_instance(), &[Some(0), Some(1)]),
            &serde_json::to_value(r.counters()).unwrap(),
            t,
        )
        .unwrap();
    assert!(gone.is_empty());
    let (again, blacklist_again) = back.save_table(t);
    assert_eq!(again, table);
    assert_eq!(blacklist_again, blacklist);
    assert_eq!(back.counters().spawns, r.counters().spawns);
    let a = back.vassal("a.ini").unwrap();
    assert!(a.paused && a.proc().is_some_and(|p| p.loyal && p.accepting));
    assert_eq!(a.pid(), Some(1000 + ids[0] as u32));
    // the monitor's first scan in the new image: nothing to do
    let acts = back.monitor_change(
        0,
        Change::Snapshot(vec![file("a.ini", 1), file("b.ini", 1)]),
        t,
    );
    assert!(acts.is_empty(), "{acts:?}");
    // its process is known by its instance: its exit is acted on
    let acts = back.exited(ids[0], ExitStatus::Signal(9), t);
    assert!(
        acts.iter().any(|a| matches!(a, Action::Spawn { .. })),
        "{acts:?}"
    );
    // and new instances never repeat an old one
    let new = acts
        .iter()
        .find_map(|a| match a {
            Action::Spawn { instance, .. } => Some(*instance),
            _ => None,
        })
        .unwrap();
    assert!(new >= r.next_instance());
}

#[test]
fn a_restored_vassal_whose_source_is_gone_is_stopped_and_removed() {
    let mut r = rec();
    let t = Instant::now();
    let (_, ids) = apply(&mut r, 1, Change::Snapshot(vec![file("a.ini", 1)]), t);
    let (table, blacklist) = r.save_table(t);
    // the new image has one monitor: the old monitor 1 is gone
    let mut back = Reconciler::new(ReconcilerConfig::default(), vec!["m0".into()]);
    let gone = back
        .restore_table(
            &table,
            &blacklist,
            (r.next_instance(), &[Some(0), None]),
            &serde_json::Value::Null,
            t,
        )
        .unwrap();
    assert_eq!(gone, vec![name("a.ini")]);
    let acts = back.source_gone(&gone, t);
    assert!(sends(&acts).contains(&(ids[0], MSG_STOP)), "{acts:?}");
    back.exited(ids[0], ExitStatus::Code(0), t);
    assert!(back.vassal("a.ini").is_none());
}

#[test]
fn an_old_process_that_closes_its_socket_during_a_swap_hands_over_to_the_successor() {
    let mut r = swap_rec();
    let t = Instant::now();
    let (old, new) = swap_started(&mut r, t);
    let acts = r.pipe_closed(old, t);
    // the successor is kept, not retired; the old one retires
    assert_eq!(sends(&acts), vec![(old, MSG_GRACEFUL_STOP)], "{acts:?}");
    let v = r.vassal("a.ini").unwrap();
    assert_eq!(v.pid(), Some(2000));
    assert!(v.successor.is_none());
    // its exit is expected: nothing respawns, the successor runs on
    let acts = r.exited(old, ExitStatus::Code(0), t);
    assert!(spawned_instances(&acts).is_empty(), "{acts:?}");
    assert_eq!(r.vassal("a.ini").unwrap().pid(), Some(2000));
    assert_eq!(r.running(), 1);
    // and the successor is the vassal now
    let acts = r.exited(new, ExitStatus::Signal(9), t);
    assert!(!spawned_instances(&acts).is_empty(), "{acts:?}");
}

/// A reconciler in a cluster (`--emperor-cluster`), with one monitor.
fn cluster_rec() -> Reconciler {
    Reconciler::new(
        ReconcilerConfig {
            cluster: true,
            ..ReconcilerConfig::default()
        },
        vec!["m0".into()],
    )
}

#[test]
fn in_a_cluster_a_vassal_runs_only_while_placed_here() {
    use crate::cluster::ClusterInput as C;
    let mut r = cluster_rec();
    let t = Instant::now();
    let (acts, _) = apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    assert!(acts.is_empty(), "not started before it is placed: {acts:?}");
    assert_eq!(r.take_cluster_notes(), vec![C::Want(name("a.ini"), None)]);
    assert_eq!(
        r.start_one("a.ini", t),
        Err(OperatorError::Elsewhere("a.ini".into()))
    );
    let acts = r.place(&name("a.ini"), None, "", t);
    let ids = ack(&mut r, &acts);
    assert_eq!(ids.len(), 1);
    assert_eq!(r.take_cluster_notes(), vec![C::Running(name("a.ini"))]);
    // a change is told again (its replicas may have changed) and reloads
    let (acts, _) = apply(&mut r, 0, Change::Upsert(file("a.ini", 2)), t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_RELOAD)]);
    assert_eq!(r.take_cluster_notes(), vec![C::Want(name("a.ini"), None)]);
    // unplaced: stopped; noted once its exit is seen, and not respawned
    let acts = r.place(&name("a.ini"), Some(7), "it moves", t);
    assert_eq!(sends(&acts), vec![(ids[0], MSG_STOP)]);
    assert!(r.take_cluster_notes().is_empty());
    let acts = r.exited(ids[0], ExitStatus::Code(0), t);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(r.take_cluster_notes(), vec![C::Stopped(name("a.ini"), 7)]);
    assert_eq!(
        r.vassal("a.ini").unwrap().phase.state(),
        VassalState::Stopped
    );
    // placed again: started again; removed: the cluster hears it is gone
    let acts = r.place(&name("a.ini"), None, "", t);
    let ids = ack(&mut r, &acts);
    assert_eq!(ids.len(), 1);
    r.take_cluster_notes();
    let (_, _) = apply(&mut r, 0, Change::Snapshot(vec![]), t);
    r.exited(ids[0], ExitStatus::Code(0), t);
    assert_eq!(r.take_cluster_notes(), vec![C::Unwant(name("a.ini"))]);
    // unplaced while it has no process: noted at once
    apply(&mut r, 0, Change::Upsert(file("b.ini", 1)), t);
    r.place(&name("b.ini"), None, "", t);
    let acts = r.place(&name("b.ini"), Some(8), "lease lost", t);
    // the spawn was asked for: it is stopped as soon as it is reported
    assert!(
        acts.iter().any(|a| matches!(a, Action::Send { .. })),
        "{acts:?}"
    );
}

#[test]
fn an_operator_stop_then_an_unplace_still_tells_the_cluster_it_stopped() {
    use crate::cluster::ClusterInput as C;
    let mut r = cluster_rec();
    let t = Instant::now();
    apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    let acts = r.place(&name("a.ini"), None, "", t);
    let ids = ack(&mut r, &acts);
    r.stop_one("a.ini", t).unwrap();
    r.place(&name("a.ini"), Some(3), "it moves", t);
    r.take_cluster_notes();
    r.exited(ids[0], ExitStatus::Code(0), t);
    assert_eq!(r.take_cluster_notes(), vec![C::Stopped(name("a.ini"), 3)]);
}
