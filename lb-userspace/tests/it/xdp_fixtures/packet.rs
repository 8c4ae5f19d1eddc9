//! Test packet builder and an independent checksum checker (full RFC 1071 recomputation,
//! sharing no code with the XDP program).

use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;

/// Transport part of a test frame.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `no_checksum` sends checksum 0 (allowed for UDP over IPv4).
    Udp {
        sport: u16,
        dport: u16,
        no_checksum: bool,
    },
    /// Any other IP protocol with raw payload (e.g. ICMP = 1).
    Raw { proto: u8 },
}

impl L4 {
    /// The transport header with `payload` after it, its checksum field zero: the protocol
    /// number, the bytes, and where the checksum goes (None for raw payloads).
    pub fn segment(&self, payload: &[u8]) -> (u8, Vec<u8>, Option<usize>) {
        let mut l4 = Vec::new();
        match *self {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.push(5 << 4);
                l4.push(flags);
                l4.extend_from_slice(&64240u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0]); // checksum
                l4.extend_from_slice(&[0, 0]); // urgent
                l4.extend_from_slice(payload);
                (6, l4, Some(16))
            }
            L4::Udp { sport, dport, .. } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(payload);
                (17, l4, Some(6))
            }
            L4::Raw { proto } => {
                l4.extend_from_slice(payload);
                (proto, l4, None)
            }
        }
    }
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;

/// An Ethernet/IPv4 frame description; `build` computes lengths and checksums.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    /// Flags + fragment offset field (host order), e.g. 0x4000 for DF.
    pub frag: u16,
    /// IPv4 options (length must be a multiple of 4).
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self::new(
            src.0,
            dst.0,
            L4::Tcp {
                sport: src.1,
                dport: dst.1,
                flags,
                seq: 0x0102_0304,
                ack: if flags & ACK != 0 { 0x0a0b_0c0d } else { 0 },
            },
        )
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Self::new(
            src.0,
            dst.0,
            L4::Udp {
                sport: src.1,
                dport: dst.1,
                no_checksum: false,
            },
        )
    }

    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0xee, 0x01],
            src_mac: [0x02, 0, 0, 0, 0xee, 0x02],
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0x1234,
            frag: 0x4000,
            options: Vec::new(),
            l4,
            payload: b"latch fixture payload".to_vec(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        assert_eq!(
            self.options.len() % 4,
            0,
            "IPv4 options must fill 32-bit words"
        );
        let (proto, mut l4, _) = self.l4.segment(&self.payload);
        match self.l4 {
            L4::Tcp { .. } => {
                let c = l4_checksum(self.src, self.dst, 6, &l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp {
                no_checksum: false, ..
            } => {
                let mut c = l4_checksum(self.src, self.dst, 17, &l4);
                if c == 0 {
                    c = 0xffff;
                }
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
        let ihl = 5 + self.options.len() / 4;
        let tot_len = (ihl * 4 + l4.len()) as u16;
        let mut ip = vec![(4 << 4) | ihl as u8, self.tos];
        ip.extend_from_slice(&tot_len.to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HLEN + ip.len() + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// Internet checksum over the concatenation of `parts` (RFC 1071).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut carry_byte: Option<u8> = None;
    for part in parts {
        for &b in part.iter() {
            match carry_byte.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, b])),
                None => carry_byte = Some(b),
            }
        }
    }
    if let Some(hi) = carry_byte {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    checksum(&[&pseudo_header(src, dst, proto, l4.len()), l4])
}

/// An ICMP error from `src` to `dst` (`kind`, `code`, and the four bytes after the checksum,
/// such as the next-hop MTU) quoting the first `quoted` bytes of the IPv4 packet of `inner`
/// (an Ethernet frame from [`Frame::build`]), with its ICMP checksum computed over them.
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (kind, code, rest): (u8, u8, [u8; 4]),
    inner: &[u8],
    quoted: usize,
) -> Frame {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(&inner[ETH_HLEN..ETH_HLEN + quoted]);
    let c = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame::new(src, dst, L4::Raw { proto: 1 });
    f.frag = 0;
    f.payload = icmp;
    f
}

/// Recomputes the IPv4 header checksum and the TCP/UDP checksum (pseudo-header included) of
/// an Ethernet frame; a UDP checksum of 0 means "none" and is accepted. For an ICMP error it
/// checks the ICMP checksum and the quoted IPv4 header's, and the quoted packet's TCP/UDP
/// checksum too when it is quoted whole.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    verify_ip(frame.get(ETH_HLEN..).ok_or("no IP header")?, false)
}

/// `quoted`: an ICMP error's quoted packet, which may be cut short (then only its header
/// checksum can be checked).
fn verify_ip(ip: &[u8], quoted: bool) -> Result<(), String> {
    let what = if quoted { "quoted " } else { "" };
    let ihl = usize::from(ip.first().ok_or("no IP header")? & 0x0f) * 4;
    let hdr = ip.get(..ihl).ok_or("short IP header")?;
    if checksum(&[hdr]) != 0 {
        return Err(format!(
            "bad {what}IPv4 header checksum {:02x?}",
            &hdr[10..12]
        ));
    }
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let Some(l4) = ip.get(ihl..tot_len) else {
        return if quoted {
            Ok(())
        } else {
            Err("short L4".into())
        };
    };
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let sum_ok = || checksum(&[&pseudo_header(src, dst, proto, l4.len()), l4]) == 0;
    match proto {
        6 if !sum_ok() => Err(format!("bad {what}TCP checksum")),
        // A stored UDP checksum of 0 means "none".
        17 if u16::from_be_bytes([l4[6], l4[7]]) != 0 && !sum_ok() => {
            Err(format!("bad {what}UDP checksum"))
        }
        1 if !quoted => {
            if checksum(&[l4]) != 0 {
                return Err("bad ICMP checksum".into());
            }
            // Destination unreachable and time exceeded quote the offending packet.
            match (l4.first(), l4.get(8..)) {
                (Some(3 | 11), Some(inner)) if inner.len() >= 20 => verify_ip(inner, true),
                _ => Ok(()),
            }
        }
        // IPIP: the inner packet must be whole and right too.
        4 => verify_ip(l4, quoted),
        _ => Ok(()),
    }
}

#[test]
fn icmp_errors_verify_and_a_bad_quote_is_caught() {
    let inner = Frame::tcp(
        (Ipv4Addr::new(192, 0, 2, 1), 1000),
        (Ipv4Addr::new(192, 0, 2, 2), 80),
        ACK,
    )
    .build();
    let whole = inner.len() - ETH_HLEN;
    let err = |quoted| {
        icmp_error(
            Ipv4Addr::new(192, 0, 2, 9),
            Ipv4Addr::new(192, 0, 2, 1),
            (3, 4, [0, 0, 5, 0x78]),
            &inner,
            quoted,
        )
        .build()
    };
    verify_checksums(&err(whole)).expect("whole quote");
    verify_checksums(&err(28)).expect("header and 8 bytes");
    // A quoted TCP checksum off by one, the ICMP checksum made to match: the quote is wrong.
    let mut bad = inner.clone();
    bad[ETH_HLEN + 20 + 16] ^= 1;
    let mut f = icmp_error(
        Ipv4Addr::new(192, 0, 2, 9),
        Ipv4Addr::new(192, 0, 2, 1),
        (3, 4, [0, 0, 5, 0x78]),
        &bad,
        whole,
    )
    .build();
    assert!(verify_checksums(&f).is_err(), "bad quoted TCP checksum");
    let last = f.len() - 1;
    f[last] ^= 1;
    assert!(verify_checksums(&f).is_err(), "bad ICMP checksum");
}

#[test]
fn checksum_of_rfc1071_example() {
    // RFC 1071 section 3 example: sum 0xddf2, checksum 0x220d.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(checksum(&[&data]), 0x220d);
    assert_eq!(checksum(&[&data[..3], &data[3..]]), 0x220d);
}

#[test]
fn built_frames_verify() {
    let f = Frame::tcp(
        (Ipv4Addr::new(192, 0, 2, 1), 1000),
        (Ipv4Addr::new(192, 0, 2, 2), 80),
        SYN,
    );
    let mut bytes = f.build();
    verify_checksums(&bytes).expect("fresh frame");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(
        verify_checksums(&bytes).is_err(),
        "a flipped payload bit must fail the TCP sum"
    );
}
