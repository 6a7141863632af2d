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
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            port,
            cluster.dir.path().display()
        );
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
        let script = self.dir.path().join("script.sql");
        fs::write(&script, sql).unwrap();
        let status = Command::new("/usr/bin/pgbench")
            .args([
                "-n",
                "-t",
                "1",
                "-M",
                "prepared",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args([
                "-U",
                "postgres",
                "-f",
                &script.display().to_string(),
                "postgres",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pgbench");
        assert!(status.success(), "pgbench failed");
    }
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
sock.sendmsg(query("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'"))
until_ready(lambda bufs: sock.recvmsg_into(bufs)[0])
sock.sendmsg([b"X", struct.pack("!i", 4)])
sock.close()
"#;

#[test]
fn vectored_reads_and_writes_are_captured() {
    let cluster = Cluster::start();
    let mut h = Harness::start_with(&config(&cluster));
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
            "SELECT count(*) FROM pg_namespace WHERE nspname = ?",
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
}

/// A MariaDB server in a temporary directory, stopped and removed on drop.
struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    server: std::process::Child,
}

impl MariaDb {
    fn start() -> MariaDb {
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
        let server = Command::new("/usr/sbin/mariadbd")
            .args(["--no-defaults", "--user=mysql", "--bind-address=127.0.0.1"])
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
