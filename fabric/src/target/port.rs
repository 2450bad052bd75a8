//! Ports: the transport addresses a target listens on, each with its own
//! view of every ANA group's state.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::wire::log_page::{adrfam, trtype, AnaState};

/// The transport of a port or a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// NVMe/TCP.
    Tcp,
    /// NVMe/RDMA (RoCE, InfiniBand, iWARP).
    Rdma,
}

impl TransportKind {
    /// The TRTYPE of discovery entries.
    pub fn trtype(self) -> u8 {
        match self {
            TransportKind::Tcp => trtype::TCP,
            TransportKind::Rdma => trtype::RDMA,
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Rdma => "rdma",
        })
    }
}

/// A transport address: `tcp://ADDR:PORT` or `rdma://ADDR:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortAddress {
    /// Transport.
    pub kind: TransportKind,
    /// IP address (no brackets for IPv6).
    pub host: String,
    /// Port number.
    pub port: u16,
}

impl PortAddress {
    /// Address family for discovery entries.
    pub fn adrfam(&self) -> u8 {
        if self.host.contains(':') {
            adrfam::IPV6
        } else {
            adrfam::IPV4
        }
    }

    /// `host:port` for socket APIs (IPv6 in brackets).
    pub fn socket_string(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for PortAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind, self.socket_string())
    }
}

impl FromStr for PortAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("bad address {s:?}: {why} (expected tcp://ADDR:PORT or rdma://ADDR:PORT)")
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no transport"))?;
        let kind = match scheme {
            "tcp" => TransportKind::Tcp,
            "rdma" => TransportKind::Rdma,
            _ => return Err(bad("unknown transport")),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| bad("IPv6 address needs [ADDR]:PORT"))?;
            (h, p)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("no port"))?
        };
        if host.parse::<std::net::IpAddr>().is_err() {
            return Err(bad("not an IP address"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number from 0 to 65535"))?;
        Ok(PortAddress {
            kind,
            host: host.to_string(),
            port,
        })
    }
}

/// One listening address of a target.
pub struct Port {
    /// Port ID (unique within the target, reported in discovery).
    pub id: u16,
    /// Where it listens (the port number may be filled in after binding).
    address: RwLock<PortAddress>,
    /// Whether the discovery subsystem is served here.
    pub discovery: bool,
    ana: RwLock<HashMap<u32, GroupState>>,
}

#[derive(Clone, Copy)]
struct GroupState {
    state: AnaState,
    change_count: u64,
}

/// Counts every ANA state change in the target (the ANA log header's CHGCNT).
pub(crate) static ANA_CHANGE_COUNT: AtomicU64 = AtomicU64::new(1);

impl Port {
    /// A port at `address`; every ANA group starts optimized.
    pub fn new(id: u16, address: PortAddress, discovery: bool) -> Port {
        Port {
            id,
            address: RwLock::new(address),
            discovery,
            ana: RwLock::new(HashMap::new()),
        }
    }

    /// The address.
    pub fn address(&self) -> PortAddress {
        self.address
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record the port number actually bound (for port 0).
    pub fn set_bound_port(&self, port: u16) {
        self.address.write().unwrap_or_else(|e| e.into_inner()).port = port;
    }

    /// The state of ANA group `group` seen through this port.
    pub fn ana_state(&self, group: u32) -> AnaState {
        self.ana
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .map_or(AnaState::Optimized, |g| g.state)
    }

    /// The change count of group `group` on this port.
    pub fn ana_change_count(&self, group: u32) -> u64 {
        self.ana
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .map_or(0, |g| g.change_count)
    }

    /// Set a group's state; returns whether it changed.
    pub(crate) fn set_ana_state(&self, group: u32, state: AnaState) -> bool {
        let mut map = self.ana.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(group).or_insert(GroupState {
            state: AnaState::Optimized,
            change_count: 0,
        });
        if entry.state == state {
            return false;
        }
        entry.state = state;
        entry.change_count = ANA_CHANGE_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a: PortAddress = "tcp://127.0.0.1:4420".parse().unwrap();
        assert_eq!(a.kind, TransportKind::Tcp);
        assert_eq!(a.socket_string(), "127.0.0.1:4420");
        assert_eq!(a.adrfam(), adrfam::IPV4);
        let b: PortAddress = "rdma://[fe80::1]:4420".parse().unwrap();
        assert_eq!(b.host, "fe80::1");
        assert_eq!(b.to_string(), "rdma://[fe80::1]:4420");
        for bad in [
            "127.0.0.1:4420",
            "udp://1.2.3.4:1",
            "tcp://host:1",
            "tcp://1.2.3.4:99999",
            "tcp://1.2.3.4",
        ] {
            assert!(bad.parse::<PortAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ana_state_changes_count() {
        let p = Port::new(1, "tcp://127.0.0.1:0".parse().unwrap(), false);
        assert_eq!(p.ana_state(1), AnaState::Optimized);
        assert!(p.set_ana_state(1, AnaState::Inaccessible));
        assert!(!p.set_ana_state(1, AnaState::Inaccessible));
        assert_eq!(p.ana_state(1), AnaState::Inaccessible);
        assert!(p.ana_change_count(1) > 0);
    }
}
