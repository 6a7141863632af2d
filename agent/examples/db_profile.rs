//! The user-space database path on its own, for profiling: `pgbench -S` transactions (a
//! simple Query and its one-row answer) fed as the four captures the kernel hands the agent
//! per transaction (client write and read, server read and write) through
//! `phiguard::db::session::Sessions`, as the enricher does.
//!
//! `cargo build --release -p phiguard-agent --example db_profile && valgrind --tool=callgrind
//! target/release/examples/db_profile 20000` gives instructions per transaction (deterministic,
//! unlike time on a shared machine); the argument is the number of transactions.

use phiguard::{
    db::session::Sessions,
    event::net::{DbSock, DbTransfer},
};
use phiguard_common::event::{db_op, db_role, DbDataEvent, DbSockEvent};

fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn startup() -> Vec<u8> {
    let mut body = (3i32 << 16).to_be_bytes().to_vec();
    for (k, v) in [
        ("user", "postgres"),
        ("database", "postgres"),
        ("application_name", "pgbench"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut v = (body.len() as i32 + 4).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

fn sock(sock: u64, role: u32) -> DbSock {
    // SAFETY: all-zero is a valid record (plain integers and arrays).
    let mut e: DbSockEvent = unsafe { std::mem::zeroed() };
    e.sock = sock;
    e.role = role;
    e.family = libc::AF_INET as u16;
    e.sport = if role == db_role::SERVER {
        5432
    } else {
        40_000
    };
    e.dport = if role == db_role::SERVER {
        40_000
    } else {
        5432
    };
    e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    DbSock::decode(&e)
}

fn data(sock: u64, role: u32, op: u32, ns: u64, len: usize) -> DbTransfer {
    // SAFETY: as above.
    let mut e: DbDataEvent = unsafe { std::mem::zeroed() };
    e.sock = sock;
    e.role = role;
    e.op = op;
    e.len = len as u32;
    e.captured = len as u32;
    e.header.boot_ns = ns;
    DbTransfer::decode(&e)
}

fn main() {
    let transactions: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut sessions = Sessions::new(false);
    let (client, server) = (1u64, 2u64);
    sessions.open(&sock(client, db_role::CLIENT), None, None);
    sessions.open(&sock(server, db_role::SERVER), None, None);
    let login = startup();
    let mut ready = typed(b'R', &0i32.to_be_bytes());
    ready.extend(typed(b'Z', b"I"));
    let mut events = 0usize;
    for (sock, role, op, bytes) in [
        (client, db_role::CLIENT, db_op::WRITE, &login),
        (server, db_role::SERVER, db_op::READ, &login),
        (server, db_role::SERVER, db_op::WRITE, &ready),
        (client, db_role::CLIENT, db_op::READ, &ready),
    ] {
        events += sessions
            .data(&data(sock, role, op, 0, bytes.len()), bytes)
            .len();
    }
    let mut answer = typed(
        b'T',
        b"\0\x01abalance\0\0\0@\x06\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    answer.extend(typed(b'D', b"\0\x01\0\0\0\x041234"));
    answer.extend(typed(b'C', b"SELECT 1\0"));
    answer.extend(typed(b'Z', b"I"));
    for i in 0..transactions {
        let sql = format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {};\0",
            (i * 7919) % 100_000 + 1
        );
        let query = typed(b'Q', sql.as_bytes());
        let ns = i * 100_000;
        for (sock, role, op, bytes, at) in [
            (client, db_role::CLIENT, db_op::WRITE, &query, ns),
            (server, db_role::SERVER, db_op::READ, &query, ns + 10_000),
            (server, db_role::SERVER, db_op::WRITE, &answer, ns + 50_000),
            (client, db_role::CLIENT, db_op::READ, &answer, ns + 60_000),
        ] {
            events += sessions
                .data(&data(sock, role, op, at, bytes.len()), bytes)
                .len();
        }
    }
    println!("{transactions} transactions, {events} events");
}
