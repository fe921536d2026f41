//! Shared by the zoo:// and etcd:// end-to-end tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use testkit::uwsgi::{uwsgi_bin, vassal_ini_on};
use testkit::Imperium;

/// Deadline for one step.
pub const T: Duration = Duration::from_secs(30);

/// Starts imperium on one `--emperor` URL with real uWSGI.
pub fn emperor(dir: &Path, url: &str, env: &[(&str, &str)]) -> Imperium {
    Imperium::start_with_env(
        dir,
        [
            "--emperor",
            url,
            "--binary-path",
            uwsgi_bin().to_str().expect("utf-8 path"),
            "--reload-mercy",
            "10",
        ],
        env,
    )
}

/// A vassal ini whose port comes from the emperor's environment
/// (`$(HOSTPORT)`), so emperors on one "host" each bind their own port
/// from the same shared config.
pub fn ini_env_port(app: &Path, marker: &str) -> String {
    let probe = vassal_ini_on(app, marker, 1);
    let with_var = probe.replace("127.0.0.1:1\n", "127.0.0.1:$(HOSTPORT)\n");
    assert_ne!(probe, with_var, "vassal_ini_on changed its format");
    with_var
}

/// The uWSGI master of a worker.
pub fn master_of(worker: u32) -> u32 {
    testkit::procs::ppid(worker).expect("worker has a parent")
}
