//! `--vassal-logs journal`: each vassal instance gets its own stream
//! connection to journald, as systemd gives a service (the protocol of
//! systemd's `journald-stream.c`): after connecting, the client sends one
//! header line each for the identifier (the vassal name), the unit id
//! (empty), the default priority (6, info), whether `<N>` level prefixes
//! are parsed (1), and forwarding to syslog, kmsg and the console (0 each);
//! every later line is one journal entry. The emperor keeps no fd of it.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Where journald listens for stream connections.
pub const SOCKET: &str = "/run/systemd/journal/stdout";

/// The header for a stream whose entries carry `identifier`.
pub fn header(identifier: &str) -> String {
    // a newline would end the identifier early; names cannot hold one,
    // but the header is built safely all the same
    let id: String = identifier
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    format!("{id}\n\n6\n1\n0\n0\n0\n")
}

/// A connected stream for one vassal instance, header sent, ready to be
/// its fds 1 and 2.
pub fn stream(socket: &Path, identifier: &str) -> io::Result<OwnedFd> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot connect to journald at {}: {e}", socket.display()),
        )
    })?;
    s.write_all(header(identifier).as_bytes())?;
    let _ = s.shutdown(std::net::Shutdown::Read);
    Ok(s.into())
}

/// Checks at start-up that journald listens at `socket`.
pub fn check(socket: &Path) -> io::Result<()> {
    UnixStream::connect(socket).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "--vassal-logs journal: cannot connect to journald's stream socket {}: {e} (is systemd-journald running?)",
                socket.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_seven_lines() {
        assert_eq!(header("app.ini"), "app.ini\n\n6\n1\n0\n0\n0\n");
        assert_eq!(header("a\nb"), "a_b\n\n6\n1\n0\n0\n0\n");
    }
}
