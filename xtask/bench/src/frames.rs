//! Test frames and the generator's configuration: pure byte layout, no I/O.

use std::net::Ipv4Addr;

/// Ethernet + IPv4 + UDP header length.
pub const HDR_LEN: usize = 42;
/// Minimum Ethernet frame without FCS: what a 64-byte packet is on a veth.
pub const FRAME_LEN: usize = 60;
const IP_OFF: usize = 14;
const IP_CSUM_OFF: usize = 24;
const IP_SRC_OFF: usize = 26;

/// A UDP/IPv4 frame's addresses.
#[derive(Clone, Copy, Debug)]
pub struct Udp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// A 60-byte UDP frame with a valid IP checksum and no UDP checksum (0, allowed for IPv4).
pub fn udp_frame(u: &Udp) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&u.dst_mac);
    f[6..12].copy_from_slice(&u.src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (FRAME_LEN - IP_OFF) as u16;
    let ip = &mut f[IP_OFF..IP_OFF + 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&u.src.octets());
    ip[16..20].copy_from_slice(&u.dst.octets());
    let c = lb_common::csum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&u.sport.to_be_bytes());
    udp[2..4].copy_from_slice(&u.dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

/// Generator modes (`GenConfig::mode`).
pub const MODE_FIXED_FLOWS: u32 = 0;
pub const MODE_NEW_FLOWS: u32 = 1;

/// Mirror of `GenConfig` in lb-ebpf/src/bin/latch-bench.rs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    pub header: [u64; 6],
    pub csum_base: u32,
    pub mode: u32,
    pub flows: u32,
    pub src_addr: u32,
    pub base_sport: u32,
    pub octet_base: u32,
    pub octet_span: u32,
    pub _pad: u32,
}

const _: () = assert!(std::mem::size_of::<GenConfig>() == 80);

// SAFETY: repr(C), integers only, no padding (size asserted above).
unsafe impl aya::Pod for GenConfig {}

impl GenConfig {
    /// The generator's configuration for frames shaped like `template`: the program copies the
    /// header, then writes the source address and port and the IP checksum, which it finishes
    /// from `csum_base` (the sum over the header with those fields zeroed).
    pub fn new(template: &Udp, mode: u32, flows: u32, octet_base: u8, octet_span: u8) -> Self {
        let frame = udp_frame(template);
        let mut hdr = [0u8; 48];
        hdr[..HDR_LEN].copy_from_slice(&frame[..HDR_LEN]);
        hdr[IP_CSUM_OFF..IP_CSUM_OFF + 2].fill(0);
        hdr[IP_SRC_OFF..IP_SRC_OFF + 4].fill(0);
        let csum_base = hdr[IP_OFF..IP_OFF + 20]
            .chunks(2)
            .map(|c| u32::from(u16::from_ne_bytes([c[0], c[1]])))
            .sum();
        let mut header = [0u64; 6];
        for (i, chunk) in hdr.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            header[i] = u64::from_ne_bytes(b);
        }
        Self {
            header,
            csum_base,
            mode,
            flows,
            src_addr: u32::from_ne_bytes(template.src.octets()),
            base_sport: u32::from(template.sport),
            octet_base: u32::from(octet_base),
            octet_span: u32::from(octet_span),
            _pad: 0,
        }
    }
}

/// The header the generator program writes for packet number `n`: the program's arithmetic,
/// so tests can check that the template and checksum base produce valid headers, and the
/// packet-socket generator (used where live frames are refused) sends the same frames.
pub fn generated_header(cfg: &GenConfig, n: u64) -> [u8; HDR_LEN] {
    let (src_addr, sport) = if cfg.mode == MODE_FIXED_FLOWS {
        let flows = u64::from(cfg.flows.max(1));
        (cfg.src_addr, u64::from(cfg.base_sport) + n % flows)
    } else {
        let span = u64::from(cfg.octet_span.max(1));
        let octet = (u64::from(cfg.octet_base) + (n >> 16) % span) as u8;
        let mut bytes = cfg.src_addr.to_ne_bytes();
        bytes[3] = octet;
        (u32::from_ne_bytes(bytes), n & 0xffff)
    };
    let mut out = [0u8; 48];
    for (i, w) in cfg.header.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    out[IP_SRC_OFF..IP_SRC_OFF + 4].copy_from_slice(&src_addr.to_ne_bytes());
    out[34..36].copy_from_slice(&(sport as u16).to_be_bytes());
    let a = src_addr.to_ne_bytes();
    let mut sum = cfg.csum_base
        + u32::from(u16::from_ne_bytes([a[0], a[1]]))
        + u32::from(u16::from_ne_bytes([a[2], a[3]]));
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    out[IP_CSUM_OFF..IP_CSUM_OFF + 2].copy_from_slice(&(!(sum as u16)).to_ne_bytes());
    let mut h = [0u8; HDR_LEN];
    h.copy_from_slice(&out[..HDR_LEN]);
    h
}

/// Source port and address of the `i`-th distinct flow of a batch of new flows: ports vary
/// fastest, then the last octet of 203.0.113.x (within 10..=250).
pub fn distinct_flow(i: u32) -> (Ipv4Addr, u16) {
    let port = 1024 + (i % 60_000) as u16;
    let octet = 10 + ((i / 60_000) % 240) as u8;
    (Ipv4Addr::new(203, 0, 113, octet), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Udp {
        Udp {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(203, 0, 113, 2),
            dst: Ipv4Addr::new(198, 51, 100, 10),
            sport: 10_000,
            dport: 5000,
        }
    }

    fn checksum_ok(frame: &[u8]) -> bool {
        // Summing a header including its checksum gives 0xffff, i.e. a zero complement.
        lb_common::csum::checksum(&frame[14..34]) == 0
    }

    #[test]
    fn udp_frame_has_valid_ip_checksum_and_fields() {
        let f = udp_frame(&template());
        assert_eq!(f.len(), FRAME_LEN);
        assert!(checksum_ok(&f));
        assert_eq!(&f[30..34], &[198, 51, 100, 10]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 5000);
    }

    #[test]
    fn fixed_flow_headers_cycle_through_ports_with_valid_checksums() {
        let cfg = GenConfig::new(&template(), MODE_FIXED_FLOWS, 4, 0, 0);
        let ports: Vec<u16> = (0..6)
            .map(|n| {
                let h = generated_header(&cfg, n);
                assert!(checksum_ok(&h));
                u16::from_be_bytes([h[34], h[35]])
            })
            .collect();
        assert_eq!(ports, vec![10_000, 10_001, 10_002, 10_003, 10_000, 10_001]);
        // The fixed-flow header is exactly the template frame's header.
        assert_eq!(
            &generated_header(&cfg, 0)[..],
            &udp_frame(&template())[..HDR_LEN]
        );
    }

    #[test]
    fn new_flow_headers_are_distinct_and_valid() {
        let cfg = GenConfig::new(&template(), MODE_NEW_FLOWS, 0, 100, 50);
        let mut seen = std::collections::HashSet::new();
        for n in (0..200_000u64).step_by(997) {
            let h = generated_header(&cfg, n);
            assert!(checksum_ok(&h), "packet {n}");
            assert!((100..150).contains(&h[29]));
            assert!(seen.insert((h[29], h[34], h[35])));
        }
    }

    #[test]
    fn distinct_flows_do_not_repeat() {
        let set: std::collections::HashSet<_> = (0..200_000).map(distinct_flow).collect();
        assert_eq!(set.len(), 200_000);
    }
}
