//! e2e tier, the audit trail against a tamperer with the store (issue 18, item 5) and the
//! collector's metrics: the real `phiguard-collector` binary on loopback with real mutual
//! TLS, fed by the agent's own spool and publisher.
//!
//! - The checkpoint key is refused inside the store directory, readable by others, owned by
//!   another user, or left in the store by an older collector; the repository's
//!   `collector.toml` (the README's command) still starts with no manual step, its key
//!   outside the store.
//! - Every checkpoint is exported to a second directory, and `verify --checkpoints DIR`
//!   against that copy catches what the store's own checkpoint file cannot: a chain rewritten
//!   and re-signed with the stolen key, checkpoints deleted from the store, a cut end.
//! - `GET /metrics` counts stored and refused events, connections, subscribers, checkpoints,
//!   sequence-window refusals and CRL reloads.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use phiguard_collector::{
    chain::{RecordReader, HEADER_LEN},
    checkpoint::{self, Signer},
    store::{list_segments, Store, StoreConfig},
};
use phiguard_devcerts::Ca;
use phiguard_proto::v1::event::Body;
use phiguard_tests::e2e::{
    collector_binary, event, runtime, subscribe_live, AgentLink, CollectorProc, Pki,
};

fn work() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("phiguard-trail-")
        .tempdir()
        .unwrap()
}

/// Runs `serve` on `config`, which must refuse to start: returns its log (exit status 78,
/// the unit's "do not restart" status).
fn refused_to_start(config: &Path) -> String {
    let mut child = Command::new(collector_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the collector started with {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(78), "{log}");
    log
}

#[test]
fn the_checkpoint_key_is_refused_in_the_store_readable_by_others_owned_by_another_or_left_there() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let store = work.path().join("store");
    let config = |key: &Path| CollectorProc::write_config(work.path(), &pki, key, "", "", "", "");
    // The old default: <store.dir>/checkpoint.key.
    let log = refused_to_start(&config(&store.join("checkpoint.key")));
    assert!(
        log.contains(&format!(
            "checkpoint signing key {}: it is inside the store directory",
            store.join("checkpoint.key").display()
        )),
        "{log}"
    );
    assert!(
        !store.join("checkpoint.key").exists(),
        "no key created there"
    );
    // A key made readable by its group.
    let key = work.path().join("key/checkpoint.key");
    let mut collector = CollectorProc::start_config(config(&key), store.clone());
    collector.stop();
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let log = refused_to_start(&config(&key));
    assert!(
        log.contains(&format!(
            "checkpoint signing key {}: mode 0640",
            key.display()
        )),
        "{log}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    // Owned by another user (chown needs root: the e2e tier runs as root).
    assert!(nix::unistd::geteuid().is_root(), "chown needs root");
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let log = refused_to_start(&config(&key));
    assert!(log.contains("owned by uid 65534"), "{log}");
    std::os::unix::fs::chown(&key, Some(0), None).unwrap();
    // An upgrade that set the new path but left the old key in the store.
    fs::copy(&key, store.join("checkpoint.key")).unwrap();
    let log = refused_to_start(&config(&key));
    assert!(
        log.contains("a checkpoint key is in the store directory") && log.contains("mv "),
        "{log}"
    );
    fs::remove_file(store.join("checkpoint.key")).unwrap();
    collector.restart();
    collector.stop();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_repository_collector_toml_starts_with_no_manual_step_and_its_key_outside_the_store() {
    // The README's layout: collector/collector.toml, certs/ from `cargo xtask certs certs`,
    // target/ beside them.
    let root = work();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fs::create_dir_all(root.path().join("collector")).unwrap();
    let text = fs::read_to_string(repo.join("collector/collector.toml"))
        .unwrap()
        .replace("listen = \"127.0.0.1:7443\"", "listen = \"127.0.0.1:0\"");
    let config = root.path().join("collector/collector.toml");
    fs::write(&config, text).unwrap();
    let agents = vec!["ehr-a".to_owned()];
    phiguard_devcerts::write_dir(&root.path().join("certs"), &agents, &[]).unwrap();
    let mut collector =
        CollectorProc::start_config(config.clone(), root.path().join("target/collector-store"));
    let pki = Pki {
        dir: tempfile::TempDir::new().unwrap(),
    };
    copy_dir(&root.path().join("certs"), pki.dir.path());
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=20);
    assert!(link.wait_acked(20, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    let key = root.path().join("target/collector-key/checkpoint.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!root
        .path()
        .join("target/collector-store/checkpoint.key")
        .exists());
    let exported = root
        .path()
        .join("target/collector-checkpoints/checkpoints.jsonl");
    assert_eq!(
        checkpoint::read_file(&exported).unwrap(),
        checkpoint::read_file(&root.path().join("target/collector-store/checkpoints.jsonl"))
            .unwrap(),
        "the export holds every checkpoint"
    );
    let out = CollectorProc::verify(&config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok      agent ehr-a: 20 records"),
        "{stdout}"
    );
}

fn verify(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = CollectorProc::verify(config, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn record_spans(path: &Path) -> (Vec<u8>, Vec<usize>) {
    let bytes = fs::read(path).unwrap();
    let spans = RecordReader::new(&bytes[HEADER_LEN as usize..], HEADER_LEN, None)
        .map(|r| r.unwrap().offset as usize)
        .collect();
    (bytes, spans)
}

/// The lines of the checkpoint file at `path` not about `agent`, and the highest index
/// signed for `agent`.
fn others_and_highest(path: &Path, agent: &str) -> (String, u64) {
    let mut others = String::new();
    let mut highest = 0;
    for cp in checkpoint::read_file(path).unwrap() {
        if cp.agent == agent {
            highest = highest.max(cp.index);
        } else {
            others.push_str(&serde_json::to_string(&cp).unwrap());
            others.push('\n');
        }
    }
    (others, highest)
}

#[test]
fn the_exported_checkpoints_catch_a_chain_re_signed_with_the_stolen_key_deleted_checkpoints_and_a_cut_end(
) {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let export = work.path().join("export");
    let mut collector = CollectorProc::start_with_checkpoint(
        work.path(),
        &pki,
        &format!(
            "every_records = 50\nevery_secs = 1\nexport_dir = \"{}\"\n",
            export.display()
        ),
    );
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=300);
    assert!(link.wait_acked(300, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    assert!(
        collector
            .log()
            .contains("the exported checkpoint file is not append-only"),
        "the collector says the copy is not chattr +a:\n{}",
        collector.log()
    );
    let config = collector.config.clone();
    let store_file = work.path().join("checkpoints.jsonl");
    let exported = export.join("checkpoints.jsonl");
    let export_arg = export.to_str().unwrap();
    let store_arg = store_file.to_str().unwrap();
    assert_eq!(
        checkpoint::read_file(&exported).unwrap(),
        checkpoint::read_file(&store_file).unwrap()
    );
    for args in [&[][..], &["--checkpoints", export_arg][..]] {
        let (code, out) = verify(&config, args);
        assert_eq!(code, Some(0), "{args:?}: {out}");
    }
    let pristine = work.path().join("pristine");
    copy_dir(&collector.store, &pristine.join("store"));
    fs::copy(&store_file, pristine.join("checkpoints.jsonl")).unwrap();
    let restore = || {
        fs::remove_dir_all(&collector.store).unwrap();
        copy_dir(&pristine.join("store"), &collector.store);
        fs::copy(pristine.join("checkpoints.jsonl"), &store_file).unwrap();
    };

    // 1. The chain rewritten (every file name in it changed) and re-signed with the key,
    //    stolen from its custody, into the store's checkpoint file.
    let (others, _) = others_and_highest(&store_file, "ehr-a");
    fs::remove_dir_all(collector.store.join("agents/ehr-a")).unwrap();
    let stolen = Signer::load(&work.path().join("checkpoint.key")).unwrap();
    let store = Store::open(StoreConfig::new(collector.store.clone())).unwrap();
    let mut forged = others.clone();
    for batch in [1..=150, 151..=300] {
        let events = batch
            .map(|seq| {
                let mut e = event("ehr-a", seq);
                if let Some(Body::FileOpen(open)) = &mut e.body {
                    open.path = format!("/srv/ephi/innocuous-{seq}.txt");
                }
                e
            })
            .collect();
        let appended = store.append("ehr-a", events, |_| {}).unwrap();
        let cp = stolen.sign(
            "ehr-a",
            &appended.head,
            std::time::SystemTime::now(),
            checkpoint::clock_state(),
        );
        forged.push_str(&serde_json::to_string(&cp).unwrap());
        forged.push('\n');
    }
    drop(store);
    fs::write(&store_file, forged).unwrap();
    let (code, out) = verify(&config, &["--checkpoints", store_arg]);
    assert_eq!(
        code,
        Some(0),
        "against the store's own file the forgery passes: {out}"
    );
    for args in [&[][..], &["--checkpoints", export_arg][..]] {
        let (code, out) = verify(&config, args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            out.contains("BROKEN  agent ehr-a, record") && out.contains("the chain was rewritten"),
            "{args:?}: {out}"
        );
    }

    // 2. Checkpoints deleted from the store's file (the chain untouched).
    restore();
    let (others, _) = others_and_highest(&store_file, "ehr-a");
    fs::write(&store_file, &others).unwrap();
    let (code, out) = verify(&config, &["--checkpoints", export_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("checkpoints were deleted from the store"),
        "{out}"
    );

    // 3. The end of the chain cut, and the checkpoints that covered it removed from the
    //    store's file.
    restore();
    let (_, highest) = others_and_highest(&store_file, "ehr-a");
    let segments = list_segments(&collector.store.join("agents/ehr-a")).unwrap();
    let (first, newest) = segments.last().unwrap().clone();
    let cut_at = highest - 10;
    assert!(cut_at > first, "the cut is in the newest segment");
    let (bytes, spans) = record_spans(&newest);
    fs::write(&newest, &bytes[..spans[(cut_at - first) as usize]]).unwrap();
    let kept: String = checkpoint::read_file(&store_file)
        .unwrap()
        .into_iter()
        .filter(|cp| cp.agent != "ehr-a" || cp.index < cut_at)
        .map(|cp| format!("{}\n", serde_json::to_string(&cp).unwrap()))
        .collect();
    fs::write(&store_file, kept).unwrap();
    let (code, out) = verify(&config, &["--checkpoints", store_arg]);
    assert_eq!(code, Some(0), "the store's own file misses the cut: {out}");
    let (code, out) = verify(&config, &["--checkpoints", export_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "the chain ends at record {} but a signed checkpoint covers record {highest}: records removed from the end",
            cut_at - 1
        )),
        "{out}"
    );

    // 4. A whole chain added behind the collector's back: no checkpoint covers it.
    restore();
    let store = Store::open(StoreConfig::new(collector.store.clone())).unwrap();
    store
        .append(
            "ehr-b",
            (1..=5).map(|seq| event("ehr-b", seq)).collect(),
            |_| {},
        )
        .unwrap();
    drop(store);
    let (code, out) = verify(&config, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "BROKEN  agent ehr-b, record 1: 5 records and no signed checkpoint covers any of them"
        ),
        "{out}"
    );

    // 5. No checkpoint anywhere is not "ok".
    restore();
    let empty = work.path().join("empty-export");
    fs::create_dir_all(&empty).unwrap();
    let (code, out) = verify(&config, &["--checkpoints", empty.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("BROKEN  no signed checkpoints in"), "{out}");
}

fn wait_sample(collector: &CollectorProc, name: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = collector.scrape();
        if let Some(v) = CollectorProc::sample(&text, name).filter(|v| wanted(*v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} never as wanted:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_events_connections_subscribers_checkpoints_window_refusals_and_crl_reloads() {
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let ca = Ca::load(
        &fs::read_to_string(pki.path("ca.pem")).unwrap(),
        &fs::read_to_string(pki.path("ca.key")).unwrap(),
    )
    .unwrap();
    let crl = pki.path("crl.pem");
    fs::write(&crl, ca.crl(1, &[]).unwrap()).unwrap();
    let config = CollectorProc::write_config(
        work.path(),
        &pki,
        &work.path().join("checkpoint.key"),
        &format!("crl = \"{}\"\n", crl.display()),
        "max_seq_jump = 1000\n",
        "every_records = 500\nevery_secs = 1\n",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut collector = CollectorProc::start_config(config, work.path().join("store"));
    let before = collector.scrape();
    for (name, value) in [
        ("phiguard_collector_events_stored_total", 0.0),
        ("phiguard_collector_agents_connected", 0.0),
        ("phiguard_collector_subscribers", 0.0),
        ("phiguard_collector_store_full", 0.0),
        ("phiguard_collector_last_checkpoint_age_seconds", -1.0),
        ("phiguard_collector_sequence_window_refusals_total", 0.0),
    ] {
        assert_eq!(
            CollectorProc::sample(&before, name),
            Some(value),
            "{name}:\n{before}"
        );
    }
    let rt = runtime();
    let _live = subscribe_live(&rt, &pki, &collector.addr, Default::default());
    wait_sample(&collector, "phiguard_collector_subscribers", |v| v == 1.0);
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=120);
    assert!(link.wait_acked(120, Duration::from_secs(30)));
    wait_sample(&collector, "phiguard_collector_agents_connected", |v| {
        v == 1.0
    });
    let text = collector.scrape();
    assert_eq!(
        CollectorProc::sample(&text, "phiguard_collector_events_stored_total"),
        Some(120.0),
        "{text}"
    );
    let age = wait_sample(
        &collector,
        "phiguard_collector_last_checkpoint_age_seconds",
        |v| v >= 0.0,
    );
    assert!(age < 5.0, "a checkpoint every second at most: {age}");
    // A second stream with the same certificate and the agent's instance claims a seq far
    // beyond the window.
    let thief = AgentLink::start_claiming(&pki, "ehr-a", &collector.addr, &link.instance());
    thief.send("ehr-a", [1_000_000]);
    wait_sample(
        &collector,
        "phiguard_collector_sequence_window_refusals_total",
        |v| v >= 1.0,
    );
    let text = collector.scrape();
    assert!(
        CollectorProc::sample(
            &text,
            "phiguard_collector_events_refused_total{reason=\"sequence_window\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    drop(thief);
    // A reload reads the CRL again: counted; a broken CRL file counted as a failure.
    let reload = |needle: &str| {
        let before = collector.log().matches(needle).count();
        let out = Command::new(collector_binary())
            .args(["reload", "--pid", &collector.pid().unwrap().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while collector.log().matches(needle).count() == before {
            assert!(
                Instant::now() < deadline,
                "no {needle:?}:\n{}",
                collector.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    reload("SIGHUP: TLS files read again");
    fs::write(&crl, "not a CRL").unwrap();
    reload("SIGHUP: TLS files not reloaded");
    let text = collector.scrape();
    for name in [
        "phiguard_collector_crl_reloads_total{result=\"success\"}",
        "phiguard_collector_crl_reloads_total{result=\"failure\"}",
    ] {
        assert_eq!(
            CollectorProc::sample(&text, name),
            Some(1.0),
            "{name}:\n{text}"
        );
    }
    drop(link);
    wait_sample(&collector, "phiguard_collector_agents_connected", |v| {
        v == 0.0
    });
    collector.stop();
}

/// `chattr -a` on drop, so the temporary directory can be removed even when a test fails.
struct AppendOnly(std::path::PathBuf);

impl AppendOnly {
    fn set(path: &Path) -> AppendOnly {
        let status = Command::new("chattr").arg("+a").arg(path).status().unwrap();
        assert!(status.success(), "chattr +a {}", path.display());
        AppendOnly(path.to_owned())
    }
}

impl Drop for AppendOnly {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-a").arg(&self.0).status();
    }
}

#[test]
fn an_append_only_export_keeps_growing_and_nobody_can_rewrite_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "chattr +a needs root: the e2e tier runs as root (as store_faults.rs does for its mounts)"
    );
    let (work, pki) = (work(), Pki::new(&["ehr-a"]));
    let export = work.path().join("export");
    let mut collector = CollectorProc::start_with_checkpoint(
        work.path(),
        &pki,
        &format!("every_records = 5\nexport_dir = \"{}\"\n", export.display()),
    );
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 1..=20);
    assert!(link.wait_acked(20, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    let exported = export.join("checkpoints.jsonl");
    let before = checkpoint::read_file(&exported).unwrap().len();
    let _guard = AppendOnly::set(&exported);
    collector.restart();
    let link = AgentLink::start(&pki, "ehr-a", &collector.addr);
    link.send("ehr-a", 21..=40);
    assert!(link.wait_acked(40, Duration::from_secs(30)));
    drop(link);
    collector.stop();
    assert_eq!(
        collector
            .log()
            .matches("the exported checkpoint file is not append-only")
            .count(),
        1,
        "warned at the first start only:\n{}",
        collector.log()
    );
    let after = checkpoint::read_file(&exported).unwrap();
    assert!(after.len() > before, "{} then {}", before, after.len());
    assert_eq!(
        after,
        checkpoint::read_file(&work.path().join("checkpoints.jsonl")).unwrap()
    );
    // Not even root can rewrite or remove it now.
    assert!(fs::write(&exported, "").is_err());
    assert!(fs::remove_file(&exported).is_err());
    let (code, out) = verify(
        &collector.config,
        &["--checkpoints", export.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}");
}
