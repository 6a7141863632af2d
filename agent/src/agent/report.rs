//! What the agent says about itself, through one path: [`Agent::report`] takes a [`Report`]
//! (a policy set in force or a reload refused, a tamper finding, a loss, a fault, a
//! heartbeat) and does everything a report does — the log line, the metric, the status and
//! the event — so no kind of report can forget one.

use std::{path::Path, sync::Arc};

use phiguard_common::{event::Kind, program::Program};
use phiguard_proto::v1::{self, event::Body};
use tracing::{debug, error, info, warn};

use super::Agent;
use crate::{
    kernel::integrity::{Finding, FindingKind},
    metrics::{KindLabels, ProgramLabels},
    policy::{compile::Compiled, Trigger},
    sink::SinkLoss,
    status::{self, ReloadState, TamperState, MAX_TAMPER_SHOWN},
};

/// Why a reload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The configuration file is invalid.
    Config,
    /// The policy directory is invalid.
    Policy,
    /// Writing the policies into the kernel maps failed half-way (the slot being filled was
    /// not switched to).
    Install,
}

/// Something the agent reports about itself.
pub enum Report {
    /// A policy set is in force, at start or after a reload.
    PolicyInForce {
        /// The set.
        compiled: Arc<Compiled>,
        /// What loaded it.
        trigger: Trigger,
    },
    /// A reload was refused; what is in force stays.
    ReloadRefused {
        /// What asked for the reload.
        trigger: Trigger,
        /// What was wrong.
        refusal: Refusal,
        /// The error, naming the file, line and field where there is one.
        error: String,
    },
    /// A change to the agent's kernel state made by something else (and whether it was
    /// repaired).
    Tamper(Finding),
    /// Records of `kind` the kernel lost because the ring buffer was full: `new` since the
    /// last report, `total` since the programs loaded.
    KernelLoss {
        /// The record kind.
        kind: Kind,
        /// Lost since the last report.
        new: u64,
        /// Lost since the programs loaded.
        total: u64,
    },
    /// Records of `kind` a previous agent's programs could not write (its ring buffer was
    /// full) after that agent's last report: found by the agent that took over from it.
    PreviousLoss {
        /// The record kind.
        kind: Kind,
        /// How many.
        count: u64,
    },
    /// Events a sink dropped (a full spool).
    SinkLoss(SinkLoss),
    /// Runs of `program` that stopped on a fault (no event: a fault says the agent saw less,
    /// not what it missed).
    KernelFault {
        /// The program.
        program: Program,
        /// Faults since the last report.
        new: u64,
        /// Faults since the programs loaded.
        total: u64,
    },
    /// Decision records the fanotify layer could not queue (the event loop fell behind): the
    /// opens were answered, their events are lost.
    FanotifyLoss {
        /// Lost since the last report.
        new: u64,
        /// Lost since the layer started.
        total: u64,
    },
    /// The agent is alive, and what it runs (an event for the collector; only with a link).
    Heartbeat,
}

impl Agent {
    /// Logs, counts, records in the status and emits as an event what `report` says.
    pub(super) fn report(&mut self, report: Report) {
        let body = match report {
            Report::PolicyInForce { compiled, trigger } => self.policy_in_force(&compiled, trigger),
            Report::ReloadRefused {
                trigger,
                refusal,
                error,
            } => self.reload_refused(trigger, refusal, error),
            Report::Tamper(finding) => self.tamper(finding),
            Report::KernelLoss { kind, new, total } => {
                self.pipeline.stats.kernel_lost += new;
                self.metrics
                    .kernel_lost
                    .get_or_create(&KindLabels {
                        kind: format!("{kind:?}").into(),
                    })
                    .inc_by(new);
                self.status.kernel_lost.insert(format!("{kind:?}"), total);
                warn!(kind = ?kind, lost = new, total, "kernel ring buffer full: events lost");
                Some(Body::EventsLost(v1::EventsLost {
                    source: v1::LossSource::KernelRingBuffer as i32,
                    kind: format!("{kind:?}"),
                    count: new,
                    total,
                }))
            }
            Report::PreviousLoss { kind, count } => {
                self.pipeline.stats.kernel_lost += count;
                self.metrics
                    .kernel_lost
                    .get_or_create(&KindLabels {
                        kind: format!("{kind:?}").into(),
                    })
                    .inc_by(count);
                warn!(kind = ?kind, lost = count, "the previous agent's programs lost records after its last report (ring buffer full)");
                Some(Body::EventsLost(v1::EventsLost {
                    source: v1::LossSource::KernelRingBuffer as i32,
                    kind: format!("{kind:?}"),
                    count,
                    total: count,
                }))
            }
            Report::SinkLoss(loss) => {
                warn!(source = ?loss.source, lost = loss.count, total = loss.total, "sink dropped events");
                Some(Body::EventsLost(v1::EventsLost {
                    source: loss.source as i32,
                    kind: String::new(),
                    count: loss.count,
                    total: loss.total,
                }))
            }
            Report::KernelFault {
                program,
                new,
                total,
            } => {
                self.metrics
                    .kernel_faults
                    .get_or_create(&ProgramLabels {
                        program: program.name().into(),
                    })
                    .inc_by(new);
                self.status
                    .kernel_faults
                    .insert(program.name().to_owned(), total);
                warn!(
                    program = program.name(),
                    faults = new,
                    total,
                    "kernel program runs stopped on a failed read"
                );
                None
            }
            Report::FanotifyLoss { new, total } => {
                warn!(
                    lost = new,
                    total, "fanotify decision records lost: the agent's queue was full"
                );
                Some(Body::EventsLost(v1::EventsLost {
                    source: v1::LossSource::UserQueue as i32,
                    kind: "FileOpen".to_owned(),
                    count: new,
                    total,
                }))
            }
            Report::Heartbeat => self.heartbeat(),
        };
        if let Some(body) = body {
            let event = self.enricher.agent_event(body);
            self.pipeline.emit(event);
        }
    }

    /// The log lines, metrics and status of the policy set now in force; its event's body
    /// (none when only observing: no policy directory).
    fn policy_in_force(&mut self, compiled: &Compiled, trigger: Trigger) -> Option<Body> {
        let p = &self.policies;
        let protections = compiled.protections(self.file_layer, self.sensors.lsm_gaps());
        info!(
            trigger = trigger.as_str(),
            generation = p.generation,
            dir = %dir_text(p.dir.as_deref()),
            policies = ?compiled.policies,
            "policies in force: {} protection(s)",
            protections.len()
        );
        for line in &protections {
            info!(generation = p.generation, "protects {line}");
        }
        for warning in &compiled.warnings {
            warn!(generation = p.generation, "policy: {warning}");
        }
        p.dir.as_ref()?; // observe only: nothing to report
        self.metrics.policy_reloaded(true);
        self.metrics.policy_generation.set(p.generation as i64);
        self.status.policy_dir = p.dir.clone();
        self.status.policy_generation = p.generation;
        self.status.last_reload = Some(ReloadState {
            ok: true,
            at: status::now(),
            trigger: trigger.as_str().to_owned(),
            error: String::new(),
            restart_needed: Vec::new(),
        });
        Some(Body::PolicyLoad(v1::PolicyLoad {
            ok: true,
            error: String::new(),
            generation: p.generation,
            directory: dir_text(p.dir.as_deref()),
            policies: compiled.policies.clone(),
            protections,
            warnings: compiled.warnings.clone(),
            trigger: trigger.as_str().to_owned(),
        }))
    }

    /// A refused reload's log line, metric and status; its event's body (a refused policy
    /// set, or one the kernel could not take, is reported to the collector: a configuration
    /// file that does not parse is the host's business and only logged).
    fn reload_refused(
        &mut self,
        trigger: Trigger,
        refusal: Refusal,
        error: String,
    ) -> Option<Body> {
        let generation = self.policies.generation;
        match refusal {
            Refusal::Config => {
                error!(error = %error, "reload refused: the configuration file is invalid; what is in force stays")
            }
            Refusal::Policy => {
                error!(trigger = trigger.as_str(), error = %error, generation, "policy reload refused; the policies in force stay")
            }
            Refusal::Install => {
                error!(error = %error, "installing the reloaded policies failed; the policies in force stay")
            }
        }
        if refusal != Refusal::Config {
            self.metrics.policy_reloaded(false);
        }
        self.status.last_reload = Some(ReloadState {
            ok: false,
            at: status::now(),
            trigger: trigger.as_str().to_owned(),
            error: error.clone(),
            restart_needed: Vec::new(),
        });
        (refusal != Refusal::Config).then(|| {
            Body::PolicyLoad(v1::PolicyLoad {
                ok: false,
                error,
                generation,
                directory: dir_text(self.policies.dir.as_deref()),
                trigger: trigger.as_str().to_owned(),
                ..v1::PolicyLoad::default()
            })
        })
    }

    /// A tamper finding's log line, metric and status entry; its event's body.
    fn tamper(&mut self, finding: Finding) -> Option<Body> {
        let (kind, proto_kind) = match finding.kind {
            FindingKind::ProgramDetached => ("program_detached", v1::TamperKind::ProgramDetached),
            FindingKind::PinRemoved => ("pin_removed", v1::TamperKind::PinRemoved),
            FindingKind::MapModified => ("map_modified", v1::TamperKind::MapModified),
        };
        let repair_error = finding.repair.clone().err().unwrap_or_default();
        if finding.repair.is_ok() {
            error!(tamper = kind, object = %finding.object, "kernel state changed by something other than the agent: {}; repaired", finding.detail);
        } else {
            error!(tamper = kind, object = %finding.object, repair_error = %repair_error, "kernel state changed by something other than the agent: {}; NOT repaired", finding.detail);
        }
        self.metrics
            .tamper
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
        self.status.tamper_total += 1;
        self.status.tamper.push(TamperState {
            at: status::now(),
            kind: kind.to_owned(),
            object: finding.object.clone(),
            detail: finding.detail.clone(),
            repaired: finding.repair.is_ok(),
        });
        let excess = self.status.tamper.len().saturating_sub(MAX_TAMPER_SHOWN);
        self.status.tamper.drain(..excess);
        if finding.kind == FindingKind::ProgramDetached && finding.repair.is_err() {
            if let Some(p) = self
                .status
                .programs
                .iter_mut()
                .find(|p| p.name == finding.object)
            {
                p.attached = false;
                p.error = Some(format!(
                    "detached by something other than the agent: {}",
                    finding.detail
                ));
            }
            let attached = self.status.programs.iter().filter(|p| p.attached).count();
            self.metrics.programs_attached.set(attached as i64);
        }
        Some(Body::Tamper(v1::Tamper {
            kind: proto_kind as i32,
            object: finding.object,
            detail: finding.detail,
            repaired: repair_error.is_empty(),
            repair_error,
        }))
    }

    /// The heartbeat's body, when there is a collector link.
    fn heartbeat(&mut self) -> Option<Body> {
        let link = self.link.as_ref()?;
        let state = link.state();
        let interval_ms = link.heartbeat_interval().as_millis() as u64;
        let attached = self.status.programs.iter().filter(|p| p.attached).count();
        Some(Body::Heartbeat(v1::Heartbeat {
            interval_ms,
            programs_attached: u32::try_from(attached).unwrap_or(u32::MAX),
            programs_known: u32::try_from(self.status.programs.len()).unwrap_or(u32::MAX),
            policy_generation: self.status.policy_generation,
            spool_events: state.spool_events,
            spool_bytes: state.spool_bytes,
            kernel_lost: self.status.kernel_lost.values().sum(),
            spool_dropped: state.spool_dropped,
            uptime_seconds: status::now().saturating_sub(self.status.started_at),
        }))
    }

    /// Compares the kernel with what the agent installed; reports each change found (and
    /// repaired, where it could be).
    pub(super) fn check_integrity(&mut self) {
        let started = std::time::Instant::now();
        let found = self.sensors.check_integrity();
        debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            findings = found.len(),
            "integrity check"
        );
        if found.is_empty() {
            return;
        }
        for finding in found {
            self.report(Report::Tamper(finding));
        }
        self.write_status();
    }

    /// Reports new sink losses, kernel losses, the fanotify layer's losses and kernel faults:
    /// never silent.
    pub(super) fn report_losses(&mut self) {
        for loss in self.pipeline.take_losses() {
            self.report(Report::SinkLoss(loss));
        }
        match self.sensors.lost() {
            Ok(totals) => {
                for kind in Kind::ALL {
                    let i = kind as usize;
                    let new = totals[i].saturating_sub(self.lost_reported[i]);
                    if new == 0 {
                        continue;
                    }
                    self.lost_reported[i] = totals[i];
                    let total = totals[i];
                    self.report(Report::KernelLoss { kind, new, total });
                }
            }
            Err(error) => warn!(%error, "cannot read kernel loss counters"),
        }
        if let Some(fanotify) = &mut self.fanotify {
            let total = fanotify.layer.counters.lost.get();
            let new = total.saturating_sub(fanotify.lost_reported);
            if new > 0 {
                fanotify.lost_reported = total;
                self.report(Report::FanotifyLoss { new, total });
            }
        }
        match self.sensors.faults() {
            Ok(totals) => {
                for program in Program::ALL {
                    let i = program as usize;
                    let new = totals[i].saturating_sub(self.faults_reported[i]);
                    if new == 0 {
                        continue;
                    }
                    self.faults_reported[i] = totals[i];
                    let total = totals[i];
                    self.report(Report::KernelFault {
                        program,
                        new,
                        total,
                    });
                }
            }
            Err(error) => warn!(%error, "cannot read kernel fault counters"),
        }
    }
}

/// A policy directory as event text (empty when only observing).
fn dir_text(dir: Option<&Path>) -> String {
    dir.map(|d| d.display().to_string()).unwrap_or_default()
}
