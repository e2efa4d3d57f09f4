//! tripmine's Python extension (`tripmine._tripmine`): thin bindings over tripmine-core, with
//! no libtorch. The Python layer (`python/tripmine/__init__.py`) turns user arrays into
//! C-contiguous float32 rows and integer label codes; here they are read in place (a
//! non-C-contiguous array is refused, never read in the wrong order), rows are checked as
//! `mine --embeddings` checks them, and long calls run with the GIL released.

mod blocks;

use std::borrow::Cow;
use std::ffi::OsString;
use std::str::FromStr;

use clap::ValueEnum;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tripmine_core::audit::findings::{self, AuditInput};
use tripmine_core::audit::Thresholds;
use tripmine_core::batches::{self, Composition, Graph};
use tripmine_core::cli::{dispatch, Dispatch};
use tripmine_core::definitions::{Distance, Triplet};
use tripmine_core::eval::evaluate as evaluate_points;
use tripmine_core::knn::{
    self, ExactIndex, HnswParams, KnnChoice, KnnConfig, NeighbourIndex, Points, Restriction,
};
use tripmine_core::mine::{MiningRules, NegativeOrder, PositiveRule, Strategy};
use tripmine_core::store::{row_fix, RowCheck, RowProblem};

pub(crate) fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// The rows of a C-contiguous float32 matrix, in place, and its shape.
pub(crate) fn rows<'a>(
    name: &str,
    a: &'a PyReadonlyArray2<'_, f32>,
) -> PyResult<(&'a [f32], usize, usize)> {
    if !a.is_c_contiguous() {
        return Err(value_error(format!(
            "{name} must be C-contiguous (np.ascontiguousarray); a Fortran-order array is never \
             read as rows"
        )));
    }
    let (n, dim) = (a.shape()[0], a.shape()[1]);
    if n == 0 || dim == 0 {
        return Err(value_error(format!("{name} is empty ({n}×{dim})")));
    }
    let data = a
        .as_slice()
        .map_err(|e| value_error(format!("{name}: {e}")))?;
    Ok((data, n, dim))
}

/// Unit rows as the neighbour layer needs them: borrowed when every row already is one,
/// otherwise a copy with each row fixed as [`row_fix`] says (`normalise` divides any row by its
/// norm; without it only nearly-unit rows are, and others are refused).
pub(crate) fn unit_rows<'a>(
    name: &str,
    data: &'a [f32],
    dim: usize,
    normalise: bool,
) -> PyResult<Cow<'a, [f32]>> {
    let check = if normalise {
        RowCheck::Normalise
    } else {
        RowCheck::UnitLength
    };
    let mut fixes = Vec::new();
    for (i, row) in data.chunks_exact(dim).enumerate() {
        match row_fix(row, check) {
            Ok(None) => {}
            Ok(Some(norm)) => fixes.push((i, norm)),
            Err(RowProblem::NotFinite) => {
                return Err(value_error(format!(
                    "{name} row {i} holds NaN or infinite values"
                )))
            }
            Err(RowProblem::Zero) => {
                return Err(value_error(format!(
                    "{name} row {i} is all zeros and has no direction to normalise"
                )))
            }
            Err(RowProblem::NotUnit(norm)) => {
                return Err(value_error(format!(
                    "{name} row {i} has norm {norm:.6}; tripmine expects L2-normalised rows: pass \
                     normalise=True to divide every row by its norm"
                )))
            }
        }
    }
    if fixes.is_empty() {
        return Ok(Cow::Borrowed(data));
    }
    let mut owned = data.to_vec();
    for (i, norm) in fixes {
        for v in &mut owned[i * dim..(i + 1) * dim] {
            *v = (*v as f64 / norm) as f32;
        }
    }
    Ok(Cow::Owned(owned))
}

/// Label codes (0..classes) as the neighbour layer's ids.
pub(crate) fn label_codes(labels: &PyReadonlyArray1<'_, i64>, n: usize) -> PyResult<Vec<u32>> {
    let codes = labels.as_array();
    if codes.len() != n {
        return Err(value_error(format!(
            "labels has {} entries but embeddings has {n} rows; label i must belong to row i",
            codes.len()
        )));
    }
    codes
        .iter()
        .map(|&c| u32::try_from(c).map_err(|_| value_error(format!("label code {c} out of range"))))
        .collect()
}

pub(crate) fn parse_enum<T: ValueEnum>(what: &str, value: &str) -> PyResult<T> {
    T::from_str(value, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        value_error(format!(
            "{what} {value:?} is not one of {}",
            names.join(", ")
        ))
    })
}

pub(crate) fn i64_array<'py>(py: Python<'py>, values: Vec<i64>) -> Bound<'py, PyArray1<i64>> {
    PyArray1::from_vec(py, values)
}

/// Triplets over the whole corpus (see `tripmine.mine`). Returns the columns and the
/// statistics (JSON text) of the mining sidecar.
#[pyfunction]
#[pyo3(signature = (embeddings, labels, *, strategy, negatives_per_anchor, positives, margin, distance, knn, exclude, anchors, seed, skip_nearest, negative_floor, candidate_classes, max_search_depth, normalise))]
#[allow(clippy::too_many_arguments)]
fn mine<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    strategy: &str,
    negatives_per_anchor: Option<usize>,
    positives: &str,
    margin: f32,
    distance: &str,
    knn: &str,
    exclude: Option<PyReadonlyArray1<'py, i64>>,
    anchors: Option<PyReadonlyArray1<'py, i64>>,
    seed: u64,
    skip_nearest: usize,
    negative_floor: f32,
    candidate_classes: usize,
    max_search_depth: usize,
    normalise: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let (data, n, dim) = rows("embeddings", &embeddings)?;
    let codes = label_codes(&labels, n)?;
    let choice: KnnChoice = parse_enum("knn", knn)?;
    if candidate_classes == 0 {
        return Err(value_error("candidate_classes must be at least 1"));
    }
    let rules = RuleArgs {
        strategy,
        negatives_per_anchor,
        positives,
        margin,
        distance,
        seed,
        skip_nearest,
        negative_floor,
        max_search_depth,
    }
    .rules(n)?;
    let distance = rules.distance;
    let mut keep = vec![true; n];
    if let Some(exclude) = &exclude {
        for &i in exclude.as_array().iter() {
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| keep.get_mut(i))
                .ok_or_else(|| value_error(format!("exclude names row {i}, not in 0..{n}")))?;
            *slot = false;
        }
    }
    let anchors: Option<Vec<usize>> = match &anchors {
        Some(rows) => Some(
            rows.as_array()
                .iter()
                .map(|&i| {
                    usize::try_from(i)
                        .ok()
                        .filter(|&i| i < n)
                        .ok_or_else(|| value_error(format!("anchors names row {i}, not in 0..{n}")))
                })
                .collect::<PyResult<_>>()?,
        ),
        None => None,
    };
    let unit = unit_rows("embeddings", data, dim, normalise)?;
    let config = KnnConfig {
        choice,
        hnsw: HnswParams::default(),
        candidate_classes,
    };
    let (triplets, stats) = py.allow_threads(|| {
        let origin: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
        let (kept, kept_labels): (Cow<[f32]>, Cow<[u32]>) = if origin.len() == n {
            (Cow::Borrowed(&unit[..]), Cow::Borrowed(&codes[..]))
        } else {
            (
                Cow::Owned(
                    origin
                        .iter()
                        .flat_map(|&i| unit[i * dim..(i + 1) * dim].iter().copied())
                        .collect(),
                ),
                origin.iter().map(|&i| codes[i]).collect(),
            )
        };
        let points = Points {
            data: &kept,
            dim,
            labels: &kept_labels,
        };
        let (chosen, reason) = config.resolve(points);
        let index = knn::build_as(points, chosen, &config);
        let (triplets, stats) = match &anchors {
            None => tripmine_core::mine::mine(points, &index, &rules),
            Some(rows) => {
                // Kept rows are renumbered: map each anchor to its place among them.
                let mut place = vec![usize::MAX; n];
                for (k, &i) in origin.iter().enumerate() {
                    place[i] = k;
                }
                let kept: Vec<usize> = rows
                    .iter()
                    .map(|&i| place[i])
                    .filter(|&k| k != usize::MAX)
                    .collect();
                tripmine_core::mine::mine_anchors(points, &index, &rules, kept)
            }
        };
        let mut backend = index.describe();
        backend["chosen"] = reason.into();
        let mut stats = serde_json::to_value(&stats).expect("stats serialise");
        stats["backend"] = backend;
        stats["excluded"] = (n - origin.len()).into();
        stats["margin"] = tripmine_core::definitions::json_f32(rules.margin);
        stats["distance"] = distance.name().into();
        let triplets: Vec<Triplet> = triplets
            .into_iter()
            .map(|t| Triplet {
                anchor: origin[t.anchor],
                positive: origin[t.positive],
                negative: origin[t.negative],
                ..t
            })
            .collect();
        (triplets, stats)
    });
    triplet_columns(py, &triplets, stats.to_string())
}

/// Mined triplets as `MiningResult`'s columns, with the statistics as JSON text.
pub(crate) fn triplet_columns<'py>(
    py: Python<'py>,
    triplets: &[Triplet],
    stats: String,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let rows = |f: fn(&Triplet) -> usize| triplets.iter().map(|t| f(t) as i64).collect();
    out.set_item("anchor", i64_array(py, rows(|t| t.anchor)))?;
    out.set_item("positive", i64_array(py, rows(|t| t.positive)))?;
    out.set_item("negative", i64_array(py, rows(|t| t.negative)))?;
    out.set_item(
        "d_ap",
        PyArray1::from_vec(py, triplets.iter().map(|t| t.d_ap).collect()),
    )?;
    out.set_item(
        "d_an",
        PyArray1::from_vec(py, triplets.iter().map(|t| t.d_an).collect()),
    )?;
    out.set_item(
        "kind",
        triplets.iter().map(|t| t.kind.name()).collect::<Vec<_>>(),
    )?;
    out.set_item("stats", stats)?;
    Ok(out)
}

/// `tripmine.mine`'s rule arguments, checked as the CLI checks them.
pub(crate) struct RuleArgs<'a> {
    pub strategy: &'a str,
    pub negatives_per_anchor: Option<usize>,
    pub positives: &'a str,
    pub margin: f32,
    pub distance: &'a str,
    pub seed: u64,
    pub skip_nearest: usize,
    pub negative_floor: f32,
    pub max_search_depth: usize,
}

impl RuleArgs<'_> {
    /// The rules for a corpus of `n` rows (`negatives_per_anchor` None: every negative, so
    /// the search may go through the whole corpus).
    pub(crate) fn rules(&self, n: usize) -> PyResult<MiningRules> {
        let strategy = Strategy::from_str(self.strategy).map_err(value_error)?;
        let positives: PositiveRule = parse_enum("positives", self.positives)?;
        let distance: Distance = parse_enum("distance", self.distance)?;
        let (margin, negative_floor) = (self.margin, self.negative_floor);
        if !(margin.is_finite() && margin >= 0.0) {
            return Err(value_error(format!(
                "margin {margin} must be a non-negative number"
            )));
        }
        if !(negative_floor.is_finite() && negative_floor >= 0.0) {
            return Err(value_error(format!(
                "negative_floor {negative_floor} must be a non-negative number"
            )));
        }
        if self.max_search_depth == 0 || self.negatives_per_anchor == Some(0) {
            return Err(value_error(
                "negatives_per_anchor and max_search_depth must be at least 1",
            ));
        }
        let (per_anchor, max_depth) = match self.negatives_per_anchor {
            Some(k) if k > self.max_search_depth => {
                return Err(value_error(format!(
                    "negatives_per_anchor {k} exceeds max_search_depth {}",
                    self.max_search_depth
                )))
            }
            Some(k) => (k, self.max_search_depth),
            None => (n, n),
        };
        let defaults = MiningRules::default();
        Ok(MiningRules {
            margin,
            distance,
            strategy,
            positives,
            negatives_per_anchor: per_anchor,
            negative_order: NegativeOrder::Nearest,
            anchors_per_class: None,
            seed: self.seed,
            start_depth: defaults.start_depth.min(max_depth),
            max_depth,
            skip_nearest: self.skip_nearest,
            negative_floor,
        })
    }
}

/// `(D, I)` flat, reshaped to n × k by the Python layer.
type DistancesAndIndices<'py> = (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<i64>>);

/// The k nearest rows, exact: of every row among the others (`reference` None: the row itself
/// excluded), or of every row of `x` among the rows of `reference` (faiss's
/// `index.search(x, k)`). n × k, nearest first, padded with inf and -1 where fewer rows are
/// allowed; D in `distance`.
#[pyfunction]
#[pyo3(signature = (x, k, labels, *, reference, restrict, distance, normalise))]
#[allow(clippy::too_many_arguments)]
fn knn_search<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    k: usize,
    labels: Option<PyReadonlyArray1<'py, i64>>,
    reference: Option<PyReadonlyArray2<'py, f32>>,
    restrict: &str,
    distance: &str,
    normalise: bool,
) -> PyResult<DistancesAndIndices<'py>> {
    let (data, n, dim) = rows("x", &x)?;
    let distance: Distance = parse_enum("distance", distance)?;
    let restriction = match restrict {
        "any" => Restriction::Any,
        "other-label" => Restriction::OtherLabels,
        "same-label" => Restriction::SameLabel,
        other => {
            return Err(value_error(format!(
                "restrict {other:?} is not one of any, other-label, same-label"
            )))
        }
    };
    let unit = unit_rows("x", data, dim, normalise)?;
    // Against a reference, the queries follow the reference rows in one point set, labelled
    // apart from them: "other-label" neighbours of a query are then exactly reference rows.
    let (points_data, codes, queries, restriction, candidates) = match &reference {
        Some(reference) => {
            if restriction != Restriction::Any {
                return Err(value_error(
                    "restrict applies to a corpus searched against itself, not with reference",
                ));
            }
            let (rdata, m, rdim) = rows("reference", reference)?;
            if rdim != dim {
                return Err(value_error(format!(
                    "reference has {rdim} columns but x has {dim}"
                )));
            }
            let runit = unit_rows("reference", rdata, dim, normalise)?;
            let mut all = runit.into_owned();
            all.extend_from_slice(&unit);
            let mut codes = vec![0u32; m];
            codes.resize(m + n, 1);
            (
                Cow::Owned(all),
                codes,
                (m..m + n).collect::<Vec<_>>(),
                Restriction::OtherLabels,
                m,
            )
        }
        None => {
            let codes = match &labels {
                Some(labels) => label_codes(labels, n)?,
                None if restriction == Restriction::Any => vec![0; n],
                None => return Err(value_error(format!("restrict={restrict:?} needs labels"))),
            };
            (unit, codes, (0..n).collect(), restriction, n)
        }
    };
    if k == 0 || k > candidates {
        return Err(value_error(format!(
            "k must be in 1..{candidates} (the rows that can be neighbours), not {k}"
        )));
    }
    let (d, i) = py.allow_threads(|| {
        let points = Points {
            data: &points_data,
            dim,
            labels: &codes,
        };
        let lists = ExactIndex::new(points).search(&queries, k, restriction);
        let mut d = vec![f32::INFINITY; n * k];
        let mut i = vec![-1i64; n * k];
        for (q, list) in lists.iter().enumerate() {
            for (slot, nb) in list.iter().enumerate() {
                d[q * k + slot] = distance.from_dot(nb.dot);
                i[q * k + slot] = nb.index as i64;
            }
        }
        (d, i)
    });
    Ok((PyArray1::from_vec(py, d), PyArray1::from_vec(py, i)))
}

/// Per-query retrieval metrics of `queries` among `reference` (pml's AccuracyCalculator
/// definitions, exact, streamed): a dict of 1-D arrays, one entry per query.
#[pyfunction]
#[pyo3(signature = (queries, query_labels, reference, reference_labels, *, ref_includes_query, k))]
fn accuracy_scores<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    query_labels: PyReadonlyArray1<'py, i64>,
    reference: PyReadonlyArray2<'py, f32>,
    reference_labels: PyReadonlyArray1<'py, i64>,
    ref_includes_query: bool,
    k: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let (qdata, nq, dim) = rows("query", &queries)?;
    let (rdata, nr, rdim) = rows("reference", &reference)?;
    if rdim != dim {
        return Err(value_error(format!(
            "reference has {rdim} columns but query has {dim}"
        )));
    }
    for (name, data) in [("query", qdata), ("reference", rdata)] {
        if let Some(at) = data.iter().position(|v| !v.is_finite()) {
            return Err(value_error(format!(
                "{name} row {} holds NaN or infinite values",
                at / dim
            )));
        }
    }
    let qcodes = label_codes(&query_labels, nq)?;
    let rcodes = label_codes(&reference_labels, nr)?;
    if ref_includes_query && nq > nr {
        return Err(value_error(format!(
            "ref_includes_query: the reference ({nr} rows) must start with the {nq} queries"
        )));
    }
    if k == Some(0) {
        return Err(value_error("k must be at least 1"));
    }
    let scores = py.allow_threads(|| {
        tripmine_core::eval::Against {
            queries: qdata,
            query_labels: &qcodes,
            reference: rdata,
            reference_labels: &rcodes,
            dim,
            ref_includes_query,
        }
        .scores(k)
    });
    let out = PyDict::new(py);
    out.set_item("relevant", PyArray1::from_vec(py, scores.relevant))?;
    out.set_item(
        "precision_at_1",
        PyArray1::from_vec(py, scores.precision_at_1),
    )?;
    out.set_item("r_precision", PyArray1::from_vec(py, scores.r_precision))?;
    out.set_item(
        "mean_average_precision_at_r",
        PyArray1::from_vec(py, scores.map_at_r),
    )?;
    out.set_item(
        "mean_average_precision",
        PyArray1::from_vec(py, scores.mean_average_precision),
    )?;
    out.set_item(
        "mean_reciprocal_rank",
        PyArray1::from_vec(py, scores.reciprocal_rank),
    )?;
    Ok(out)
}

/// A neighbour graph of one set of embeddings and the batches it composes
/// (`tripmine_core::batches`, the trainer's `--mining neighbour-batches`).
#[pyclass(module = "tripmine._tripmine", frozen)]
struct NeighbourGraph {
    labels: Vec<u32>,
    graph: Graph,
}

#[pymethods]
impl NeighbourGraph {
    /// The graph of `embeddings` (unit rows) with label codes `labels`: each row's
    /// 16 + skip_nearest nearest other-label rows.
    #[new]
    #[pyo3(signature = (embeddings, labels, *, skip_nearest, knn, normalise))]
    fn new(
        py: Python<'_>,
        embeddings: PyReadonlyArray2<'_, f32>,
        labels: PyReadonlyArray1<'_, i64>,
        skip_nearest: usize,
        knn: &str,
        normalise: bool,
    ) -> PyResult<Self> {
        let (data, n, dim) = rows("embeddings", &embeddings)?;
        let codes = label_codes(&labels, n)?;
        let choice: KnnChoice = parse_enum("knn", knn)?;
        let unit = unit_rows("embeddings", data, dim, normalise)?;
        let graph = py.allow_threads(|| {
            let points = Points {
                data: &unit,
                dim,
                labels: &codes,
            };
            let config = KnnConfig {
                choice,
                ..KnnConfig::default()
            };
            let index = knn::build(points, &config);
            batches::neighbour_graph(points, &index, skip_nearest)
        });
        Ok(NeighbourGraph {
            labels: codes,
            graph,
        })
    }

    /// Each row's other-label neighbours, nearest first.
    fn neighbours(&self, row: usize) -> PyResult<Vec<usize>> {
        self.graph
            .other
            .get(row)
            .cloned()
            .ok_or_else(|| value_error(format!("row {row} is not in 0..{}", self.labels.len())))
    }

    /// One epoch's batches (lists of row indices) over every row of a class with two or more.
    #[pyo3(signature = (*, groups, group_size, random_share, skip_nearest, seed, epoch))]
    #[allow(clippy::too_many_arguments)]
    fn compose_epoch(
        &self,
        py: Python<'_>,
        groups: usize,
        group_size: usize,
        random_share: f64,
        skip_nearest: usize,
        seed: u64,
        epoch: usize,
    ) -> PyResult<Vec<Vec<usize>>> {
        if groups == 0 || group_size < 2 {
            return Err(value_error(
                "classes_per_batch must be at least 1 and samples_per_class at least 2",
            ));
        }
        if !(0.0..=1.0).contains(&random_share) {
            return Err(value_error(format!(
                "random_share {random_share} must lie in [0, 1]"
            )));
        }
        let how = Composition {
            groups,
            group_size,
            random_share,
            skip_nearest,
        };
        Ok(py
            .allow_threads(|| batches::compose_epoch(&self.labels, &self.graph, &how, seed, epoch)))
    }
}

/// Retrieval metrics with exact neighbours, as `tripmine eval --json` prints them (JSON text).
#[pyfunction]
#[pyo3(signature = (embeddings, labels, *, normalise))]
fn evaluate(
    py: Python<'_>,
    embeddings: PyReadonlyArray2<'_, f32>,
    labels: PyReadonlyArray1<'_, i64>,
    normalise: bool,
) -> PyResult<String> {
    let (data, n, dim) = rows("embeddings", &embeddings)?;
    let codes = label_codes(&labels, n)?;
    let unit = unit_rows("embeddings", data, dim, normalise)?;
    let m = py.allow_threads(|| {
        evaluate_points(Points {
            data: &unit,
            dim,
            labels: &codes,
        })
    });
    Ok(m.to_json().to_string())
}

/// The audit's findings over embeddings alone (no pixels): JSON text with row indices.
#[pyfunction]
#[pyo3(signature = (embeddings, labels, splits, *, k, near_duplicate_fraction, mislabel_probability, min_model_p_at_1, outlier_z, normalise))]
#[allow(clippy::too_many_arguments)]
fn audit_findings(
    py: Python<'_>,
    embeddings: PyReadonlyArray2<'_, f32>,
    labels: PyReadonlyArray1<'_, i64>,
    splits: Vec<String>,
    k: usize,
    near_duplicate_fraction: f64,
    mislabel_probability: f64,
    min_model_p_at_1: f64,
    outlier_z: f64,
    normalise: bool,
) -> PyResult<String> {
    let (data, n, dim) = rows("embeddings", &embeddings)?;
    let codes = label_codes(&labels, n)?;
    if splits.len() != n {
        return Err(value_error(format!(
            "splits has {} entries but embeddings has {n} rows",
            splits.len()
        )));
    }
    let thresholds = Thresholds {
        k,
        near_duplicate_fraction,
        mislabel_probability,
        min_model_p_at_1,
        outlier_z,
        ..Thresholds::default()
    };
    thresholds.validate(str::to_string).map_err(value_error)?;
    let unit = unit_rows("embeddings", data, dim, normalise)?;
    let out = py.allow_threads(|| {
        let points = Points {
            data: &unit,
            dim,
            labels: &codes,
        };
        let queries: Vec<usize> = (0..n).collect();
        let graph = knn::build(points, &KnnConfig::default()).search(
            &queries,
            k.min(n.saturating_sub(1)).max(1),
            Restriction::Any,
        );
        let split_refs: Vec<&str> = splits.iter().map(String::as_str).collect();
        let hashes = vec![None; n];
        let found = findings::compute(&AuditInput {
            points,
            splits: &split_refs,
            graph: &graph,
            hashes: &hashes,
            pixel_graph: None,
            thresholds: &thresholds,
        });
        findings::findings_json(&found)
    });
    Ok(out.to_string())
}

/// The `tripmine` console script: the subcommands that need no network; `embed`, `train` and
/// `--model` need the libtorch build. `own_process`: the console script, whose Ctrl-C must
/// stop the command as it stops the binary; called from a Python session (a Jupyter kernel)
/// the process's SIGINT is left alone, so Ctrl-C never kills the session (it raises
/// KeyboardInterrupt once the command returns).
#[pyfunction]
#[pyo3(signature = (argv, *, own_process=false))]
fn run(py: Python<'_>, argv: Vec<OsString>, own_process: bool) -> i32 {
    // Python's own SIGINT handler would only run between bytecodes, which a long Rust call
    // never reaches.
    // SAFETY: setting, then restoring, the disposition of one signal.
    let python_handler = own_process.then(|| unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) });
    let dispatched = py.allow_threads(|| dispatch(argv));
    if let Some(handler) = python_handler {
        // SAFETY: as above: Python's handler back for whatever the process does next.
        unsafe {
            libc::signal(libc::SIGINT, handler);
        }
    }
    match dispatched {
        Dispatch::Ran(status) => i32::from(status),
        Dispatch::NeedsNetwork => {
            eprintln!(
                "error: embed, train and --model need tripmine's network part (libtorch), which \
                 the pip package leaves out; embed with your own model and pass --embeddings, or \
                 build the full tool (README: git clone, then `make build`)"
            );
            2
        }
    }
}

#[pymodule]
fn _tripmine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    blocks::register(m)?;
    m.add_function(wrap_pyfunction!(mine, m)?)?;
    m.add_function(wrap_pyfunction!(knn_search, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(audit_findings, m)?)?;
    m.add_function(wrap_pyfunction!(accuracy_scores, m)?)?;
    m.add_class::<NeighbourGraph>()?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_RANDOM_CLASSES", batches::DEFAULT_RANDOM_CLASSES)?;
    Ok(())
}
