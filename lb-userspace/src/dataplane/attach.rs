//! XDP and TC attachment through pinned bpf_links, so that forwarding survives the agent: a
//! restarted agent swaps its freshly loaded program into the existing link (bpf_link_update,
//! atomic for in-flight packets) instead of detaching and re-attaching. XDP links are pinned
//! as `links/<iface>`, TC ones (TCX, kernel 6.6 or later) as `links/<iface>:tc` (a colon is
//! never part of an interface name).

use std::{
    collections::BTreeSet,
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};

use super::error::DataplaneError;

/// Where the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// XDP: the fast path, before any skb exists.
    Xdp,
    /// TC ingress: slower, but the frame is an skb, so a partial checksum (a veth sender with
    /// TX offload) is adjusted as one and stays partial for the next hop to complete.
    Tc,
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP, newly attached.
    Driver,
    /// Generic (skb) XDP, newly attached because the driver refused native mode.
    Generic,
    /// An existing pinned link now runs this agent's program.
    Replaced,
    /// TC ingress (TCX link), newly attached.
    Tc,
}

/// Result of attaching to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Interface name.
    pub iface: String,
    /// How.
    pub mode: AttachMode,
}

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The name of the driver behind `iface` (`veth`, `virtio_net`, `mlx5_core`...), from the
/// ethtool ioctl in this process's network namespace; `None` for devices without one (`lo`).
pub(crate) fn driver_name(iface: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` of linux/ethtool.h.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain-old-data structs for which all zeroes is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a datagram socket only to carry the ioctl; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` names the interface (NUL-terminated: IFNAMSIZ zeroed bytes, a shorter
    // name) and points at `info`, which outlives the call and has the layout the kernel
    // fills for ETHTOOL_GDRVINFO.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut req) };
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let len = info
        .driver
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// Interface names double as pin file names; refuse anything that could escape the links
/// directory even if the kernel knew such an interface.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

fn link_path(links_dir: &Path, iface: &str) -> PathBuf {
    links_dir.join(iface)
}

/// The pin name of an interface's link for `hook`.
fn pin_name(iface: &str, hook: Hook) -> String {
    match hook {
        Hook::Xdp => iface.to_owned(),
        Hook::Tc => format!("{iface}:tc"),
    }
}

/// Swaps `tc` into the pinned TCX link at `path`; false (pin removed) when it is unusable.
fn replace_pinned_tc(
    tc: &mut SchedClassifier,
    path: &Path,
    iface: &str,
) -> Result<bool, DataplaneError> {
    let link = match PinnedLink::from_pin(path)
        .map_err(|e| e.to_string())
        .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%iface, path = %path.display(), error = %e, "unusable pinned TC link; re-attaching");
            remove_pin(path)?;
            return Ok(false);
        }
    };
    let updated = tc.attach_to_link(link).map(|id| drop(tc.take_link(id)));
    settle_update(updated, path, iface, "TC")
}

fn attach_fresh_tc(
    tc: &mut SchedClassifier,
    path: &Path,
    iface: &str,
) -> Result<AttachMode, DataplaneError> {
    let attach_err = |e: aya::programs::ProgramError| {
        DataplaneError::or_permission(&e, format!("attaching TC to {iface}")).unwrap_or_else(|| {
            DataplaneError::Attach {
                iface: iface.to_owned(),
                source: Box::new(e),
            }
        })
    };
    let id = tc
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(attach_err)?;
    let link = tc.take_link(id).map_err(attach_err)?;
    let fd_link = FdLink::try_from(link).map_err(|_| DataplaneError::LinkUnsupported {
        iface: iface.to_owned(),
    })?;
    fd_link.pin(path).map_err(|e| DataplaneError::Pin {
        what: format!("the TC link of {iface}"),
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(AttachMode::Tc)
}

/// Swaps `xdp` into the pinned link at `path`. Returns false when the link is defunct
/// (interface gone) or unusable, after removing its pin.
fn replace_pinned(xdp: &mut Xdp, path: &Path, iface: &str) -> Result<bool, DataplaneError> {
    let pinned = match PinnedLink::from_pin(path) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%iface, path = %path.display(), error = %e, "unreadable pinned link; re-attaching");
            remove_pin(path)?;
            return Ok(false);
        }
    };
    let fd_link: FdLink = pinned.into();
    let link = match XdpLink::try_from(fd_link) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%iface, path = %path.display(), error = %e, "pinned object is not an XDP link; re-attaching");
            remove_pin(path)?;
            return Ok(false);
        }
    };
    // The pin keeps the link; our handle is dropped without detaching.
    let updated = xdp.attach_to_link(link).map(|id| drop(xdp.take_link(id)));
    settle_update(updated, path, iface, "XDP")
}

/// The outcome of swapping our program into a pinned link: true when it runs there now;
/// false (pin removed, so the caller attaches afresh) when the link is defunct; a permission
/// failure is an error.
fn settle_update(
    updated: Result<(), aya::programs::ProgramError>,
    path: &Path,
    iface: &str,
    hook: &str,
) -> Result<bool, DataplaneError> {
    let Err(e) = updated else {
        return Ok(true);
    };
    if let Some(perm) =
        DataplaneError::or_permission(&e, format!("updating the {hook} link of {iface}"))
    {
        return Err(perm);
    }
    tracing::warn!(%iface, error = %e, "pinned {hook} link is defunct; re-attaching");
    remove_pin(path)?;
    Ok(false)
}

fn attach_fresh(xdp: &mut Xdp, path: &Path, iface: &str) -> Result<AttachMode, DataplaneError> {
    let (id, mode) = match xdp.attach(iface, XdpMode::Driver) {
        Ok(id) => (id, AttachMode::Driver),
        Err(driver_err) => {
            if let Some(perm) =
                DataplaneError::or_permission(&driver_err, format!("attaching XDP to {iface}"))
            {
                return Err(perm);
            }
            if DataplaneError::is_in_use(&driver_err) {
                return Err(DataplaneError::XdpInUse {
                    iface: iface.to_owned(),
                });
            }
            tracing::warn!(%iface, error = %driver_err, "driver-mode XDP refused; falling back to generic (skb) mode, which is much slower");
            match xdp.attach(iface, XdpMode::Skb) {
                Ok(id) => (id, AttachMode::Generic),
                Err(e) => {
                    return Err(DataplaneError::Attach {
                        iface: iface.to_owned(),
                        source: Box::new(e),
                    });
                }
            }
        }
    };
    let link = xdp.take_link(id).map_err(|e| DataplaneError::Attach {
        iface: iface.to_owned(),
        source: Box::new(e),
    })?;
    // Dropping a netlink-based link detaches it, which is what we want on this error path.
    let fd_link = FdLink::try_from(link).map_err(|_| DataplaneError::LinkUnsupported {
        iface: iface.to_owned(),
    })?;
    fd_link.pin(path).map_err(|e| DataplaneError::Pin {
        what: format!("the XDP link of {iface}"),
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(mode)
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataplaneError::io("removing", path, e)),
    }
}

/// Pinned link names (interface names) under `links_dir`.
pub(crate) fn pinned_links(links_dir: &Path) -> Result<BTreeSet<String>, DataplaneError> {
    let mut out = BTreeSet::new();
    let rd = match std::fs::read_dir(links_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(DataplaneError::io("listing", links_dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| DataplaneError::io("listing", links_dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            out.insert(name.to_owned());
        }
    }
    Ok(out)
}

/// Attaches to every interface in `interfaces` at its hook and detaches pinned links of
/// interfaces (or hooks) no longer listed. Validates every name before changing anything.
pub(crate) fn attach_all(
    xdp: &mut Xdp,
    tc: &mut SchedClassifier,
    links_dir: &Path,
    interfaces: &[(String, Hook)],
) -> Result<Vec<Attached>, DataplaneError> {
    for (iface, _) in interfaces {
        if !valid_name(iface) || ifindex(iface).is_none() {
            return Err(DataplaneError::UnknownInterface {
                name: iface.clone(),
            });
        }
    }
    std::fs::create_dir_all(links_dir).map_err(|e| DataplaneError::io("creating", links_dir, e))?;

    let mut out = Vec::new();
    let wanted: BTreeSet<(&str, Hook)> = interfaces.iter().map(|(i, h)| (i.as_str(), *h)).collect();
    let wanted_pins: BTreeSet<String> = wanted.iter().map(|(i, h)| pin_name(i, *h)).collect();
    // An interface moving between hooks leaves its other link first: two programs on one
    // interface would translate its NAT flows twice.
    for (iface, hook) in &wanted {
        let other = match hook {
            Hook::Xdp => Hook::Tc,
            Hook::Tc => Hook::Xdp,
        };
        let stale = link_path(links_dir, &pin_name(iface, other));
        if stale.exists() {
            remove_pin(&stale)?;
            tracing::info!(%iface, ?other, "detached (the interface moved to the other hook)");
        }
    }
    for (iface, hook) in &wanted {
        let path = link_path(links_dir, &pin_name(iface, *hook));
        let mode = match hook {
            Hook::Xdp if path.exists() && replace_pinned(xdp, &path, iface)? => {
                AttachMode::Replaced
            }
            Hook::Xdp => attach_fresh(xdp, &path, iface)?,
            Hook::Tc if path.exists() && replace_pinned_tc(tc, &path, iface)? => {
                AttachMode::Replaced
            }
            Hook::Tc => attach_fresh_tc(tc, &path, iface)?,
        };
        tracing::info!(%iface, ?hook, ?mode, "attached");
        if *hook == Hook::Xdp && driver_name(iface).as_deref() == Some("veth") {
            // A veth sender with TX checksum offload hands frames on with a partial
            // checksum; forwarded by XDP they arrive as from a wire and are dropped.
            tracing::warn!(
                %iface,
                "XDP on a veth: attach it at TC instead ([agent] attach = {{ {iface} = \"tc\" }}), \
                 or turn TX checksum offload off on the veth peers that send to it (ethtool -K \
                 PEER tx off); otherwise forwarded TCP/UDP frames carry partial checksums and \
                 their receivers drop them (see the README, \"veth\")"
            );
        }
        out.push(Attached {
            iface: (*iface).to_owned(),
            mode,
        });
    }

    for stale in pinned_links(links_dir)? {
        if !wanted_pins.contains(&stale) {
            remove_pin(&link_path(links_dir, &stale))?;
            tracing::info!(link = %stale, "detached (no longer configured)");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_the_links_dir_are_refused() {
        assert!(valid_name("eth0"));
        assert!(valid_name("veth-a.100"));
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn tc_links_have_their_own_pin_name() {
        assert_eq!(pin_name("eth0", Hook::Xdp), "eth0");
        assert_eq!(pin_name("eth0", Hook::Tc), "eth0:tc");
    }

    #[test]
    fn driver_names_come_from_ethtool() {
        // The loopback device has no driver info; a missing device has none either.
        assert_eq!(driver_name("lo"), None);
        assert_eq!(driver_name("latch-nope-0"), None);
        assert_eq!(driver_name("a-name-much-too-long-for-an-interface"), None);
    }

    #[test]
    fn interface_lookup_and_pin_listing() {
        assert!(ifindex("latch-nope-0").is_none());
        assert!(ifindex("lo").is_some());
        let dir = tempfile::tempdir().expect("tempdir");
        let links = dir.path().join("links");
        assert!(
            pinned_links(&links)
                .expect("missing dir lists nothing")
                .is_empty()
        );
        std::fs::create_dir(&links).expect("mkdir");
        std::fs::write(links.join("eth0"), b"").expect("write");
        std::fs::write(links.join("eth1"), b"").expect("write");
        let got: Vec<_> = pinned_links(&links).expect("list").into_iter().collect();
        assert_eq!(got, ["eth0", "eth1"]);
        remove_pin(&links.join("eth0")).expect("remove");
        remove_pin(&links.join("eth0")).expect("removing twice is fine");
        assert_eq!(pinned_links(&links).expect("list").len(), 1);
    }
}
