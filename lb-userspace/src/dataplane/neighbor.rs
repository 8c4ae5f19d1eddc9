//! Keeps backends' link-layer addresses in the kernel's neighbour table.
//!
//! XDP's `bpf_fib_lookup` cannot resolve ARP: for a next hop without a neighbour entry it
//! returns NO_NEIGH and the program hands the packet to the kernel. That is harmless for NAT
//! (the kernel forwards the rewritten packet and resolves ARP on the way) but breaks DSR, where
//! the untouched packet is addressed to the VIP and the kernel has nowhere to send it. So the
//! agent solicits every backend with one ICMP echo request when it programs it and again
//! periodically, the way keepalived and Katran's healthcheckers keep their neighbours warm.
//! IPv6 backends get an ICMPv6 echo request, which makes the kernel run neighbour discovery.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// An ICMP echo request (type 8, code 0) with a fixed identifier; the checksum is filled in.
fn echo_request(sequence: u16) -> [u8; 8] {
    let mut packet = [8, 0, 0, 0, 0x1a, 0x7c, 0, 0];
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    // lb_common's checksum is in memory order: stored with to_ne_bytes, nothing is swapped.
    let checksum = lb_common::csum::checksum(&packet);
    packet[2..4].copy_from_slice(&checksum.to_ne_bytes());
    packet
}

/// An ICMPv6 echo request (type 128): a raw ICMPv6 socket's checksum is filled in by the
/// kernel (RFC 3542), as it covers a pseudo-header only the kernel knows the source of.
fn echo_request6(sequence: u16) -> [u8; 8] {
    let mut packet = [128, 0, 0, 0, 0x1a, 0x7c, 0, 0];
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    packet
}

/// Sends one echo request to each address (replies are ignored: the point is the ARP or
/// neighbour discovery exchange the kernel performs to send it). Returns how many were sent;
/// failures are logged, never fatal.
pub fn solicit(addrs: impl IntoIterator<Item = IpAddr>) -> usize {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.into_iter().partition(IpAddr::is_ipv4);
    send_echoes((Domain::IPV4, Protocol::ICMPV4), &v4, echo_request)
        + send_echoes((Domain::IPV6, Protocol::ICMPV6), &v6, echo_request6)
}

fn send_echoes(
    (domain, protocol): (Domain, Protocol),
    addrs: &[IpAddr],
    request: fn(u16) -> [u8; 8],
) -> usize {
    if addrs.is_empty() {
        return 0;
    }
    let socket = match Socket::new(domain, Type::RAW, Some(protocol)) {
        Ok(socket) => socket,
        Err(err) => {
            tracing::warn!(%err, "cannot open a raw ICMP socket to warm the neighbour table");
            return 0;
        }
    };
    if let Err(err) = socket.set_nonblocking(true) {
        tracing::debug!(%err, "ICMP socket stays blocking");
    }
    let mut sent = 0;
    for (sequence, addr) in addrs.iter().enumerate() {
        let target = SocketAddr::new(*addr, 0);
        match socket.send_to(&request(sequence as u16), &target.into()) {
            Ok(_) => sent += 1,
            Err(err) => tracing::debug!(%addr, %err, "neighbour solicitation failed"),
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let packet = echo_request(7);
        assert_eq!(packet[0], 8);
        assert_eq!(&packet[6..8], &[0, 7]);
        // A packet with a correct checksum sums to zero.
        assert_eq!(lb_common::csum::checksum(&packet), 0);
    }
}
