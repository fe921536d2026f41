//! `--emperor-cluster etcd://`: the cluster scenarios (cluster_support)
//! with a private etcd.
#![cfg(feature = "etcd")]

mod cluster_support;

use cluster_support::*;
use testkit::servers::etcd::Etcd;

scenarios!(Etcd);

#[test]
fn a_config_from_etcd_carries_its_own_replicas() {
    etcd_source_carries_replicas();
}
