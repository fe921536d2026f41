//! `--emperor-reload-mode swap` with real uWSGI vassals under client load
//! (docs/reloads.md): a good change is served by a new instance with no
//! failed request; a broken change leaves the old instance serving, with no
//! failed request, and is rejected; a vassal that cannot run twice is
//! refused clearly.

use std::path::Path;
use std::time::Duration;

use testkit::servers::{free_port, wait_until};
use testkit::uwsgi::{in_netns, uwsgi_bin, vassal_ini_on, wait_answer, Load, NETNS_MIGRATE_REQ};
use testkit::{ctl_ok, Imperium};

const T: Duration = Duration::from_secs(30);

type Setup = testkit::uwsgi::AppTree;

fn setup() -> Setup {
    Setup::with_app()
}

fn start(s: &Setup, wrapper: &[&str], extra: &[&str]) -> Imperium {
    let mut args = testkit::uwsgi_emperor_args(&s.vassals, &["--emperor-reload-mode", "swap"]);
    args.extend(extra.iter().map(Into::into));
    args.push("--emperor-control-socket".into());
    args.push(s.ctl_sock().into());
    let emp = Imperium::start_wrapped(wrapper, s.tmp.path(), args, &[]);
    assert!(wait_until(T, || s.ctl_sock().exists()));
    emp
}

/// An on-demand vassal: it serves HTTP on the socket the emperor holds
/// and passes as fd 0; `need-app` makes a config whose app cannot be
/// loaded exit instead of serving errors.
fn on_demand_ini(app: &Path, marker: &str) -> String {
    format!(
        "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 2\nprotocol = http\nwsgi-file = {}\nenv = MARKER={marker}\nneed-app = true\ndie-on-term = true\nworker-reload-mercy = 5\nreload-mercy = 5\n",
        app.display()
    )
}

/// Waits until the app on `port` (in the network namespace of `netns`)
/// answers with `marker`.
fn answers(netns: Option<u32>, port: u16, marker: &str) -> bool {
    in_netns(netns, || wait_answer(port, marker, T).is_some())
}

/// Runs a good and then a broken change of `name` under load on `port`
/// (in the network namespace of `netns`), writing each config with
/// `write`; asserts that no request failed.
fn swap_under_load(
    s: &Setup,
    emp: &mut Imperium,
    (name, port, netns): (&str, u16, Option<u32>),
    write: &dyn Fn(&str, Option<&Path>),
) {
    assert!(answers(netns, port, "v1"), "v1 does not answer");
    let old = s.show(name)["pid"].clone();
    let load = Load::start_in(port, netns);
    std::thread::sleep(Duration::from_millis(300));
    write("v2", None);
    emp.wait_log(&format!("vassal {name} swapped"), T);
    assert!(
        answers(netns, port, "v2"),
        "the new instance does not serve v2"
    );
    std::thread::sleep(Duration::from_millis(300));
    let shown = s.show(name);
    assert_ne!(shown["pid"], old, "{shown:#}");
    assert_eq!(shown["reloads"], 1, "{shown:#}");
    // a broken change: the new instance exits, the old one serves on
    write("v3", Some(&s.tmp.path().join("missing.py")));
    emp.wait_log(&format!("the new config of vassal {name} was REJECTED"), T);
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failed) = load.stop();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        answered + failed,
        emp.log()
    );
    assert!(answered > 50, "only {answered} requests answered");
    assert!(answers(netns, port, "v2"), "v2 no longer answers");
    let rejected = s.show(name);
    assert_eq!(rejected["pid"], shown["pid"], "{rejected:#}");
    let why = rejected["rejected"]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("exited with code 22"), "{rejected:#}");
}

#[test]
fn swap_on_the_emperors_on_demand_socket_loses_no_request() {
    uwsgi_bin();
    let s = setup();
    let port = free_port();
    std::fs::write(
        s.vassals.join("od.ini.socket"),
        format!("127.0.0.1:{port}\n"),
    )
    .unwrap();
    let write = |marker: &str, app: Option<&Path>| {
        std::fs::write(
            s.vassals.join("od.ini"),
            on_demand_ini(app.unwrap_or(&s.app), marker),
        )
        .unwrap();
    };
    write("v1", None);
    let mut emp = start(&s, &[], &["--emperor-on-demand-extension", ".socket"]);
    swap_under_load(&s, &mut emp, ("od.ini", port, None), &write);
    emp.stop();
}

#[test]
fn swap_with_reuse_port_loses_no_request_and_a_plain_vassal_is_refused() {
    uwsgi_bin();
    let s = setup();
    let (port, plain) = (free_port(), free_port());
    let write = |marker: &str, app: Option<&Path>| {
        let ini = vassal_ini_on(app.unwrap_or(&s.app), marker, port);
        std::fs::write(
            s.vassals.join("rp.ini"),
            format!("{ini}reuse-port = true\nneed-app = true\n"),
        )
        .unwrap();
    };
    write("v1", None);
    std::fs::write(
        s.vassals.join("plain.ini"),
        vassal_ini_on(&s.app, "p1", plain),
    )
    .unwrap();
    // two listeners share the port: when the old one closes, the
    // connections queued on it move to the new one only with
    // tcp_migrate_req, set in a network namespace of the test's own
    let mut emp = start(&s, NETNS_MIGRATE_REQ, &[]);
    let netns = Some(emp.pid());
    assert!(
        answers(netns, plain, "p1"),
        "the plain vassal does not answer"
    );
    swap_under_load(&s, &mut emp, ("rp.ini", port, netns), &write);
    // a vassal with its own socket and no reuse-port cannot run twice
    std::fs::write(
        s.vassals.join("plain.ini"),
        vassal_ini_on(&s.app, "p2", plain),
    )
    .unwrap();
    emp.wait_log("swap: this vassal cannot run twice at once", T);
    assert!(
        answers(netns, plain, "p1"),
        "the plain vassal lost its old config"
    );
    let shown = s.show("plain.ini");
    assert_eq!(shown["reloads"], 0, "{shown:#}");
    assert!(shown["rejected"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("reuse-port"));
    ctl_ok(&s.ctl_sock(), &["reload", "plain.ini", "--force"]);
    assert!(
        answers(netns, plain, "p2"),
        "the forced change is not served"
    );
    emp.stop();
}
