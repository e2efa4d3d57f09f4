//! `report.html`: the audit's findings as a gallery, worst first, one section per finding.

use std::path::Path;

use super::{LabelIssue, Outlier, Thresholds};
use crate::definitions::Distance;
use crate::knn::Neighbour;
use crate::report::gallery::{Gallery, Item, Member, Section, Table};
use crate::report::Tiles;
use crate::store::SampleRow;

pub const REPORT_HTML: &str = "report.html";
const NEIGHBOURS_SHOWN: usize = 5;
pub const THUMB: u32 = 96;
const ITEMS_PER_PAGE: usize = 40;

/// A near-duplicate group: its id in duplicates.csv and each member with its similarity.
pub struct GroupView {
    pub id: usize,
    pub members: Vec<(usize, f32)>,
}

pub struct ReportInput<'a> {
    pub corpus: &'a Path,
    pub samples: &'a [SampleRow],
    pub groups: &'a [GroupView],
    pub label_issues: &'a [LabelIssue],
    pub outliers: &'a [Outlier],
    pub graph: &'a [Vec<Neighbour>],
    pub index_of: &'a dyn Fn(&str) -> usize,
    pub thresholds: &'a Thresholds,
    pub facts: Vec<(String, String)>,
    pub classes: &'a [super::ClassRow],
    pub problems: &'a [crate::corpus::Problem],
}

/// Rows of the summary's tables; the CSV files have them all.
const TABLE_ROWS: usize = 100;

pub fn write(out: &Path, input: &ReportInput, tiles: &Tiles) -> std::io::Result<()> {
    let samples = input.samples;
    let group_item = |g: &GroupView, what: &str| {
        let labels: std::collections::BTreeSet<&str> = g
            .members
            .iter()
            .map(|&(i, _)| samples[i].label.as_str())
            .collect();
        Item {
            heading: format!("{what} group {} ({} images)", g.id, g.members.len()),
            lines: vec![format!(
                "labels: {}",
                labels.into_iter().collect::<Vec<_>>().join(", ")
            )],
            members: g
                .members
                .iter()
                .map(|&(i, similarity)| {
                    let s = &samples[i];
                    let mut caption = vec![s.label.clone(), s.path.clone()];
                    if !s.split.is_empty() {
                        caption.push(format!("split: {}", s.split));
                    }
                    caption.push(if similarity >= 1.0 {
                        "identical pixels".to_string()
                    } else {
                        format!("cosine {similarity:.4}")
                    });
                    Member {
                        path: s.path.clone(),
                        caption,
                    }
                })
                .collect(),
        }
    };
    let distinct = |g: &GroupView, field: fn(&SampleRow) -> &str| {
        let values: std::collections::BTreeSet<&str> = g
            .members
            .iter()
            .map(|&(i, _)| field(&samples[i]))
            .filter(|v| !v.is_empty())
            .collect();
        values.len()
    };
    // Largest groups first, then the closest; ids keep the order total.
    let mut ordered: Vec<&GroupView> = input.groups.iter().collect();
    ordered.sort_by(|a, b| {
        let tightest = |g: &GroupView| g.members.iter().map(|m| m.1).fold(f32::INFINITY, f32::min);
        b.members
            .len()
            .cmp(&a.members.len())
            .then(tightest(b).total_cmp(&tightest(a)))
            .then(a.id.cmp(&b.id))
    });
    let conflicts: Vec<Item> = ordered
        .iter()
        .filter(|g| distinct(g, |s| &s.label) > 1)
        .map(|g| group_item(g, "Conflict"))
        .collect();
    let leaks: Vec<Item> = ordered
        .iter()
        .filter(|g| distinct(g, |s| &s.split) > 1)
        .map(|g| group_item(g, "Leak"))
        .collect();
    let duplicates: Vec<Item> = ordered.iter().map(|g| group_item(g, "Duplicate")).collect();
    let with_neighbours = |i: usize, first: Vec<String>| {
        let mut members = vec![Member {
            path: samples[i].path.clone(),
            caption: first,
        }];
        members.extend(input.graph[i].iter().take(NEIGHBOURS_SHOWN).map(|nb| {
            let s = &samples[nb.index];
            Member {
                path: s.path.clone(),
                caption: vec![
                    s.label.clone(),
                    s.path.clone(),
                    format!("d {:.3}", Distance::Euclidean.from_dot(nb.dot)),
                ],
            }
        }));
        members
    };
    let mislabels: Vec<Item> = input
        .label_issues
        .iter()
        .map(|issue| {
            let i = (input.index_of)(&issue.path);
            Item {
                heading: format!("{:?} → {:?}?", issue.label, issue.suggested_label),
                lines: vec![
                    issue.path.clone(),
                    format!(
                        "P(wrong label) {:.2}; vote shares: label {:.2}, suggested {:.2}",
                        issue.probability, issue.label_share, issue.suggested_share
                    ),
                    format!("then its {} nearest neighbours", NEIGHBOURS_SHOWN),
                ],
                members: with_neighbours(
                    i,
                    vec![
                        format!("labelled {}", issue.label),
                        format!("suggested {}", issue.suggested_label),
                        issue.path.clone(),
                    ],
                ),
            }
        })
        .collect();
    let outliers: Vec<Item> = input
        .outliers
        .iter()
        .map(|o| {
            let i = (input.index_of)(&o.path);
            Item {
                heading: format!("Outlier in {:?} ({})", o.label, o.signal),
                lines: vec![
                    o.path.clone(),
                    match (o.group, o.group_size) {
                        (Some(g), Some(size)) => format!(
                            "group {g} of {size} mutual neighbours with mixed labels; isolation z {:.1}",
                            o.score
                        ),
                        _ => format!("robust z {:.1}", o.score),
                    },
                ],
                members: with_neighbours(i, vec![o.label.clone(), o.path.clone()]),
            }
        })
        .collect();
    let t = input.thresholds;
    let gallery = Gallery {
        title: format!("Audit of {}", input.corpus.display()),
        facts: input.facts.clone(),
        sections: vec![
            Section {
                id: "conflicts",
                title: "Label conflicts",
                about: "Near-duplicate groups whose members carry different labels; largest first.".into(),
                items: conflicts,
            },
            Section {
                id: "mislabels",
                title: "Likely mislabels",
                about: format!(
                    "The posterior probability that the label is wrong, from distance-weighted votes of the {} nearest neighbours against the corpus's own class confusion, is at least {}; most probable first. The first tile is the sample, then its neighbours.",
                    t.k, t.mislabel_probability
                ),
                items: mislabels,
            },
            Section {
                id: "leakage",
                title: "Split leakage",
                about: "Near-duplicate groups that span more than one split; largest first.".into(),
                items: leaks,
            },
            Section {
                id: "duplicates",
                title: "Duplicate groups",
                about: format!(
                    "Identical pixels, or within {} of the corpus's median nearest-neighbour distance in the embedding; largest first.",
                    t.near_duplicate_fraction
                ),
                items: duplicates,
            },
            Section {
                id: "outliers",
                title: "Outliers",
                about: format!(
                    "Three signals, each a robust z-score against the sample's own class: small groups of mutual neighbours with mixed labels, apart from the bulk (off-distribution-group); images whose pixels are far from every other image's (pixel-isolated, z ≥ {0}); samples far from their own class and every class their neighbours belong to (far-from-classes, z ≥ {0}). Highest score first. The first tile is the sample, then its neighbours.",
                    t.outlier_z
                ),
                items: outliers,
            },
        ],
        tables: [classes_table(input.classes), problems_table(input.problems)]
            .into_iter()
            .filter(|t| !t.rows.is_empty())
            .collect(),
        per_page: ITEMS_PER_PAGE,
        tiles,
    };
    gallery.write(out, REPORT_HTML)
}

/// "12" or "first 100 of 5000": how much of a listing a summary table shows.
fn shown(count: usize) -> String {
    if count > TABLE_ROWS {
        format!("first {TABLE_ROWS} of {count}")
    } else {
        count.to_string()
    }
}

/// Classes whose centroid lies nearest another class's first: the likeliest to be confused.
fn classes_table(classes: &[super::ClassRow]) -> Table {
    let mut ordered: Vec<&super::ClassRow> = classes.iter().collect();
    ordered.sort_by(|a, b| {
        a.closest_distance
            .total_cmp(&b.closest_distance)
            .then(a.label.cmp(&b.label))
    });
    Table {
        heading: format!(
            "Classes, closest pairs first ({}; all in classes.csv)",
            shown(classes.len())
        ),
        header: vec![
            "label",
            "size",
            "imbalance",
            "spread",
            "closest class",
            "centroid distance",
            "",
        ],
        rows: ordered
            .iter()
            .take(TABLE_ROWS)
            .map(|c| {
                vec![
                    c.label.clone(),
                    c.size.to_string(),
                    format!("{:.2}", c.imbalance),
                    format!("{:.3}", c.spread),
                    c.closest_label.clone(),
                    format!("{:.3}", c.closest_distance),
                    if c.tiny { "tiny".into() } else { String::new() },
                ]
            })
            .collect(),
    }
}

fn problems_table(problems: &[crate::corpus::Problem]) -> Table {
    Table {
        heading: format!(
            "Unreadable files ({}; all in skipped.csv)",
            shown(problems.len())
        ),
        header: vec!["path", "problem"],
        rows: problems
            .iter()
            .take(TABLE_ROWS)
            .map(|p| vec![p.path.clone(), p.reason.clone()])
            .collect(),
    }
}
