//! amqp:// end to end: a private RabbitMQ node, imperium, and real uWSGI
//! vassals (config over the config pipe, from a file path, from a URL),
//! published with python3-pika as uWSGI's users do.
//!
//! The tests share one node (it takes 5-6 s to start); each uses its own
//! virtual host, so each has its own `uwsgi.emperor` exchange. The restart
//! test has a node of its own.

#![cfg(feature = "amqp")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::amqp_publish::amqp_publish;
use testkit::procs::{ppid, tree, wait_all_dead};
use testkit::servers::rabbitmq::RabbitMq;
use testkit::servers::{free_port, wait_until};
use testkit::uwsgi::{http_get, uwsgi_bin, vassal_ini, vassal_ini_on, wait_answer, write_app};
use testkit::{record_lines, test_vassal_bin, Imperium};

const T: Duration = Duration::from_secs(20);

fn emperor(cwd: &Path, url: &str, binary: &Path) -> Imperium {
    Imperium::start(
        cwd,
        [
            "--emperor",
            url,
            "--binary-path",
            binary.to_str().unwrap(),
            "--reload-mercy",
            "10",
        ],
    )
}

fn master_of(worker: u32) -> u32 {
    ppid(worker).expect("worker has a parent")
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Python's http.server on 127.0.0.1, serving `dir`; killed on drop.
struct Http {
    child: Child,
    port: u16,
}

impl Http {
    fn serve(dir: &Path) -> Http {
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        assert!(
            wait_until(T, || http_get(port, "/").is_some()),
            "http.server did not answer on 127.0.0.1:{port}"
        );
        Http { child, port }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Routing key = vassal name, body = config text over the config pipe:
/// spawn, graceful reload, stop; bad messages before them are acked,
/// logged and change nothing.
#[test]
fn inline_configs_spawn_reload_and_stop_real_uwsgi() {
    let mq = RabbitMq::shared();
    let url = mq.add_vhost("inline");
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let mut emp = emperor(tmp.path(), &url, &uwsgi_bin());
    emp.wait_log(
        &format!(
            "monitor amqp://guest@127.0.0.1:{}/inline is connected",
            mq.port
        ),
        T,
    );

    let (ini, port) = vassal_ini(&app, "one");
    let bad: Vec<(&str, &[u8])> = vec![
        ("../escape.ini", ini.as_bytes()),
        ("noext", ini.as_bytes()),
        ("-dash.ini", ini.as_bytes()),
        ("binary.ini", &[0xff, 0xfe]),
        ("", b""),
        ("", b"/etc/../etc/x.ini"),
        ("", b"ftp://127.0.0.1/x.ini"),
    ];
    let t = Instant::now();
    amqp_publish(&url, &bad);
    amqp_publish(&url, &[("app.ini", ini.as_bytes())]);
    let worker = wait_answer(port, "one", T)
        .unwrap_or_else(|| panic!("vassal never answered:\n{}", emp.log()));
    eprintln!("published -> vassal answering: {:?}", t.elapsed());
    let master = master_of(worker);
    assert_eq!(
        ppid(master),
        Some(emp.pid()),
        "the master is imperium's child"
    );
    let cmd = cmdline(master);
    assert!(cmd.contains("emperor://app.ini"), "{cmd}");
    emp.wait_log_n("message ignored", bad.len(), T);
    assert_eq!(emp.count("spawned uwsgi instance"), 1, "{}", emp.log());

    let t = Instant::now();
    amqp_publish(
        &url,
        &[("app.ini", vassal_ini_on(&app, "two", port).as_bytes())],
    );
    emp.wait_log("reload the uwsgi instance app.ini", T);
    let w2 = wait_answer(port, "two", T)
        .unwrap_or_else(|| panic!("reloaded vassal never answered:\n{}", emp.log()));
    eprintln!("republished -> new config answering: {:?}", t.elapsed());
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");

    let all = tree(master);
    amqp_publish(&url, &[("app.ini", b"")]);
    emp.wait_log("removed uwsgi instance app.ini", T);
    assert!(wait_all_dead(&all, T), "vassal processes left: {all:?}");
    assert!(http_get(port, "/").is_none());
    assert!(!emp.log().contains("guest:guest"), "{}", emp.log());
    assert!(emp.stop().success());
}

/// Empty routing key: a config file path (spawn, reload on republish, stop
/// once the file is gone) or an http:// URL the vassal fetches itself; a URL
/// that answers 404 makes the uWSGI vassal exit with code 26, and it is not
/// respawned.
#[test]
fn config_paths_and_urls_with_real_uwsgi() {
    let mq = RabbitMq::shared();
    let url = mq.add_vhost("paths");
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let vassals = tmp.path().join("vassals");
    let www = tmp.path().join("www");
    std::fs::create_dir(&vassals).unwrap();
    std::fs::create_dir(&www).unwrap();
    let mut emp = emperor(tmp.path(), &url, &uwsgi_bin());
    emp.wait_log(" is connected", T);

    // a file path
    let (ini, port) = vassal_ini(&app, "file1");
    let cfg = vassals.join("p.ini");
    std::fs::write(&cfg, ini).unwrap();
    let path = cfg.to_str().unwrap();
    amqp_publish(&url, &[("", path.as_bytes())]);
    let w = wait_answer(port, "file1", T)
        .unwrap_or_else(|| panic!("path vassal never answered:\n{}", emp.log()));
    let master = master_of(w);
    assert!(
        cmdline(master).contains(&format!("--ini {path}")),
        "{}",
        cmdline(master)
    );
    std::fs::write(&cfg, vassal_ini_on(&app, "file2", port)).unwrap();
    amqp_publish(&url, &[("", path.as_bytes())]);
    let w2 = wait_answer(port, "file2", T)
        .unwrap_or_else(|| panic!("path vassal not reloaded:\n{}", emp.log()));
    assert_eq!(master_of(w2), master, "graceful reload keeps the master");
    let all = tree(master);
    std::fs::remove_file(&cfg).unwrap();
    amqp_publish(&url, &[("", path.as_bytes())]);
    emp.wait_log(&format!("removed uwsgi instance {path}"), T);
    assert!(wait_all_dead(&all, T), "vassal processes left: {all:?}");

    // a URL
    let http = Http::serve(&www);
    let (ini, port) = vassal_ini(&app, "url");
    std::fs::write(www.join("u.ini"), ini).unwrap();
    let u = format!("http://127.0.0.1:{}/u.ini", http.port);
    amqp_publish(&url, &[("", u.as_bytes())]);
    let w = wait_answer(port, "url", T)
        .unwrap_or_else(|| panic!("URL vassal never answered:\n{}", emp.log()));
    assert!(cmdline(master_of(w)).contains(&format!("--ini {u}")));

    // a URL that answers 404: the vassal exits 26 and is exiled
    let missing = format!("http://127.0.0.1:{}/missing.ini", http.port);
    amqp_publish(&url, &[("", missing.as_bytes())]);
    emp.wait_log(&format!("vassal {missing} exited with code 26 (exile)"), T);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        emp.count(&format!("spawned uwsgi instance {missing}")),
        1,
        "an exiled vassal is not respawned:\n{}",
        emp.log()
    );
    assert!(emp.stop().success());
}

/// The broker dies while a vassal runs: the vassal keeps running, the
/// monitor is degraded and reconnects by itself when the broker is back.
#[test]
fn broker_killed_and_restarted_while_vassals_run() {
    let mut mq = RabbitMq::start();
    let url = mq.url();
    let tmp = tempfile::tempdir().unwrap();
    let app = write_app(tmp.path());
    let mut emp = emperor(tmp.path(), &url, &uwsgi_bin());
    emp.wait_log(" is connected", T);
    let (ini, port) = vassal_ini(&app, "a");
    amqp_publish(&url, &[("a.ini", ini.as_bytes())]);
    let master =
        master_of(wait_answer(port, "a", T).unwrap_or_else(|| panic!("no answer:\n{}", emp.log())));

    mq.kill();
    emp.wait_log("is degraded", T);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        wait_answer(port, "a", Duration::from_secs(2)).is_some_and(|w| master_of(w) == master),
        "the vassal kept running during the outage:\n{}",
        emp.log()
    );
    assert_eq!(emp.count("removed uwsgi instance"), 0, "{}", emp.log());

    let t = Instant::now();
    mq.restart();
    emp.wait_log_n(" is connected", 2, Duration::from_secs(60));
    eprintln!("broker restarted -> monitor connected: {:?}", t.elapsed());
    let (ini_b, port_b) = vassal_ini(&app, "b");
    amqp_publish(&url, &[("b.ini", ini_b.as_bytes())]);
    wait_answer(port_b, "b", T).unwrap_or_else(|| panic!("b never answered:\n{}", emp.log()));
    assert!(
        wait_answer(port, "a", Duration::from_secs(2)).is_some_and(|w| master_of(w) == master),
        "a still runs in the same master"
    );
    assert!(emp.stop().success());
}

/// Two imperium processes (two hosts) bound to the same exchange: one
/// published message starts a vassal under each, and one more stops both.
#[test]
fn two_emperors_on_one_exchange_both_act_on_one_message() {
    let mq = RabbitMq::shared();
    let url = mq.add_vhost("fanout");
    let host1 = tempfile::tempdir().unwrap();
    let host2 = tempfile::tempdir().unwrap();
    let vassal = test_vassal_bin();
    let mut e1 = emperor(host1.path(), &url, &vassal);
    let mut e2 = emperor(host2.path(), &url, &vassal);
    e1.wait_log(" is connected", T);
    e2.wait_log(" is connected", T);

    // the record path is relative: each vassal writes in its emperor's cwd
    let cfg = "[vassal]\nrecord = rec.txt\nmarker = fanout\n";
    amqp_publish(&url, &[("shared.ini", cfg.as_bytes())]);
    for (host, e) in [(&host1, &e1), (&host2, &e2)] {
        let rec = host.path().join("rec.txt");
        assert!(
            wait_until(T, || record_lines(&rec)
                .iter()
                .any(|l| l.starts_with("start ") && l.contains("marker=fanout"))),
            "no vassal started under {}:\n{}",
            host.path().display(),
            e.log()
        );
        e.wait_log("vassal shared.ini has been spawned", T);
    }
    amqp_publish(&url, &[("shared.ini", b"")]);
    e1.wait_log("removed uwsgi instance shared.ini", T);
    e2.wait_log("removed uwsgi instance shared.ini", T);
    assert!(e1.stop().success());
    assert!(e2.stop().success());
}
