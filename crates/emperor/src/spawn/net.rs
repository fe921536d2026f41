//! Network set-up of the reload check's sandbox (`crate::sandbox`).

use std::io;
use std::os::fd::AsRawFd;

/// Brings the loopback interface of the calling process's network
/// namespace up (a new namespace starts with `lo` down, and a vassal that
/// binds 127.0.0.1 would fail there).
pub fn loopback_up() -> io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`
    // into its union; `req` is a valid, writable ifreq that outlives the call
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the successful SIOCGIFFLAGS above set the flags member
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`, which is
    // valid for the call
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
