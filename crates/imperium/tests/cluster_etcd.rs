//! `--emperor-cluster etcd://`: the cluster scenarios (cluster_support)
//! with a private etcd.
#![cfg(feature = "etcd")]

mod cluster_support;

use cluster_support::*;
use testkit::servers::etcd::Etcd;

#[test]
fn each_vassal_runs_once_and_a_killed_member_is_replaced_within_ttl() {
    killed_member::<Etcd>();
}

#[test]
fn a_frozen_member_is_replaced_and_stops_its_copies_after_sigcont() {
    frozen_member::<Etcd>(1);
}

#[test]
fn replicas_two_stay_on_distinct_members_through_a_join_and_a_death() {
    replicas_two::<Etcd>();
}

#[test]
fn the_engine_restarted_under_the_cluster_loses_nothing() {
    engine_restarted::<Etcd>(1);
}

#[test]
fn a_member_cut_off_from_etcd_fences_itself_before_its_lease_expires() {
    partitioned_member::<Etcd>(1);
}

#[test]
fn two_replicas_through_a_frozen_member() {
    frozen_member::<Etcd>(2);
}

#[test]
fn two_replicas_through_a_member_cut_off() {
    partitioned_member::<Etcd>(2);
}

#[test]
fn two_replicas_through_an_engine_restart() {
    engine_restarted::<Etcd>(2);
}

#[test]
fn a_config_from_etcd_carries_its_own_replicas() {
    etcd_source_carries_replicas();
}
