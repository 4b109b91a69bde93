//! Who is on the other end of a loopback TCP connection. TCP has no peer credentials, but the
//! kernel lists every socket with its owner's uid in `/proc/net/tcp` and `/proc/net/tcp6`: the
//! peer's socket is the one whose local address is the connection's peer address and whose remote
//! address is the listener's side of the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the socket at `peer` connected to `local`, or `None` when no such socket is
/// listed (it closed already, or this is not Linux).
pub(super) fn uid_of(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        find(&text, peer, local)
    })
}

/// The uid of the row of `table` (the text of `/proc/net/tcp` or `tcp6`) from `peer` to `local`.
fn find(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (from, to, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (same(parse(from)?, peer) && same(parse(to)?, local))
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// Equal addresses, an IPv4-mapped IPv6 address being its IPv4 address.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let plain = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && plain(a.ip()) == plain(b.ip())
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word of the address
/// is printed as the kernel holds it in memory, the port as a number.
fn parse(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_row_is_found_by_both_addresses() {
        let lo = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let v4 = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
        let mapped = format!(
            "{:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([127, 0, 0, 1])
        );
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {v4}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1\n\
             1: {v4}:1F90 {v4}:C350 01 00000000:00000000 00:00000000 00000000  1000 0 2\n\
             2: {v4}:C350 {v4}:1F90 01 00000000:00000000 00:00000000 00000000  1001 0 3\n"
        );
        assert_eq!(find(&table, lo(50000), lo(8080)), Some(1001));
        assert_eq!(find(&table, lo(50001), lo(8080)), None);
        let table6 =
            format!("header\n 0: {mapped}:C351 {mapped}:1F90 01 00000000:00000000 00:00000000 00000000  1002 0 4\n");
        assert_eq!(find(&table6, lo(50001), lo(8080)), Some(1002));
    }
}
