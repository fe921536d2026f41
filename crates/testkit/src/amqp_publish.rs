//! Publishing to the `uwsgi.emperor` exchange the way uWSGI's users do:
//! Debian's python3-pika, run as `/usr/bin/python3` (the same few lines as
//! the example in docs/monitors/amqp.md).

use std::io::Write;
use std::process::{Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

// reads one message per line: "ROUTING_KEY_HEX BODY_HEX" ("-" = empty);
// publishes them in order on one channel with publisher confirms
const SCRIPT: &str = r#"
import sys, pika
c = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = c.channel()
ch.exchange_declare(exchange="uwsgi.emperor", exchange_type="fanout")
ch.confirm_delivery()
n = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    key, body = [b"" if p == "-" else bytes.fromhex(p) for p in line.split(" ")]
    ch.basic_publish(exchange="uwsgi.emperor", routing_key=key.decode(), body=body)
    n += 1
c.close()
print("published", n)
"#;

/// Publishes each `(routing key, body)` to the `uwsgi.emperor` fanout
/// exchange of the broker at `url` (an `amqp://` URL that pika accepts, for
/// example `amqp://guest:guest@127.0.0.1:PORT/%2F`), in order, and waits for
/// the broker's confirms. Panics when python3-pika is missing (with the
/// install command) or when publishing fails.
pub fn amqp_publish(url: &str, messages: &[(&str, &[u8])]) {
    crate::servers::require_program(PYTHON, "python3");
    let hex = |b: &[u8]| -> String {
        if b.is_empty() {
            "-".to_string()
        } else {
            b.iter().map(|x| format!("{x:02x}")).collect()
        }
    };
    let mut input = String::new();
    for (key, body) in messages {
        input.push_str(&format!("{} {}\n", hex(key.as_bytes()), hex(body)));
    }
    let mut child = Command::new(PYTHON)
        .args(["-c", SCRIPT, url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the python3-pika publisher");
    child
        .stdin
        .take()
        .expect("publisher stdin")
        .write_all(input.as_bytes())
        .expect("write to the publisher");
    let out = child.wait_with_output().expect("wait for the publisher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'pika'") {
        panic!(
            "python3-pika is not installed (Debian package python3-pika); install the test dependencies with `{}`",
            crate::servers::INSTALL_HINT
        );
    }
    assert!(
        out.status.success(),
        "the python3-pika publisher failed: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("published {}", messages.len())
    );
}
