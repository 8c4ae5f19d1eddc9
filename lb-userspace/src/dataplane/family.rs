//! The two address families as the agent programs them: IPv4 services and backends go to
//! SERVICES, BACKENDS and NAT_REPLY, IPv6 ones to SERVICES6, BACKENDS6 and NAT_REPLY6 (why
//! separate maps: `lb-ebpf/src/family.rs`). `plan.rs` is generic over [`Family`], and the
//! agent plans each family in turn; service and backend ids are one space for both, so the
//! plan of one family is told the ids the other holds ([`super::plan::Reserved`]).

use std::{
    fmt::{Debug, Display},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use lb_common::{Addr6, fold6, mask6};

/// One address family, as the agent sees it.
pub trait Family: 'static {
    /// An address as map keys hold it (network byte order).
    type Raw: lb_common::Address + Eq + Hash + Debug;
    /// The host view of an address.
    type Ip: Copy + Ord + Eq + Hash + Debug + Display + Into<IpAddr>;
    /// The host view of an address and port.
    type Sock: Copy + Ord + Eq + Hash + Debug + Display + Into<SocketAddr>;

    /// Map form of an address.
    fn raw(ip: Self::Ip) -> Self::Raw;
    /// Host form of a map address.
    fn ip(raw: Self::Raw) -> Self::Ip;
    /// Address and port.
    fn sock(ip: Self::Ip, port: u16) -> Self::Sock;
    /// The address of `s`.
    fn sock_ip(s: &Self::Sock) -> Self::Ip;
    /// The address when it is of this family.
    fn of_ip(ip: IpAddr) -> Option<Self::Ip>;
    /// The address and port when of this family.
    fn of_sock(s: SocketAddr) -> Option<Self::Sock>;
    /// The address folded to 32 bits, as XDP folds it for the NAT_SERVERS bit.
    fn fold(raw: &Self::Raw) -> u32;
    /// The address a client-IP pin is keyed on, as XDP keys it (`lb-ebpf/src/family.rs`):
    /// IPv4 the address itself, IPv6 its first `prefix` bits.
    fn persist_addr(raw: &Self::Raw, prefix: u32) -> Self::Raw;
}

/// [`Family::persist_addr`] of a host address: the address `client`'s pins are keyed on
/// under a service whose IPv6 persistence prefix is `prefix` (IPv4: `client` itself).
pub fn persist_client(client: IpAddr, prefix: u32) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(c) => IpAddr::V6(V6::ip(V6::persist_addr(&V6::raw(c), prefix))),
    }
}

/// IPv4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V4;
/// IPv6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6;

impl Family for V4 {
    type Raw = u32;
    type Ip = Ipv4Addr;
    type Sock = SocketAddrV4;

    fn raw(ip: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(ip.octets())
    }
    fn ip(raw: u32) -> Ipv4Addr {
        Ipv4Addr::from(raw.to_ne_bytes())
    }
    fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(ip, port)
    }
    fn sock_ip(s: &SocketAddrV4) -> Ipv4Addr {
        *s.ip()
    }
    fn of_ip(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
    fn of_sock(s: SocketAddr) -> Option<SocketAddrV4> {
        match s {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        }
    }
    fn fold(raw: &u32) -> u32 {
        *raw
    }
    fn persist_addr(raw: &u32, _prefix: u32) -> u32 {
        *raw
    }
}

/// The map form of an IPv6 address: its 16 bytes as four words in wire order.
pub fn raw6(ip: Ipv6Addr) -> Addr6 {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

impl Family for V6 {
    type Raw = Addr6;
    type Ip = Ipv6Addr;
    type Sock = SocketAddrV6;

    fn raw(ip: Ipv6Addr) -> Addr6 {
        raw6(ip)
    }
    fn ip(raw: Addr6) -> Ipv6Addr {
        let mut b = [0u8; 16];
        for (chunk, w) in b.chunks_exact_mut(4).zip(raw) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        Ipv6Addr::from(b)
    }
    fn sock(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(ip, port, 0, 0)
    }
    fn sock_ip(s: &SocketAddrV6) -> Ipv6Addr {
        *s.ip()
    }
    fn of_ip(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }
    }
    fn of_sock(s: SocketAddr) -> Option<SocketAddrV6> {
        match s {
            SocketAddr::V6(v6) => Some(v6),
            SocketAddr::V4(_) => None,
        }
    }
    fn fold(raw: &Addr6) -> u32 {
        fold6(raw)
    }
    fn persist_addr(raw: &Addr6, prefix: u32) -> Addr6 {
        mask6(raw, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_wire_order() {
        let a: Ipv6Addr = "2001:db8::1:2".parse().expect("addr");
        assert_eq!(V6::ip(V6::raw(a)), a);
        // The first word holds the first four wire bytes.
        assert_eq!(V6::raw(a)[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        let b: Ipv4Addr = "192.0.2.1".parse().expect("addr");
        assert_eq!(V4::ip(V4::raw(b)), b);
    }

    #[test]
    fn pins_key_ipv6_clients_on_their_prefix_and_ipv4_on_the_address() {
        let c: IpAddr = "2001:db8:c:1:aaaa:bbbb:cccc:dddd".parse().expect("addr");
        let at = |p| persist_client(c, p).to_string();
        assert_eq!(at(64), "2001:db8:c:1::");
        assert_eq!(at(56), "2001:db8:c::");
        assert_eq!(at(72), "2001:db8:c:1:aa00::");
        assert_eq!(persist_client(c, 128), c);
        let v4: IpAddr = "192.0.2.9".parse().expect("addr");
        assert_eq!(persist_client(v4, 64), v4);
    }
}
