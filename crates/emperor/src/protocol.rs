//! The emperor ⇄ vassal single-byte protocol and the config pipe format
//! (docs/protocol.md).

/// Emperor → vassal: stop now.
pub const MSG_STOP: u8 = 0;
/// Emperor → vassal: graceful reload.
pub const MSG_RELOAD: u8 = 1;
/// Emperor → vassal: graceful stop (with `--emperor-graceful-shutdown`).
pub const MSG_GRACEFUL_STOP: u8 = 2;

/// A message from a vassal, decoded from its byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VassalMessage {
    /// 1: the vassal master is set up.
    Ready,
    /// 2: the vassal reloads and wants its config text again.
    ConfigRequest,
    /// 5: worker 1 accepts requests.
    Accepting,
    /// 17: a request was served (or a sub-emperor started).
    Loyal,
    /// 22: idle, wants to be stopped (or go back to on-demand).
    IdleShutdown,
    /// 26: heartbeat.
    Heartbeat,
    /// 30: SOS, asks for a broodlord zerg.
    Sos,
    /// Any other byte: ignored, as uWSGI does.
    Unknown(u8),
}

impl VassalMessage {
    /// Decodes one byte.
    pub fn from_byte(b: u8) -> VassalMessage {
        match b {
            1 => VassalMessage::Ready,
            2 => VassalMessage::ConfigRequest,
            5 => VassalMessage::Accepting,
            17 => VassalMessage::Loyal,
            22 => VassalMessage::IdleShutdown,
            26 => VassalMessage::Heartbeat,
            30 => VassalMessage::Sos,
            other => VassalMessage::Unknown(other),
        }
    }

    /// The byte of this message.
    pub fn to_byte(self) -> u8 {
        match self {
            VassalMessage::Ready => 1,
            VassalMessage::ConfigRequest => 2,
            VassalMessage::Accepting => 5,
            VassalMessage::Loyal => 17,
            VassalMessage::IdleShutdown => 22,
            VassalMessage::Heartbeat => 26,
            VassalMessage::Sos => 30,
            VassalMessage::Unknown(b) => b,
        }
    }
}

/// `modifier1` of the config packet header.
pub const CONFIG_MODIFIER1: u8 = 115;
/// The largest config the 16-bit header can carry.
pub const MAX_CONFIG_LEN: usize = u16::MAX as usize;

/// A config that cannot be sent over the pipe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigPipeError {
    #[error("config is {0} bytes; the config pipe header carries at most 65535 bytes (uWSGI would silently truncate it)")]
    /// The config is over 65535 bytes (its size).
    TooLarge(usize),
    #[error("config is empty; a uWSGI vassal exits with \"invalid config\" on an empty config")]
    /// The config is empty.
    Empty,
}

/// Encodes a config packet: `115 | u16 length little-endian | 0 | body`.
///
/// ```
/// let pkt = emperor::protocol::encode_config(b"[uwsgi]\n").unwrap();
/// assert_eq!(&pkt[..4], &[115, 8, 0, 0]);
/// ```
pub fn encode_config(config: &[u8]) -> Result<Vec<u8>, ConfigPipeError> {
    if config.is_empty() {
        return Err(ConfigPipeError::Empty);
    }
    if config.len() > MAX_CONFIG_LEN {
        return Err(ConfigPipeError::TooLarge(config.len()));
    }
    let mut pkt = Vec::with_capacity(4 + config.len());
    pkt.push(CONFIG_MODIFIER1);
    pkt.extend_from_slice(&(config.len() as u16).to_le_bytes());
    pkt.push(0);
    pkt.extend_from_slice(config);
    Ok(pkt)
}

/// Checks that `config` can be sent, without building the packet.
pub fn check_config(config: &[u8]) -> Result<(), ConfigPipeError> {
    if config.is_empty() {
        Err(ConfigPipeError::Empty)
    } else if config.len() > MAX_CONFIG_LEN {
        Err(ConfigPipeError::TooLarge(config.len()))
    } else {
        Ok(())
    }
}

/// Decodes the 4-byte header: returns the body length (what a vassal does;
/// modifiers are ignored, as uWSGI's `uwsgi_scheme_emperor()` does).
pub fn decode_config_header(hdr: [u8; 4]) -> usize {
    u16::from_le_bytes([hdr[1], hdr[2]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        for b in 0..=255u8 {
            assert_eq!(VassalMessage::from_byte(b).to_byte(), b);
        }
        assert_eq!(VassalMessage::from_byte(17), VassalMessage::Loyal);
        assert_eq!(VassalMessage::from_byte(26), VassalMessage::Heartbeat);
        assert_eq!(VassalMessage::from_byte(3), VassalMessage::Unknown(3));
    }

    #[test]
    fn config_header_is_little_endian_with_modifiers() {
        let body = vec![b'x'; 0x1234];
        let pkt = encode_config(&body).unwrap();
        assert_eq!(&pkt[..4], &[115, 0x34, 0x12, 0]);
        assert_eq!(
            decode_config_header([pkt[0], pkt[1], pkt[2], pkt[3]]),
            0x1234
        );
        assert_eq!(pkt.len(), 4 + 0x1234);
    }

    #[test]
    fn largest_config_fits_and_one_more_is_refused() {
        assert!(encode_config(&vec![b'a'; 65535]).is_ok());
        assert_eq!(
            encode_config(&vec![b'a'; 65536]),
            Err(ConfigPipeError::TooLarge(65536))
        );
        assert_eq!(encode_config(b""), Err(ConfigPipeError::Empty));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any body of 1 to 65535 bytes: the header carries its length
            /// (what a vassal reads), the body follows unchanged.
            #[test]
            fn config_packet_round_trips(
                body in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 1..512),
                    // near the limit (one repeated byte: generating 64 KiB
                    // of random bytes per case is slow in a debug build)
                    (MAX_CONFIG_LEN - 8..=MAX_CONFIG_LEN, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
                ]
            ) {
                let pkt = encode_config(&body).unwrap();
                prop_assert!(check_config(&body).is_ok());
                prop_assert_eq!(pkt[0], CONFIG_MODIFIER1);
                prop_assert_eq!(decode_config_header([pkt[0], pkt[1], pkt[2], pkt[3]]), body.len());
                prop_assert_eq!(&pkt[4..], &body[..]);
            }

            /// Bodies over the limit are refused with their size, by both checks.
            #[test]
            fn oversized_configs_are_refused(extra in 1usize..4096) {
                let body = vec![b'x'; MAX_CONFIG_LEN + extra];
                prop_assert_eq!(encode_config(&body), Err(ConfigPipeError::TooLarge(body.len())));
                prop_assert_eq!(check_config(&body), Err(ConfigPipeError::TooLarge(body.len())));
            }
        }
    }
}
