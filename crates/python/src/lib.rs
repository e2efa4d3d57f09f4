//! tripmine's Python extension (`tripmine._tripmine`): thin bindings over tripmine-core, with
//! no libtorch. The Python layer (`python/tripmine/__init__.py`) turns user arrays into
//! C-contiguous float32 rows and integer label codes; here they are read in place (a
//! non-C-contiguous array is refused, never read in the wrong order), rows are checked as
//! `mine --embeddings` checks them, and long calls run with the GIL released.

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
use tripmine_core::cli::{dispatch, Dispatch};
use tripmine_core::definitions::Distance;
use tripmine_core::eval::{evaluate as evaluate_points, RECALL_AT};
use tripmine_core::knn::{
    self, ExactIndex, HnswParams, KnnChoice, KnnConfig, NeighbourIndex, Points, Restriction,
};
use tripmine_core::mine::{MiningRules, NegativeOrder, PositiveRule, Strategy};
use tripmine_core::store::{row_fix, RowCheck, RowProblem};

fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// The rows of a C-contiguous float32 matrix, in place, and its shape.
fn rows<'a>(name: &str, a: &'a PyReadonlyArray2<'_, f32>) -> PyResult<(&'a [f32], usize, usize)> {
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
fn unit_rows<'a>(
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
fn label_codes(labels: &PyReadonlyArray1<'_, i64>, n: usize) -> PyResult<Vec<u32>> {
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

fn parse_enum<T: ValueEnum>(what: &str, value: &str) -> PyResult<T> {
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

fn i64_array<'py>(py: Python<'py>, values: Vec<i64>) -> Bound<'py, PyArray1<i64>> {
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
    let strategy = Strategy::from_str(strategy).map_err(value_error)?;
    let positives: PositiveRule = parse_enum("positives", positives)?;
    let distance: Distance = parse_enum("distance", distance)?;
    let choice: KnnChoice = parse_enum("knn", knn)?;
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
    if candidate_classes == 0 || max_search_depth == 0 || negatives_per_anchor == Some(0) {
        return Err(value_error(
            "negatives_per_anchor, candidate_classes and max_search_depth must be at least 1",
        ));
    }
    // None: every negative of the requested kinds, so the search may go through the corpus.
    let (per_anchor, max_depth) = match negatives_per_anchor {
        Some(k) if k > max_search_depth => {
            return Err(value_error(format!(
                "negatives_per_anchor {k} exceeds max_search_depth {max_search_depth}"
            )))
        }
        Some(k) => (k, max_search_depth),
        None => (n, n),
    };
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
    let defaults = MiningRules::default();
    let rules = MiningRules {
        margin,
        distance,
        strategy,
        positives,
        negatives_per_anchor: per_anchor,
        negative_order: NegativeOrder::Nearest,
        anchors_per_class: None,
        seed,
        start_depth: defaults.start_depth.min(max_depth),
        max_depth,
        skip_nearest,
        negative_floor,
    };
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
        stats["margin"] = tripmine_core::definitions::json_f32(margin);
        stats["distance"] = distance.name().into();
        let triplets: Vec<_> = triplets
            .into_iter()
            .map(|t| {
                (
                    origin[t.anchor],
                    origin[t.positive],
                    origin[t.negative],
                    t.d_ap,
                    t.d_an,
                    t.kind,
                )
            })
            .collect();
        (triplets, stats)
    });
    let out = PyDict::new(py);
    out.set_item(
        "anchor",
        i64_array(py, triplets.iter().map(|t| t.0 as i64).collect()),
    )?;
    out.set_item(
        "positive",
        i64_array(py, triplets.iter().map(|t| t.1 as i64).collect()),
    )?;
    out.set_item(
        "negative",
        i64_array(py, triplets.iter().map(|t| t.2 as i64).collect()),
    )?;
    out.set_item(
        "d_ap",
        PyArray1::from_vec(py, triplets.iter().map(|t| t.3).collect()),
    )?;
    out.set_item(
        "d_an",
        PyArray1::from_vec(py, triplets.iter().map(|t| t.4).collect()),
    )?;
    out.set_item(
        "kind",
        triplets.iter().map(|t| t.5.name()).collect::<Vec<_>>(),
    )?;
    out.set_item("stats", stats.to_string())?;
    Ok(out)
}

/// `(D, I)` flat, reshaped to n × k by the Python layer.
type DistancesAndIndices<'py> = (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<i64>>);

/// The k nearest other rows of every row, exact: `(D, I)` as faiss returns them (n × k, nearest
/// first, padded with inf and -1 where fewer rows are allowed), D in `distance`.
#[pyfunction]
#[pyo3(signature = (x, k, labels, *, restrict, distance, normalise))]
fn knn_search<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    k: usize,
    labels: Option<PyReadonlyArray1<'py, i64>>,
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
    let codes = match &labels {
        Some(labels) => label_codes(labels, n)?,
        None if restriction == Restriction::Any => vec![0; n],
        None => return Err(value_error(format!("restrict={restrict:?} needs labels"))),
    };
    if k == 0 || k > n {
        return Err(value_error(format!(
            "k must be in 1..{n} (the number of rows), not {k}"
        )));
    }
    let unit = unit_rows("x", data, dim, normalise)?;
    let (d, i) = py.allow_threads(|| {
        let points = Points {
            data: &unit,
            dim,
            labels: &codes,
        };
        let queries: Vec<usize> = (0..n).collect();
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

/// Retrieval metrics with exact neighbours: P@1, R-Precision, MAP@R, Recall@K (JSON text).
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
    let mut out = serde_json::json!({
        "precision_at_1": m.p_at_1,
        "r_precision": m.r_precision,
        "mean_average_precision_at_r": m.map_at_r,
        "queries": m.queries,
        "skipped_queries": m.skipped_queries,
    });
    for k in RECALL_AT {
        out[format!("recall_at_{k}")] = m.recall_at_k.get(&k).copied().unwrap_or(f64::NAN).into();
    }
    Ok(out.to_string())
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
    if k == 0 {
        return Err(value_error("k must be at least 1"));
    }
    let unit = unit_rows("embeddings", data, dim, normalise)?;
    let thresholds = Thresholds {
        k,
        near_duplicate_fraction,
        mislabel_probability,
        min_model_p_at_1,
        outlier_z,
        ..Thresholds::default()
    };
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
/// `--model` need the libtorch build.
#[pyfunction]
fn run(py: Python<'_>, argv: Vec<OsString>) -> i32 {
    // Python's own SIGINT handler would only run between bytecodes, which a long Rust call
    // never reaches: Ctrl-C must stop the command as it stops the binary.
    // SAFETY: setting, then restoring, the disposition of one signal.
    let python_handler = unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let dispatched = py.allow_threads(|| dispatch(argv));
    // SAFETY: as above: Python's handler back for whatever the process does next.
    unsafe {
        libc::signal(libc::SIGINT, python_handler);
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
    m.add_function(wrap_pyfunction!(mine, m)?)?;
    m.add_function(wrap_pyfunction!(knn_search, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(audit_findings, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
