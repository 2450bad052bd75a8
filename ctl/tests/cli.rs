//! `fabric-ctl` against an in-process meta replica: every object kind,
//! tables and JSON, error messages and exit codes, completions.

use std::process::{Command, Output};

use meta::cli::MetaArgs;

#[path = "../../meta/tests/support/pki.rs"]
mod pki;

/// A meta replica running on its own runtime thread; stops when dropped.
struct Server {
    address: String,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start_server() -> Server {
    start_server_with(|args| args)
}

/// A replica with its settings changed by `edit`.
fn start_server_with(edit: impl FnOnce(MetaArgs) -> MetaArgs) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("ctl-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let config = edit(MetaArgs {
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some(address.clone()),
        tick_ms: Some(20),
        ..Default::default()
    })
    .resolve()
    .expect("settings");
    runtime.spawn(meta::serve(config, listener, std::future::pending()));
    Server {
        address,
        _runtime: runtime,
        _dir: dir,
    }
}

impl Server {
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fabric-ctl"))
            .env("FABRIC_META_ENDPOINT", &self.address)
            .args(args)
            .output()
            .expect("run fabric-ctl")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "fabric-ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs and expects exit code `code`; returns stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "fabric-ctl {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).expect("utf-8")
    }
}

#[test]
fn objects_tables_json_and_exit_codes() {
    let s = start_server();
    // The replica is ready once it answers (the client retries until then).
    s.ok(&["--timeout", "20", "cluster", "status"]);
    s.ok(&["cluster", "create", "demo"]);
    let err = s.fails(4, &["cluster", "create", "demo"]);
    assert_eq!(err.trim(), "fabric-ctl: cluster 'demo' already exists");

    for (name, domain) in [("d1", "r1"), ("d2", "r2"), ("d3", "r3")] {
        s.ok(&[
            "dn",
            "create",
            name,
            "--address",
            "tcp:127.0.0.1:4420",
            "--capacity",
            "100G",
            "--failure-domain",
            domain,
        ]);
    }
    s.ok(&["cn", "create", "c1", "--address", "tcp:127.0.0.1:4430"]);
    s.ok(&["cn", "register", "c2", "--address", "tcp:127.0.0.1:4431"]);
    s.ok(&[
        "host",
        "create",
        "h1",
        "--nqn",
        "nqn.2014-08.org.nvmexpress:uuid:h1",
    ]);
    let table = s.ok(&["dn", "list"]);
    let mut lines = table.lines();
    assert!(lines.next().expect("header").starts_with("NAME"), "{table}");
    assert_eq!(lines.count(), 3, "{table}");

    s.ok(&[
        "vol", "create", "v1", "--size", "10G", "--legs", "2", "--host", "h1",
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "vol", "get", "v1"])).expect("JSON");
    assert_eq!(json["legs"].as_array().expect("legs").len(), 2);
    assert_eq!(json["paths"][0]["role"], "PATH_ROLE_ACTIVE");
    assert_eq!(json["paths"][1]["ana_state"], "ANA_STATE_INACCESSIBLE");
    assert!(s.ok(&["vol", "get", "v1"]).contains("DISK-NODE"));

    let err = s.fails(3, &["vol", "get", "nope"]);
    assert_eq!(err.trim(), "fabric-ctl: volume 'nope' does not exist");
    let err = s.fails(5, &["host", "delete", "h1"]);
    assert!(err.contains("v1"), "{err}");
    let err = s.fails(
        5,
        &["vol", "create", "big", "--size", "1T", "--replicas", "3"],
    );
    assert!(err.contains("cannot place"), "{err}");
    s.fails(2, &["vol", "create", "v2"]);
    s.fails(2, &["host", "create", "bad/name", "--nqn", "nqn.x"]);

    s.ok(&["snap", "create", "v1", "s1"]);
    assert!(s.ok(&["snap", "list", "v1"]).contains("s1"));
    let ops: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "op", "list"])).expect("JSON");
    assert_eq!(ops["items"][0]["kind"], "snapshot-create");
    s.fails(5, &["snap", "delete", "v1", "s1"]);
    // No agent takes the snapshot: the operator cancels its operation,
    // which fails the snapshot, and then it and its volume can go.
    let op = ops["items"][0]["name"].as_str().expect("operation name");
    let cancelled = s.ok(&["op", "cancel", op, "--reason", "no agents yet"]);
    assert!(
        cancelled.contains("failed") && cancelled.contains("no agents yet"),
        "{cancelled}"
    );
    let snap: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "snap", "get", "v1", "s1"])).expect("JSON");
    assert_eq!(snap["state"], "SNAPSHOT_STATE_FAILED");
    let err = s.fails(5, &["op", "cancel", op]);
    assert!(err.contains("already failed"), "{err}");
    s.fails(3, &["op", "cancel", "op-nope"]);
    s.ok(&["snap", "delete", "v1", "s1"]);
    s.ok(&["op", "delete", op]);

    let members = s.ok(&["cluster", "list"]);
    assert!(members.contains(&s.address), "{members}");

    // Unreachable meta group: exit 6 after the timeout.
    let out = Command::new(env!("CARGO_BIN_EXE_fabric-ctl"))
        .args([
            "--endpoint",
            "127.0.0.1:1",
            "--timeout",
            "1",
            "cluster",
            "get",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6));
}

#[test]
fn completions_are_generated() {
    let out = Command::new(env!("CARGO_BIN_EXE_fabric-ctl"))
        .args(["completions", "bash"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("fabric-ctl"));
}

#[test]
fn bad_arguments_are_one_line_naming_them() {
    for (args, named) in [
        (&["vol", "create", "v", "--size", "10Q"][..], "10Q"),
        (
            &["dn", "create", "d", "--address", "tcp:127.0.0.1:1"][..],
            "--capacity",
        ),
        (&["bogus"][..], "bogus"),
        (
            &[
                "dn",
                "create",
                "d",
                "--address",
                "bogus",
                "--capacity",
                "2T",
            ][..],
            "--address",
        ),
        (
            &["--timeout", "18446744073709551615", "cluster", "list"][..],
            "--timeout",
        ),
        (&["--endpoint", "foo", "cluster", "list"][..], "--endpoint"),
        (
            &["cluster", "create", "demo", "--extent-size", "0"][..],
            "--extent-size",
        ),
        (
            &["vol", "create", "v1", "--size", "1G", "--replicas", "0"][..],
            "--replicas",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fabric-ctl"))
            .args(args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
}

#[test]
fn mutual_tls_from_flags_or_the_environment() {
    let dir = tempfile::Builder::new()
        .prefix("ctl-tls-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let pki = pki::make(dir.path());
    let server = start_server_with(|args| MetaArgs {
        tls_cert: Some(pki.replicas[0].cert.clone()),
        tls_key: Some(pki.replicas[0].key.clone()),
        tls_ca: Some(pki.ca.clone()),
        ..args
    });
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_string();
    let (cert, key, ca) = (path(&pki.client.cert), path(&pki.client.key), path(&pki.ca));

    // From the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_fabric-ctl"))
        .env("FABRIC_META_ENDPOINT", &server.address)
        .env("FABRIC_TLS_CERT", &cert)
        .env("FABRIC_TLS_KEY", &key)
        .env("FABRIC_TLS_CA", &ca)
        .args(["cluster", "list"])
        .output()
        .expect("run fabric-ctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&server.address), "{stdout}");

    // From flags, with an https:// endpoint.
    let https = format!("https://{}", server.address);
    let tls_flags = ["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca];
    let mut args = vec!["--endpoint", &https];
    args.extend(tls_flags);
    args.extend(["cluster", "list"]);
    server.ok(&args);

    // Without TLS the replica cannot be understood and the message says
    // what may be missing (the connection fails or is dropped, depending
    // on timing: exit 1, or 6 when no connection was made at all);
    // settings that cannot work are usage errors naming the setting
    // (exit 2).
    let out = server.ctl(&["--timeout", "1", "cluster", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(1 | 6)), "{out:?}");
    assert!(err.contains("If the replica serves TLS"), "{err}");
    let err = server.fails(2, &["--tls-cert", &cert, "cluster", "list"]);
    assert!(err.starts_with("fabric-ctl: --tls-key:"), "{err}");
    let err = server.fails(2, &["--endpoint", &https, "cluster", "list"]);
    assert!(err.contains("needs TLS settings"), "{err}");
    let err = server.fails(
        2,
        &[
            "--tls-cert",
            &key,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "cluster",
            "list",
        ],
    );
    assert!(err.starts_with("fabric-ctl: --tls-cert:"), "{err}");
}
