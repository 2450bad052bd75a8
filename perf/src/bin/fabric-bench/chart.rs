//! The PNG chart of a summary, drawn by gnuplot (Debian's gnuplot-nox,
//! installed by ci/setup.sh).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::matrix::Mode;
use crate::summary::{Outcome, Summary};

fn value(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.4}"))
}

/// The data file: one line per row (label, then the plotted columns).
pub fn data(summary: &Summary) -> String {
    let mut out = String::new();
    for r in &summary.rows {
        let label = format!("{} {} {} {}", r.transport, r.backend, r.case, r.client);
        let cols = match summary.mode {
            Mode::Guest | Mode::Split | Mode::Pair => {
                [r.iops_ratio, r.iops_per_cpu_ratio, r.p99_ratio]
            }
            Mode::Native => {
                let f = match &r.ours {
                    Outcome::Figures(f) => Some(f),
                    _ => None,
                };
                [
                    f.map(|f| f.iops / 1000.0),
                    f.and_then(|f| f.target_us_per_io),
                    f.map(|f| f.p99_us),
                ]
            }
        };
        if cols.iter().all(Option::is_none) {
            // Nothing to draw (a transport not built in, say).
            continue;
        }
        let _ = writeln!(
            out,
            "\"{label}\"\t{}\t{}\t{}",
            value(cols[0]),
            value(cols[1]),
            value(cols[2])
        );
    }
    out
}

/// The gnuplot script that draws `data_file` into `png`.
pub fn script(summary: &Summary, title: &str, data_file: &Path, png: &Path) -> String {
    let rows = data(summary).lines().count();
    let width = 600 + 45 * rows;
    let mut s = format!(
        "set terminal pngcairo size {width},720 font 'sans,10'\n\
         set output '{}'\n\
         set title \"{}\" noenhanced\n\
         set datafile separator '\\t'\n\
         set datafile missing '?'\n\
         set style data histograms\n\
         set style histogram clustered gap 1\n\
         set style fill solid 0.85 border -1\n\
         set boxwidth 0.9\n\
         set grid ytics\n\
         set key top left\n\
         set xtics rotate by -50 scale 0 noenhanced font 'sans,8'\n\
         set bmargin 14\n",
        png.display(),
        title.replace('"', "'"),
    );
    let data = data_file.display();
    match summary.mode {
        Mode::Guest | Mode::Split | Mode::Pair => {
            s += "set ylabel 'ours / kernel (higher is better, except p99)'\n\
                  set yrange [0:*]\n\
                  set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2 lc rgb 'red' front\n";
            s += &format!(
                "plot '{data}' using 2:xtic(1) title 'IOPS ratio', \
                 '' using 3 title 'IOPS per CPU ratio', \
                 '' using 4 title 'p99 latency ratio'\n"
            );
        }
        Mode::Native => {
            s += "set ylabel 'thousand IOPS'\nset y2label 'fabricd CPU us per I/O'\n\
                  set yrange [0:*]\nset y2range [0:*]\nset y2tics\n";
            s += &format!(
                "plot '{data}' using 2:xtic(1) title 'kIOPS', \
                 '' using 0:3 axes x1y2 with points pt 7 ps 1.5 title 'fabricd CPU us/I/O'\n"
            );
        }
    }
    s
}

/// Draw the chart into `png` (data and script are kept beside it).
pub fn draw(summary: &Summary, title: &str, png: &Path) -> anyhow::Result<()> {
    let data_file = png.with_extension("tsv");
    let script_file = png.with_extension("gp");
    std::fs::write(&data_file, data(summary))
        .with_context(|| format!("cannot write {}", data_file.display()))?;
    std::fs::write(&script_file, script(summary, title, &data_file, png))
        .with_context(|| format!("cannot write {}", script_file.display()))?;
    let out = Command::new("gnuplot")
        .arg(&script_file)
        .output()
        .context("cannot run gnuplot (ci/setup.sh installs gnuplot-nox)")?;
    if !out.status.success() {
        bail!(
            "gnuplot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{CpuMeasure, Figures, Row};

    #[test]
    fn data_marks_missing_values() {
        let row = Row {
            transport: "rdma".into(),
            backend: "null".into(),
            case: "4k randread QD1".into(),
            client: "fio".into(),
            ours: Outcome::Unavailable("x".into()),
            kernel: Outcome::Figures(Figures::default()),
            iops_ratio: None,
            iops_per_cpu_ratio: Some(1.5),
            iops_per_guest_busy_ratio: None,
            p99_ratio: None,
        };
        let empty = Row {
            iops_per_cpu_ratio: None,
            ..row.clone()
        };
        let s = Summary {
            mode: Mode::Guest,
            cpu_measure: CpuMeasure::GuestBusy,
            rows: vec![row, empty],
            clients: Vec::new(),
        };
        assert_eq!(
            data(&s),
            "\"rdma null 4k randread QD1 fio\"\t?\t1.5000\t?\n"
        );
        let sc = script(&s, "t", Path::new("d.tsv"), Path::new("c.png"));
        assert!(sc.contains("set output 'c.png'"));
        assert!(sc.contains("plot 'd.tsv' using 2:xtic(1)"));
    }
}
