//! A server's decapsulation in user space, for kernels built without `ipip` and `ip6tnl`
//! (this test machine's: CONFIG_NET_IPIP and CONFIG_IPV6_TUNNEL are off). It does what those
//! devices do on receive: a thread in the server's namespace reads the frames arriving on
//! its uplink (AF_PACKET), and writes the inner packet of each IPIP (protocol 4) or IP6IP6
//! (next header 41) packet sent to the server's own address into a TUN device, where the
//! kernel receives it as from a tunnel device: the client's packet to the VIP, delivered to
//! the server's socket. Replies leave by the server's own routes, as with a real tunnel
//! device. The kernel also answers each outer packet with an ICMP protocol unreachable to the
//! load balancer's tunnel source (it has no handler for protocol 4 / 41), which latch passes.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use latch_tests::Netns;

/// The TUN device's name in the server's namespace.
pub const TUN: &str = "tdecap";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const PACKET_OUTGOING: u8 = 4;

/// Packets decapsulated so far: IPv4 in IPv4, IPv6 in IPv6.
#[derive(Default)]
pub struct Counts {
    pub ipip: AtomicU64,
    pub ip6ip6: AtomicU64,
}

/// The running decapsulator; stopped (and its TUN device gone) on drop.
pub struct Decap {
    stop: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
    thread: Option<JoinHandle<latch_tests::Result<Result<(), String>>>>,
}

impl Drop for Decap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn open_tun() -> Result<File, String> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    // SAFETY: an all-zero ifreq is valid; the name is shorter than IFNAMSIZ and stays
    // NUL-terminated; the ioctl reads the struct and creates the device in this thread's
    // network namespace, tied to this file descriptor.
    let rc = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(TUN.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &ifr)
    };
    if rc != 0 {
        return Err(last_error("TUNSETIFF"));
    }
    Ok(tun)
}

/// An AF_PACKET socket receiving every frame of `ifindex`, with a 100 ms receive timeout.
fn packet_socket(ifindex: u32) -> Result<OwnedFd, String> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    if fd < 0 {
        return Err(last_error("AF_PACKET socket"));
    }
    // SAFETY: `fd` is a fresh, valid descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_ll with family, protocol and ifindex set, passed with its
    // size; a timeval passed with its size.
    let rc = unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex as i32;
        let bound = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        bound
            | libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
    };
    if rc != 0 {
        return Err(last_error("binding the AF_PACKET socket"));
    }
    Ok(fd)
}

/// The inner packet of `frame` if it is IPIP or IP6IP6 to `local4` / `local6`, and which.
fn inner(frame: &[u8], local4: Ipv4Addr, local6: Ipv6Addr) -> Option<(bool, &[u8])> {
    let ip = frame.get(14..)?;
    match frame.get(12..14)? {
        [0x08, 0x00] => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            (ip.get(9) == Some(&4) && ip.get(16..20)? == local4.octets())
                .then(|| ip.get(ihl..len).map(|p| (true, p)))?
        }
        [0x86, 0xdd] => {
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            (ip.get(6) == Some(&41) && ip.get(24..40)? == local6.octets())
                .then(|| ip.get(40..40 + len).map(|p| (false, p)))?
        }
        _ => None,
    }
}

impl Decap {
    /// Starts decapsulating what arrives on `uplink` of `ns` for `local4` / `local6`, and
    /// brings the TUN device up (reverse-path filter off on it, as on a tunnel device).
    pub fn start(
        ns: &Netns,
        uplink: &str,
        local4: Ipv4Addr,
        local6: Ipv6Addr,
    ) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let uplink = std::ffi::CString::new(uplink).expect("interface name");
        let (st, c) = (Arc::clone(&stop), Arc::clone(&counts));
        let thread = ns
            .spawn_thread("decap", move || -> Result<(), String> {
                let setup = || -> Result<(File, OwnedFd), String> {
                    // SAFETY: a valid C string; the lookup runs in this thread's namespace.
                    let ifindex = unsafe { libc::if_nametoindex(uplink.as_ptr()) };
                    if ifindex == 0 {
                        return Err(last_error("uplink"));
                    }
                    Ok((open_tun()?, packet_socket(ifindex)?))
                };
                let (mut tun, sock) = match setup() {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let mut buf = vec![0u8; 65_536];
                while !st.load(Ordering::Relaxed) {
                    // SAFETY: a zeroed sockaddr_ll and its length for recvfrom to fill; `buf`
                    // is writable for its whole length.
                    let (n, pkttype) = unsafe {
                        let mut from: libc::sockaddr_ll = std::mem::zeroed();
                        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                        let n = libc::recvfrom(
                            sock.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut from as *mut libc::sockaddr_ll).cast(),
                            &mut len,
                        );
                        (n, from.sll_pkttype)
                    };
                    // A timeout (or an interrupted call): look at the stop flag again.
                    let Ok(n) = usize::try_from(n) else { continue };
                    if pkttype == PACKET_OUTGOING {
                        continue;
                    }
                    if let Some((v4, packet)) = inner(&buf[..n], local4, local6) {
                        tun.write_all(packet)
                            .map_err(|e| format!("TUN write: {e}"))?;
                        let counter = if v4 { &c.ipip } else { &c.ip6ip6 };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        let decap = Self {
            stop,
            counts,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("decapsulator: {e}")),
            Err(_) => return Err("decapsulator did not start".into()),
        }
        ns.ip(&["link", "set", TUN, "up"])
            .and_then(|_| ns.sysctl(&[(&format!("net.ipv4.conf.{TUN}.rp_filter"), "0")]))
            .map_err(|e| e.to_string())?;
        Ok(decap)
    }
}
