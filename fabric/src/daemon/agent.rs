//! The node agent of `fabricd target`: with `--meta`, the target registers
//! itself with the metadata group as a disk node (name, NVMe-oF address,
//! capacity, failure domain) and keeps it marked online with heartbeats.
//!
//! Decisions:
//! * A target is a disk node: it exports block devices. Controller nodes
//!   (which serve volumes over other nodes' legs) are not built yet.
//! * I/O never waits for the meta group: the target is ready, and serves,
//!   before it has registered; an unreachable group is logged once per
//!   outage and retried, and the leader marks the node offline after its
//!   `--offline-after-secs` without heartbeats.
//! * A node deleted from the cluster while its agent runs is registered
//!   again (as kubelet does): the running daemon is the truth about itself.
//! * A name already registered online at another address is not taken
//!   over: that is another node (two hosts with the same host name), and
//!   the registration waits until that node is marked offline (the group
//!   checks it as the registration commits, so two daemons registering
//!   one name at once cannot both get it). Heartbeats
//!   carry the registered address, so a daemon that was cut off while
//!   another took its name over does not keep that one's record online:
//!   it goes back to waiting for the name.
//! * A target that shuts down tells the group, which marks the node offline
//!   at once (controllers need not wait out the timeout to stop using it);
//!   this runs alongside the shutdown and delays it by at most
//!   `STOP_DEADLINE` (4 s) when the group does not answer.

use std::path::PathBuf;

use anyhow::bail;

use super::target::TargetFile;
use crate::target::PortAddress;

/// Flags of the agent, part of `fabricd target`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// Meta replicas to register this target with as a disk node and to
    /// send heartbeats to, comma-separated HOST:PORT (http:// or https://
    /// as in fabric-ctl) [default: none, the target runs on its own].
    #[arg(long = "meta", value_name = "HOST:PORT,...")]
    pub meta: Option<String>,
    /// With --meta: this disk node's name in the cluster [default: the
    /// host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// With --meta: the address recorded for hosts and peers to connect to
    /// [default: the first --listen address, which must then not be a
    /// wildcard such as 0.0.0.0].
    #[arg(long, value_name = "tcp://IP:PORT")]
    pub advertise: Option<PortAddress>,
    /// With --meta: failure-domain tag (rack, power feed) that placement
    /// keeps mirror members apart by [default: the one recorded for this
    /// node, if any].
    #[arg(long, value_name = "TAG")]
    pub failure_domain: Option<String>,
    /// With --meta: client certificate (PEM) for a meta group that serves
    /// mutual TLS; with --meta-tls-key and --meta-tls-ca.
    #[arg(long, value_name = "FILE")]
    pub meta_tls_cert: Option<PathBuf>,
    /// The private key of --meta-tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub meta_tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) the meta replicas' certificates chain to.
    #[arg(long, value_name = "FILE")]
    pub meta_tls_ca: Option<PathBuf>,
}

/// The agent's settings after merging the file and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Meta endpoints, as given.
    pub endpoints: String,
    /// Node name.
    pub node_name: String,
    /// Address to record; none: the first listener's bound address.
    pub advertise: Option<PortAddress>,
    /// Failure domain (empty: none).
    pub failure_domain: String,
    /// TLS files: certificate, key, CA.
    pub tls: [Option<PathBuf>; 3],
}

/// The host name, from the kernel.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Whether an address listens on every interface (not one to connect to).
fn is_wildcard(address: &PortAddress) -> bool {
    address
        .host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

impl AgentArgs {
    /// The agent's settings, or none without `--meta` (nor `meta` in the
    /// file); `listen` is the target's listen addresses.
    pub fn settings(
        &self,
        file: &TargetFile,
        listen: &[PortAddress],
    ) -> anyhow::Result<Option<AgentSettings>> {
        let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>| flag.clone().or(key.clone());
        let tls = [
            pick(&self.meta_tls_cert, &file.meta_tls_cert),
            pick(&self.meta_tls_key, &file.meta_tls_key),
            pick(&self.meta_tls_ca, &file.meta_tls_ca),
        ];
        let node_name = self.node_name.clone().or(file.node_name.clone());
        let advertise = match (&self.advertise, &file.advertise) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(s)) => Some(
                s.parse::<PortAddress>()
                    .map_err(|e| anyhow::anyhow!("config advertise: {e}"))?,
            ),
            (None, None) => None,
        };
        let failure_domain = self.failure_domain.clone().or(file.failure_domain.clone());
        let Some(endpoints) = self.meta.clone().or(file.meta.clone()) else {
            let orphan = [
                ("--node-name (node_name)", node_name.is_some()),
                ("--advertise (advertise)", advertise.is_some()),
                (
                    "--failure-domain (failure_domain)",
                    failure_domain.is_some(),
                ),
                ("--meta-tls-cert (meta_tls_cert)", tls[0].is_some()),
                ("--meta-tls-key (meta_tls_key)", tls[1].is_some()),
                ("--meta-tls-ca (meta_tls_ca)", tls[2].is_some()),
            ];
            if let Some((setting, _)) = orphan.iter().find(|(_, given)| *given) {
                bail!("{setting} needs --meta (meta): the meta group to register with");
            }
            return Ok(None);
        };
        check_endpoints(&endpoints)?;
        let node_name = match node_name {
            Some(name) => {
                check_name("--node-name (node_name)", &name)?;
                name
            }
            None => {
                let Some(name) = host_name() else {
                    bail!("--meta: the host name cannot be read; give --node-name");
                };
                if check_name("", &name).is_err() {
                    bail!(
                        "--meta: the host name '{name}' is not a valid node name; give --node-name"
                    );
                }
                name
            }
        };
        let failure_domain = failure_domain.unwrap_or_default();
        if !failure_domain.is_empty() {
            check_name("--failure-domain (failure_domain)", &failure_domain)?;
        }
        match &advertise {
            Some(a) if is_wildcard(a) || a.port == 0 => {
                bail!("--advertise (advertise) {a}: give the address hosts connect to, not a wildcard or port 0")
            }
            None => {
                if let Some(first) = listen.first().filter(|a| is_wildcard(a)) {
                    bail!("--meta: the listen address {first} is a wildcard; give --advertise with the address hosts connect to");
                }
            }
            Some(a) if !listen.iter().any(|l| l.kind == a.kind) => {
                bail!(
                    "--advertise (advertise) {a}: the target does not listen on {}",
                    a.kind
                )
            }
            Some(_) => {}
        }
        Ok(Some(AgentSettings {
            endpoints,
            node_name,
            advertise,
            failure_domain,
            tls,
        }))
    }
}

/// The address as the meta group records it: `tcp:IP:PORT`.
pub fn recorded_address(address: &PortAddress) -> String {
    format!("{}:{}", address.kind, address.socket_string())
}

#[cfg(feature = "meta-role")]
fn check_endpoints(endpoints: &str) -> anyhow::Result<()> {
    meta::client::parse_endpoints(endpoints)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("--meta (meta): {e}"))
}

#[cfg(not(feature = "meta-role"))]
fn check_endpoints(_: &str) -> anyhow::Result<()> {
    bail!("--meta: this fabricd was built without the meta role")
}

#[cfg(feature = "meta-role")]
fn check_name(setting: &str, name: &str) -> anyhow::Result<()> {
    meta::validate::name(setting, name).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(not(feature = "meta-role"))]
fn check_name(_: &str, _: &str) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(feature = "meta-role")]
pub use running::{client, spawn, Agent};

#[cfg(feature = "meta-role")]
mod running {
    use std::sync::Arc;
    use std::time::Duration;

    use meta::proto::{DiskNode, DiskNodeSpec, HeartbeatRequest, NodeKind, NodeState};
    use meta::tls::{status_text, Tls, TlsSettingNames};
    use meta::MetaClient;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tonic::{Code, Status};

    use super::AgentSettings;

    /// How long one call retries across replicas before it counts as failed.
    const CALL_DEADLINE: Duration = Duration::from_secs(2);
    /// How long a stopping agent may take to tell the group (its last
    /// heartbeat, or one still under way, then the last word); the
    /// target's shutdown runs meanwhile.
    const STOP_DEADLINE: Duration = Duration::from_secs(4);
    /// Wait between heartbeats before the group has said its timeout.
    const FIRST_INTERVAL: Duration = Duration::from_secs(1);
    /// Longest wait between heartbeats (or registration attempts).
    const MAX_INTERVAL: Duration = Duration::from_secs(10);
    /// Shortest wait between heartbeats.
    const MIN_INTERVAL: Duration = Duration::from_millis(250);

    /// A third of the group's offline timeout, so that two heartbeats can
    /// be lost without the node being marked offline.
    fn interval(offline_after_secs: u32) -> Duration {
        (Duration::from_secs(offline_after_secs.into()) / 3).clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// The running agent: its heartbeats stop when it is dropped.
    pub struct Agent {
        /// Gives whether the node was registered when the loop stopped.
        heartbeats: JoinHandle<bool>,
        stopping: watch::Sender<bool>,
        client: Arc<MetaClient>,
        spec: DiskNodeSpec,
    }

    impl Agent {
        /// Stops the heartbeats and tells the group that the node stops, so
        /// that it is marked offline now rather than after the group's
        /// timeout. Whether or not the group hears it, this ends within
        /// [`STOP_DEADLINE`].
        pub async fn stop(mut self) {
            let _ = self.stopping.send(true);
            let (heartbeats, client, spec) = (&mut self.heartbeats, &self.client, &self.spec);
            let last_word = async {
                // A call under way ends first, so that it cannot reach
                // the group after the last word and undo it.
                if !heartbeats.await.unwrap_or(true) {
                    return None;
                }
                Some(client.send_heartbeat(heartbeat(spec, true)).await)
            };
            let name = spec.name.as_str();
            match tokio::time::timeout(STOP_DEADLINE, last_word).await {
                Ok(None) => tracing::info!(
                    node = name,
                    "this disk node was not registered with the meta group: nothing to tell"
                ),
                Ok(Some(Ok(_))) => {
                    tracing::info!(node = name, "meta group told: this disk node stops")
                }
                Ok(Some(Err(s))) => tracing::info!(
                    node = name,
                    "could not tell the meta group that this disk node stops ({}); \
                     it is marked offline after the group's timeout",
                    status_text(&s)
                ),
                Err(_) => tracing::info!(
                    node = name,
                    "the meta group did not answer in time that this disk node stops; \
                     it is marked offline after the group's timeout"
                ),
            }
        }
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            self.heartbeats.abort();
        }
    }

    /// The meta group's client for these settings: errors are in the
    /// settings (TLS files, endpoints), found before anything is sent.
    pub fn client(settings: &AgentSettings) -> anyhow::Result<MetaClient> {
        let [cert, key, ca] = &settings.tls;
        let tls = Tls::load(
            cert.as_deref(),
            key.as_deref(),
            ca.as_deref(),
            TlsSettingNames {
                cert: "--meta-tls-cert (meta_tls_cert)",
                key: "--meta-tls-key (meta_tls_key)",
                ca: "--meta-tls-ca (meta_tls_ca)",
            },
        )?;
        MetaClient::with_tls(&settings.endpoints, CALL_DEADLINE, tls.as_ref())
            .map_err(|s| anyhow::anyhow!("--meta (meta): {}", s.message()))
    }

    /// Start the agent for a target whose namespaces hold `capacity_bytes`
    /// and whose first listener is bound at `bound` (recorded unless the
    /// settings advertise another address).
    pub fn spawn(
        client: MetaClient,
        settings: &AgentSettings,
        bound: &crate::target::PortAddress,
        capacity_bytes: u64,
    ) -> Agent {
        let spec = DiskNodeSpec {
            name: settings.node_name.clone(),
            address: super::recorded_address(settings.advertise.as_ref().unwrap_or(bound)),
            capacity_bytes,
            failure_domain: settings.failure_domain.clone(),
        };
        let client = Arc::new(client);
        let (stopping, stop) = watch::channel(false);
        Agent {
            heartbeats: tokio::spawn(run(client.clone(), spec.clone(), stop)),
            stopping,
            client,
            spec,
        }
    }

    /// The heartbeat of the node `spec` registers (its last, `stopping`).
    fn heartbeat(spec: &DiskNodeSpec, stopping: bool) -> HeartbeatRequest {
        HeartbeatRequest {
            kind: NodeKind::Disk as i32,
            name: spec.name.clone(),
            address: spec.address.clone(),
            stopping,
        }
    }

    /// Why a registration did not happen.
    enum NotRegistered {
        /// Another node holds the name.
        NameTaken(String),
        /// The call failed.
        Failed(Status),
    }

    /// Register `spec` unless its name is online at another address (a
    /// failure domain recorded for the node, by `fabric-ctl dn create`, is
    /// kept by the group when the agent was given none). Once registered,
    /// says what the registration changed in the record.
    async fn register(client: &MetaClient, spec: &DiskNodeSpec) -> Result<(), NotRegistered> {
        let old = match client.get::<DiskNode>(&spec.name).await {
            Ok(node) if node.state == NodeState::Online as i32 && node.address != spec.address => {
                return Err(NotRegistered::NameTaken(node.address));
            }
            Ok(node) => Some(node),
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(NotRegistered::Failed(s)),
        };
        let new = client
            .register_disk_node(spec.clone())
            .await
            .map_err(NotRegistered::Failed)?;
        if let Some(old) = old {
            log_changes(&old, &new);
        }
        Ok(())
    }

    /// Says when registering changed the node's recorded address or
    /// failure domain (one an operator declared with `dn create`, or a
    /// restart elsewhere): a WARN while it holds extents, since their data
    /// is where the old record said and placement chose their failure
    /// domains by it; an INFO otherwise.
    fn log_changes(old: &DiskNode, new: &DiskNode) {
        for (what, before, after) in [
            ("address", &old.address, &new.address),
            ("failure domain", &old.failure_domain, &new.failure_domain),
        ] {
            if before == after {
                continue;
            }
            if old.extents.is_empty() {
                tracing::info!(node = %new.name, "the {what} of this disk node changes from '{before}' to '{after}'");
            } else {
                tracing::warn!(
                    node = %new.name,
                    extents = old.extents.len(),
                    "the {what} of this disk node changes from '{before}' to '{after}' \
                     while it holds extents of volumes"
                );
            }
        }
    }

    /// Register, then heartbeat until `stop` says so (or aborted); gives
    /// whether the node was registered then.
    async fn run(
        client: Arc<MetaClient>,
        spec: DiskNodeSpec,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let name = spec.name.as_str();
        let mut registered = false;
        let mut wait = FIRST_INTERVAL;
        // What the last failure said; an outage is logged once.
        let mut failing: Option<String> = None;
        loop {
            if *stop.borrow() {
                return registered;
            }
            let outcome = if registered {
                match client.send_heartbeat(heartbeat(&spec, false)).await {
                    Ok(reply) => {
                        wait = interval(reply.offline_after_secs);
                        Ok(())
                    }
                    Err(s) if s.code() == Code::NotFound => {
                        tracing::warn!(
                            node = name,
                            "this disk node is no longer in the cluster (deleted?); registering it again"
                        );
                        registered = false;
                        continue;
                    }
                    // Another daemon registered the name at its address
                    // while this one was cut off: registering again waits
                    // until that one is offline.
                    Err(s) if s.code() == Code::FailedPrecondition => {
                        tracing::warn!(node = name, "{}; registering it again", s.message());
                        registered = false;
                        continue;
                    }
                    Err(s) => Err(status_text(&s)),
                }
            } else {
                match register(&client, &spec).await {
                    Ok(()) => {
                        tracing::info!(
                            node = name,
                            address = %spec.address,
                            capacity_bytes = spec.capacity_bytes,
                            "registered with the meta group as a disk node"
                        );
                        registered = true;
                        failing = None;
                        // A heartbeat at once learns the group's timeout.
                        continue;
                    }
                    Err(NotRegistered::NameTaken(address)) => Err(format!(
                        "disk node '{name}' is online at {address}, not at {}: \
                         another node has this name (give this one another --node-name); \
                         waiting until that one is marked offline",
                        spec.address
                    )),
                    Err(NotRegistered::Failed(s)) => Err(status_text(&s)),
                }
            };
            match outcome {
                Ok(()) => {
                    if failing.take().is_some() {
                        tracing::info!(node = name, "meta group reachable again");
                    }
                }
                Err(why) => {
                    if failing.is_none() {
                        tracing::warn!(
                            node = name,
                            "meta group: {why}; the target keeps serving and retries"
                        );
                    } else if failing.as_ref() != Some(&why) {
                        tracing::debug!(node = name, "meta group: {why}");
                    }
                    failing = Some(why);
                    wait = wait.max(FIRST_INTERVAL);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return registered,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn heartbeats_three_per_timeout_within_bounds() {
            assert_eq!(interval(9), Duration::from_secs(3));
            assert_eq!(interval(0), MIN_INTERVAL);
            assert_eq!(interval(3600), MAX_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> Vec<PortAddress> {
        vec![s.parse().unwrap()]
    }

    #[test]
    fn without_meta_nothing_runs_and_agent_flags_are_refused() {
        let args = AgentArgs::default();
        let none = args
            .settings(&TargetFile::default(), &listen("tcp://127.0.0.1:4420"))
            .unwrap();
        assert_eq!(none, None);
        let args = AgentArgs {
            node_name: Some("dn1".into()),
            ..Default::default()
        };
        let err = args
            .settings(&TargetFile::default(), &listen("tcp://127.0.0.1:4420"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--node-name") && err.contains("--meta"),
            "{err}"
        );
    }

    // Without the meta role every --meta is refused (`check_endpoints`).
    #[cfg(feature = "meta-role")]
    #[test]
    fn settings_check_name_address_and_endpoints() {
        let local = listen("tcp://127.0.0.1:4420");
        let args = |f: fn(&mut AgentArgs)| {
            let mut a = AgentArgs {
                meta: Some("127.0.0.1:7400".into()),
                node_name: Some("dn1".into()),
                ..Default::default()
            };
            f(&mut a);
            a
        };
        let s = args(|_| {})
            .settings(&TargetFile::default(), &local)
            .unwrap()
            .unwrap();
        assert_eq!((s.node_name.as_str(), s.advertise), ("dn1", None));

        let file = TargetFile {
            failure_domain: Some("rack-2".into()),
            advertise: Some("tcp://10.0.0.5:4420".into()),
            ..Default::default()
        };
        let s = args(|_| {}).settings(&file, &local).unwrap().unwrap();
        assert_eq!(s.failure_domain, "rack-2");
        assert_eq!(
            recorded_address(s.advertise.as_ref().unwrap()),
            "tcp:10.0.0.5:4420"
        );

        let wildcard = listen("tcp://0.0.0.0:4420");
        for (a, listen, named) in [
            (args(|a| a.meta = Some("nohost".into())), &local, "--meta"),
            (
                args(|a| a.node_name = Some("a b".into())),
                &local,
                "--node-name",
            ),
            (
                args(|a| a.failure_domain = Some("rack 2".into())),
                &local,
                "--failure-domain",
            ),
            (args(|_| {}), &wildcard, "--advertise"),
            (
                args(|a| a.advertise = Some("tcp://[::]:4420".parse().unwrap())),
                &local,
                "--advertise",
            ),
            (
                args(|a| a.advertise = Some("rdma://10.0.0.5:4420".parse().unwrap())),
                &local,
                "--advertise",
            ),
        ] {
            let err = a
                .settings(&TargetFile::default(), listen)
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{named}: {err}");
        }
        let s = args(|a| a.advertise = Some("tcp://10.0.0.5:4420".parse().unwrap()))
            .settings(&TargetFile::default(), &wildcard)
            .unwrap()
            .unwrap();
        assert!(s.advertise.is_some());
    }
}
