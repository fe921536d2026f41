//! `--emperor-cluster`: which of the emperors that share a source run which
//! vassal (docs/cluster.md).
//!
//! The engine (etcd or ZooKeeper, in the monitors crate) keeps this
//! emperor's membership alive and carries out claims; this module is the
//! pure part every engine shares: [`Placer`] is fed the live members, the
//! claims the engine shows, the vassals the sources want and what the
//! emperor's loop reports, and returns the [`Op`]s to carry out. It does no
//! I/O, so it is tested by feeding events and reading ops.
//!
//! The model:
//! - **Placement**: rendezvous (highest random weight) hashing of the
//!   vassal name over the live members picks its K *targets*; a member
//!   joining or leaving moves only its share.
//! - **Claims**: a vassal with K replicas has K slots `0..K`. A target
//!   without a slot creates a free one (a compare-and-create bound to its
//!   own lease or session); only an emperor holding a slot runs the vassal.
//!   With K ≥ 2 a target may also take the one *surge* slot K while every
//!   regular slot is held: the displaced holder stops its copy only once
//!   the newcomer's copy runs (make before break), and the newcomer then
//!   moves into the freed slot. With K = 1 there is no surge slot: the
//!   displaced holder stops its copy first (break before make).
//! - **Claim delay**: after a member leaves (its lease expired), no new
//!   claim is made for the claim delay, so a member that lost its lease has
//!   time to finish stopping what it held.
//! - **Fencing** is the engine's: when it cannot renew its lease before a
//!   local deadline shorter than the lease, it calls [`Placer::fence`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::name::VassalName;

/// How many emperors run a vassal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// This many (at least 1).
    Count(u32),
    /// Every emperor (uWSGI's behaviour), with no claim.
    All,
}

impl Replicas {
    /// Reads `K` (a positive count) or `all`.
    pub fn parse(s: &str) -> Result<Replicas, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Replicas::All);
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Replicas::Count(n)),
            _ => Err(format!(
                "replicas must be a count of at least 1 or \"all\", not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replicas::Count(n) => write!(f, "{n}"),
            Replicas::All => f.write_str("all"),
        }
    }
}

/// What the emperor's loop tells the cluster engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterInput {
    /// A source wants this vassal (again, or with a changed config);
    /// `None`: the emperor's `--emperor-replicas`.
    Want(VassalName, Option<Replicas>),
    /// The vassal left the table (its source removed it).
    Unwant(VassalName),
    /// Its process runs here.
    Running(VassalName),
    /// It has no process here any more since the unplace of this epoch
    /// ([`ClusterOutput::Unplace`]).
    Stopped(VassalName, u64),
}

/// What the cluster engine tells the emperor's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOutput {
    /// This emperor holds a slot of the vassal: start it.
    Place(VassalName),
    /// This emperor holds no slot of it any more: stop it (the reason, for
    /// the log). The loop answers [`ClusterInput::Stopped`] with the same
    /// epoch once it has no process, unless a later place came first.
    Unplace(VassalName, &'static str, u64),
}

/// One claim as the engine shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// The member holding it.
    pub node: String,
    /// Its holder said the vassal runs there.
    pub running: bool,
}

/// What the engine must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create slot `slot` of the vassal for this member, if it is free.
    Claim(VassalName, u32),
    /// Move this member's claim from slot `from` to the free slot `to`, in
    /// one transaction.
    Move(VassalName, u32, u32),
    /// Mark this member's claim of `slot` as running.
    MarkRunning(VassalName, u32),
    /// Delete this member's claim of `slot`.
    Release(VassalName, u32),
    /// Tell the loop.
    Tell(ClusterOutput),
}

/// What the loop was told of one vassal, and what it reported.
#[derive(Debug, Clone, Default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "what was told and what was heard back: each is its own fact"
)]
struct Local {
    /// [`ClusterOutput::Place`] was sent (and no unplace since).
    placed: bool,
    /// It said the vassal's process runs (and not that it stopped since).
    running: bool,
    /// A process may exist: placed, and not heard stopped since the last
    /// unplace. A claim is released only once this is false.
    maybe_running: bool,
    /// The epoch of the last unplace.
    epoch: u64,
}

/// The weight of `member` for `vassal` (rendezvous hashing): the first 8
/// bytes of SHA-256(member NUL vassal), the same on every host and build.
pub fn weight(member: &str, vassal: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0u8]);
    h.update(vassal.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The `k` members that run `vassal`: the highest weights, ties broken by
/// name.
pub fn targets<'a>(
    members: impl IntoIterator<Item = &'a str>,
    vassal: &str,
    k: usize,
) -> Vec<&'a str> {
    let mut all: Vec<(u64, &str)> = members
        .into_iter()
        .map(|m| (weight(m, vassal), m))
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    all.into_iter().take(k).map(|(_, m)| m).collect()
}

/// The placement decisions of one member (see the module docs).
#[derive(Debug)]
pub struct Placer {
    me: String,
    default_replicas: u32,
    claim_delay: Duration,
    members: BTreeSet<String>,
    claims: BTreeMap<VassalName, BTreeMap<u32, Claim>>,
    wants: BTreeMap<VassalName, Option<Replicas>>,
    local: BTreeMap<VassalName, Local>,
    /// Claims, moves and marks sent and not yet seen answered.
    inflight: HashSet<(VassalName, u32)>,
    /// The lease is valid and the claims are in sync with the engine.
    online: bool,
    /// No new claim before this instant (a member left).
    hold_until: Option<Instant>,
    /// The last unplace epoch given out.
    epoch: u64,
    /// Vassals whose decision may have changed since the last
    /// [`Placer::decide`] (a claim, an input), so that one event costs one
    /// decision, not one per vassal.
    dirty: BTreeSet<VassalName>,
    /// Every vassal must be decided again (members, the lease, the claim
    /// delay changed).
    all_dirty: bool,
    /// Each vassal's members by weight, highest first, while the members
    /// stay the same.
    ranking: HashMap<VassalName, Vec<String>>,
}

impl Placer {
    /// The placer of member `me`.
    pub fn new(me: &str, default_replicas: u32, claim_delay: Duration) -> Placer {
        Placer {
            me: me.to_string(),
            default_replicas: default_replicas.max(1),
            claim_delay,
            members: BTreeSet::new(),
            claims: BTreeMap::new(),
            wants: BTreeMap::new(),
            local: BTreeMap::new(),
            inflight: HashSet::new(),
            online: false,
            hold_until: None,
            epoch: 0,
            dirty: BTreeSet::new(),
            all_dirty: true,
            ranking: HashMap::new(),
        }
    }

    /// This member's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The lease is valid and the engine's state is read: claims may be
    /// made (`false`: the engine cannot be reached; what is held keeps
    /// running, nothing new is claimed).
    pub fn set_online(&mut self, online: bool) {
        self.all_dirty |= online != self.online;
        self.online = online;
        if !online {
            self.inflight.clear();
        }
    }

    /// Whether claims may be made.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// The live members are `members` (read or watched). A member that
    /// left holds new claims back for the claim delay.
    pub fn set_members(&mut self, members: BTreeSet<String>, now: Instant) {
        if members == self.members {
            return;
        }
        let left = self.members.difference(&members).next().is_some();
        if left && !self.members.is_empty() {
            self.hold_until = Some(now + self.claim_delay);
        }
        self.members = members;
        self.ranking.clear();
        self.all_dirty = true;
    }

    /// Every claim, as read from the engine (after a reconnection).
    pub fn reset_claims(&mut self, claims: BTreeMap<VassalName, BTreeMap<u32, Claim>>) {
        self.claims = claims;
        self.inflight.clear();
        self.all_dirty = true;
    }

    /// Slot `slot` of `name` is now held as `claim`.
    pub fn claim_put(&mut self, name: VassalName, slot: u32, claim: Claim) {
        self.inflight.remove(&(name.clone(), slot));
        self.dirty.insert(name.clone());
        self.claims.entry(name).or_default().insert(slot, claim);
    }

    /// Slot `slot` of `name` is free.
    pub fn claim_deleted(&mut self, name: &VassalName, slot: u32) {
        self.inflight.remove(&(name.clone(), slot));
        self.dirty.insert(name.clone());
        if let Some(c) = self.claims.get_mut(name) {
            c.remove(&slot);
            if c.is_empty() {
                self.claims.remove(name);
            }
        }
    }

    /// An op on `(name, slot)` failed or lost its race: it may be decided
    /// again.
    pub fn op_done(&mut self, name: &VassalName, slot: u32) {
        self.inflight.remove(&(name.clone(), slot));
        self.dirty.insert(name.clone());
    }

    /// What the loop reported.
    pub fn input(&mut self, i: ClusterInput) {
        let (ClusterInput::Want(n, _)
        | ClusterInput::Unwant(n)
        | ClusterInput::Running(n)
        | ClusterInput::Stopped(n, _)) = &i;
        self.dirty.insert(n.clone());
        match i {
            ClusterInput::Want(n, r) => {
                self.wants.insert(n.clone(), r);
                self.local.entry(n).or_default();
            }
            ClusterInput::Unwant(n) => {
                self.wants.remove(&n);
                self.local.remove(&n);
                self.ranking.remove(&n);
            }
            ClusterInput::Running(n) => {
                if let Some(l) = self.local.get_mut(&n) {
                    l.running = true;
                }
            }
            ClusterInput::Stopped(n, epoch) => {
                if let Some(l) = self.local.get_mut(&n) {
                    // a stop that a later place overtook is not this one
                    if !l.placed && l.epoch == epoch {
                        l.running = false;
                        l.maybe_running = false;
                    }
                }
            }
        }
    }

    /// The lease is lost (or could have expired): unplace everything held.
    /// The claims went with the lease.
    pub fn fence(&mut self, why: &'static str) -> Vec<Op> {
        self.set_online(false);
        self.all_dirty = true;
        let me = self.me.clone();
        for c in self.claims.values_mut() {
            c.retain(|_, cl| cl.node != me);
        }
        self.claims.retain(|_, c| !c.is_empty());
        // a vassal that runs everywhere holds no claim: it keeps running
        let held: Vec<VassalName> = self
            .local
            .iter()
            .filter(|(n, l)| l.placed && self.replicas(n) != Replicas::All)
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for n in &held {
            self.unplace(n, why, &mut out);
        }
        out
    }

    /// The live members.
    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }

    /// When [`Placer::decide`] must run again though nothing changed (the
    /// claim delay ends).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.hold_until
    }

    /// The replicas of `name`.
    fn replicas(&self, name: &VassalName) -> Replicas {
        self.wants
            .get(name)
            .copied()
            .flatten()
            .unwrap_or(Replicas::Count(self.default_replicas))
    }

    /// Everything to do now.
    pub fn decide(&mut self, now: Instant) -> Vec<Op> {
        if self.hold_until.is_some_and(|t| now >= t) {
            self.hold_until = None;
            self.all_dirty = true;
        }
        let mut out = Vec::new();
        let names: Vec<VassalName> = if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            let all: BTreeSet<&VassalName> = self.wants.keys().chain(self.claims.keys()).collect();
            all.into_iter().cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for name in &names {
            if self.wants.contains_key(name) {
                self.decide_one(name, &mut out);
            } else {
                self.release_unwanted(name, &mut out);
            }
        }
        out
    }

    /// The claims of a vassal no source wants here any more are released.
    fn release_unwanted(&mut self, name: &VassalName, out: &mut Vec<Op>) {
        if !self.online {
            return;
        }
        let Some(slots) = self.claims.get(name) else {
            return;
        };
        for (slot, c) in slots {
            if c.node == self.me && self.inflight.insert((name.clone(), *slot)) {
                out.push(Op::Release(name.clone(), *slot));
            }
        }
    }

    /// The `k` members with the highest weights for `name` (cached while
    /// the members stay the same).
    fn targets_of(&mut self, name: &VassalName, k: usize) -> Vec<String> {
        if !self.ranking.contains_key(name) {
            let all = targets(
                self.members.iter().map(String::as_str),
                name.as_str(),
                self.members.len(),
            )
            .into_iter()
            .map(str::to_string)
            .collect();
            self.ranking.insert(name.clone(), all);
        }
        self.ranking[name].iter().take(k).cloned().collect()
    }

    fn place(&mut self, name: &VassalName, out: &mut Vec<Op>) {
        let l = self.local.entry(name.clone()).or_default();
        if !l.placed {
            l.placed = true;
            l.maybe_running = true;
            out.push(Op::Tell(ClusterOutput::Place(name.clone())));
        }
    }

    fn unplace(&mut self, name: &VassalName, why: &'static str, out: &mut Vec<Op>) {
        let l = self.local.entry(name.clone()).or_default();
        if l.placed {
            self.epoch += 1;
            l.placed = false;
            l.epoch = self.epoch;
            out.push(Op::Tell(ClusterOutput::Unplace(
                name.clone(),
                why,
                self.epoch,
            )));
        }
    }

    fn decide_one(&mut self, name: &VassalName, out: &mut Vec<Op>) {
        let k = match self.replicas(name) {
            Replicas::All => return self.place(name, out),
            Replicas::Count(k) => k,
        };
        let targets = self.targets_of(name, k as usize);
        let is_target = targets.contains(&self.me);
        let empty = BTreeMap::new();
        let slots = self.claims.get(name).unwrap_or(&empty);
        let mine: Vec<(u32, bool)> = slots
            .iter()
            .filter(|(_, c)| c.node == self.me)
            .map(|(s, c)| (*s, c.running))
            .collect();
        let free_regular =
            (0..k).find(|s| !slots.contains_key(s) && !self.inflight.contains(&(name.clone(), *s)));
        let surge_taken = slots.contains_key(&k);
        // a target runs in an extra slot (>= k) and is ready to take over:
        // it replaces one displaced holder, the one of lowest weight, so the
        // copies never drop below k
        let surge_runs = slots
            .iter()
            .any(|(s, c)| *s >= k && c.running && c.node != self.me && targets.contains(&c.node));
        let first_displaced = slots
            .iter()
            .filter(|(s, c)| **s < k && !targets.contains(&c.node))
            .min_by_key(|(_, c)| (weight(&c.node, name.as_str()), c.node.clone()))
            .map(|(_, c)| c.node.clone());
        // once a regular slot is free the surge copy moves into it: it has
        // replaced someone already
        let regular_full = (0..k).all(|s| slots.contains_key(&s));
        let handover_ready =
            surge_runs && regular_full && first_displaced.as_deref() == Some(self.me.as_str());
        let local = self.local.get(name).cloned().unwrap_or_default();
        let Some((&(slot, running_marked), extra)) = mine.split_first() else {
            if local.placed {
                self.unplace(name, "this emperor holds no claim on it any more", out);
            }
            let claimable =
                is_target && self.online && self.hold_until.is_none() && !local.maybe_running;
            if !claimable {
                return;
            }
            if let Some(s) = free_regular {
                self.inflight.insert((name.clone(), s));
                out.push(Op::Claim(name.clone(), s));
            } else if k >= 2 && !surge_taken && self.inflight.insert((name.clone(), k)) {
                out.push(Op::Claim(name.clone(), k));
            }
            return;
        };
        let extra: Vec<u32> = extra.iter().map(|(s, _)| *s).collect();
        if self.online {
            for s in extra {
                if self.inflight.insert((name.clone(), s)) {
                    out.push(Op::Release(name.clone(), s));
                }
            }
        }
        if is_target {
            self.place(name, out);
            if !self.online {
                return;
            }
            if slot >= k && running_marked {
                if let Some(to) = free_regular {
                    if self.inflight.insert((name.clone(), to)) {
                        out.push(Op::Move(name.clone(), slot, to));
                    }
                    return;
                }
            }
            self.mark_running(name, slot, local.running && !running_marked, out);
            return;
        }
        // displaced: a member ranked higher should run it
        let must_go = k == 1 || slot >= k || handover_ready;
        if !must_go {
            // keeps running until a target's copy runs; its claim says so
            let due = self.online && local.running && !running_marked;
            self.mark_running(name, slot, due, out);
            return;
        }
        self.unplace(name, "it moves to another emperor", out);
        if !local.maybe_running && self.online && self.inflight.insert((name.clone(), slot)) {
            out.push(Op::Release(name.clone(), slot));
        }
    }

    /// Marks this member's claim of `slot` as running when `due` (and no
    /// op on it is in flight).
    fn mark_running(&mut self, name: &VassalName, slot: u32, due: bool, out: &mut Vec<Op>) {
        if due && self.inflight.insert((name.clone(), slot)) {
            out.push(Op::MarkRunning(name.clone(), slot));
        }
    }

    /// What `imperium ctl cluster` shows.
    pub fn view(&self) -> ClusterView {
        let mut members: BTreeMap<&str, Vec<Holding>> = self
            .members
            .iter()
            .map(|m| (m.as_str(), Vec::new()))
            .collect();
        for (name, slots) in &self.claims {
            for (slot, c) in slots {
                members.entry(c.node.as_str()).or_default().push(Holding {
                    vassal: name.to_string(),
                    slot: *slot,
                    running: c.running,
                });
            }
        }
        ClusterView {
            node: self.me.clone(),
            online: self.online,
            members: members
                .into_iter()
                .map(|(m, holds)| MemberView {
                    node: m.to_string(),
                    live: self.members.contains(m),
                    me: m == self.me,
                    holds,
                })
                .collect(),
            held_here: self.local.values().filter(|l| l.placed).count(),
            wanted: self.wants.len(),
            ..ClusterView::default()
        }
    }
}

/// One vassal slot a member holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Holding {
    /// The vassal.
    pub vassal: String,
    /// Its slot (0 to K-1; K is the surge slot of a move).
    pub slot: u32,
    /// Its holder said it runs.
    pub running: bool,
}

/// One member as `imperium ctl cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MemberView {
    /// Its node name.
    pub node: String,
    /// Its lease or session is alive (false: its claims outlive it for a
    /// moment in this view).
    pub live: bool,
    /// This emperor.
    pub me: bool,
    /// The slots it holds.
    pub holds: Vec<Holding>,
}

/// The cluster as this emperor sees it (`imperium ctl cluster`, the stats
/// JSON's `cluster` key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterView {
    /// The engine, as shown (no password).
    pub engine: String,
    /// This emperor's node name.
    pub node: String,
    /// Its lease (etcd) or session (ZooKeeper) id, once it has one.
    pub lease: Option<String>,
    /// `--emperor-cluster-ttl` in seconds.
    pub ttl: u64,
    /// The lease is valid and the engine reachable.
    pub online: bool,
    /// What the engine last said or why it cannot be reached.
    pub state: String,
    /// The live members and what each holds.
    pub members: Vec<MemberView>,
    /// Vassals this emperor is told to run.
    pub held_here: usize,
    /// Vassals the sources want.
    pub wanted: usize,
}

/// The view, shared between the engine's task (which writes it) and the
/// observers (which read it through a snapshot).
pub type SharedView = Arc<Mutex<ClusterView>>;

/// What an engine's task is given.
pub struct ClusterContext {
    /// What the loop reports; closed when the emperor has stopped every
    /// vassal at its shutdown: the engine then gives its lease up (its
    /// claims go with it) and ends.
    pub inputs: tokio::sync::mpsc::UnboundedReceiver<ClusterInput>,
    /// Where placements go.
    pub outputs: tokio::sync::mpsc::UnboundedSender<ClusterOutput>,
    /// The view it keeps up to date.
    pub view: SharedView,
}

/// A cluster engine (etcd, ZooKeeper): membership under a lease, claims
/// bound to it, a [`Placer`] deciding.
pub trait ClusterEngine: Send {
    /// The engine's URL, as shown (no password).
    fn describe(&self) -> String;
    /// Runs until [`ClusterContext::inputs`] closes.
    fn run(self: Box<Self>, ctx: ClusterContext) -> futures::future::BoxFuture<'static, ()>;
}

#[cfg(test)]
mod tests;
