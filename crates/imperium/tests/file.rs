//! file:// end to end: imperium runs the one vassal a `file://` URL names,
//! reloads it when the file is replaced, stops it when the file is removed
//! and starts it again when it comes back, all through inotify (the safety
//! rescan is a minute away).

use std::time::Duration;

use testkit::{test_vassal_bin, Imperium};

const QUICK: Duration = Duration::from_secs(2);

#[test]
fn one_config_file_runs_reloads_stops_and_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("etc");
    std::fs::create_dir(&conf).unwrap();
    let cfg = conf.join("app.ini");
    std::fs::write(&cfg, "[vassal]\nloyal = 1\n").unwrap();
    // a neighbour that is not watched: no vassal of its own
    std::fs::write(conf.join("other.ini"), "[vassal]\nloyal = 1\n").unwrap();
    let url = format!("file://{}", cfg.display());
    let mut emp = Imperium::start(
        tmp.path(),
        [
            "--emperor".as_ref(),
            url.as_ref(),
            "--binary-path".as_ref(),
            test_vassal_bin().as_os_str(),
            "--emperor-freq".as_ref(),
            "60".as_ref(),
        ],
    );
    let name = cfg.display().to_string();
    emp.wait_log(
        &format!("vassal {name} is ready to accept requests"),
        Duration::from_secs(20),
    );

    // an editor's save: a new file renamed over the old one
    let swap = conf.join(".app.ini.new");
    std::fs::write(&swap, "[vassal]\nloyal = 1\n# edited\n").unwrap();
    std::fs::rename(&swap, &cfg).unwrap();
    emp.wait_log(&format!("reload the uwsgi instance {name}"), QUICK);

    std::fs::remove_file(&cfg).unwrap();
    emp.wait_log(
        &format!("removed uwsgi instance {name}"),
        Duration::from_secs(10),
    );

    std::fs::write(&cfg, "[vassal]\nloyal = 1\n").unwrap();
    emp.wait_log_n(
        &format!("vassal {name} is ready to accept requests"),
        2,
        QUICK * 5,
    );
    assert!(!emp.log().contains("other.ini"), "{}", emp.log());
    emp.stop();
}
