//! Every way the data plane can fail, each message naming the problem and the fix.

use std::{io, net::SocketAddr, path::PathBuf};

use super::{Proto, plan::PlanError};

/// Errors of [`super::Dataplane`] and [`super::teardown`].
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The pin directory is not on a BPF filesystem and none could be mounted for it.
    #[error(
        "{dir} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf`, or set \
         agent.bpffs_dir to a directory under a bpffs mount"
    )]
    BpffsNotMounted {
        /// The configured pin directory.
        dir: PathBuf,
    },

    /// `/sys/fs/bpf` is not bpffs and this process runs in a mount namespace of its own (as
    /// under `ip netns exec`): a bpffs mounted here, and every pin in it, would die with it.
    #[error(
        "{dir} is not on a BPF filesystem, and this process has a private mount namespace (as \
         under `ip netns exec`, which mounts a fresh /sys): a bpffs mounted here would vanish \
         with the agent, and with it the pinned maps and links that keep forwarding and the \
         tables across restarts. Enter only the network namespace instead (`nsenter \
         --net=/run/netns/NAME latch run ...`), or mount the host's bpffs where {dir} is; set \
         `[agent] ephemeral_pins = true` to run with pins that die with the agent anyway"
    )]
    PrivateBpffs {
        /// The configured pin directory.
        dir: PathBuf,
    },

    /// `/sys/fs/bpf` was not bpffs and mounting it failed.
    #[error(
        "/sys/fs/bpf is not a BPF filesystem and mounting one there failed ({source}); mount it \
         yourself with `mount -t bpf bpf /sys/fs/bpf`"
    )]
    MountBpffs {
        /// Error of mount(2).
        #[source]
        source: io::Error,
    },

    /// Another agent serves on the pin directory.
    #[error(
        "another latch agent{holder} is running on {dir}: stop it first (SIGTERM drains it, \
         and a `latch run` started during the drain waits for it), or give this one another \
         agent.bpffs_dir"
    )]
    AlreadyRunning {
        /// The locked pin directory.
        dir: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },

    /// The agent draining on the pin directory did not exit in time.
    #[error(
        "the latch agent{holder} draining on {dir} has not exited after {waited:?}: let it \
         finish (its drain is bounded by its [agent.http] drain_timeout), or end it with \
         SIGKILL (the pins stay, and this agent adopts them)"
    )]
    StillDraining {
        /// The locked pin directory.
        dir: PathBuf,
        /// " (pid N)" when known.
        holder: String,
        /// How long this agent waited.
        waited: std::time::Duration,
    },

    /// The interface already runs an XDP program that is not behind this agent's pinned link.
    #[error(
        "{iface} already has an XDP program attached that is not this agent's: another latch \
         agent with another agent.bpffs_dir (or one started under `ip netns exec` with \
         ephemeral_pins, whose pins are private to it), or another tool. Stop that agent, or \
         detach the program with `ip link set dev {iface} xdp off`"
    )]
    XdpInUse {
        /// The interface.
        iface: String,
    },

    /// The kernel refused a BPF or netlink operation for lack of privileges (EPERM).
    #[error(
        "permission denied while {action}: run latch as root, or give it CAP_BPF, CAP_NET_ADMIN \
         and CAP_PERFMON (CAP_SYS_ADMIN on kernels older than 5.8)"
    )]
    PermissionDenied {
        /// What was being done.
        action: String,
        /// The EPERM error.
        #[source]
        source: io::Error,
    },

    /// A pinned map (or the layout manifest) does not match this build's map layout.
    #[error(
        "pinned {path} has {found} but this latch expects {expected}: the pins were made by an \
         incompatible latch build; run `latch down` with that build, or remove {dir} (this drops \
         all connection and persistence state)"
    )]
    LayoutMismatch {
        /// The pinned object.
        path: PathBuf,
        /// Directory to remove to start afresh.
        dir: PathBuf,
        /// Layout this build needs.
        expected: String,
        /// Layout found in the kernel.
        found: String,
    },

    /// A filesystem operation on the pin directory failed.
    #[error("{action} {path} failed: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// The embedded XDP object could not be loaded (maps created or programs parsed).
    #[error("loading the XDP object failed: {source}")]
    Load {
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// The embedded object lacks a map or program this code needs.
    #[error(
        "the XDP object has no {what} named {name}: lb-ebpf and lb-userspace disagree; rebuild \
         both from the same tree"
    )]
    MissingObject {
        /// "map" or "program".
        what: &'static str,
        /// Its name.
        name: String,
    },

    /// The XDP program failed to load (usually the verifier).
    #[error("loading the XDP program into the kernel failed: {source}")]
    Program {
        /// aya's error, including the verifier log.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// A map operation failed.
    #[error("{action} on map {map} failed: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        action: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// An interface named in the config does not exist.
    #[error("unknown network interface {name}: check agent.interfaces against `ip link`")]
    UnknownInterface {
        /// Interface name.
        name: String,
    },

    /// Attaching the XDP program to an interface failed in both driver and generic mode.
    #[error(
        "attaching XDP to {iface} failed: {source} (another XDP program may be attached: see \
         `ip link show {iface}`)"
    )]
    Attach {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// Pinning an object (an XDP link, the layout manifest) failed.
    #[error("pinning {what} at {path} failed: {source}")]
    Pin {
        /// What was being pinned.
        what: String,
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: Box<aya::pin::PinError>,
    },

    /// The kernel fell back to a netlink attachment, which cannot outlive the agent.
    #[error(
        "the kernel attached XDP to {iface} through netlink, which cannot be pinned: latch needs \
         Linux 5.9 or newer (bpf_link for XDP)"
    )]
    LinkUnsupported {
        /// Interface name.
        iface: String,
    },

    /// The spec cannot be programmed.
    #[error(transparent)]
    Plan(#[from] PlanError),

    /// `PersistPins::pin`/`pinned` named a service that is not programmed.
    #[error("service {service}/{proto} is not programmed: apply a spec that contains it first")]
    UnknownService {
        /// Virtual IP and port.
        service: SocketAddr,
        /// Protocol.
        proto: Proto,
    },

    /// `PersistPins::pin` named a backend that is not programmed.
    #[error("backend {addr} is not programmed: apply a spec that contains it first")]
    UnknownBackend {
        /// Backend address.
        addr: SocketAddr,
    },

    /// `PersistPins` was asked to pin a client of one address family under a service of the
    /// other (XDP forwards within one family).
    #[error("client {client} and service {service} are of different IP versions: no pin")]
    PinFamily {
        /// Client address.
        client: std::net::IpAddr,
        /// Virtual IP and port.
        service: SocketAddr,
    },
}

impl DataplaneError {
    /// Turns an aya error into [`DataplaneError::PermissionDenied`] when EPERM is at its root,
    /// since that is the one failure an operator fixes the same way everywhere. EACCES is not
    /// included: the verifier uses it for rejected programs.
    pub(crate) fn or_permission(
        err: &(dyn std::error::Error + 'static),
        action: impl Into<String>,
    ) -> Option<Self> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && io.raw_os_error() == Some(libc::EPERM)
            {
                return Some(Self::PermissionDenied {
                    action: action.into(),
                    source: io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            cur = e.source();
        }
        None
    }

    /// Whether EEXIST or EBUSY is at the root of `err`: what the kernel answers an attach to
    /// an interface that already has an XDP program.
    pub(crate) fn is_in_use(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && matches!(io.raw_os_error(), Some(libc::EEXIST | libc::EBUSY))
            {
                return true;
            }
            cur = e.source();
        }
        false
    }

    pub(crate) fn map(
        map: &'static str,
        action: &'static str,
        source: aya::maps::MapError,
    ) -> Self {
        if let Some(e) = Self::or_permission(&source, format!("{action} on map {map}")) {
            return e;
        }
        Self::Map {
            map,
            action,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
