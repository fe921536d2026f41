//! A real libzmq PUSH peer for tests: Debian's python3-zmq (pyzmq on the
//! system libzmq), run as `/usr/bin/python3`, so the zmq:// monitor is
//! tested against an independent ZeroMQ implementation binding, as its users
//! would send to it.

use std::io::Write;
use std::process::{Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

// reads one message per line: parts as hex, separated by spaces ("-" = an
// empty part); sends them in order on one PUSH socket, then waits (linger)
// until everything is delivered
const SCRIPT: &str = r#"
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.PUSH)
s.ipv6 = True
s.connect(sys.argv[1])
n = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    parts = [b"" if p == "-" else bytes.fromhex(p) for p in line.split(" ")]
    s.send_multipart(parts)
    n += 1
s.close(linger=10000)
ctx.term()
print("sent", n)
"#;

/// Sends `messages` (each a list of parts) in order over one PUSH socket
/// connected to `endpoint`, and waits until libzmq has delivered them.
/// Panics when python3-zmq is missing (with the install command) or when
/// the peer fails.
pub fn zmq_push(endpoint: &str, messages: &[Vec<Vec<u8>>]) {
    crate::servers::require_program(PYTHON, "python3");
    let mut child = Command::new(PYTHON)
        .args(["-c", SCRIPT, endpoint])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the python3-zmq PUSH peer");
    let mut input = String::new();
    for m in messages {
        assert!(!m.is_empty(), "a ZeroMQ message has at least one part");
        let parts: Vec<String> = m
            .iter()
            .map(|p| {
                if p.is_empty() {
                    "-".to_string()
                } else {
                    p.iter().map(|b| format!("{b:02x}")).collect()
                }
            })
            .collect();
        input.push_str(&parts.join(" "));
        input.push('\n');
    }
    child
        .stdin
        .take()
        .expect("peer stdin")
        .write_all(input.as_bytes())
        .expect("write to the PUSH peer");
    let out = child.wait_with_output().expect("wait for the PUSH peer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'zmq'") {
        panic!(
            "python3-zmq is not installed (Debian package python3-zmq); install the test dependencies with `{}`",
            crate::servers::INSTALL_HINT
        );
    }
    assert!(
        out.status.success(),
        "the python3-zmq PUSH peer failed: {stderr}"
    );
    let expected = format!("sent {}", messages.len());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
}

/// A message from string parts, for [`zmq_push`].
pub fn parts(p: &[&str]) -> Vec<Vec<u8>> {
    p.iter().map(|s| s.as_bytes().to_vec()).collect()
}
