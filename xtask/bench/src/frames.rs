//! Test frames and the generator's configuration: pure byte layout, no I/O.

use std::net::{IpAddr, Ipv4Addr};

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

pub use lb_common::bench::{GenConfig, MODE_FIXED_FLOWS, MODE_NEW_FLOWS, ReflectConfig};

/// The generator's configuration for frames shaped like `template`: the program copies the
/// header, then writes the source address and port and the IP checksum, which it finishes
/// from `csum_base` (the sum over the header with those fields zeroed).
pub fn gen_config(
    template: &Udp,
    mode: u32,
    flows: u32,
    octet_base: u8,
    octet_span: u8,
) -> GenConfig {
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
    GenConfig {
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

/// The header the generator program writes for packet number `n`: the program's arithmetic,
/// so tests can check that the template and checksum base produce valid headers.
#[cfg(test)]
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

/// Length of every frame of the circulating loop: Ethernet + IPv6 + UDP, and the same length
/// over IPv4 (20 bytes of zero payload), so one header copy serves both.
pub const LOOP_FRAME_LEN: usize = 62;

/// A request of the circulating loop: addresses of either family (both the same family).
#[derive(Clone, Copy, Debug)]
pub struct LoopUdp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// The loop's request frame for `u`, with a valid IPv4 header checksum (UDP checksum 0) or a
/// valid UDP checksum over IPv6.
pub fn loop_frame(u: &LoopUdp) -> [u8; LOOP_FRAME_LEN] {
    let mut f = [0u8; LOOP_FRAME_LEN];
    f[0..6].copy_from_slice(&u.dst_mac);
    f[6..12].copy_from_slice(&u.src_mac);
    match (u.src, u.dst) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            f[14] = 0x60;
            f[18..20].copy_from_slice(&8u16.to_be_bytes());
            f[20] = 17;
            f[21] = 64;
            f[22..38].copy_from_slice(&src.octets());
            f[38..54].copy_from_slice(&dst.octets());
            f[54..56].copy_from_slice(&u.sport.to_be_bytes());
            f[56..58].copy_from_slice(&u.dport.to_be_bytes());
            f[58..60].copy_from_slice(&8u16.to_be_bytes());
            let c = !lb_common::csum::fold(udp6_sum(&f));
            f[60..62].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_ne_bytes());
        }
        (src, dst) => {
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
                // Mixed families never reach here (the bench builds both from one family).
                return f;
            };
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let ip_len = (LOOP_FRAME_LEN - IP_OFF) as u16;
            f[14] = 0x45;
            f[16..18].copy_from_slice(&ip_len.to_be_bytes());
            f[22] = 64;
            f[23] = 17;
            f[26..30].copy_from_slice(&src.octets());
            f[30..34].copy_from_slice(&dst.octets());
            let c = lb_common::csum::checksum(&f[IP_OFF..IP_OFF + 20]);
            f[24..26].copy_from_slice(&c.to_ne_bytes());
            f[34..36].copy_from_slice(&u.sport.to_be_bytes());
            f[36..38].copy_from_slice(&u.dport.to_be_bytes());
            f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        }
    }
    f
}

/// Unfolded sum of the IPv6 pseudo-header and the UDP header and payload of `f` (a
/// [`LOOP_FRAME_LEN`] IPv6 frame), the checksum field included as it stands.
fn udp6_sum(f: &[u8; LOOP_FRAME_LEN]) -> u32 {
    let pseudo = lb_common::csum::sum(&f[22..54]);
    // Upper-layer length (8) and next header (17) as 32-bit big-endian words.
    let tail = lb_common::csum::sum(&[0, 0, 0, 8, 0, 0, 0, 17]);
    pseudo + tail + lb_common::csum::sum(&f[54..62])
}

/// The reflector's configuration for requests shaped like `u`: `mode` as the generator's,
/// `flows` fixed flows, or new flows over `span` values per CPU of the varying word (the
/// source address's last 16 bits, of which IPv4 varies only the last octet) from
/// `word_base`, for `cpus` CPUs.
pub fn reflect_config(
    u: &LoopUdp,
    mode: u32,
    flows: u32,
    word_base: u16,
    span: u16,
    cpus: u32,
) -> ReflectConfig {
    let mut f = loop_frame(u);
    let v6 = u.src.is_ipv6();
    let (word_off, csum_off, sport_off) = if v6 { (36, 60, 54) } else { (28, 24, 34) };
    let word_fixed = u16::from_be_bytes([f[word_off], f[word_off + 1]]);
    f[word_off..word_off + 2].fill(0);
    f[csum_off..csum_off + 2].fill(0);
    f[sport_off..sport_off + 2].fill(0);
    let csum_base = if v6 {
        udp6_sum(&f)
    } else {
        lb_common::csum::sum(&f[IP_OFF..IP_OFF + 20])
    };
    let mut header = [0u64; 8];
    for (i, chunk) in f.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        header[i] = u64::from_ne_bytes(b);
    }
    ReflectConfig {
        header,
        csum_base,
        csum_off: csum_off as u32,
        sport_in_csum: u32::from(v6),
        word_off: word_off as u32,
        word_fixed: u32::from(word_fixed),
        word_base: u32::from(word_base),
        word_span: u32::from(span),
        mode,
        flows,
        base_sport: u32::from(u.sport),
        cpus,
        sport_off: sport_off as u32,
        deadline_ns: 0,
    }
}

/// The request `bench_reflect` builds as its `n`-th on CPU `cpu`: the program's arithmetic,
/// so tests check it, and the bench injects the loop's first frames with it.
pub fn reflected_frame(cfg: &ReflectConfig, cpu: u32, n: u64) -> [u8; LOOP_FRAME_LEN] {
    let (word, sport) = if cfg.mode == MODE_FIXED_FLOWS {
        let flows = u64::from(cfg.flows.max(1));
        (
            cfg.word_fixed,
            (u64::from(cfg.base_sport) + n % flows) as u32,
        )
    } else {
        let span = u64::from(cfg.word_span.max(1));
        let cpu = cpu % cfg.cpus.max(1);
        let w = u64::from(cfg.word_base) + u64::from(cpu) * span + (n >> 16) % span;
        (w as u32, (n & 0xffff) as u32)
    };
    let word_be = (word as u16).to_be_bytes();
    let sport_be = (sport as u16).to_be_bytes();
    let mut sum = cfg.csum_base + u32::from(u16::from_ne_bytes(word_be));
    if cfg.sport_in_csum != 0 {
        sum += u32::from(u16::from_ne_bytes(sport_be));
    }
    let mut check = !lb_common::csum::fold(sum);
    if cfg.sport_in_csum != 0 && check == 0 {
        check = 0xffff;
    }
    let mut f = [0u8; LOOP_FRAME_LEN];
    for (i, w) in cfg.header.iter().enumerate() {
        let b = w.to_ne_bytes();
        let end = (i * 8 + 8).min(LOOP_FRAME_LEN);
        f[i * 8..end].copy_from_slice(&b[..end - i * 8]);
    }
    let (s, w, c) = (
        cfg.sport_off as usize,
        cfg.word_off as usize,
        cfg.csum_off as usize,
    );
    f[s..s + 2].copy_from_slice(&sport_be);
    f[w..w + 2].copy_from_slice(&word_be);
    f[c..c + 2].copy_from_slice(&check.to_ne_bytes());
    f
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
        let cfg = gen_config(&template(), MODE_FIXED_FLOWS, 4, 0, 0);
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
        let cfg = gen_config(&template(), MODE_NEW_FLOWS, 0, 100, 50);
        let mut seen = std::collections::HashSet::new();
        for n in (0..200_000u64).step_by(997) {
            let h = generated_header(&cfg, n);
            assert!(checksum_ok(&h), "packet {n}");
            assert!((100..150).contains(&h[29]));
            assert!(seen.insert((h[29], h[34], h[35])));
        }
    }

    use std::net::Ipv6Addr;

    fn loop_template(v6: bool) -> LoopUdp {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2).into(),
                Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10).into(),
            )
        } else {
            (
                Ipv4Addr::new(203, 0, 113, 2).into(),
                Ipv4Addr::new(198, 51, 100, 10).into(),
            )
        };
        LoopUdp {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src,
            dst,
            sport: 10_000,
            dport: 5000,
        }
    }

    /// The frame's checksum verifies: the IPv4 header's, or the UDP one over IPv6.
    fn loop_checksum_ok(f: &[u8; LOOP_FRAME_LEN]) -> bool {
        if f[12] == 0x86 {
            f[60..62] != [0, 0] && lb_common::csum::fold(udp6_sum(f)) == 0xffff
        } else {
            lb_common::csum::checksum(&f[14..34]) == 0
        }
    }

    #[test]
    fn the_reflector_rebuilds_the_template_request_for_fixed_flows() {
        for v6 in [false, true] {
            let t = loop_template(v6);
            let cfg = reflect_config(&t, MODE_FIXED_FLOWS, 3, 0, 0, 2);
            assert_eq!(reflected_frame(&cfg, 1, 0), loop_frame(&t), "v6 {v6}");
            let sport_off = cfg.sport_off as usize;
            let ports: Vec<u16> = (0..4)
                .map(|n| {
                    let f = reflected_frame(&cfg, 0, n);
                    assert!(loop_checksum_ok(&f), "v6 {v6} n {n}");
                    u16::from_be_bytes([f[sport_off], f[sport_off + 1]])
                })
                .collect();
            assert_eq!(ports, vec![10_000, 10_001, 10_002, 10_000]);
        }
    }

    #[test]
    fn reflected_new_flows_are_valid_distinct_and_disjoint_per_cpu() {
        for v6 in [false, true] {
            let t = loop_template(v6);
            let (base, span) = if v6 {
                (0x1000, 0x100)
            } else {
                ((113 << 8) | 10, 120)
            };
            let cfg = reflect_config(&t, MODE_NEW_FLOWS, 0, base, span, 2);
            let mut seen = std::collections::HashSet::new();
            for cpu in 0..2 {
                for n in (0..(1u64 << 20)).step_by(4099) {
                    let f = reflected_frame(&cfg, cpu, n);
                    assert!(loop_checksum_ok(&f), "v6 {v6} cpu {cpu} n {n}");
                    let src = if v6 { &f[22..38] } else { &f[26..30] };
                    let sport = &f[cfg.sport_off as usize..cfg.sport_off as usize + 2];
                    assert!(seen.insert((src.to_vec(), sport.to_vec())));
                    if !v6 {
                        // Only the last octet varies: the source stays in 203.0.113.0/24.
                        assert_eq!(&f[26..29], &[203, 0, 113]);
                        assert!((10..=250).contains(&f[29]), "{}", f[29]);
                    }
                }
            }
        }
    }

    #[test]
    fn distinct_flows_do_not_repeat() {
        let set: std::collections::HashSet<_> = (0..200_000).map(distinct_flow).collect();
        assert_eq!(set.len(), 200_000);
    }
}
