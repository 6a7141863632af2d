//! Runs a workload's cases under every setting, interleaved: each round visits every setting
//! once, starting one setting later than the round before, so drift in the machine's load
//! hits all settings alike. Reports median and spread per case and setting, the ratio to the
//! baseline and to the hook floor, and the agent's overhead as a fraction of auditd's.

use serde_json::{json, Value};

use super::{
    auditd::AuditRules,
    setting::{AgentArgs, AgentCounters, Session, Setting},
};

/// Pause between starting the floor or the agent and measuring under it.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// One measured loop: returns its cost per operation (lower is better), in the plan's unit.
pub struct Case<'a> {
    /// Its name in the table.
    pub name: &'static str,
    /// Runs it once.
    pub run: Box<dyn FnMut() -> anyhow::Result<f64> + 'a>,
}

/// What to run and how often.
pub struct Plan<'a> {
    /// The benchmark's name.
    pub name: &'static str,
    /// One line on what one operation is.
    pub what: String,
    /// Unit of the cases' results.
    pub unit: &'static str,
    /// Rounds (each visits every setting).
    pub rounds: u32,
    /// The agent's arguments for this workload.
    pub agent: &'a AgentArgs,
    /// auditd's rules.
    pub rules: &'a AuditRules,
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Largest minus smallest.
pub fn spread(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    max - min
}

/// Runs `cases` under every setting for `plan.rounds` rounds, prints the table and returns it
/// as JSON.
pub fn compare(plan: &Plan<'_>, cases: &mut [Case<'_>]) -> anyhow::Result<Value> {
    let settings = Setting::ALL;
    // samples[case][setting]
    let mut samples = vec![vec![Vec::new(); settings.len()]; cases.len()];
    let mut counters = AgentCounters::default();
    for round in 0..plan.rounds as usize {
        for step in 0..settings.len() {
            let index = (round + step) % settings.len();
            let session = Session::start(settings[index], plan.agent, plan.rules)?;
            if session.runs_agent() {
                // Let a new agent finish its start-up work (process table, first policy load).
                std::thread::sleep(SETTLE);
            }
            for (case, sample) in cases.iter_mut().zip(samples.iter_mut()) {
                sample[index].push((case.run)()?);
            }
            counters += session.stop()?;
        }
    }
    println!(
        "\n{}: {}; {} rounds, settings interleaved; {} per operation",
        plan.name, plan.what, plan.rounds, plan.unit
    );
    println!(
        "{:<26} {:<11} {:>11} {:>10} {:>9} {:>9}",
        "case", "setting", "median", "spread", "xbaseline", "xfloor"
    );
    let mut rows = Vec::new();
    for (case, per_setting) in cases.iter().zip(samples.iter_mut()) {
        let medians: Vec<f64> = per_setting.iter_mut().map(|v| median(v)).collect();
        let (base, floor) = (medians[0], medians[1]);
        for ((setting, values), m) in settings.iter().zip(per_setting.iter()).zip(&medians) {
            println!(
                "{:<26} {:<11} {m:>11.1} {:>10.1} {:>8.3}x {:>8.3}x",
                case.name,
                setting.label(),
                spread(values),
                m / base,
                m / floor
            );
            rows.push(json!({
                "case": case.name, "setting": setting.label(), "median": m,
                "spread": spread(values), "samples": values,
                "ratio_to_baseline": m / base, "ratio_to_floor": m / floor,
            }));
        }
        let auditd_overhead = medians[4] - base;
        let share = |m: f64| (m - base) / auditd_overhead;
        println!(
            "{:<26} overhead as a share of auditd's: observing {:.3}, enforcing {:.3}",
            case.name,
            share(medians[2]),
            share(medians[3])
        );
        rows.push(json!({
            "case": case.name,
            "observing_overhead_share_of_auditd": share(medians[2]),
            "enforcing_overhead_share_of_auditd": share(medians[3]),
        }));
    }
    println!(
        "agent (observing + enforcing, all rounds): {} records, {} lost in the kernel",
        counters.records, counters.kernel_lost
    );
    Ok(json!({
        "what": plan.what, "unit": plan.unit, "rounds": plan.rounds,
        "settings": settings.iter().map(|s| s.label()).collect::<Vec<_>>(),
        "auditd_rules": plan.rules.text(),
        "rows": rows,
        "agent_records": counters.records, "agent_kernel_lost": counters.kernel_lost,
    }))
}
