//! Reconciler unit tests: feed events, read the actions.

use super::*;
use crate::name::{Extensions, NamePolicy};
use crate::protocol::VassalMessage as M;

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
    assert_eq!(r.vassal("a.ini").unwrap().state(), VassalState::Running);
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
    assert_eq!(r.vassal("a.ini").unwrap().state(), VassalState::Stopping);
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
    assert_eq!(r.vassal("a.ini").unwrap().state(), VassalState::Throttled);
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
    assert_eq!(r.vassal("a.ini").unwrap().state(), VassalState::Exiled);
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
    assert_eq!(r.vassal("a.ini").unwrap().state(), VassalState::Stopping);
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
fn monitor_degraded_never_removes_vassals() {
    let mut r = rec();
    let t = Instant::now();
    apply(&mut r, 0, Change::Snapshot(vec![file("a.ini", 1)]), t);
    let acts = r.monitor_change(0, Change::Health(MonitorHealth::Degraded("down".into())), t);
    assert!(acts.is_empty());
    assert_eq!(r.vassal("a.ini").unwrap().state(), VassalState::Running);
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
    assert_eq!(r.vassal("big.ini").unwrap().state(), VassalState::Refused);
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
fn spawn_failure_exiles() {
    let mut r = rec();
    let t = Instant::now();
    let acts = r.monitor_change(0, Change::Upsert(file("a.ini", 1)), t);
    let Action::Spawn { instance, .. } = acts[0] else {
        panic!()
    };
    r.spawn_failed(instance, "no such file");
    assert_eq!(r.vassal("a.ini").unwrap().state(), VassalState::Exiled);
    assert_eq!(r.counters().spawn_failures, 1);
}
