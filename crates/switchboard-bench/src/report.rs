//! What one measurement found, and the tables printed from it.

use std::time::Duration;

use crate::histogram::Histogram;
use crate::{Scenario, Target};

pub(crate) struct Report {
    pub(crate) target: Target,
    pub(crate) ops: u64,
    pub(crate) seconds: f64,
    pub(crate) latency: Histogram,
    pub(crate) cpu: Duration,
    pub(crate) rss_delta: i64,
    pub(crate) note: String,
    /// Which round of `--rounds` (1-based).
    pub(crate) round: usize,
}

impl Report {
    pub(crate) fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }
}

impl Report {
    /// Bytes of server memory per connection (idle).
    pub(crate) fn per_connection(&self) -> f64 {
        self.rss_delta as f64 / self.ops.max(1) as f64
    }

    pub(crate) fn cpu_per_op_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// The row's name: the target, and its round when there are several.
    pub(crate) fn name(&self, rounds: bool) -> String {
        if rounds {
            format!("{:?} #{}", self.target, self.round)
        } else {
            format!("{:?}", self.target)
        }
    }
}

/// This report's rate over the floor's in the same round: the echo floor's when it
/// ran, else the hub-shaped floor's.
pub(crate) fn ratio_to_floor(r: &Report, reports: &[Report]) -> Option<f64> {
    let floor_of = |target: Target| {
        reports
            .iter()
            .find(|f| f.target == target && f.round == r.round)
    };
    floor_of(Target::EchoFloor)
        .or_else(|| floor_of(Target::Floor))
        .map(|f| r.rate() / f.rate().max(1.0))
}

pub(crate) fn print(scenario: Scenario, reports: &[Report]) {
    let rounds = reports.iter().any(|r| r.round > 1);
    println!();
    match scenario {
        Scenario::Idle => {
            println!("| server | connections | RSS growth | per connection |");
            println!("| --- | --- | --- | --- |");
            for r in reports {
                println!(
                    "| {} | {} | {:.1} MiB | {:.0} B |",
                    r.name(rounds),
                    r.ops,
                    r.rss_delta as f64 / 1048576.0,
                    r.per_connection()
                );
            }
        }
        _ => {
            let unit = match scenario {
                Scenario::Fanout | Scenario::Rooms | Scenario::Storm => "deliveries/s",
                _ => "round trips/s",
            };
            println!(
                "| server | {unit} | vs floor | p50 | p99 | p99.9 | server CPU per op | note |"
            );
            println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
            for r in reports {
                let ratio =
                    ratio_to_floor(r, reports).map_or("-".to_owned(), |x| format!("{x:.2}x"));
                println!(
                    "| {} | {:.0} | {} | {} us | {} us | {} us | {:.2} us | {} |",
                    r.name(rounds),
                    r.rate(),
                    ratio,
                    r.latency.percentile(0.5),
                    r.latency.percentile(0.99),
                    r.latency.percentile(0.999),
                    r.cpu_per_op_us(),
                    r.note
                );
            }
        }
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The medians over the rounds, per target; ratios are the median of each round's ratio.
pub(crate) fn print_medians(scenario: Scenario, targets: &[Target], reports: &[Report]) {
    println!();
    match scenario {
        Scenario::Idle => {
            println!(
                "| server (median of {} rounds) | per connection |",
                reports.iter().map(|r| r.round).max().unwrap_or(0)
            );
            println!("| --- | --- |");
            for &t in targets {
                let mine: Vec<&Report> = reports.iter().filter(|r| r.target == t).collect();
                let per = median(mine.iter().map(|r| r.per_connection()).collect());
                println!("| {t:?} | {per:.0} B |");
            }
        }
        _ => {
            println!(
                "| server (median of {} rounds) | rate | vs floor | p99 | server CPU per op |",
                reports.iter().map(|r| r.round).max().unwrap_or(0)
            );
            println!("| --- | --- | --- | --- | --- |");
            for &t in targets {
                let mine: Vec<&Report> = reports.iter().filter(|r| r.target == t).collect();
                let ratios: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| ratio_to_floor(r, reports))
                    .collect();
                let ratio = if ratios.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2}x", median(ratios))
                };
                println!(
                    "| {t:?} | {:.0} | {ratio} | {:.0} us | {:.2} us |",
                    median(mine.iter().map(|r| r.rate()).collect()),
                    median(
                        mine.iter()
                            .map(|r| r.latency.percentile(0.99) as f64)
                            .collect()
                    ),
                    median(mine.iter().map(|r| r.cpu_per_op_us()).collect()),
                );
            }
        }
    }
}
