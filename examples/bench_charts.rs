//! `make docs`: the benchmark pages' SVG charts, drawn from the recorded results in
//! `docs/benchmarks/data/*.jsonl` (one line per contender; the first line of a chart carries
//! its title and axis) into `docs/benchmarks/img/<chart>.svg`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use tripmine::report::plot::{bar_chart, Bar};

struct Chart {
    title: String,
    x: String,
    rows: Vec<(String, f64, f64, bool)>,
}

fn main() {
    let data = Path::new("docs/benchmarks/data");
    let mut charts: BTreeMap<String, Chart> = BTreeMap::new();
    let mut files: Vec<_> = fs::read_dir(data)
        .expect("docs/benchmarks/data")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file).expect("readable");
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let row: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", file.display(), n + 1));
            let field = |k: &str| row[k].as_str().map(str::to_string);
            let name = field("chart").expect("chart");
            let chart = charts.entry(name).or_insert_with(|| Chart {
                title: field("title").expect("the first row of a chart has its title"),
                x: field("x").expect("the first row of a chart has its axis"),
                rows: Vec::new(),
            });
            chart.rows.push((
                field("contender").expect("contender"),
                row["mean"].as_f64().expect("mean"),
                row["sd"].as_f64().unwrap_or(0.0),
                row["ours"].as_bool().unwrap_or(false),
            ));
        }
    }
    let out = Path::new("docs/benchmarks/img");
    fs::create_dir_all(out).expect("img folder");
    for (name, chart) in &charts {
        let bars: Vec<Bar> = chart
            .rows
            .iter()
            .map(|(n, mean, sd, ours)| Bar {
                name: n,
                mean: *mean,
                sd: *sd,
                ours: *ours,
            })
            .collect();
        let path = out.join(format!("{name}.svg"));
        bar_chart(&path, &chart.title, &chart.x, &bars).expect("chart written");
        println!("{}", path.display());
    }
}
