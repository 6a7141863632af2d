//! Host tier only: database session audit against a real PostgreSQL and MariaDB (Debian's
//! `postgresql` and `mariadb-server` packages, installed by `cargo xtask setup`). Each test
//! starts a throwaway server as the `postgres` or `mysql` user on a free port with a private
//! socket, and stops and removes it pass or fail. The VM tier's initramfs has neither server, so `xtask/src/vm.rs` leaves this
//! file out (`HOST_ONLY_TESTS`).

use std::{
    fs,
    net::TcpListener,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use phiguard::config::Config;
use phiguard_proto::v1::{self, event::Body};
use phiguard_tests::{process, Harness};

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    uid: u32,
    gid: u32,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(false)
    }

    /// A cluster with `ssl = on` when `tls`: a certificate and key from the development CA
    /// (`phiguard-devcerts`), written into the cluster's directory, so they go with it.
    fn start_with(tls: bool) -> Cluster {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            })
            .unwrap_or_else(|| {
                panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: run `cargo xtask setup`")
            });
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("user postgres (Debian's postgresql package creates it)");
        let dir = tempfile::Builder::new()
            .prefix("phiguard-pg-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            bin,
            dir,
            port,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        };
        cluster.run_as_postgres(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            port,
            cluster.dir.path().display()
        );
        if tls {
            let (cert, key) = write_server_certificate(cluster.dir.path(), user.uid, user.gid);
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let log = cluster.dir.path().join("log").display().to_string();
        cluster.run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                &cluster.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{}", self.port))
    }

    fn run_as_postgres(&self, program: &str, args: &[&str]) {
        let out = Command::new(self.bin.join(program))
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `psql` (as root, logging in as `postgres`) over TCP or the unix socket.
    fn psql(&self, host: &str, commands: &[&str]) {
        let mut cmd = Command::new("/usr/bin/psql");
        cmd.args([
            "-X",
            "-h",
            host,
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]);
        for c in commands {
            cmd.args(["-c", c]);
        }
        let status = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("psql");
        let _ = status; // the failing statement makes psql exit non-zero
    }

    /// Runs one prepared statement (extended protocol: Parse/Bind/Execute) with pgbench.
    fn prepared(&self, sql: &str) {
        self.pgbench_script("127.0.0.1", "prepared", sql);
    }

    /// Runs the pgbench script `sql` once over `host` (an address or the socket directory)
    /// with the query mode `mode` (`simple`, `extended`: unnamed statements, `prepared`: named
    /// ones).
    fn pgbench_script(&self, host: &str, mode: &str, sql: &str) {
        let script = self.dir.path().join("script.sql");
        fs::write(&script, sql).unwrap();
        let output = Command::new("/usr/bin/pgbench")
            .args(["-n", "-t", "1", "-M", mode, "-h", host])
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-f", &script.display().to_string(), "postgres"])
            .output()
            .expect("pgbench");
        assert!(
            output.status.success(),
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A server certificate for `localhost`/`127.0.0.1` and its key (0600), owned by the server's
/// user, in `dir`.
fn write_server_certificate(
    dir: &Path,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
) -> (PathBuf, PathBuf) {
    let ca = phiguard_devcerts::Ca::generate("phiguard test database CA").unwrap();
    let issued = ca.issue(&phiguard_devcerts::Leaf::collector(&[])).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    fs::write(&cert, &issued.cert_pem).unwrap();
    phiguard_devcerts::write_private(&key, &issued.key_pem).unwrap();
    for file in [&cert, &key] {
        nix::unistd::chown(file, Some(uid), Some(gid)).unwrap();
    }
    (cert, key)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .uid(self.uid)
            .gid(self.gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The TempDir removes the directory.
    }
}

fn config(cluster: &Cluster) -> Config {
    let mut config = Config::default();
    config.database.ports = vec![cluster.port];
    config.database.unix_sockets = vec![cluster.socket()];
    config
}

fn statement(e: &v1::Event) -> Option<&v1::DbStatement> {
    match &e.body {
        Some(Body::DbStatement(s)) => Some(s),
        _ => None,
    }
}

fn session_start(e: &v1::Event) -> Option<&v1::DbSessionStart> {
    match &e.body {
        Some(Body::DbSessionStart(s)) => Some(s),
        _ => None,
    }
}

fn role(session: Option<&v1::DbSession>) -> &str {
    session.map_or("", |s| s.role.as_str())
}

fn exe_name(e: &v1::Event) -> &str {
    Path::new(&process(e).exe)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
}

/// The statement events for `text` (redacted) on both ends, checked for the session's
/// identity and the process of each end.
fn expect_both_ends(
    h: &mut Harness,
    text: &str,
    transport: &str,
    client: &str,
) -> [v1::DbStatement; 2] {
    [("client", client), ("server", "postgres")].map(|(want_role, exe)| {
        let event = h.expect(
            &format!("{want_role} statement {text:?} over {transport}"),
            |e| {
                statement(e).is_some_and(|s| {
                    s.text == text
                        && role(s.session.as_ref()) == want_role
                        && s.session.as_ref().is_some_and(|x| x.transport == transport)
                })
            },
        );
        assert_eq!(exe_name(&event), exe, "{want_role} process");
        let st = statement(&event).unwrap().clone();
        let session = st.session.as_ref().unwrap();
        assert_eq!(
            (session.db_user.as_str(), session.database.as_str()),
            ("postgres", "postgres")
        );
        assert_eq!(session.protocol, "postgresql");
        assert!(st.redacted);
        st
    })
}

#[test]
fn psql_over_tcp_and_unix_socket_is_audited_on_both_ends() {
    let cluster = Cluster::start();
    let mut h = Harness::start_with(&config(&cluster));
    cluster.psql(
        "127.0.0.1",
        &[
            "CREATE TABLE patients (id int, name text, ssn text)",
            "INSERT INTO patients VALUES (1, 'Jane Doe', '123-45-6789')",
            "SELECT name FROM patients WHERE ssn = '123-45-6789'",
            "SELECT * FROM no_such_table",
        ],
    );

    let start = h.expect("client session start over tcp", |e| {
        session_start(e).is_some_and(|s| role(s.session.as_ref()) == "client")
            && exe_name(e) == "psql"
    });
    let s = session_start(&start).unwrap();
    assert_eq!(s.application, "psql");
    assert!(
        !s.encrypted,
        "the test cluster has no TLS: psql's SSLRequest is refused"
    );
    assert_eq!(
        s.session.as_ref().unwrap().remote_port,
        u32::from(cluster.port)
    );
    assert!(!start.ancestry.is_empty(), "client ancestry");
    h.expect("server session start over tcp", |e| {
        session_start(e).is_some_and(|s| role(s.session.as_ref()) == "server")
            && exe_name(e) == "postgres"
    });

    let [insert, _] = expect_both_ends(
        &mut h,
        "INSERT INTO patients VALUES (?, ?, ?)",
        "tcp",
        "psql",
    );
    assert_eq!(
        (insert.kind.as_str(), insert.rows, insert.ok),
        ("INSERT", Some(1), true)
    );
    let [select, server_select] = expect_both_ends(
        &mut h,
        "SELECT name FROM patients WHERE ssn = ?",
        "tcp",
        "psql",
    );
    assert_eq!((select.kind.as_str(), select.rows), ("SELECT", Some(1)));
    assert_eq!(select.tables, ["patients"]);
    assert_eq!(server_select.rows, Some(1));
    let [failed, server_failed] =
        expect_both_ends(&mut h, "SELECT * FROM no_such_table", "tcp", "psql");
    assert_eq!((failed.sqlstate.as_str(), failed.ok), ("42P01", false));
    assert_eq!(server_failed.sqlstate, "42P01");

    cluster.prepared("SELECT name FROM patients WHERE id = 1;\n");
    let [prepared, _] = expect_both_ends(
        &mut h,
        "SELECT name FROM patients WHERE id = ?;",
        "tcp",
        "pgbench",
    );
    assert!(prepared.prepared, "extended protocol");
    assert!(
        !prepared.statement_name.is_empty(),
        "pgbench -M prepared names its statements"
    );
    assert_eq!(prepared.rows, Some(1));

    let socket_dir = cluster.dir.path().display().to_string();
    cluster.psql(
        &socket_dir,
        &["SELECT count(*) FROM patients WHERE name = 'Jane Doe'"],
    );
    let [unix, _] = expect_both_ends(
        &mut h,
        "SELECT count(*) FROM patients WHERE name = ?",
        "unix",
        "psql",
    );
    assert_eq!(
        unix.session.as_ref().unwrap().unix_socket,
        cluster.socket().display().to_string()
    );
    h.expect("client session end over the unix socket", |e| {
        matches!(&e.body, Some(Body::DbSessionEnd(end))
            if end.reason == "terminate" && end.statements == 1 && end.bytes_sent > 0
                && end.session.as_ref().is_some_and(|s| s.transport == "unix" && s.role == "client"))
    });

    // Minimum necessary: no literal reached any event, neither a database event nor the
    // argv of psql (and of Debian's Perl wrapper that starts it) in every event's process.
    let psql_argv = h
        .seen
        .iter()
        .filter_map(|e| e.process.as_ref())
        .find(|p| {
            p.argv
                .iter()
                .any(|a| a.starts_with("SELECT name FROM patients"))
        })
        .map(|p| p.argv.clone())
        .expect("an event of psql with its -c arguments");
    assert!(
        psql_argv.contains(&"SELECT name FROM patients WHERE ssn = ?".to_owned()),
        "statement argument redacted: {psql_argv:?}"
    );
    expect_no_literals(&h);
    h.stop();
}

/// No literal of the tests' statements in any event seen (bodies, processes, ancestry).
fn expect_no_literals(h: &Harness) {
    for e in &h.seen {
        let all = format!("{e:?}");
        for secret in ["123-45-6789", "Jane Doe"] {
            assert!(
                !all.contains(secret),
                "{secret} leaked into an event: {e:?}"
            );
        }
    }
}

#[test]
fn sessions_carry_the_verdict_of_their_connect() {
    let cluster = Cluster::start();
    let policies = tempfile::Builder::new()
        .prefix("phiguard-policies-")
        .tempdir()
        .unwrap();
    // Audit mode: only pgbench is listed, psql would be denied but is let through.
    fs::write(
        policies.path().join("db.yaml"),
        format!(
            "name: db-connect\nmode: audit\nrules:\n  - name: bench-only\n    database:\n      - port: {}\n    allow:\n      - exe: {}\n",
            cluster.port,
            cluster.bin.join("pgbench").display()
        ),
    )
    .unwrap();
    let mut config = Config::default().with_policy_dir(policies.path()).unwrap();
    config.database = self::config(&cluster).database;
    let mut h = Harness::start_with(&config);

    cluster.psql("127.0.0.1", &["SELECT 1"]);
    let verdict = |s: Option<&v1::DbSession>| {
        s.and_then(|s| s.connect_decision.as_ref())
            .map(|d| (d.verdict, d.policy.clone(), d.rule.clone()))
    };
    let would_deny = Some((
        v1::Verdict::WouldDeny as i32,
        "db-connect".to_owned(),
        "bench-only".to_owned(),
    ));
    let start = h.expect("psql's session start", |e| {
        session_start(e).is_some_and(|s| role(s.session.as_ref()) == "client")
            && exe_name(e) == "psql"
    });
    assert_eq!(
        verdict(session_start(&start).unwrap().session.as_ref()),
        would_deny,
        "psql is not listed: would deny"
    );
    let st = h.expect("psql's statement", |e| {
        statement(e).is_some_and(|s| s.text == "SELECT ?") && exe_name(e) == "psql"
    });
    assert_eq!(
        verdict(statement(&st).unwrap().session.as_ref()),
        would_deny
    );
    let end = h.expect("psql's session end", |e| {
        matches!(&e.body, Some(Body::DbSessionEnd(_))) && exe_name(e) == "psql"
    });
    let Some(Body::DbSessionEnd(end)) = &end.body else {
        unreachable!()
    };
    assert_eq!(verdict(end.session.as_ref()), would_deny);
    // The server end accepted the connection: no connect of its own to judge.
    let server = h.expect("server's statement", |e| {
        statement(e).is_some_and(|s| s.text == "SELECT ?" && role(s.session.as_ref()) == "server")
    });
    assert_eq!(verdict(statement(&server).unwrap().session.as_ref()), None);

    cluster.prepared("SELECT 2;\n");
    let st = h.expect("pgbench's statement", |e| {
        statement(e).is_some_and(|s| s.text == "SELECT ?;") && exe_name(e) == "pgbench"
    });
    assert_eq!(
        verdict(statement(&st).unwrap().session.as_ref()),
        Some((
            v1::Verdict::Allow as i32,
            "db-connect".to_owned(),
            "bench-only".to_owned()
        )),
        "pgbench is listed"
    );
    h.stop();
}

/// A PostgreSQL client in Python that moves its bytes only with `writev`/`readv` (startup
/// and the first query) and `sendmsg`/`recvmsg` (the second query), each message split over
/// two iovecs: what the vectored capture hooks must see.
const VECTORED_CLIENT: &str = r#"
import os, socket, struct, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
fd = sock.fileno()

def until_ready(recv):
    data = b""
    while True:
        head, body = bytearray(5), bytearray(8192)
        n = recv([head, body])
        if n == 0:
            sys.exit("server closed")
        data += bytes(head + body)[:n]
        at = 0
        while len(data) - at >= 5:
            kind = data[at:at + 1]
            size = struct.unpack("!i", data[at + 1:at + 5])[0]
            if len(data) - at < 1 + size:
                break
            if kind == b"Z":
                return
            if kind == b"E":
                sys.exit("server error")
            at += 1 + size
        data = data[at:]

def query(sql):
    body = sql.encode() + b"\0"
    return [b"Q" + struct.pack("!i", 4 + len(body)), body]

params = b"user\0postgres\0database\0postgres\0application_name\0phiguard-vectored\0\0"
body = struct.pack("!i", 196608) + params
os.writev(fd, [struct.pack("!i", 4 + len(body)), body])
until_ready(lambda bufs: os.readv(fd, bufs))
os.writev(fd, query("SELECT count(*) FROM pg_class WHERE relname = 'pg_class'"))
until_ready(lambda bufs: os.readv(fd, bufs))
sock.sendmsg(query("SELECT 'PHIM' || 'ARK_VECTORED_ROW' FROM pg_namespace WHERE nspname = 'public'"))
until_ready(lambda bufs: sock.recvmsg_into(bufs)[0])
sock.sendmsg([b"X", struct.pack("!i", 4)])
sock.close()
"#;

#[test]
fn vectored_reads_and_writes_are_captured() {
    let cluster = Cluster::start();
    let mut h = Harness::attach_with(&config(&cluster));
    // The startup's first iovec is its 4-byte length alone: the session is still recognised
    // and walked, so the row of the second query stays in the kernel.
    let row_in_records = h.count_db_records_holding(b"PHIMARK_VECTORED_ROW");
    h.start_reading();
    let out = Command::new("/usr/bin/python3")
        .args(["-c", VECTORED_CLIENT, &cluster.port.to_string()])
        .output()
        .expect("python3 (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "the vectored client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let is_client = |e: &v1::Event| exe_name(e).starts_with("python3");

    // The startup message went out with writev: user, database and application are known.
    let start = h.expect("client session start written with writev", |e| {
        session_start(e).is_some_and(|s| {
            s.application == "phiguard-vectored" && role(s.session.as_ref()) == "client"
        }) && is_client(e)
    });
    let session = session_start(&start).unwrap().session.clone().unwrap();
    assert_eq!(
        (session.db_user.as_str(), session.database.as_str()),
        ("postgres", "postgres")
    );
    // Each query's text was written (writev, sendmsg) and its row count read (readv, recvmsg)
    // by the client.
    for (text, calls) in [
        (
            "SELECT count(*) FROM pg_class WHERE relname = ?",
            "writev/readv",
        ),
        (
            "SELECT ? || ? FROM pg_namespace WHERE nspname = ?",
            "sendmsg/recvmsg",
        ),
    ] {
        let event = h.expect(&format!("client statement over {calls}"), |e| {
            statement(e).is_some_and(|s| s.text == text && role(s.session.as_ref()) == "client")
                && is_client(e)
        });
        let st = statement(&event).unwrap();
        assert_eq!(
            (st.kind.as_str(), st.rows, st.ok),
            ("SELECT", Some(1), true),
            "{calls}: the outcome was read back"
        );
    }
    h.expect("client session end (Terminate sent with sendmsg)", |e| {
        matches!(&e.body, Some(Body::DbSessionEnd(end))
            if end.reason == "terminate" && end.statements == 2)
            && is_client(e)
    });
    h.stop();
    assert_eq!(
        row_in_records.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records holding the result row left the kernel"
    );
    expect_no_marker(&h, &["PHIMARK_VECTORED_ROW"]);
}

/// A MariaDB server in a temporary directory, stopped and removed on drop.
struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    server: std::process::Child,
}

impl MariaDb {
    fn start() -> MariaDb {
        MariaDb::start_with(false)
    }

    /// A server that, when `tls`, has a certificate and key (written into its directory) and
    /// refuses unencrypted TCP connections (`require_secure_transport`).
    fn start_with(tls: bool) -> MariaDb {
        let user = nix::unistd::User::from_name("mysql")
            .ok()
            .flatten()
            .expect("user mysql (Debian's mariadb-server creates it): run `cargo xtask setup`");
        let dir = tempfile::Builder::new()
            .prefix("phiguard-my-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        let data = dir.path().join("data");
        let out = Command::new("/usr/bin/mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Command::new("/usr/sbin/mariadbd");
        server.args(["--no-defaults", "--user=mysql", "--bind-address=127.0.0.1"]);
        if tls {
            let (cert, key) = write_server_certificate(dir.path(), user.uid, user.gid);
            server
                .arg(format!("--ssl-cert={}", cert.display()))
                .arg(format!("--ssl-key={}", key.display()))
                .arg("--require-secure-transport=ON");
        }
        let server = server
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let db = MariaDb { dir, port, server };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !db.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Runs the `mariadb` client as root over TCP (`None`) or the unix socket.
    fn client(&self, socket: bool, database: Option<&str>, sql: &str) {
        let mut cmd = Command::new("/usr/bin/mariadb");
        cmd.args(["--no-defaults", "-uroot"]);
        if socket {
            cmd.arg(format!("--socket={}", self.socket().display()));
        } else {
            cmd.args(["-h", "127.0.0.1", "-P", &self.port.to_string()]);
        }
        if let Some(d) = database {
            cmd.arg(d);
        }
        let status = cmd
            .args(["-e", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb");
        let _ = status; // the failing statement makes the client exit non-zero
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.server.wait();
        // The TempDir removes the directory.
    }
}

#[test]
fn mariadb_over_tcp_and_unix_socket_is_audited_on_both_ends() {
    let db = MariaDb::start();
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    config.database.unix_sockets = vec![db.socket()];
    let mut h = Harness::start_with(&config);
    db.client(
        false,
        None,
        "CREATE DATABASE ehr; CREATE TABLE ehr.patients (id int, name text, ssn text); \
         INSERT INTO ehr.patients VALUES (1, 'Jane Doe', '123-45-6789'); \
         SELECT name FROM ehr.patients WHERE ssn = '123-45-6789'; SELECT * FROM ehr.nope",
    );
    for want_role in ["client", "server"] {
        let exe = if want_role == "client" {
            "mariadb"
        } else {
            "mariadbd"
        };
        let start = h.expect(&format!("{want_role} session start"), |e| {
            session_start(e).is_some_and(|s| role(s.session.as_ref()) == want_role)
                && exe_name(e) == exe
        });
        let session = session_start(&start).unwrap().session.clone().unwrap();
        assert_eq!(
            (session.protocol.as_str(), session.db_user.as_str()),
            ("mysql", "root")
        );
        let select = h.expect(&format!("{want_role} select"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT name FROM ehr.patients WHERE ssn = ?"
                    && role(s.session.as_ref()) == want_role
            })
        });
        assert_eq!(exe_name(&select), exe);
        let st = statement(&select).unwrap();
        assert_eq!(
            (st.kind.as_str(), st.rows, st.ok),
            ("SELECT", Some(1), true)
        );
        assert_eq!(st.tables, ["ehr.patients"]);
        let insert = h.expect(&format!("{want_role} insert"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "INSERT INTO ehr.patients VALUES (?, ?, ?)"
                    && role(s.session.as_ref()) == want_role
            })
        });
        assert_eq!(statement(&insert).unwrap().rows, Some(1));
        let failed = h.expect(&format!("{want_role} failed select"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT * FROM ehr.nope" && role(s.session.as_ref()) == want_role
            })
        });
        let st = statement(&failed).unwrap();
        assert_eq!(
            (st.sqlstate.as_str(), st.error_code, st.ok),
            ("42S02", 1146, false)
        );
    }

    db.client(
        true,
        Some("ehr"),
        "SELECT count(*) FROM patients WHERE id = 1",
    );
    for want_role in ["client", "server"] {
        let event = h.expect(&format!("{want_role} select over the unix socket"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT count(*) FROM patients WHERE id = ?"
                    && role(s.session.as_ref()) == want_role
            })
        });
        let session = statement(&event).unwrap().session.clone().unwrap();
        assert_eq!(session.transport, "unix");
        assert_eq!(session.database, "ehr");
        assert_eq!(session.unix_socket, db.socket().display().to_string());
    }
    let mariadb_argv = h
        .seen
        .iter()
        .filter_map(|e| e.process.as_ref())
        .find(|p| p.exe == "/usr/bin/mariadb" && p.argv.iter().any(|a| a == "-e"))
        .map(|p| p.argv.clone())
        .expect("an event of the mariadb client with its -e argument");
    assert!(
        mariadb_argv
            .iter()
            .any(|a| a.contains("SELECT name FROM ehr.patients WHERE ssn = ?")),
        "statement argument redacted: {mariadb_argv:?}"
    );
    expect_no_literals(&h);
    h.stop();
}

fn session_end(e: &v1::Event) -> Option<&v1::DbSessionEnd> {
    match &e.body {
        Some(Body::DbSessionEnd(s)) => Some(s),
        _ => None,
    }
}

/// An encrypted session's start and end on each end (`(role, exe)`): marked encrypted, with
/// the process, the addresses and ports, and byte counts; no statement was decoded from it
/// and no literal reached any event.
fn expect_encrypted_session(h: &mut Harness, port: u16, ends: [(&str, &str); 2]) {
    for (want_role, exe) in ends {
        let start = h.expect(&format!("{want_role} start of the TLS session"), |e| {
            session_start(e).is_some_and(|s| role(s.session.as_ref()) == want_role)
                && exe_name(e) == exe
        });
        eprintln!(
            "{want_role} start of the TLS session: {}",
            serde_json::to_string_pretty(&start).unwrap()
        );
        let s = session_start(&start).unwrap();
        assert!(
            s.encrypted && s.encryption == "tls",
            "{want_role}: marked encrypted: {s:?}"
        );
        let session = s.session.as_ref().unwrap();
        assert_eq!(session.transport, "tcp");
        assert_eq!(
            (
                session.local_address.as_str(),
                session.remote_address.as_str()
            ),
            ("127.0.0.1", "127.0.0.1"),
            "{want_role}: addresses"
        );
        let db_port = if want_role == "client" {
            session.remote_port
        } else {
            session.local_port
        };
        assert_eq!(db_port, u32::from(port), "{want_role}: the database port");
        assert!(!session.joined);
        let end = h.expect(&format!("{want_role} end of the TLS session"), |e| {
            session_end(e).is_some_and(|s| role(s.session.as_ref()) == want_role)
        });
        eprintln!(
            "{want_role} end of the TLS session: {}",
            serde_json::to_string_pretty(&end).unwrap()
        );
        let end = session_end(&end).unwrap();
        assert!(end.encrypted, "{want_role}: end marked encrypted");
        assert!(
            end.bytes_sent > 0 && end.bytes_received > 0,
            "{want_role}: byte counts: {end:?}"
        );
        assert_eq!(end.statements, 0, "{want_role}: nothing decoded");
    }
    let decoded: Vec<&v1::Event> = h.seen.iter().filter(|e| statement(e).is_some()).collect();
    assert!(
        decoded.is_empty(),
        "no statement is decoded from a TLS session: {decoded:?}"
    );
    expect_no_literals(h);
}

#[test]
fn psql_over_tls_is_reported_encrypted_with_process_addresses_and_bytes() {
    let cluster = Cluster::start_with(true);
    let mut h = Harness::start_with(&config(&cluster));
    let status = Command::new("/usr/bin/psql")
        .arg(format!(
            "sslmode=require host=127.0.0.1 port={} user=postgres dbname=postgres",
            cluster.port
        ))
        .args([
            "-X",
            "-c",
            "SELECT '123-45-6789' AS ssn, 'Jane Doe' AS name",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("psql");
    assert!(status.success(), "psql with sslmode=require failed");
    expect_encrypted_session(
        &mut h,
        cluster.port,
        [("client", "psql"), ("server", "postgres")],
    );
    h.stop();
}

/// A `psql` reading statements from a pipe, one line of output per statement: a connection
/// that stays open across an agent start, as a pool's does. Killed on drop.
struct Interactive {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Interactive {
    fn start(cluster: &Cluster, host: &str) -> Interactive {
        let mut psql = Interactive::spawn(
            Command::new("/usr/bin/stdbuf")
                .args(["-oL", "/usr/bin/psql", "-X", "-A", "-t", "-h", host])
                .args(["-p", &cluster.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres"]),
        );
        assert_eq!(psql.run("SELECT 1;"), "1", "psql is connected");
        psql
    }

    /// The `mariadb` client, as root over TCP or the unix socket, one result line per row.
    fn mariadb(db: &MariaDb, socket: bool) -> Interactive {
        let mut cmd = Command::new("/usr/bin/stdbuf");
        cmd.args([
            "-oL",
            "/usr/bin/mariadb",
            "--no-defaults",
            "-uroot",
            "-N",
            "-B",
            "-n",
        ]);
        if socket {
            cmd.arg(format!("--socket={}", db.socket().display()));
        } else {
            cmd.args(["-h", "127.0.0.1", "-P", &db.port.to_string()]);
        }
        let mut client = Interactive::spawn(&mut cmd);
        assert_eq!(client.run("SELECT 1;"), "1", "mariadb is connected");
        client
    }

    /// Starts `command` with piped input and output.
    fn spawn(command: &mut Command) -> Interactive {
        // Line-buffered output (stdbuf): each result line is readable as soon as it is printed.
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("an interactive client");
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Interactive {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one statement and returns its one line of output.
    fn run(&mut self, sql: &str) -> String {
        use std::io::{BufRead as _, Write as _};
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    /// Closes its input: the client says goodbye (Terminate, COM_QUIT) and exits.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the client exited with {status}");
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_opened_before_the_agent_started_are_joined_on_both_ends() {
    let cluster = Cluster::start();
    let socket_dir = cluster.dir.path().display().to_string();
    let tcp = Interactive::start(&cluster, "127.0.0.1");
    let unix = Interactive::start(&cluster, &socket_dir);
    let mut h = Harness::attach_with(&config(&cluster));
    // The kernel walks a joined session's messages from its first call that is whole
    // messages: the row of a large result never leaves it.
    let row_in_records = h.count_db_records_holding(b"PHIMARK_JOINED_ROW");
    h.start_reading();
    let mut sessions = [("tcp", tcp), ("unix", unix)];
    for (transport, psql) in &mut sessions {
        assert_eq!(
            psql.run("SELECT count(*) FROM pg_class WHERE relname = '123-45-6789';"),
            "0"
        );
        for (want_role, exe) in [("client", "psql"), ("server", "postgres")] {
            let event = h.expect(
                &format!("{want_role} statement of the {transport} session joined mid-way"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text.trim_end_matches(';')
                            == "SELECT count(*) FROM pg_class WHERE relname = ?"
                            && role(s.session.as_ref()) == want_role
                            && s.session
                                .as_ref()
                                .is_some_and(|x| x.transport == *transport)
                    })
                },
            );
            assert_eq!(exe_name(&event), exe, "{want_role} process");
            eprintln!(
                "{want_role} statement of the joined {transport} session: {}",
                serde_json::to_string_pretty(&event).unwrap()
            );
            let st = statement(&event).unwrap();
            assert_eq!(
                (st.kind.as_str(), st.rows, st.ok),
                ("SELECT", Some(1), true)
            );
            let session = st.session.as_ref().unwrap();
            assert!(session.joined, "{want_role}: marked joined mid-session");
            assert_eq!(session.protocol, "postgresql");
            assert_eq!(
                (session.db_user.as_str(), session.database.as_str()),
                ("", ""),
                "{want_role}: the login was not seen: nothing invented"
            );
            if *transport == "tcp" {
                assert_eq!(session.remote_address, "127.0.0.1");
            } else {
                assert_eq!(session.unix_socket, cluster.socket().display().to_string());
            }
            let start = h.expect(
                &format!("{want_role} start of the joined {transport} session"),
                |e| {
                    session_start(e).is_some_and(|s| {
                        s.session.as_ref().is_some_and(|x| {
                            x.joined && x.role == want_role && x.transport == *transport
                        })
                    })
                },
            );
            assert_eq!(exe_name(&start), exe);
            assert_eq!(session_start(&start).unwrap().application, "");
        }
        // One row of 360 KB, in many calls, then a further statement: both audited on both
        // ends, the row in no record.
        let row = psql.run("SELECT repeat('PHIM' || 'ARK_JOINED_ROW', 20000);");
        assert_eq!(row.len(), 18 * 20000);
        assert_eq!(psql.run("SELECT 4253 AS after_joined_row;"), "4253");
        for want_role in ["client", "server"] {
            h.expect(
                &format!("{want_role} statement after the row of the {transport} session"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text.trim_end_matches(';') == "SELECT ? AS after_joined_row"
                            && s.ok
                            && role(s.session.as_ref()) == want_role
                            && s.session
                                .as_ref()
                                .is_some_and(|x| x.transport == *transport)
                    })
                },
            );
            let texts: Vec<_> = statements_of(&h, transport, want_role)
                .into_iter()
                .map(|s| (s.text.trim_end_matches(';').to_owned(), s.rows))
                .collect();
            assert_eq!(
                texts,
                [
                    (
                        "SELECT count(*) FROM pg_class WHERE relname = ?".into(),
                        Some(1)
                    ),
                    ("SELECT repeat(? || ?, ?)".into(), Some(1)),
                    ("SELECT ? AS after_joined_row".into(), Some(1)),
                ],
                "{want_role} over {transport}"
            );
        }
    }
    for (transport, psql) in sessions {
        psql.finish();
        for want_role in ["client", "server"] {
            h.expect(
                &format!("{want_role} end of the joined {transport} session"),
                |e| {
                    session_end(e).is_some_and(|s| {
                        s.reason == "terminate"
                            && s.statements == 3
                            && !s.desynchronised
                            && s.session.as_ref().is_some_and(|x| {
                                x.joined && x.role == want_role && x.transport == transport
                            })
                    })
                },
            );
        }
    }
    expect_no_literals(&h);
    h.stop();
    expect_no_marker(&h, &["PHIMARK_JOINED_ROW"]);
    assert_eq!(
        row_in_records.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records holding the row left the kernel"
    );
}

/// A PostgreSQL client in Python that logs in, waits for a line on its input, then sends each
/// statement of its arguments as a Query split across two writes (the kernel never sees a
/// call of whole messages from it), reading each answer whole and printing its row count.
const SPLITTING_CLIENT: &str = r#"
import socket, struct, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
data = b""

def answer():
    global data
    rows = 0
    while True:
        while len(data) < 5 or len(data) < 1 + struct.unpack("!i", data[1:5])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit("server closed")
            data += chunk
        kind, size = data[:1], struct.unpack("!i", data[1:5])[0]
        data = data[1 + size:]
        if kind == b"D":
            rows += 1
        if kind == b"E":
            sys.exit("server error")
        if kind == b"Z":
            return rows

body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
sock.sendall(struct.pack("!i", 4 + len(body)) + body)
answer()
print("ready", flush=True)
sys.stdin.readline()
for sql in sys.argv[2:]:
    message = b"Q" + struct.pack("!i", 5 + len(sql)) + sql.encode() + b"\0"
    sock.sendall(message[:3])
    time.sleep(0.005)
    sock.sendall(message[3:])
    print(answer(), flush=True)
sock.sendall(b"X" + struct.pack("!i", 4))
sock.close()
"#;

/// A joined session's client that never writes a call of whole messages is still audited
/// (its writes captured by system call, as before the walk), and the rows it reads stay in
/// the kernel once its reads (and the server's writes) are walked.
#[test]
fn a_joined_client_splitting_its_messages_is_audited_and_its_rows_stay_in_the_kernel() {
    use std::io::{BufRead as _, Write as _};
    let cluster = Cluster::start();
    let mut client = Command::new("/usr/bin/python3")
        .args(["-c", SPLITTING_CLIENT, &cluster.port.to_string()])
        .args([
            "SELECT count(*) FROM pg_class WHERE relname = 'pg_class'",
            "SELECT 'PHIM' || 'ARK_SPLIT_ROW_' || i || repeat('s', 300) FROM generate_series(1, 2000) i",
            "SELECT 4257 AS after_split",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (cargo xtask setup installs it)");
    let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready", "logged in");
    let mut h = Harness::attach_with(&config(&cluster));
    let rows_in_records = h.count_db_records_holding(b"PHIMARK_SPLIT_ROW");
    h.start_reading();
    writeln!(client.stdin.as_mut().unwrap()).unwrap();
    let counts: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(client.wait().unwrap().success());
    assert_eq!(counts, ["1", "2000", "1"]);
    for want in ["client", "server"] {
        h.expect(&format!("{want} statement after the split ones"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT ? AS after_split" && s.ok && role(s.session.as_ref()) == want
            })
        });
        let got: Vec<_> = statements_of(&h, "tcp", want)
            .into_iter()
            .map(|s| (s.text, s.rows))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "SELECT count(*) FROM pg_class WHERE relname = ?".into(),
                    Some(1)
                ),
                (
                    "SELECT ? || ? || i || repeat(?, ?) FROM generate_series(?, ?) i".into(),
                    Some(2000)
                ),
                ("SELECT ? AS after_split".into(), Some(1)),
            ],
            "{want}"
        );
    }
    h.stop();
    expect_no_marker(&h, &["PHIMARK_SPLIT_ROW"]);
    assert_eq!(
        rows_in_records.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records holding a row left the kernel"
    );
}

/// A MariaDB session opened before the agent started is walked in the kernel from the
/// client's next command (the server's packets from that command's answer): a large result
/// then a further statement, each audited on both ends, no record holding a row.
#[test]
fn mariadb_sessions_opened_before_the_agent_started_are_walked_from_their_next_command() {
    const ROW_MARKER: &str = "PHIMARK_JOINED_MY_ROW";
    let db = MariaDb::start();
    mariadb_big_table(&db, 300, ROW_MARKER);
    let tcp = Interactive::mariadb(&db, false);
    let unix = Interactive::mariadb(&db, true);
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    config.database.unix_sockets = vec![db.socket()];
    let mut h = Harness::attach_with(&config);
    let rows_in_records = h.count_db_records_holding(ROW_MARKER.as_bytes());
    h.start_reading();
    let mut sessions = [("tcp", tcp), ("unix", unix)];
    for (transport, client) in &mut sessions {
        assert_eq!(
            client.run("SELECT COUNT(*) FROM ehr.big WHERE id <= 250;"),
            "250"
        );
        let joined =
            client.run("SELECT GROUP_CONCAT(note SEPARATOR '') FROM ehr.big WHERE id <= 250;");
        assert_eq!(joined.matches(ROW_MARKER).count(), 250);
        assert_eq!(client.run("SELECT 4255 AS after_joined_rows;"), "4255");
        for want_role in ["client", "server"] {
            h.expect(
                &format!("{want_role} statement after the rows of the joined {transport} session"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text == "SELECT ? AS after_joined_rows"
                            && s.ok
                            && role(s.session.as_ref()) == want_role
                            && s.session
                                .as_ref()
                                .is_some_and(|x| x.transport == *transport && x.joined)
                    })
                },
            );
            let got: Vec<_> = statements_of(&h, transport, want_role)
                .into_iter()
                .map(|s| (s.text, s.rows, s.ok))
                .collect();
            assert_eq!(
                got,
                [
                    (
                        "SELECT COUNT(*) FROM ehr.big WHERE id <= ?".into(),
                        Some(1),
                        true
                    ),
                    (
                        "SELECT GROUP_CONCAT(note SEPARATOR ?) FROM ehr.big WHERE id <= ?".into(),
                        Some(1),
                        true
                    ),
                    ("SELECT ? AS after_joined_rows".into(), Some(1), true),
                ],
                "{want_role} over {transport}"
            );
        }
    }
    for (_, client) in sessions {
        client.finish();
    }
    h.stop();
    for end in session_ends_of(&h, "tcp")
        .into_iter()
        .chain(session_ends_of(&h, "unix"))
    {
        assert!(!end.desynchronised && end.lost_records == 0, "{end:?}");
    }
    expect_no_marker(&h, &[ROW_MARKER]);
    assert_eq!(
        rows_in_records.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records holding a row left the kernel"
    );
}

#[test]
fn mariadb_over_tls_is_reported_encrypted_with_process_addresses_and_bytes() {
    let db = MariaDb::start_with(true);
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    let mut h = Harness::start_with(&config);
    let status = Command::new("/usr/bin/mariadb")
        .args(["--no-defaults", "-uroot", "--ssl", "-h", "127.0.0.1"])
        .args(["-P", &db.port.to_string()])
        .args(["-e", "SELECT '123-45-6789' AS ssn, 'Jane Doe' AS name"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mariadb");
    assert!(
        status.success(),
        "mariadb --ssl failed (the server requires secure transport)"
    );
    expect_encrypted_session(
        &mut h,
        db.port,
        [("client", "mariadb"), ("server", "mariadbd")],
    );
    h.stop();
}

/// Every marker value of the redaction tests starts with this; none may appear in any event.
const MARKER: &str = "PHIMARK";

/// No event seen (bodies, processes, argv, ancestry) contains [`MARKER`] or `extra`.
fn expect_no_marker(h: &Harness, extra: &[&str]) {
    for e in &h.seen {
        let all = format!("{e:?}");
        for m in std::iter::once(MARKER).chain(extra.iter().copied()) {
            assert!(!all.contains(m), "{m} leaked into an event: {e:?}");
        }
    }
}

/// Runs `argv` (a wrapper or a client) to completion, output discarded; its exit status does
/// not matter (a wrong password is the point of some).
fn run_quietly(argv: &[&str]) {
    let _ = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
}

/// The argv of the first event whose process's argv starts with `first` and contains an
/// argument containing `needle`.
fn argv_of(h: &mut Harness, first: &str, needle: &str) -> Vec<String> {
    let event = h.expect(&format!("an event of {first} with {needle:?}"), |e| {
        e.process.as_ref().is_some_and(|p| {
            p.argv.first().is_some_and(|a| a == first) && p.argv.iter().any(|a| a.contains(needle))
        })
    });
    event.process.unwrap().argv
}

/// Statement events with `text` per end (client, server).
fn statements_per_end(h: &Harness, text: &str) -> [usize; 2] {
    ["client", "server"].map(|want| {
        h.seen
            .iter()
            .filter_map(statement)
            .filter(|s| s.text == text && role(s.session.as_ref()) == want)
            .count()
    })
}

#[test]
fn postgres_redaction_corners_and_command_lines_leave_no_marker() {
    let cluster = Cluster::start();
    let mut config = config(&cluster);
    config.database.redact_patterns = vec![phiguard::config::RedactPattern(
        regex::Regex::new("MRN-[0-9]{8}").unwrap(),
    )];
    let mut h = Harness::start_with(&config);
    let port = cluster.port.to_string();
    let sock = cluster.dir.path().display().to_string();
    let conn = [
        "-X", "-h", &sock, "-p", &port, "-U", "postgres", "-d", "postgres",
    ];
    // The lexical corners, each its own Query (psql sends one per -c).
    let mut psql: Vec<&str> = vec!["timeout", "60", "/usr/bin/psql"];
    psql.extend(conn);
    psql.extend([
        "-v",
        "mrn=PHIMARK_V1",
        "--set=note=PHIMARK_V2",
        "-c",
        "SELECT /* outer /* PHIMARK_C1 */ PHIMARK_C2 */ 1 -- PHIMARK_C3",
        "-c",
        "SELECT $tag$PHIMARK_D1$tag$, $_x1$PHIMARK_D2$_x1$, $ü$PHIMARK_D3$ü$",
        "-c",
        "SELECT X'4D', B'101', N'PHIMARK_N1', U&'PHIMARK_U1', E'x\\' PHIMARK_E1 '",
        "-c",
        "SET standard_conforming_strings = off",
        "-c",
        "SELECT 'a\\' PHIMARK_B1 ' AS scs_off",
        "-c",
        "SELECT 424242 AS sentinel_pg",
    ]);
    run_quietly(&psql);
    for (text, count) in [
        ("SELECT ?", 1),
        ("SELECT ?, ?, ?", 1),
        ("SELECT ?, ?, ?, U&?, ?", 1),
        ("SET standard_conforming_strings = off", 1),
        ("SELECT ? AS scs_off", 1),
    ] {
        for want in ["client", "server"] {
            h.expect(&format!("{want} {text:?}"), |e| {
                statement(e).is_some_and(|s| s.text == text && role(s.session.as_ref()) == want)
            });
        }
        let _ = count;
    }
    for want in ["client", "server"] {
        h.expect(&format!("{want} sentinel"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT ? AS sentinel_pg" && role(s.session.as_ref()) == want
            })
        });
    }
    assert_eq!(statements_per_end(&h, "SELECT ? AS scs_off"), [1, 1]);
    assert_eq!(statements_per_end(&h, "SELECT ?, ?, ?, U&?, ?"), [1, 1]);

    // Command lines: credentials, abbreviations, clusters, wrappers, shell strings.
    let uri = format!("postgresql://postgres:PHIMARK_PW1@127.0.0.1:{port}/postgres");
    let conninfo =
        format!("host={sock} port={port} user=postgres password=PHIMARK_PW2 dbname=postgres");
    let shell = format!(
        "PGPASSWORD=PHIMARK_PW3 psql -X -h {sock} -p {port} -U postgres -d postgres -c \"SELECT 'PHIMARK_SH1' AS via_shell\""
    );
    let su =
        format!("psql -X -h {sock} -p {port} -d postgres -c \"SELECT 'PHIMARK_SU1' AS via_su\"");
    run_quietly(&[
        "/usr/bin/psql",
        "-X",
        &uri,
        "--comm=SELECT 'PHIMARK_A1' AS abbreviated",
    ]);
    run_quietly(&[
        "env",
        "PATIENT=MRN-12345678",
        "/usr/bin/psql",
        &conninfo,
        "-XcSELECT 'PHIMARK_A2' AS clustered",
    ]);
    run_quietly(&["sh", "-c", &shell]);
    run_quietly(&["su", "postgres", "-s", "/bin/sh", "-c", &su]);
    run_quietly(&[
        "runuser",
        "-u",
        "postgres",
        "--",
        "/usr/bin/psql",
        "-X",
        "-h",
        &sock,
        "-p",
        &port,
        "-d",
        "postgres",
        "--co",
        "SELECT 'PHIMARK_RU1' AS via_runuser",
    ]);
    for (text, first) in [
        ("SELECT ? AS abbreviated", "/usr/bin/psql"),
        ("SELECT ? AS clustered", "env"),
        ("SELECT ? AS via_shell", "sh"),
        ("SELECT ? AS via_su", "su"),
        ("SELECT ? AS via_runuser", "runuser"),
    ] {
        for want in ["client", "server"] {
            h.expect(&format!("{want} {text:?} (started by {first})"), |e| {
                statement(e).is_some_and(|s| s.text == text && role(s.session.as_ref()) == want)
            });
        }
    }
    let argv = argv_of(&mut h, "timeout", "sentinel_pg");
    assert!(argv.contains(&"mrn=***".to_owned()), "{argv:?}");
    let argv = argv_of(&mut h, "env", "clustered");
    assert!(argv.contains(&"PATIENT=***".to_owned()), "{argv:?}");
    assert!(
        argv.contains(&"-XcSELECT ? AS clustered".to_owned()),
        "{argv:?}"
    );
    let argv = argv_of(&mut h, "sh", "via_shell");
    assert!(argv[2].contains("-c 'SELECT ? AS via_shell'"), "{argv:?}");
    expect_no_marker(&h, &["MRN-12345678"]);
    h.stop();
}

#[test]
fn mariadb_redaction_corners_and_command_lines_leave_no_marker() {
    let db = MariaDb::start();
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    config.database.unix_sockets = vec![db.socket()];
    let mut h = Harness::start_with(&config);
    let port = db.port.to_string();
    let socket = format!("--socket={}", db.socket().display());
    db.client(
        true,
        None,
        "CREATE DATABASE ehr; CREATE TABLE ehr.patients (id int, name text, ssn text); \
         INSERT INTO ehr.patients VALUES (1, 'PHIMARK_ROW', '123-45-6789')",
    );
    // The lexical corners; the mariadb client sends each statement as its own COM_QUERY.
    db.client(
        false,
        Some("ehr"),
        "SELECT /* a /* PHIMARK_C1 */ 1 AS c1 # PHIMARK_C2\n; \
         SELECT 2 AS c2 -- PHIMARK_C3\n; \
         /*!50001 SELECT name FROM ehr.patients WHERE ssn = 'PHIMARK_X1' */; \
         SELECT \"PHIMARK_DQ1\" AS dq; \
         SELECT X'50', 0x50, b'1', N'PHIMARK_N1', _utf8mb4'PHIMARK_U1', _latin1 X'41' AS hex; \
         SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'; \
         SELECT 'a\\', 'PHIMARK_NB1' AS nbe; \
         SET sql_mode = 'ANSI_QUOTES'; \
         SELECT 'PHIMARK_AQ1' AS \"aq\"; \
         SELECT 7 AS sentinel_my",
    );
    for (text, tables) in [
        ("SELECT ? AS c1", &[][..]),
        ("SELECT ? AS c2", &[]),
        (
            "SELECT name FROM ehr.patients WHERE ssn = ?",
            &["ehr.patients"],
        ),
        ("SELECT ? AS dq", &[]),
        ("SELECT ?, ?, ?, ?, ?, _latin1 ? AS hex", &[]),
        ("SELECT ?, ? AS nbe", &[]),
        ("SELECT ? AS \"aq\"", &[]),
        ("SELECT ? AS sentinel_my", &[]),
    ] {
        for want in ["client", "server"] {
            let e = h.expect(&format!("{want} {text:?}"), |e| {
                statement(e).is_some_and(|s| s.text == text && role(s.session.as_ref()) == want)
            });
            assert_eq!(statement(&e).unwrap().tables, tables, "{text}");
        }
        assert_eq!(statements_per_end(&h, text), [1, 1], "{text}");
    }

    // Command lines: password spellings my_getopt accepts, statements, wrappers.
    let tcp = ["-h", "127.0.0.1", "-P", &port];
    let mut wrong: Vec<&str> = vec!["/usr/bin/mariadb", "--no-defaults", "-uroot"];
    wrong.extend(tcp);
    wrong.extend([
        "-pPHIMARK_P1",
        "--pass=PHIMARK_P2",
        "--PASSWORD=PHIMARK_P3",
        "--loose-password=PHIMARK_P4",
        "-vpPHIMARK_P5",
        "-e",
        "SELECT 'PHIMARK_E1' AS wrong_password",
    ]);
    run_quietly(&wrong);
    run_quietly(&[
        "timeout",
        "60",
        "/usr/bin/mariadb-dump",
        "--no-defaults",
        "-uroot",
        &socket,
        "--where=ssn='PHIMARK_W1'",
        "ehr",
        "patients",
    ]);
    run_quietly(&[
        "/usr/bin/mariadb-admin",
        "--no-defaults",
        "-uroot",
        "--pas=PHIMARK_P6",
        &socket,
        "password",
        "PHIMARK_NEW",
    ]);
    let sh = format!(
        "env MYSQL_PWD=PHIMARK_P7 /usr/bin/mariadb --no-defaults -uroot {socket} -e \"SELECT 'PHIMARK_SH1' AS via_shell\"; \
         /usr/bin/mariadb --no-defaults -uroot {socket} --exec=\"SELECT 'PHIMARK_SH2' AS via_exec\""
    );
    run_quietly(&["sh", "-c", &sh]);
    for want in ["client", "server"] {
        h.expect(&format!("{want} statement run through sh -c"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT ? AS via_exec" && role(s.session.as_ref()) == want
            })
        });
    }
    let argv = argv_of(&mut h, "/usr/bin/mariadb", "wrong_password");
    assert!(argv.contains(&"--pass=***".to_owned()), "{argv:?}");
    assert!(argv.contains(&"-vp***".to_owned()), "{argv:?}");
    let argv = argv_of(&mut h, "/usr/bin/mariadb-admin", "--pas=");
    assert_eq!(argv.last().map(String::as_str), Some("***"), "{argv:?}");
    let argv = argv_of(&mut h, "timeout", "--where=");
    assert!(argv.contains(&"--where=ssn=?".to_owned()), "{argv:?}");
    argv_of(&mut h, "sh", "via_exec");
    expect_no_marker(&h, &["123-45-6789"]);
    h.stop();
}

fn login(e: &v1::Event) -> Option<&v1::DbLogin> {
    match &e.body {
        Some(Body::DbLogin(l)) => Some(l),
        _ => None,
    }
}

/// Every login event seen, as (end, transport, user, method, ok, SQLSTATE, error code,
/// change of user), sorted.
type LoginRow = (String, String, String, String, bool, String, u32, bool);

fn login_rows(h: &Harness) -> Vec<LoginRow> {
    let mut rows: Vec<LoginRow> = h
        .seen
        .iter()
        .filter_map(login)
        .map(|l| {
            let s = l.session.clone().unwrap_or_default();
            (
                s.role,
                s.transport,
                l.user.clone(),
                l.method.clone(),
                l.ok,
                l.sqlstate.clone(),
                l.error_code,
                l.change_user,
            )
        })
        .collect();
    rows.sort();
    rows
}

#[allow(clippy::too_many_arguments)]
fn row(
    end: &str,
    transport: &str,
    user: &str,
    method: &str,
    ok: bool,
    sqlstate: &str,
    code: u32,
    change_user: bool,
) -> LoginRow {
    (
        end.into(),
        transport.into(),
        user.into(),
        method.into(),
        ok,
        sqlstate.into(),
        code,
        change_user,
    )
}

/// Waits for the login event of `user` with outcome `ok` on both ends over `transport`.
fn expect_login_on_both_ends(h: &mut Harness, transport: &str, user: &str, ok: bool) {
    for end in ["client", "server"] {
        h.expect(
            &format!("{end} login of {user} over {transport}, ok {ok}"),
            |e| {
                login(e).is_some_and(|l| {
                    l.user == user
                        && l.ok == ok
                        && l.session
                            .as_ref()
                            .is_some_and(|s| s.role == end && s.transport == transport)
                })
            },
        );
    }
}

#[test]
fn postgres_logins_report_outcome_method_and_sqlstate_and_set_role_the_effective_role() {
    let cluster = Cluster::start();
    let socket_dir = cluster.dir.path().display().to_string();
    // Set up before the agent runs: the right password is in this statement.
    cluster.psql(
        &socket_dir,
        &[
            "CREATE ROLE clerk LOGIN PASSWORD 'PHIMARKright'",
            "CREATE ROLE auditor NOLOGIN",
        ],
    );
    // clerk: a cleartext password over the unix socket, SCRAM over TCP (the password is
    // stored as a SCRAM verifier, PostgreSQL 15's default); everyone else: trust.
    let hba = Path::new(&cluster.data()).join("pg_hba.conf");
    let rest = fs::read_to_string(&hba).unwrap();
    fs::write(
        &hba,
        format!("local all clerk password\nhost all clerk 127.0.0.1/32 scram-sha-256\n{rest}"),
    )
    .unwrap();
    cluster.run_as_postgres("pg_ctl", &["-D", &cluster.data(), "reload"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut h = Harness::start_with(&config(&cluster));

    let clerk = |host: &str, password: &str| {
        let _ = Command::new("/usr/bin/psql")
            .args(["-X", "-w", "-h", host, "-p", &cluster.port.to_string()])
            .args(["-U", "clerk", "-d", "postgres", "-c", "SELECT 1"])
            .env("PGPASSWORD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("psql");
    };
    clerk("127.0.0.1", "PHIMARKwrong");
    expect_login_on_both_ends(&mut h, "tcp", "clerk", false);
    clerk(&socket_dir, "PHIMARKwrong");
    expect_login_on_both_ends(&mut h, "unix", "clerk", false);
    clerk("127.0.0.1", "PHIMARKright");
    expect_login_on_both_ends(&mut h, "tcp", "clerk", true);
    clerk(&socket_dir, "PHIMARKright");
    expect_login_on_both_ends(&mut h, "unix", "clerk", true);

    // A trusted login, then a role taken: the statement after it carries the role.
    cluster.psql(
        "127.0.0.1",
        &[
            "SET ROLE auditor",
            "SELECT current_user, session_user",
            "SET SESSION AUTHORIZATION clerk",
            "SELECT current_user",
        ],
    );
    expect_login_on_both_ends(&mut h, "tcp", "postgres", true);
    for end in ["client", "server"] {
        let event = h.expect(&format!("{end} statement after SET ROLE"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT current_user, session_user" && role(s.session.as_ref()) == end
            })
        });
        let session = statement(&event).unwrap().session.clone().unwrap();
        assert_eq!(
            (
                session.db_user.as_str(),
                session.effective_user.as_str(),
                session.db_role.as_str()
            ),
            ("postgres", "", "auditor"),
            "{end}"
        );
        let set = h.expect(&format!("{end} SET ROLE"), |e| {
            statement(e)
                .is_some_and(|s| s.text == "SET ROLE auditor" && role(s.session.as_ref()) == end)
        });
        assert_eq!(
            statement(&set).unwrap().session.as_ref().unwrap().db_role,
            "",
            "the SET ROLE itself ran before the role was taken"
        );
        let after = h.expect(
            &format!("{end} statement after SET SESSION AUTHORIZATION"),
            |e| {
                statement(e).is_some_and(|s| {
                    s.text == "SELECT current_user" && role(s.session.as_ref()) == end
                })
            },
        );
        let session = statement(&after).unwrap().session.clone().unwrap();
        assert_eq!(
            (
                session.db_user.as_str(),
                session.effective_user.as_str(),
                session.db_role.as_str()
            ),
            ("postgres", "clerk", ""),
            "{end}: the login user kept, the session user beside it, the role reset"
        );
    }
    for end in ["client", "server"] {
        h.expect(&format!("{end} end of the SET ROLE session"), |e| {
            session_end(e).is_some_and(|s| {
                s.statements == 4 && s.session.as_ref().is_some_and(|x| x.role == end)
            })
        });
    }
    h.stop();

    let mut want = Vec::new();
    for end in ["client", "server"] {
        want.extend([
            row(
                end,
                "tcp",
                "clerk",
                "scram-sha-256",
                false,
                "28P01",
                0,
                false,
            ),
            row(end, "unix", "clerk", "password", false, "28P01", 0, false),
            row(end, "tcp", "clerk", "scram-sha-256", true, "", 0, false),
            row(end, "unix", "clerk", "password", true, "", 0, false),
            row(end, "tcp", "postgres", "none", true, "", 0, false),
        ]);
    }
    want.sort();
    assert_eq!(
        login_rows(&h),
        want,
        "exactly one login event per attempt and end"
    );
    // Neither password reached any event: not the cleartext one on the unix socket, not the
    // SCRAM exchange, not psql's environment.
    expect_no_marker(&h, &[]);
}

/// A minimal MySQL client speaking the wire protocol itself, to send COM_CHANGE_USER (no
/// installed client library exposes it to a script). Users without a password only: an empty
/// auth response.
struct RawMysql {
    stream: std::net::TcpStream,
}

impl RawMysql {
    fn read_packet(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read as _;
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).expect("packet header");
        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
        let mut payload = vec![0u8; len];
        self.stream
            .read_exact(&mut payload)
            .expect("packet payload");
        (head[3], payload)
    }

    fn write_packet(&mut self, seq: u8, payload: &[u8]) {
        use std::io::Write as _;
        let n = payload.len();
        let mut p = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
        p.extend_from_slice(payload);
        self.stream.write_all(&p).expect("write packet");
    }

    /// Reads the server's verdict on a login or change of user, answering auth switches
    /// with an empty response: the first byte of its OK (0x00) or ERR (0xff).
    fn verdict(&mut self) -> u8 {
        loop {
            let (seq, payload) = self.read_packet();
            match payload.first() {
                Some(0xfe | 0x01) => self.write_packet(seq.wrapping_add(1), &[]),
                Some(&b) => return b,
                None => panic!("empty packet"),
            }
        }
    }

    const CAPS: u32 = 0x0000_0001 | 0x0000_0200 | 0x0000_2000 | 0x0000_8000 | 0x0008_0000;

    fn login(port: u16, user: &str) -> RawMysql {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut c = RawMysql { stream };
        let (_, greeting) = c.read_packet();
        assert_eq!(greeting.first(), Some(&10), "protocol 10 greeting");
        let mut p = Self::CAPS.to_le_bytes().to_vec();
        p.extend_from_slice(&16_777_216u32.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(0); // empty auth response
        p.extend_from_slice(b"mysql_native_password\0");
        c.write_packet(1, &p);
        assert_eq!(c.verdict(), 0, "login as {user}");
        c
    }

    fn query(&mut self, sql: &str) -> u8 {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        self.write_packet(0, &p);
        self.read_packet().1[0]
    }

    fn change_user(&mut self, user: &str) -> u8 {
        let mut p = vec![0x11];
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(0); // empty auth response
        p.push(0); // no database
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(b"mysql_native_password\0");
        self.write_packet(0, &p);
        self.verdict()
    }

    /// Sends `sql` as a COM_QUERY and reads its whole answer (this client never asks for
    /// `CLIENT_DEPRECATE_EOF`): the rows of a result set, or none for an OK. Panics on an ERR.
    fn run(&mut self, sql: &str) -> Vec<Vec<u8>> {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        self.write_packet(0, &p);
        self.answer()
    }

    /// Reads one answer: OK (no rows), ERR (a panic) or a result set's rows.
    fn answer(&mut self) -> Vec<Vec<u8>> {
        let (_, first) = self.read_packet();
        match first.first() {
            Some(0x00) => return Vec::new(),
            Some(0xff) => panic!("the server refused: {}", String::from_utf8_lossy(&first)),
            _ => {}
        }
        self.skip_to_eof();
        let mut rows = Vec::new();
        loop {
            let (_, row) = self.read_packet();
            match row.first() {
                Some(0xfe) if row.len() < 9 => return rows,
                Some(0xff) => panic!("the server failed: {}", String::from_utf8_lossy(&row)),
                _ => rows.push(row),
            }
        }
    }

    /// Reads definitions up to their EOF.
    fn skip_to_eof(&mut self) {
        loop {
            let (_, p) = self.read_packet();
            if p.first() == Some(&0xfe) && p.len() < 9 {
                return;
            }
        }
    }

    /// COM_STMT_PREPARE: the statement id.
    fn prepare(&mut self, sql: &str) -> u32 {
        let mut p = vec![0x16];
        p.extend_from_slice(sql.as_bytes());
        self.write_packet(0, &p);
        let (_, ok) = self.read_packet();
        assert_eq!(ok.first(), Some(&0), "prepare {sql}: {ok:?}");
        let id = u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]);
        let columns = u16::from_le_bytes([ok[5], ok[6]]);
        let params = u16::from_le_bytes([ok[7], ok[8]]);
        if params > 0 {
            self.skip_to_eof();
        }
        if columns > 0 {
            self.skip_to_eof();
        }
        id
    }

    /// COM_STMT_EXECUTE of statement `id` with one integer parameter: its binary rows.
    fn execute(&mut self, id: u32, param: i32) -> Vec<Vec<u8>> {
        let mut p = vec![0x17];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(0); // no cursor
        p.extend_from_slice(&1u32.to_le_bytes()); // iteration count
        p.push(0); // NULL bitmap of one parameter
        p.push(1); // new parameter types
        p.extend_from_slice(&[3, 0]); // MYSQL_TYPE_LONG
        p.extend_from_slice(&param.to_le_bytes());
        self.write_packet(0, &p);
        self.answer()
    }

    /// COM_STMT_CLOSE (no answer).
    fn close_statement(&mut self, id: u32) {
        let mut p = vec![0x19];
        p.extend_from_slice(&id.to_le_bytes());
        self.write_packet(0, &p);
    }

    /// COM_QUIT; the server may have closed already.
    fn quit(mut self) {
        use std::io::Write as _;
        let _ = self.stream.write_all(&[1, 0, 0, 0, 0x01]);
    }
}

#[test]
fn mariadb_logins_and_change_user_report_outcome_and_the_new_user() {
    let db = MariaDb::start();
    // Before the agent runs: the password is in these statements.
    db.client(
        true,
        None,
        "CREATE USER clerk@localhost IDENTIFIED BY 'PHIMARKright'; \
         CREATE USER clerk@'127.0.0.1' IDENTIFIED BY 'PHIMARKright'; \
         CREATE USER pooled@localhost; CREATE USER pooled@'127.0.0.1'; \
         CREATE ROLE auditor; GRANT auditor TO root@localhost",
    );
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    config.database.unix_sockets = vec![db.socket()];
    let mut h = Harness::start_with(&config);

    let clerk = |socket: bool, password: &str| {
        let mut cmd = Command::new("/usr/bin/mariadb");
        cmd.args(["--no-defaults", "-uclerk", &format!("-p{password}")]);
        if socket {
            cmd.arg(format!("--socket={}", db.socket().display()));
        } else {
            cmd.args(["-h", "127.0.0.1", "-P", &db.port.to_string()]);
        }
        let _ = cmd
            .args(["-e", "SELECT 1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb");
    };
    clerk(false, "PHIMARKwrong");
    expect_login_on_both_ends(&mut h, "tcp", "clerk", false);
    clerk(true, "PHIMARKwrong");
    expect_login_on_both_ends(&mut h, "unix", "clerk", false);
    clerk(false, "PHIMARKright");
    expect_login_on_both_ends(&mut h, "tcp", "clerk", true);
    clerk(true, "PHIMARKright");
    expect_login_on_both_ends(&mut h, "unix", "clerk", true);

    // A role taken with SET ROLE: the statement after it carries it.
    db.client(true, None, "SET ROLE auditor; SELECT CURRENT_ROLE()");
    expect_login_on_both_ends(&mut h, "unix", "root", true);
    for end in ["client", "server"] {
        let event = h.expect(&format!("{end} statement after SET ROLE"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT CURRENT_ROLE()" && role(s.session.as_ref()) == end
            })
        });
        let session = statement(&event).unwrap().session.clone().unwrap();
        assert_eq!(
            (session.db_user.as_str(), session.db_role.as_str()),
            ("root", "auditor"),
            "{end}"
        );
    }

    // A pooled connection re-authenticated with COM_CHANGE_USER: later statements carry
    // the new user; a refused change is a failed login. (The raw client is this test
    // process, where the agent runs: only the server's end is asserted.)
    let mut c = RawMysql::login(db.port, "root");
    assert_eq!(c.query("DO 1"), 0);
    assert_eq!(c.change_user("pooled"), 0, "change to pooled");
    assert_eq!(c.query("DO LENGTH(CURRENT_USER())"), 0);
    assert_eq!(c.change_user("clerk"), 0xff, "clerk needs a password");
    c.quit();
    let is_server = |e: &v1::Event| exe_name(e) == "mariadbd";
    let before = h.expect("server statement before the change", |e| {
        statement(e).is_some_and(|s| s.text == "DO ?") && is_server(e)
    });
    assert_eq!(
        statement(&before)
            .unwrap()
            .session
            .as_ref()
            .unwrap()
            .db_user,
        "root"
    );
    let after = h.expect("server statement after the change", |e| {
        statement(e).is_some_and(|s| s.text == "DO LENGTH(CURRENT_USER())") && is_server(e)
    });
    assert_eq!(
        statement(&after).unwrap().session.as_ref().unwrap().db_user,
        "pooled"
    );
    let refused = h.expect("server's refused change of user", |e| {
        login(e).is_some_and(|l| l.change_user && !l.ok) && is_server(e)
    });
    let refused = login(&refused).unwrap();
    assert_eq!(
        (
            refused.user.as_str(),
            refused.error_code,
            refused.sqlstate.as_str()
        ),
        ("clerk", 1045, "28000")
    );
    assert_eq!(
        refused.session.as_ref().unwrap().db_user,
        "pooled",
        "a refused change keeps the user in effect"
    );
    h.stop();

    let native = "mysql_native_password";
    let mut want = Vec::new();
    for end in ["client", "server"] {
        want.extend([
            row(end, "tcp", "clerk", native, false, "28000", 1045, false),
            row(end, "unix", "clerk", native, false, "28000", 1045, false),
            row(end, "tcp", "clerk", native, true, "", 0, false),
            row(end, "unix", "clerk", native, true, "", 0, false),
            row(end, "unix", "root", native, true, "", 0, false),
        ]);
    }
    want.extend([
        row("server", "tcp", "root", native, true, "", 0, false),
        row("server", "tcp", "pooled", native, true, "", 0, true),
        row("server", "tcp", "clerk", native, false, "28000", 1045, true),
    ]);
    want.sort();
    let got: Vec<LoginRow> = login_rows(&h)
        .into_iter()
        .filter(|r| {
            // The raw client's own end (this process), if the agent reports it, is not
            // asserted.
            !(r.0 == "client"
                && r.1 == "tcp"
                && (r.2 == "root" || r.2 == "pooled" || (r.2 == "clerk" && r.7)))
        })
        .collect();
    assert_eq!(got, want, "exactly one login event per attempt and end");
    expect_no_marker(&h, &[]);
}

/// The statement events of one transport and end, in order.
fn statements_of(h: &Harness, transport: &str, want: &str) -> Vec<v1::DbStatement> {
    h.seen
        .iter()
        .filter_map(statement)
        .filter(|s| {
            role(s.session.as_ref()) == want
                && s.session.as_ref().is_some_and(|x| x.transport == transport)
        })
        .cloned()
        .collect()
}

/// `rows` lines of tab-separated `id`, `note` with a marker in every note: several MB for
/// 60,000 rows, far beyond what one captured read or write holds.
fn copy_rows(rows: usize) -> String {
    (0..rows)
        .map(|i| format!("{i}\tPHIMARK_ROW_{i:08}_{}\n", "z".repeat(64)))
        .collect()
}

#[test]
fn postgres_large_copy_both_ways_reports_rows_and_direction_never_the_data() {
    const ROWS: usize = 60_000;
    let cluster = Cluster::start();
    let mut h = Harness::start_with(&config(&cluster));
    let data = copy_rows(ROWS);
    assert!(data.len() > 5_000_000, "several MB: {}", data.len());
    let input = cluster.dir.path().join("copy-in.tsv");
    fs::write(&input, &data).unwrap();
    let socket_dir = cluster.dir.path().display().to_string();
    for (host, transport) in [("127.0.0.1", "tcp"), (socket_dir.as_str(), "unix")] {
        let table = format!("copy_{transport}");
        let status = Command::new("/usr/bin/psql")
            .args(["-X", "-h", host, "-p", &cluster.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", &format!("CREATE TABLE {table} (id int, note text)")])
            .args(["-c", &format!("COPY {table} FROM STDIN")])
            .args(["-c", &format!("COPY {table} TO STDOUT")])
            // stdin is used up by then: an empty COPY, which ends at once.
            .args(["-c", &format!("COPY {table} (id) FROM STDIN")])
            .args(["-c", "SELECT 4242 AS after_copy"])
            .stdin(fs::File::open(&input).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("psql");
        // The first COPY FROM STDIN reads all of stdin; the second gets none and copies 0 rows.
        assert!(status.success(), "psql over {transport}: {status}");
        for want in ["client", "server"] {
            h.expect(
                &format!("{want} statement after the copies over {transport}"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text == "SELECT ? AS after_copy"
                            && role(s.session.as_ref()) == want
                            && s.session.as_ref().is_some_and(|x| x.transport == transport)
                    })
                },
            );
            let got: Vec<_> = statements_of(&h, transport, want)
                .into_iter()
                .map(|s| (s.text, s.copy_direction, s.rows, s.ok))
                .collect();
            let rows = Some(ROWS as u64);
            assert_eq!(
                got,
                [
                    (
                        format!("CREATE TABLE {table} (id int, note text)"),
                        "".into(),
                        None,
                        true
                    ),
                    (format!("COPY {table} FROM STDIN"), "in".into(), rows, true),
                    (format!("COPY {table} TO STDOUT"), "out".into(), rows, true),
                    (
                        format!("COPY {table} (id) FROM STDIN"),
                        "in".into(),
                        Some(0),
                        true
                    ),
                    ("SELECT ? AS after_copy".into(), "".into(), Some(1), true),
                ],
                "{want} statements over {transport}"
            );
        }
    }
    expect_no_marker(&h, &[]);
    h.stop();
}

#[test]
fn postgres_copy_refused_by_the_server_fails_the_statement_and_the_session_goes_on() {
    let cluster = Cluster::start();
    let mut h = Harness::start_with(&config(&cluster));
    let input = cluster.dir.path().join("bad.tsv");
    fs::write(&input, "1\tPHIMARK_OK\nnot-a-number\tPHIMARK_BAD\n").unwrap();
    let socket_dir = cluster.dir.path().display().to_string();
    for (host, transport) in [("127.0.0.1", "tcp"), (socket_dir.as_str(), "unix")] {
        let table = format!("bad_{transport}");
        let _ = Command::new("/usr/bin/psql")
            .args(["-X", "-h", host, "-p", &cluster.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", &format!("CREATE TABLE {table} (id int, note text)")])
            .args(["-c", &format!("COPY {table} FROM STDIN")])
            .args(["-c", "SELECT 4242 AS after_failed_copy"])
            .stdin(fs::File::open(&input).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("psql");
        for want in ["client", "server"] {
            h.expect(
                &format!("{want} statement after the failed copy over {transport}"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text == "SELECT ? AS after_failed_copy"
                            && role(s.session.as_ref()) == want
                            && s.session.as_ref().is_some_and(|x| x.transport == transport)
                    })
                },
            );
            let got: Vec<_> = statements_of(&h, transport, want)
                .into_iter()
                .map(|s| (s.text, s.copy_direction, s.sqlstate, s.ok))
                .collect();
            assert_eq!(
                got,
                [
                    (
                        format!("CREATE TABLE {table} (id int, note text)"),
                        "".into(),
                        "".into(),
                        true
                    ),
                    // invalid_text_representation: the row's value is not in the event.
                    (
                        format!("COPY {table} FROM STDIN"),
                        "in".into(),
                        "22P02".into(),
                        false
                    ),
                    (
                        "SELECT ? AS after_failed_copy".into(),
                        "".into(),
                        "".into(),
                        true
                    ),
                ],
                "{want} statements over {transport}"
            );
        }
    }
    expect_no_marker(&h, &[]);
    h.stop();
}

#[test]
fn mariadb_load_data_local_reports_rows_and_the_next_statement_never_the_file() {
    const ROWS: usize = 131;
    let db = MariaDb::start();
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    config.database.unix_sockets = vec![db.socket()];
    let mut h = Harness::start_with(&config);
    db.client(false, None, "CREATE DATABASE ehr");
    // 12 KB; lines that would be commands if read as packets (0x03 COM_QUERY is a tab-free
    // byte any file can hold).
    let data: String = (0..ROWS)
        .map(|i| format!("{i}\t\x03SELECT 'PHIMARK_FILE_{i:04}' {}\n", "q".repeat(60)))
        .collect();
    assert!((12_000..13_000).contains(&data.len()), "{}", data.len());
    // The file name is a literal of the statement: redacted like one.
    let file = db.dir.path().join("PHIMARK_NAME.tsv");
    fs::write(&file, &data).unwrap();
    for (socket, transport) in [(false, "tcp"), (true, "unix")] {
        let table = format!("ehr.load_{transport}");
        let mut cmd = Command::new("/usr/bin/mariadb");
        cmd.args(["--no-defaults", "-uroot", "--local-infile=1"]);
        if socket {
            cmd.arg(format!("--socket={}", db.socket().display()));
        } else {
            cmd.args(["-h", "127.0.0.1", "-P", &db.port.to_string()]);
        }
        let sql = format!(
            "CREATE TABLE {table} (id int, note text); \
             LOAD DATA LOCAL INFILE '{}' INTO TABLE {table}; \
             SELECT 4242 AS after_load",
            file.display()
        );
        let out = cmd.args(["-e", &sql]).output().expect("mariadb");
        assert!(
            out.status.success(),
            "mariadb over {transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in ["client", "server"] {
            h.expect(
                &format!("{want} statement after the load over {transport}"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text == "SELECT ? AS after_load"
                            && role(s.session.as_ref()) == want
                            && s.session.as_ref().is_some_and(|x| x.transport == transport)
                    })
                },
            );
            let got: Vec<_> = statements_of(&h, transport, want)
                .into_iter()
                .map(|s| (s.text, s.copy_direction, s.rows, s.ok))
                .filter(|(text, ..)| !text.starts_with("select @@"))
                .collect();
            let mut expected = Vec::new();
            if transport == "tcp" {
                expected.push(("CREATE DATABASE ehr".into(), "".into(), Some(1), true));
            }
            expected.extend([
                (
                    format!("CREATE TABLE {table} (id int, note text)"),
                    "".into(),
                    Some(0),
                    true,
                ),
                (
                    format!("LOAD DATA LOCAL INFILE ? INTO TABLE {table}"),
                    "in".into(),
                    Some(ROWS as u64),
                    true,
                ),
                ("SELECT ? AS after_load".into(), "".into(), Some(1), true),
            ]);
            assert_eq!(got, expected, "{want} statements over {transport}");
        }
    }
    expect_no_marker(&h, &[]);
    h.stop();
}

/// Starts `psql` running `sql` over `host` (TCP address or the socket directory) and SIGKILLs
/// it after `after`, while the server still runs the statement.
fn psql_killed_mid_statement(cluster: &Cluster, host: &str, sql: &str, after: Duration) {
    let mut psql = Command::new("/usr/bin/psql");
    psql.args(["-X", "-h", host, "-p", &cluster.port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql]);
    killed_mid_statement(&mut psql, after);
}

/// Starts `client` and SIGKILLs it after `after`, checking it was still running.
fn killed_mid_statement(client: &mut Command, after: Duration) {
    let mut child = client
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    std::thread::sleep(after);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the client ended before it was killed: the statement did not run long enough"
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

/// `SELECT n FROM t WHERE id = 1` through psql: what the server committed.
fn postgres_value(cluster: &Cluster) -> String {
    let out = Command::new("/usr/bin/psql")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
        ])
        .args(["-U", "postgres", "-d", "postgres"])
        .args(["-c", "SELECT n FROM killed WHERE id = 1"])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Issue 17 item 2: a client SIGKILLed while its statement runs. The server finishes and
/// commits it after the client's socket is gone; the server end's event for that statement is
/// there with the server's outcome (`UPDATE 1`), over TCP and the unix socket, and the session
/// ends after it.
#[test]
fn postgres_statement_of_a_killed_client_is_audited_with_its_outcome_on_the_server_end() {
    let cluster = Cluster::start();
    cluster.psql(
        "127.0.0.1",
        &[
            "CREATE TABLE killed (id int, n int)",
            "INSERT INTO killed VALUES (1, 0)",
        ],
    );
    let mut h = Harness::start_with(&config(&cluster));
    let socket_dir = cluster.dir.path().display().to_string();
    for (round, (host, transport)) in [("127.0.0.1", "tcp"), (socket_dir.as_str(), "unix")]
        .into_iter()
        .enumerate()
    {
        // The update runs after the sleep: the client is dead by then.
        let sql =
            "WITH s AS (SELECT pg_sleep(2) AS z) UPDATE killed SET n = n + 1 FROM s WHERE id = 1";
        psql_killed_mid_statement(&cluster, host, sql, Duration::from_millis(800));
        let text =
            "WITH s AS (SELECT pg_sleep(?) AS z) UPDATE killed SET n = n + ? FROM s WHERE id = ?";
        let event = h.expect(
            &format!("server statement of the killed client over {transport}"),
            |e| {
                statement(e).is_some_and(|s| {
                    s.text == text
                        && role(s.session.as_ref()) == "server"
                        && s.session.as_ref().is_some_and(|x| x.transport == transport)
                })
            },
        );
        let st = statement(&event).unwrap();
        assert_eq!(exe_name(&event), "postgres");
        assert!(
            st.ok && st.command_tag == "UPDATE 1" && st.rows == Some(1),
            "the server's outcome over {transport}: {st:?}"
        );
        let socket_id = st.session.as_ref().unwrap().socket_id;
        h.expect(
            &format!("server session end after the statement over {transport}"),
            |e| {
                session_end(e).is_some_and(|s| {
                    s.session.as_ref().is_some_and(|x| {
                        x.socket_id == socket_id && x.role == "server" && x.transport == transport
                    }) && s.statements == 1
                })
            },
        );
        // The server did commit it: the audit and the data agree.
        assert_eq!(postgres_value(&cluster), (round + 1).to_string());
    }
}

/// Issue 17 item 2 on MariaDB: the `mariadb` client SIGKILLed while its `UPDATE` sleeps; the
/// server finishes and commits it, and the server end's event carries the server's OK with
/// its row count, over TCP and the unix socket.
#[test]
fn mariadb_statement_of_a_killed_client_is_audited_with_its_outcome_on_the_server_end() {
    let db = MariaDb::start();
    db.client(
        false,
        None,
        "CREATE DATABASE ehr; CREATE TABLE ehr.killed (id int, n int); \
         INSERT INTO ehr.killed VALUES (1, 0)",
    );
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    config.database.unix_sockets = vec![db.socket()];
    let mut h = Harness::start_with(&config);
    let value = || {
        let out = Command::new("/usr/bin/mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", db.socket().display()))
            .args(["-e", "SELECT n FROM ehr.killed WHERE id = 1"])
            .output()
            .expect("mariadb");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for (round, transport) in ["tcp", "unix"].into_iter().enumerate() {
        let mut client = Command::new("/usr/bin/mariadb");
        client.args(["--no-defaults", "-uroot"]);
        if transport == "unix" {
            client.arg(format!("--socket={}", db.socket().display()));
        } else {
            client.args(["-h", "127.0.0.1", "-P", &db.port.to_string()]);
        }
        client.args([
            "-e",
            "UPDATE ehr.killed SET n = n + 1 WHERE id = 1 AND SLEEP(2) = 0",
        ]);
        killed_mid_statement(&mut client, Duration::from_millis(800));
        let event = h.expect(
            &format!("server statement of the killed client over {transport}"),
            |e| {
                statement(e).is_some_and(|s| {
                    s.text.starts_with("UPDATE ehr.killed SET")
                        && role(s.session.as_ref()) == "server"
                        && s.session.as_ref().is_some_and(|x| x.transport == transport)
                })
            },
        );
        let st = statement(&event).unwrap();
        assert_eq!(exe_name(&event), "mariadbd");
        assert!(
            st.ok && st.command_tag == "OK" && st.rows == Some(1),
            "the server's outcome over {transport}: {st:?}"
        );
        assert_eq!(value(), (round + 1).to_string());
    }
}

/// A minimal PostgreSQL frontend over TCP or a unix socket (trust login), for what psql
/// cannot do: many queries in one write, and a session held open across a pause.
struct Wire {
    stream: Box<dyn ReadWrite>,
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

impl Wire {
    /// Logs in as `postgres` and waits for the server to be ready.
    fn connect(cluster: &Cluster, transport: &str) -> Wire {
        let stream: Box<dyn ReadWrite> = if transport == "tcp" {
            Box::new(std::net::TcpStream::connect(("127.0.0.1", cluster.port)).unwrap())
        } else {
            let path = cluster
                .dir
                .path()
                .join(format!(".s.PGSQL.{}", cluster.port));
            Box::new(std::os::unix::net::UnixStream::connect(path).unwrap())
        };
        let mut wire = Wire { stream };
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for s in ["user", "postgres", "database", "postgres", ""] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        wire.stream.write_all(&startup).unwrap();
        wire.until_ready(1);
        wire
    }

    /// Sends every statement as a Query message in one write, then reads until each is
    /// answered (one ReadyForQuery per Query).
    fn pipeline(&mut self, statements: &[String]) {
        let mut bytes = Vec::new();
        for s in statements {
            bytes.push(b'Q');
            bytes.extend_from_slice(&((s.len() + 5) as i32).to_be_bytes());
            bytes.extend_from_slice(s.as_bytes());
            bytes.push(0);
        }
        self.stream.write_all(&bytes).unwrap();
        self.until_ready(statements.len());
    }

    /// Reads server messages until `n` ReadyForQuery; panics on an ErrorResponse.
    fn until_ready(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            let mut header = [0u8; 5];
            self.stream.read_exact(&mut header).unwrap();
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.stream.read_exact(&mut body).unwrap();
            assert_ne!(header[0], b'E', "the server refused a statement");
            if header[0] == b'Z' {
                seen += 1;
            }
        }
    }

    /// Says goodbye (Terminate) and closes.
    fn terminate(mut self) {
        self.stream.write_all(&[b'X', 0, 0, 0, 4]).unwrap();
    }
}

/// Session ends per end (client, server) over `transport`.
fn session_ends_of(h: &Harness, transport: &str) -> Vec<v1::DbSessionEnd> {
    h.seen
        .iter()
        .filter_map(session_end)
        .filter(|s| s.session.as_ref().is_some_and(|x| x.transport == transport))
        .cloned()
        .collect()
}

#[test]
fn postgres_rows_of_a_large_result_never_leave_the_kernel() {
    const ROWS: usize = 20_000;
    const ROW_MARKER: &str = "PHIMARK_RESULT_ROW";
    let cluster = Cluster::start();
    let mut h = Harness::start_with(&config(&cluster));
    let socket_dir = cluster.dir.path().display().to_string();
    let mut row_bytes = 0;
    for (host, transport) in [("127.0.0.1", "tcp"), (socket_dir.as_str(), "unix")] {
        let table = format!("big_{transport}");
        let output = Command::new("/usr/bin/psql")
            .args(["-X", "-h", host, "-p", &cluster.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", &format!("CREATE TABLE {table} (id int, note text)")])
            .args([
                "-c",
                &format!(
                    "INSERT INTO {table} SELECT i, '{ROW_MARKER}_' || i || repeat('r', 400) FROM generate_series(1, {ROWS}) i"
                ),
            ])
            .args(["-c", &format!("SELECT * FROM {table}")])
            .args(["-c", "SELECT 4243 AS after_big"])
            .stderr(Stdio::null())
            .output()
            .expect("psql");
        assert!(output.status.success(), "psql over {transport}");
        let shown = String::from_utf8_lossy(&output.stdout);
        assert!(
            shown.matches(ROW_MARKER).count() == ROWS,
            "every row came back"
        );
        row_bytes += output.stdout.len();
        for want in ["client", "server"] {
            h.expect(
                &format!("{want} statement after the result over {transport}"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text == "SELECT ? AS after_big"
                            && role(s.session.as_ref()) == want
                            && s.session.as_ref().is_some_and(|x| x.transport == transport)
                    })
                },
            );
            let got: Vec<_> = statements_of(&h, transport, want)
                .into_iter()
                .map(|s| (s.text, s.rows, s.ok, s.lost_records))
                .collect();
            assert_eq!(
                got[2..],
                [
                    (format!("SELECT * FROM {table}"), Some(ROWS as u64), true, 0),
                    ("SELECT ? AS after_big".into(), Some(1), true, 0),
                ],
                "{want} statements over {transport}: {got:?}"
            );
            assert_eq!(got.len(), 4, "{want} statements over {transport}: {got:?}");
        }
    }
    assert_rows_stayed_in_the_kernel(&mut h, ROW_MARKER, row_bytes);
}

/// Bind parameter values (PHI in a `WHERE mrn = $1`) never leave the kernel: its walk
/// captures a Bind's portal and statement names and stops at the second's NUL.
#[test]
fn postgres_bind_parameter_values_never_leave_the_kernel() {
    // Built by the server, so the marker is in no statement text: only in the result row (which
    // stays in the kernel) and in the Bind that sends it back as a parameter.
    const VALUE_MARKER: &str = "PHIMARK_BIND_VALUE";
    let script = "SELECT 'PHIMARK_' || 'BIND_VALUE' AS short, \
                  'PHIMARK_' || 'BIND_VALUE' || repeat('v', 300) AS long \\gset\n\
                  SELECT :short::text AS echoed, length(:long::text) AS long_length;\n";
    let echo = "SELECT $1::text AS echoed, length($2::text) AS long_length;";
    let cluster = Cluster::start();
    let mut h = Harness::attach_with(&config(&cluster));
    let in_records = h.count_db_records_holding(VALUE_MARKER.as_bytes());
    h.start_reading();
    let socket_dir = cluster.dir.path().display().to_string();
    for (host, transport) in [("127.0.0.1", "tcp"), (socket_dir.as_str(), "unix")] {
        for (run, mode) in ["prepared", "extended"].into_iter().enumerate() {
            cluster.pgbench_script(host, mode, script);
            for want in ["client", "server"] {
                // This run's statement: the (run + 1)th of this end and transport.
                let matched = std::cell::Cell::new(0);
                let event = h.expect(&format!("{want} {mode} statement over {transport}"), |e| {
                    let hit = statement(e).is_some_and(|s| {
                        s.text == echo
                            && role(s.session.as_ref()) == want
                            && s.session.as_ref().is_some_and(|x| x.transport == transport)
                    });
                    matched.set(matched.get() + usize::from(hit));
                    hit && matched.get() == run + 1
                });
                let end = statement(&event).unwrap();
                assert!(end.prepared, "{mode} over {transport}: {end:?}");
                assert_eq!((end.ok, end.rows), (true, Some(1)), "{end:?}");
                assert_eq!(
                    end.statement_name.is_empty(),
                    mode == "extended",
                    "{mode}: {end:?}"
                );
            }
        }
    }
    h.stop();
    assert_eq!(statements_per_end(&h, echo), [4, 4], "one per run and end");
    assert_eq!(
        in_records.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records holding a Bind parameter's value left the kernel"
    );
    expect_no_marker(&h, &[VALUE_MARKER]);
}

#[test]
fn postgres_two_hundred_queries_in_one_write_are_each_audited_on_both_ends() {
    const QUERIES: usize = 200;
    let cluster = Cluster::start();
    let mut h = Harness::start_with(&config(&cluster));
    for transport in ["tcp", "unix"] {
        let mut wire = Wire::connect(&cluster, transport);
        let queries: Vec<String> = (0..QUERIES)
            .map(|i| format!("SELECT {i} AS pipelined_{transport}"))
            .collect();
        assert!(queries.iter().map(|q| q.len() + 6).sum::<usize>() > 4096);
        wire.pipeline(&queries);
        wire.pipeline(&[format!("SELECT 1 AS after_pipeline_{transport}")]);
        wire.terminate();
        let after = format!("SELECT ? AS after_pipeline_{transport}");
        for want in ["client", "server"] {
            h.expect(
                &format!("{want} statement after the pipeline over {transport}"),
                |e| {
                    statement(e)
                        .is_some_and(|s| s.text == after && role(s.session.as_ref()) == want)
                },
            );
        }
        let text = format!("SELECT ? AS pipelined_{transport}");
        assert_eq!(
            statements_per_end(&h, &text),
            [QUERIES, QUERIES],
            "{transport}"
        );
        for want in ["client", "server"] {
            let all = statements_of(&h, transport, want);
            let without: Vec<_> = all
                .iter()
                .filter(|s| !(s.ok && s.rows == Some(1)))
                .map(|s| (&s.text, s.ok, s.rows, &s.command_tag))
                .collect();
            assert!(
                without.is_empty(),
                "{want} over {transport}: every one with its outcome: {without:?}"
            );
        }
    }
    h.stop();
}

#[test]
fn postgres_pgbench_initialisation_is_audited_alike_on_both_ends() {
    let cluster = Cluster::start();
    let mut h = Harness::start_with(&config(&cluster));
    let pgbench = cluster.bin.join("pgbench");
    let socket_dir = cluster.dir.path().display().to_string();
    for (host, transport) in [("127.0.0.1", "tcp"), (socket_dir.as_str(), "unix")] {
        let status = Command::new(&pgbench)
            .args([
                "-i",
                "-s",
                "1",
                "-q",
                "-h",
                host,
                "-p",
                &cluster.port.to_string(),
            ])
            .args(["-U", "postgres", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pgbench");
        assert!(status.success(), "pgbench -i over {transport}");
        let status = Command::new("/usr/bin/psql")
            .args(["-X", "-h", host, "-p", &cluster.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", "SELECT 4244 AS after_pgbench"])
            .stdout(Stdio::null())
            .status()
            .expect("psql");
        assert!(status.success());
        for want in ["client", "server"] {
            h.expect(
                &format!("{want} statement after pgbench over {transport}"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text == "SELECT ? AS after_pgbench"
                            && role(s.session.as_ref()) == want
                            && s.session.as_ref().is_some_and(|x| x.transport == transport)
                    })
                },
            );
        }
        let per_end = ["client", "server"].map(|want| {
            statements_of(&h, transport, want)
                .into_iter()
                .map(|s| (s.text, s.rows, s.ok, s.copy_direction))
                .collect::<Vec<_>>()
        });
        assert_eq!(per_end[0], per_end[1], "the same statements on both ends");
        let copy = per_end[0]
            .iter()
            .find(|s| s.0.contains("pgbench_accounts") && s.3 == "in")
            .unwrap_or_else(|| panic!("the accounts COPY over {transport}: {:?}", per_end[0]));
        assert_eq!((copy.1, copy.2), (Some(100_000), true), "{copy:?}");
        assert!(
            per_end[0].iter().all(|s| s.2),
            "every outcome seen: {:?}",
            per_end[0]
        );
    }
    for end in session_ends_of(&h, "tcp")
        .into_iter()
        .chain(session_ends_of(&h, "unix"))
    {
        assert!(!end.desynchronised && end.lost_records == 0, "{end:?}");
    }
    h.stop();
}

#[test]
fn postgres_records_lost_in_the_kernel_are_counted_on_the_session_which_resynchronises() {
    // Nothing reads the ring buffer while one session sends far more statement text than it
    // holds (16 MiB): the kernel drops records. Then the agent reads, and the same session
    // goes on.
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 100;
    let cluster = Cluster::start();
    let mut h = Harness::attach_with(&config(&cluster));
    let mut wire = Wire::connect(&cluster, "tcp");
    let filler = "f".repeat(3000);
    for b in 0..BATCHES {
        let batch: Vec<String> = (0..PER_BATCH)
            .map(|i| format!("SELECT '{filler}' AS flood_{b}_{i}"))
            .collect();
        wire.pipeline(&batch);
    }
    h.start_reading();
    // The backlog drains; then the session speaks again.
    std::thread::sleep(Duration::from_secs(3));
    wire.pipeline(&["SELECT 4245 AS after_loss".to_string()]);
    wire.pipeline(&["SELECT 4246 AS after_loss_again".to_string()]);
    wire.terminate();
    for want in ["client", "server"] {
        let again = h.expect(&format!("{want} statement after the loss"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT ? AS after_loss_again" && role(s.session.as_ref()) == want
            })
        });
        let again = statement(&again).unwrap();
        assert!(again.ok && again.rows == Some(1), "{again:?}");
        assert!(
            again.lost_records > 0,
            "the loss is on the session's events: {again:?}"
        );
        let end = h.expect(&format!("{want} session end"), |e| {
            session_end(e).is_some_and(|s| role(s.session.as_ref()) == want)
        });
        let end = session_end(&end).unwrap();
        assert!(end.lost_records > 0, "{end:?}");
    }
    let stats = h.stop();
    assert!(
        stats.kernel_lost > 0,
        "the kernel dropped records: {stats:?}"
    );
    let flood = ["client", "server"].map(|want| {
        h.seen
            .iter()
            .filter_map(statement)
            .filter(|s| s.text.contains(" AS flood_") && role(s.session.as_ref()) == want)
            .count()
    });
    assert!(
        flood.iter().all(|&n| n < BATCHES * PER_BATCH),
        "some statements were lost: {flood:?}"
    );
}

/// The MariaDB table `ehr.big` of `rows` rows, each holding `marker` and 400 bytes more.
fn mariadb_big_table(db: &MariaDb, rows: usize, marker: &str) {
    db.client(
        false,
        None,
        &format!(
            "CREATE DATABASE ehr; CREATE TABLE ehr.big (id int, note text); \
             INSERT INTO ehr.big SELECT seq, CONCAT('{marker}_', seq, REPEAT('r', 400)) \
             FROM ehr.seq_1_to_{rows}"
        ),
    );
}

#[test]
fn mariadb_rows_of_a_large_result_never_leave_the_kernel() {
    const ROWS: usize = 20_000;
    const ROW_MARKER: &str = "PHIMARK_RESULT_ROW";
    let db = MariaDb::start();
    mariadb_big_table(&db, ROWS, ROW_MARKER);
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    config.database.unix_sockets = vec![db.socket()];
    let mut h = Harness::start_with(&config);
    let mut row_bytes = 0;
    for (socket, transport) in [(false, "tcp"), (true, "unix")] {
        let mut cmd = Command::new("/usr/bin/mariadb");
        cmd.args(["--no-defaults", "-uroot", "-N", "-B"]);
        if socket {
            cmd.arg(format!("--socket={}", db.socket().display()));
        } else {
            cmd.args(["-h", "127.0.0.1", "-P", &db.port.to_string()]);
        }
        let output = cmd
            .args(["-e", "SELECT * FROM ehr.big; SELECT 4243 AS after_big"])
            .stderr(Stdio::null())
            .output()
            .expect("mariadb");
        assert!(output.status.success(), "mariadb over {transport}");
        let shown = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            shown.matches(ROW_MARKER).count(),
            ROWS,
            "every row came back"
        );
        row_bytes += output.stdout.len();
        for want in ["client", "server"] {
            h.expect(
                &format!("{want} statement after the result over {transport}"),
                |e| {
                    statement(e).is_some_and(|s| {
                        s.text == "SELECT ? AS after_big"
                            && role(s.session.as_ref()) == want
                            && s.session.as_ref().is_some_and(|x| x.transport == transport)
                    })
                },
            );
            let got: Vec<_> = statements_of(&h, transport, want)
                .into_iter()
                .map(|s| (s.text, s.rows, s.ok, s.lost_records))
                .collect();
            assert_eq!(
                got,
                [
                    ("SELECT * FROM ehr.big".into(), Some(ROWS as u64), true, 0),
                    ("SELECT ? AS after_big".into(), Some(1), true, 0),
                ],
                "{want} statements over {transport}"
            );
        }
    }
    assert_rows_stayed_in_the_kernel(&mut h, ROW_MARKER, row_bytes);
}

/// A MySQL client in Python that reads each packet's 4-byte header apart from its body (as
/// some connectors do), so its first read is the greeting's header alone; it logs in as root
/// (no password) and runs each statement of its arguments, printing each result's row count.
const HEADER_APART_CLIENT: &str = r#"
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))

def exactly(n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            sys.exit("server closed")
        data += chunk
    return data

def packet():
    head = exactly(4)
    size = head[0] | head[1] << 8 | head[2] << 16
    return head[3], exactly(size) if size else b""

def send(seq, payload):
    n = len(payload)
    sock.sendall(bytes([n & 255, n >> 8 & 255, n >> 16, seq]) + payload)

def eof(p):
    return p[:1] == b"\xfe" and len(p) < 9

_, greeting = packet()
assert greeting[0] == 10, greeting
caps = 0x1 | 0x200 | 0x2000 | 0x8000 | 0x80000
send(1, caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + bytes([45])
     + bytes(23) + b"root\0" + b"\0" + b"mysql_native_password\0")
while True:
    seq, p = packet()
    if p[:1] in (b"\xfe", b"\x01"):
        send(seq + 1, b"")
        continue
    assert p[:1] == b"\0", p
    break
for sql in sys.argv[2:]:
    send(0, b"\x03" + sql.encode())
    _, first = packet()
    assert first[:1] != b"\xff", first
    rows = 0
    if first[:1] != b"\0":
        while not eof(packet()[1]):
            pass
        while True:
            _, p = packet()
            if eof(p):
                break
            assert p[:1] != b"\xff", p
            rows += 1
    print(rows)
send(0, b"\x01")
"#;

#[test]
fn mariadb_client_reading_headers_apart_is_walked_and_its_rows_never_leave_the_kernel() {
    const ROW_MARKER: &str = "PHIMARK_APART_ROW";
    let db = MariaDb::start();
    mariadb_big_table(&db, 300, ROW_MARKER);
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    let mut h = Harness::attach_with(&config);
    let rows_in_records = h.count_db_records_holding(ROW_MARKER.as_bytes());
    h.start_reading();
    let out = Command::new("/usr/bin/python3")
        .args(["-c", HEADER_APART_CLIENT, &db.port.to_string()])
        .args([
            "SELECT note FROM ehr.big WHERE id <= 250",
            "SELECT 4251 AS after_rows",
        ])
        .output()
        .expect("python3 (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "250\n1\n");
    for want in ["client", "server"] {
        h.expect(&format!("{want} statement after the rows"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT ? AS after_rows" && role(s.session.as_ref()) == want
            })
        });
        let got: Vec<_> = statements_of(&h, "tcp", want)
            .into_iter()
            .map(|s| (s.text, s.rows, s.ok, s.lost_records))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "SELECT note FROM ehr.big WHERE id <= ?".into(),
                    Some(250),
                    true,
                    0
                ),
                ("SELECT ? AS after_rows".into(), Some(1), true, 0),
            ],
            "{want}"
        );
    }
    h.stop();
    for end in session_ends_of(&h, "tcp") {
        assert!(!end.desynchronised && end.lost_records == 0, "{end:?}");
    }
    assert_eq!(
        rows_in_records.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records holding a row left the kernel"
    );
    expect_no_marker(&h, &[ROW_MARKER]);
}

#[test]
fn mariadb_prepared_statements_report_text_rows_and_outcome_never_the_binary_rows() {
    const ROW_MARKER: &str = "PHIMARK_BINARY_ROW";
    let db = MariaDb::start();
    mariadb_big_table(&db, 500, ROW_MARKER);
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    let mut h = Harness::attach_with(&config);
    let rows_in_records = h.count_db_records_holding(ROW_MARKER.as_bytes());
    h.start_reading();
    let mut c = RawMysql::login(db.port, "root");
    let id = c.prepare("SELECT note FROM ehr.big WHERE id <= ?");
    let rows = c.execute(id, 300);
    assert_eq!(rows.len(), 300);
    assert!(rows
        .iter()
        .all(|r| String::from_utf8_lossy(r).contains(ROW_MARKER)));
    let rows = c.execute(id, 7);
    assert_eq!(rows.len(), 7);
    c.close_statement(id);
    assert_eq!(c.run("SELECT 4247 AS after_prepared").len(), 1);
    c.quit();
    let text = "SELECT note FROM ehr.big WHERE id <= ?";
    // The client is this test process, whose own sockets the agent does not audit: the
    // server end.
    {
        let want = "server";
        h.expect(&format!("{want} statement after the executions"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT ? AS after_prepared" && role(s.session.as_ref()) == want
            })
        });
        let got: Vec<_> = statements_of(&h, "tcp", want)
            .into_iter()
            .map(|s| (s.text, s.prepared, s.rows, s.ok))
            .collect();
        assert_eq!(
            got,
            [
                (text.into(), true, Some(300), true),
                (text.into(), true, Some(7), true),
                ("SELECT ? AS after_prepared".into(), false, Some(1), true),
            ],
            "{want}"
        );
    }
    h.stop();
    expect_no_marker(&h, &[ROW_MARKER]);
    assert_eq!(
        rows_in_records.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records holding a binary row left the kernel"
    );
}

#[test]
fn mariadb_records_lost_in_the_kernel_are_counted_on_the_session_which_resynchronises() {
    // Nothing reads the ring buffer while one session sends far more statement text than it
    // holds (16 MiB, each statement crossing both ends): the kernel drops records. Then the
    // agent reads, and the same session goes on.
    const FLOOD: usize = 4000;
    let db = MariaDb::start();
    let mut config = Config::default();
    config.database.ports = vec![db.port];
    let mut h = Harness::attach_with(&config);
    let mut c = RawMysql::login(db.port, "root");
    let filler = "f".repeat(3000);
    for i in 0..FLOOD {
        assert_eq!(c.run(&format!("SELECT '{filler}' AS flood_{i}")).len(), 1);
    }
    h.start_reading();
    // The backlog drains; then the session speaks again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.run("SELECT 4245 AS after_loss").len(), 1);
    assert_eq!(c.run("SELECT 4246 AS after_loss_again").len(), 1);
    c.quit();
    // The client is this test process, whose own sockets the agent does not audit: the
    // server end.
    {
        let want = "server";
        let again = h.expect(&format!("{want} statement after the loss"), |e| {
            statement(e).is_some_and(|s| {
                s.text == "SELECT ? AS after_loss_again" && role(s.session.as_ref()) == want
            })
        });
        let again = statement(&again).unwrap();
        // MySQL answers each command before the next is sent: from the second command after
        // the loss (the first one's answer carried the other direction's loss), outcomes pair
        // again.
        assert!(again.ok && again.rows == Some(1), "{again:?}");
        assert!(
            again.lost_records > 0,
            "the loss is on the session's events: {again:?}"
        );
        let end = h.expect(&format!("{want} session end"), |e| {
            session_end(e).is_some_and(|s| role(s.session.as_ref()) == want)
        });
        let end = session_end(&end).unwrap();
        assert!(end.lost_records > 0 && !end.desynchronised, "{end:?}");
    }
    let stats = h.stop();
    assert!(
        stats.kernel_lost > 0,
        "the kernel dropped records: {stats:?}"
    );
    let flood = ["server"].map(|want| {
        h.seen
            .iter()
            .filter_map(statement)
            .filter(|s| s.text.contains(" AS flood_") && role(s.session.as_ref()) == want)
            .count()
    });
    assert!(
        flood.iter().all(|&n| n < FLOOD),
        "some statements were lost: {flood:?}"
    );
}

/// Stops `h` and checks what a large-result test's result rows (`row_bytes` of them shown by
/// the client, each carrying `marker`) left behind: the marker in no output, no session over
/// TCP or the unix socket desynchronised or short of records, and a capture under a fifth of
/// the rows' bytes (each result crossed two sockets: were rows carried, the capture would be at
/// least as large as they are).
fn assert_rows_stayed_in_the_kernel(h: &mut Harness, marker: &str, row_bytes: usize) {
    let stats = h.stop();
    expect_no_marker(h, &[marker]);
    for end in session_ends_of(h, "tcp")
        .into_iter()
        .chain(session_ends_of(h, "unix"))
    {
        assert!(!end.desynchronised && end.lost_records == 0, "{end:?}");
    }
    eprintln!(
        "database capture: {} records, {} bytes for {} bytes of rows shown, each crossing both ends",
        stats.db_records, stats.db_bytes, row_bytes
    );
    assert!(
        stats.db_bytes * 10 < row_bytes as u64 * 2,
        "the capture carried {} bytes for {} bytes of rows",
        stats.db_bytes,
        row_bytes
    );
}
