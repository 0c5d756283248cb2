//! `--sweep`: one scenario at several sizes (connections, or receivers of a fan-out),
//! each size measured like a single run, then drawn as PNG charts (`--chart`) so the
//! slope shows, not one point.

use std::path::PathBuf;

use crate::chart::{Chart, Series};
use crate::report::{Report, median};
use crate::{BenchArgs, Scenario, Target, measure_rounds, print_tables};

/// Measures `args.scenario` at each of `args.sweep`'s sizes, prints each size's tables,
/// and writes the charts when `--chart` names where.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut sizes = Vec::new();
    for &n in &args.sweep {
        let mut at = args.clone();
        at.connections = n;
        let reports = measure_rounds(&at).await?;
        println!("\n### {n} connections");
        print_tables(args, &reports);
        sizes.push((n, reports));
    }
    if let Some(prefix) = &args.chart {
        for (file, chart) in charts(args.scenario, &args.targets, &sizes) {
            let path = PathBuf::from(format!("{prefix}-{file}.png"));
            std::fs::write(&path, chart.png()?)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The charts of a sweep: memory per connection for `idle`; the rate and the server's
/// CPU per operation for the others. Each point is the median of its rounds.
fn charts(
    scenario: Scenario,
    targets: &[Target],
    sizes: &[(usize, Vec<Report>)],
) -> Vec<(&'static str, Chart)> {
    let series = |metric: &dyn Fn(&Report) -> f64| -> Vec<Series> {
        targets
            .iter()
            .map(|&t| Series {
                name: format!("{t:?}"),
                points: sizes
                    .iter()
                    .map(|(n, reports)| {
                        let mine = reports
                            .iter()
                            .filter(|r| r.target == t)
                            .map(metric)
                            .collect();
                        (*n as f64, median(mine))
                    })
                    .collect(),
            })
            .collect()
    };
    let size_label = match scenario {
        Scenario::Fanout => "receivers (one room)",
        _ => "connections",
    };
    if scenario == Scenario::Idle {
        return vec![(
            "memory",
            Chart {
                title: "Server memory per idle connection".into(),
                x_label: size_label.into(),
                y_label: "bytes".into(),
                series: series(&Report::per_connection),
            },
        )];
    }
    let what = match scenario {
        Scenario::Fanout | Scenario::Rooms | Scenario::Storm => "deliveries",
        _ => "round trips",
    };
    vec![
        (
            "rate",
            Chart {
                title: format!("{what} per second"),
                x_label: size_label.into(),
                y_label: format!("{what}/s"),
                series: series(&Report::rate),
            },
        ),
        (
            "cpu",
            Chart {
                title: format!(
                    "Server CPU per {}, us",
                    what.trim_end_matches('s').replace("deliverie", "delivery")
                ),
                x_label: size_label.into(),
                y_label: "us".into(),
                series: series(&Report::cpu_per_op_us),
            },
        ),
    ]
}
