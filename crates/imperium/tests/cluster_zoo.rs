//! `--emperor-cluster zoo://`: the cluster scenarios (cluster_support)
//! with a private ZooKeeper.
#![cfg(feature = "zoo")]

mod cluster_support;

use cluster_support::*;
use testkit::servers::zookeeper::ZooKeeper;

#[test]
fn each_vassal_runs_once_and_a_killed_member_is_replaced_within_ttl() {
    killed_member::<ZooKeeper>();
}

#[test]
fn a_frozen_member_is_replaced_and_stops_its_copies_after_sigcont() {
    frozen_member::<ZooKeeper>(1);
}

#[test]
fn replicas_two_stay_on_distinct_members_through_a_join_and_a_death() {
    replicas_two::<ZooKeeper>();
}

#[test]
fn the_engine_restarted_under_the_cluster_loses_nothing() {
    engine_restarted::<ZooKeeper>(1);
}

#[test]
fn a_member_cut_off_from_zookeeper_fences_itself_before_its_lease_expires() {
    partitioned_member::<ZooKeeper>(1);
}

#[test]
fn two_replicas_through_a_frozen_member() {
    frozen_member::<ZooKeeper>(2);
}

#[test]
fn two_replicas_through_a_member_cut_off() {
    partitioned_member::<ZooKeeper>(2);
}

#[test]
fn two_replicas_through_an_engine_restart() {
    engine_restarted::<ZooKeeper>(2);
}
