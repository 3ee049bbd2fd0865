//! Bytes this process wrote to its TCP connections that the peers have not
//! acknowledged yet, as the kernel counts them.
//!
//! An upload's body leaves regmirror for socket buffers (and a proxy's) long
//! before it reaches the registry: on a slow link, megabytes are still on
//! their way when the last byte is handed over. Whether they still move is
//! known only to the kernel. On Linux it says so in `/proc/net/tcp` and
//! `/proc/net/tcp6`: each socket's `tx_queue`, the bytes written and not
//! yet acknowledged; this process's sockets are the `socket:[inode]` links
//! in `/proc/self/fd`. No descriptor is touched, and nothing here needs
//! `unsafe`. Elsewhere, or without `/proc`, there is no count, and the wait
//! for an answer is the plain one ([`super::deadline`]).
//!
//! The count is per socket, not per request (reqwest does not say which
//! connection carries a request): a watch sees progress when any of this
//! process's sockets that held bytes drained. A connection whose peer went
//! silent keeps its bytes; the request on it is then judged by the plain
//! wait once nothing else drains.

use std::collections::HashMap;

/// Unacknowledged bytes per socket (by inode) with any pending, at one
/// moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unacked(HashMap<u64, u64>);

impl Unacked {
    /// The count now; `None` where the kernel does not tell.
    pub fn now() -> Option<Unacked> {
        let ours = own_sockets()?;
        let mut pending = HashMap::new();
        let mut read_any = false;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            read_any = true;
            for (inode, bytes) in parse_table(&text) {
                if bytes > 0 && ours.contains(&inode) {
                    pending.insert(inode, bytes);
                }
            }
        }
        read_any.then_some(Unacked(pending))
    }

    /// True when a socket that had bytes pending in `self` has at least
    /// `min` fewer in `later` (acknowledged by its peer), or none left.
    pub fn drained(&self, later: &Unacked, min: u64) -> bool {
        self.0.iter().any(|(inode, &before)| {
            let after = later.0.get(inode).copied().unwrap_or(0);
            before.saturating_sub(after) >= min.min(before)
        })
    }
}

/// The inodes of this process's sockets.
fn own_sockets() -> Option<std::collections::HashSet<u64>> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .filter_map(|target| {
                let target = target.to_str()?;
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect(),
    )
}

/// (inode, unacknowledged bytes) of each socket in a `/proc/net/tcp`
/// table: `sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout
/// inode …`, the queues in hexadecimal. Lines that do not parse are
/// skipped.
fn parse_table(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (tx, _rx) = fields.get(4)?.split_once(':')?;
        let bytes = u64::from_str_radix(tx, 16).ok()?;
        let inode = fields.get(9)?.parse().ok()?;
        Some((inode, bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_table_parses_to_inodes_and_queues() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:9C40 0100007F:1F90 01 0007A120:00000000 01:00000014 00000000     0        0 67890 1 0000000000000000 20 4 30 10 -1\n   2: garbage\n";
        let parsed: Vec<(u64, u64)> = parse_table(table).collect();
        assert_eq!(parsed, vec![(12345, 0), (67890, 500_000)]);
    }

    #[test]
    fn draining_is_any_pending_socket_acknowledged_by_enough() {
        let before = Unacked(HashMap::from([(1, 10_000), (2, 500)]));
        let same = Unacked(HashMap::from([(1, 10_000), (2, 500)]));
        assert!(!before.drained(&same, 1024));
        let moved = Unacked(HashMap::from([(1, 8_000), (2, 500)]));
        assert!(before.drained(&moved, 1024));
        // A socket with less than `min` pending counts once it is empty.
        let emptied = Unacked(HashMap::from([(1, 10_000)]));
        assert!(before.drained(&emptied, 1024));
        assert!(!Unacked::default().drained(&same, 1024));
    }

    /// The kernel's count, read back: bytes written to a peer that does not
    /// read are pending on our socket, then acknowledged once it reads.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_counts_what_a_peer_has_not_acknowledged() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        // Fill the peer's receive buffer and ours: the rest stays unsent.
        let chunk = vec![7u8; 1 << 16];
        let mut written = 0usize;
        while let Ok(n) = ours.write(&chunk) {
            written += n;
        }
        let before = Unacked::now().expect("Linux tells through /proc");
        assert!(
            before.0.values().any(|&b| b > 0),
            "nothing pending after {written} bytes: {before:?}"
        );
        let mut sink = vec![0u8; 1 << 20];
        let mut read = 0;
        while read < written / 2 {
            read += peer.read(&mut sink).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = Unacked::now().unwrap();
        assert!(before.drained(&after, 1024), "{before:?} → {after:?}");
    }
}
