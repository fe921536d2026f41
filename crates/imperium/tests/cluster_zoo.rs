//! `--emperor-cluster zoo://`: the cluster scenarios (cluster_support)
//! with a private ZooKeeper.
#![cfg(feature = "zoo")]

mod cluster_support;

use cluster_support::*;
use testkit::servers::zookeeper::ZooKeeper;

scenarios!(ZooKeeper);
