//! The DiffServ mark (DSCP) on a socket's packets: how a host tells the
//! queues on the way which of its packets may wait behind the others.
//!
//! An agent marks the connections that carry its uploads as bulk
//! ([`Dscp::BULK`], AF11), so that on its own uplink its downloads' small
//! packets (requests and TCP ACKs) no longer queue behind its uploads:
//! - Linux's default queue (`pfifo_fast`) sorts by the legacy TOS bits,
//!   and AF11 carries "maximise throughput", the bulk band;
//! - the socket's own priority is set to bulk as well, for IPv6 and for
//!   any queue that sorts by `skb->priority`;
//! - Wi-Fi (WMM) maps DSCP 8–15 to the background access category;
//! - a DiffServ switch puts AF1x in its high-throughput class.
//!
//! A queue that ignores the mark (a plain FIFO, or a flow-fair queue such
//! as `fq_codel`, which already keeps small flows apart) behaves as if
//! there were none.

use std::fmt;
use std::str::FromStr;

/// A DSCP value, 0–63.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dscp(u8);

/// Linux's `TC_PRIO_BULK`: the band a bulk socket's packets take in
/// `pfifo_fast`, whatever their family.
const PRIORITY_BULK: u32 = 2;

/// The names [`Dscp::from_str`] takes, with their values (RFC 2474,
/// 2597, 3246, 8622).
const NAMES: [(&str, u8); 22] = [
    ("CS0", 0),
    ("LE", 1),
    ("CS1", 8),
    ("AF11", 10),
    ("AF12", 12),
    ("AF13", 14),
    ("CS2", 16),
    ("AF21", 18),
    ("AF22", 20),
    ("AF23", 22),
    ("CS3", 24),
    ("AF31", 26),
    ("AF32", 28),
    ("AF33", 30),
    ("CS4", 32),
    ("AF41", 34),
    ("AF42", 36),
    ("AF43", 38),
    ("CS5", 40),
    ("EF", 46),
    ("CS6", 48),
    ("CS7", 56),
];

impl Dscp {
    /// AF11, "high-throughput data" (RFC 4594): bulk transfers that may
    /// wait. Its TOS byte (0x28) has the legacy "maximise throughput" bit
    /// that Linux's default queue sorts into its bulk band.
    pub const BULK: Dscp = Dscp(10);

    /// The value, 0–63.
    pub fn value(self) -> u8 {
        self.0
    }

    /// The IPv4 TOS byte (or IPv6 traffic class) carrying this mark.
    pub fn tos(self) -> u32 {
        u32::from(self.0) << 2
    }

    /// Marks every packet `stream` sends from now on. A bulk mark also
    /// sets the socket's priority to bulk, which Linux would otherwise
    /// derive from the TOS byte only for IPv4.
    pub fn mark(self, stream: &tokio::net::TcpStream) -> std::io::Result<()> {
        let socket = socket2::SockRef::from(stream);
        if stream.local_addr()?.is_ipv6() {
            socket.set_tclass_v6(self.tos())?;
            // An IPv4 peer on a dual-stack socket: its packets take the
            // IPv4 TOS, which only the IPv4 option sets.
            let _ = socket.set_tos_v4(self.tos());
        } else {
            socket.set_tos_v4(self.tos())?;
        }
        if self.tos() & 0x18 == 0x08 {
            // After the TOS, which resets it.
            socket.set_priority(PRIORITY_BULK)?;
        }
        Ok(())
    }
}

impl fmt::Display for Dscp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.iter().find(|(_, v)| *v == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A mark that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a DSCP: give a name (AF11, CS1, LE, EF, ...), a number from 0 to 63, or `off`"
)]
pub struct ParseDscpError(String);

impl FromStr for Dscp {
    type Err = ParseDscpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if let Some((_, value)) = NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(text)) {
            return Ok(Dscp(*value));
        }
        match text.parse::<u8>() {
            Ok(value) if value < 64 => Ok(Dscp(value)),
            _ => Err(ParseDscpError(s.to_string())),
        }
    }
}

/// A mark from a flag: `off` (or `none`) for no mark, otherwise a
/// [`Dscp`].
pub fn parse_mark(s: &str) -> Result<Option<Dscp>, ParseDscpError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" => Ok(None),
        _ => s.parse().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_off_are_read() {
        assert_eq!(parse_mark("AF11"), Ok(Some(Dscp::BULK)));
        assert_eq!(parse_mark("af11"), Ok(Some(Dscp::BULK)));
        assert_eq!(parse_mark("10"), Ok(Some(Dscp::BULK)));
        assert_eq!(parse_mark("cs1"), Ok(Some(Dscp(8))));
        assert_eq!(parse_mark("63"), Ok(Some(Dscp(63))));
        assert_eq!(parse_mark("off"), Ok(None));
        assert_eq!(parse_mark("None"), Ok(None));
        for bad in ["64", "-1", "AF14", "", "bulk"] {
            let err = parse_mark(bad).expect_err(bad);
            assert!(err.to_string().contains("0 to 63"), "{err}");
        }
    }

    #[test]
    fn the_bulk_mark_carries_the_throughput_bit_pfifo_fast_sorts_by() {
        assert_eq!(Dscp::BULK.tos(), 0x28);
        // IPTOS_TOS(tos) == IPTOS_THROUGHPUT: pfifo_fast's bulk band.
        assert_eq!(Dscp::BULK.tos() & 0x1e, 0x08);
        assert_eq!(Dscp::BULK.to_string(), "AF11");
        assert_eq!(Dscp(9).to_string(), "9");
    }

    #[tokio::test]
    async fn a_marked_socket_sends_with_the_mark_and_bulk_priority() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (client, (server, _)) = (client.unwrap(), accepted.unwrap());
        Dscp::BULK.mark(&server).unwrap();
        let socket = socket2::SockRef::from(&server);
        assert_eq!(socket.tos_v4().unwrap(), 0x28);
        assert_eq!(socket.priority().unwrap(), PRIORITY_BULK);
        let other = socket2::SockRef::from(&client);
        assert_eq!(other.tos_v4().unwrap(), 0, "only the marked end is marked");
    }
}
