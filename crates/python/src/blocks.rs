//! Sharded mining's four steps (`tripmine_core::mine::blocks`) for engines that move blocks
//! between processes (`tripmine.ray`): every input and output is numpy arrays or JSON text,
//! so each travels through an object store as it is, and rows are read in place.

use std::borrow::Cow;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tripmine_core::definitions::{Triplet, TripletKind};
use tripmine_core::eval::blocks as eval_blocks;
use tripmine_core::knn::{Band, ClassPicks, Points};
use tripmine_core::mine::blocks::{self, Answers, Block, ClassSummaries, LevelBuilder, Picks};
use tripmine_core::mine::{MineStats, MiningRules};
use tripmine_core::triplets::TripletRow;

use crate::{i64_array, label_codes, rows, triplet_columns, unit_rows, value_error, RuleArgs};

/// A block's embeddings, labels and corpus row ids as Python passed them.
type BlockArrays<'b, 'py> = (
    &'b PyReadonlyArray2<'py, f32>,
    &'b PyReadonlyArray1<'py, i64>,
    &'b PyReadonlyArray1<'py, i64>,
);

/// A block's rows, labels and corpus row ids, checked.
struct Rows<'a> {
    data: Cow<'a, [f32]>,
    dim: usize,
    labels: Vec<u32>,
    ids: Vec<usize>,
}

impl<'a> Rows<'a> {
    fn read(
        name: &str,
        embeddings: &'a PyReadonlyArray2<'_, f32>,
        labels: &PyReadonlyArray1<'_, i64>,
        ids: &PyReadonlyArray1<'_, i64>,
        normalise: bool,
    ) -> PyResult<Self> {
        let (data, n, dim) = rows(name, embeddings)?;
        let labels = label_codes(labels, n)?;
        let ids = ids.as_array();
        if ids.len() != n {
            return Err(value_error(format!(
                "{name}: {} row ids for {n} rows",
                ids.len()
            )));
        }
        let ids = ids
            .iter()
            .map(|&i| usize::try_from(i).map_err(|_| value_error(format!("{name}: row id {i}"))))
            .collect::<PyResult<_>>()?;
        Ok(Rows {
            data: unit_rows(name, data, dim, normalise)?,
            dim,
            labels,
            ids,
        })
    }

    /// An anchor block and a corpus block (embeddings, labels, row ids each), of one width.
    fn read_pair<'b>(
        anchors: BlockArrays<'b, '_>,
        corpus: BlockArrays<'b, '_>,
        normalise: bool,
    ) -> PyResult<(Rows<'b>, Rows<'b>)> {
        let anchors = Rows::read("anchors", anchors.0, anchors.1, anchors.2, normalise)?;
        let corpus = Rows::read("corpus", corpus.0, corpus.1, corpus.2, normalise)?;
        if anchors.dim != corpus.dim {
            return Err(value_error(format!(
                "anchors have {} dimensions, the corpus block {}",
                anchors.dim, corpus.dim
            )));
        }
        Ok((anchors, corpus))
    }

    fn block(&self) -> Block<'_> {
        Block {
            points: Points {
                data: &self.data,
                dim: self.dim,
                labels: &self.labels,
            },
            ids: &self.ids,
        }
    }
}

fn parse_rules(rules: &str) -> PyResult<MiningRules> {
    serde_json::from_str(rules)
        .map_err(|e| value_error(format!("rules are not tripmine.mining_rules' output: {e}")))
}

fn array<'py, T: numpy::Element>(
    dict: &Bound<'py, PyDict>,
    what: &str,
    key: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    let item = dict
        .get_item(key)?
        .ok_or_else(|| value_error(format!("{what} has no {key:?} array")))?;
    let array = item.downcast::<PyArray1<T>>().map_err(|_| {
        value_error(format!(
            "{what}[{key:?}] is not a 1-D array of {}",
            std::any::type_name::<T>()
        ))
    })?;
    Ok(array.readonly())
}

fn indices(values: &PyReadonlyArray1<'_, i64>, what: &str) -> PyResult<Vec<usize>> {
    values
        .as_array()
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| value_error(format!("{what}: {v} is negative"))))
        .collect()
}

fn read_questions(questions: &Bound<'_, PyDict>, anchors: usize) -> PyResult<Vec<Band>> {
    let what = "questions";
    let query = indices(&array::<i64>(questions, what, "query")?, what)?;
    let min_dot = array::<f32>(questions, what, "min_dot")?;
    let max_dot = array::<f32>(questions, what, "max_dot")?;
    let k = indices(&array::<i64>(questions, what, "k")?, what)?;
    let (min_dot, max_dot) = (min_dot.as_array(), max_dot.as_array());
    if [min_dot.len(), max_dot.len(), k.len()] != [query.len(); 3] {
        return Err(value_error("questions: arrays of different lengths"));
    }
    if let Some(q) = query.iter().find(|&&q| q >= anchors) {
        return Err(value_error(format!(
            "questions name anchor row {q}, the block has {anchors}: questions of another block"
        )));
    }
    Ok((0..query.len())
        .map(|i| Band {
            query: query[i],
            min_dot: min_dot[i],
            max_dot: max_dot[i],
            k: k[i],
        })
        .collect())
}

fn read_answers(answers: &Bound<'_, PyDict>) -> PyResult<Answers> {
    let what = "answers";
    let offsets = indices(&array::<i64>(answers, what, "offsets")?, what)?;
    // The exact index's answers are always complete: checkpoints written before the classes
    // path carried the flag have none.
    let complete = match answers.get_item("complete")? {
        Some(_) => array::<bool>(answers, what, "complete")?
            .as_array()
            .to_vec(),
        None => vec![true; offsets.len().saturating_sub(1)],
    };
    Ok(Answers {
        offsets,
        ids: indices(&array::<i64>(answers, what, "ids")?, what)?,
        dots: array::<f32>(answers, what, "dots")?.as_array().to_vec(),
        d_an: array::<f32>(answers, what, "d_an")?.as_array().to_vec(),
        complete,
    })
}

fn answers_dict<'py>(py: Python<'py>, a: Answers) -> PyResult<Bound<'py, PyDict>> {
    let to_i64 = |v: Vec<usize>| v.into_iter().map(|x| x as i64).collect();
    let out = PyDict::new(py);
    out.set_item("offsets", i64_array(py, to_i64(a.offsets)))?;
    out.set_item("ids", i64_array(py, to_i64(a.ids)))?;
    out.set_item("dots", PyArray1::from_vec(py, a.dots))?;
    out.set_item("d_an", PyArray1::from_vec(py, a.d_an))?;
    out.set_item("complete", PyArray1::from_vec(py, a.complete))?;
    Ok(out)
}

/// `tripmine.mine`'s rules for a corpus of `corpus_rows` rows, as JSON text for every step.
#[pyfunction]
#[pyo3(signature = (*, corpus_rows, strategy, negatives_per_anchor, positives, margin, distance, seed, skip_nearest, negative_floor, max_search_depth))]
#[allow(clippy::too_many_arguments)]
fn mining_rules(
    corpus_rows: usize,
    strategy: &str,
    negatives_per_anchor: Option<usize>,
    positives: &str,
    margin: f32,
    distance: &str,
    seed: u64,
    skip_nearest: usize,
    negative_floor: f32,
    max_search_depth: usize,
) -> PyResult<String> {
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
    .rules(corpus_rows)?;
    Ok(serde_json::to_string(&rules).expect("rules serialise"))
}

/// Step 1: an anchor block's questions (it must hold every row of each of its classes).
#[pyfunction]
#[pyo3(signature = (embeddings, labels, ids, *, rules, corpus_rows, normalise))]
fn block_questions<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    ids: PyReadonlyArray1<'py, i64>,
    rules: &str,
    corpus_rows: usize,
    normalise: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let rules = parse_rules(rules)?;
    let anchors = Rows::read("anchors", &embeddings, &labels, &ids, normalise)?;
    let bands = py
        .allow_threads(|| blocks::questions(anchors.block(), &rules, corpus_rows))
        .map_err(|e| value_error(e.to_string()))?;
    let out = PyDict::new(py);
    out.set_item(
        "query",
        i64_array(py, bands.iter().map(|b| b.query as i64).collect()),
    )?;
    out.set_item(
        "min_dot",
        PyArray1::from_vec(py, bands.iter().map(|b| b.min_dot).collect()),
    )?;
    out.set_item(
        "max_dot",
        PyArray1::from_vec(py, bands.iter().map(|b| b.max_dot).collect()),
    )?;
    out.set_item(
        "k",
        i64_array(py, bands.iter().map(|b| b.k as i64).collect()),
    )?;
    Ok(out)
}

/// Step 2: an anchor block's questions answered among one corpus block's rows.
#[pyfunction]
#[pyo3(signature = (anchors, anchor_labels, anchor_ids, questions, corpus, corpus_labels, corpus_ids, *, rules, normalise))]
#[allow(clippy::too_many_arguments)]
fn block_answer<'py>(
    py: Python<'py>,
    anchors: PyReadonlyArray2<'py, f32>,
    anchor_labels: PyReadonlyArray1<'py, i64>,
    anchor_ids: PyReadonlyArray1<'py, i64>,
    questions: Bound<'py, PyDict>,
    corpus: PyReadonlyArray2<'py, f32>,
    corpus_labels: PyReadonlyArray1<'py, i64>,
    corpus_ids: PyReadonlyArray1<'py, i64>,
    rules: &str,
    normalise: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let rules = parse_rules(rules)?;
    let (anchors, corpus) = Rows::read_pair(
        (&anchors, &anchor_labels, &anchor_ids),
        (&corpus, &corpus_labels, &corpus_ids),
        normalise,
    )?;
    let bands = read_questions(&questions, anchors.ids.len())?;
    let answers =
        py.allow_threads(|| blocks::answer(anchors.block(), &bands, corpus.block(), &rules));
    answers_dict(py, answers)
}

/// Step 0 on the classes path: each class's label code, mean and radius over a block of
/// whole classes (the class level's inputs; `tripmine.ray` gathers them from every block).
#[pyfunction]
#[pyo3(signature = (embeddings, labels, ids, *, normalise))]
fn class_summaries<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    ids: PyReadonlyArray1<'py, i64>,
    normalise: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let block = Rows::read("block", &embeddings, &labels, &ids, normalise)?;
    let s = py.allow_threads(|| blocks::class_summaries(block.block()));
    let out = PyDict::new(py);
    out.set_item(
        "classes",
        i64_array(py, s.classes.iter().map(|&c| i64::from(c)).collect()),
    )?;
    out.set_item("means", PyArray1::from_vec(py, s.means))?;
    out.set_item("radius", PyArray1::from_vec(py, s.radius))?;
    Ok(out)
}

fn picks_of(picks: &Bound<'_, PyDict>, prefix: &str) -> PyResult<ClassPicks> {
    let what = "picks";
    let key = |k: &str| format!("{prefix}{k}");
    Ok(ClassPicks {
        offsets: indices(&array::<i64>(picks, what, &key("offsets"))?, what)?,
        rows: array::<i64>(picks, what, &key("rows"))?
            .as_array()
            .iter()
            .map(|&r| u32::try_from(r).map_err(|_| value_error(format!("picks: row {r}"))))
            .collect::<PyResult<_>>()?,
        whole: array::<bool>(picks, what, &key("whole"))?
            .as_array()
            .to_vec(),
    })
}

/// Step 1½ on the classes path: the classes an anchor block's questions search, from every
/// class's summary (`summaries`: the blocks' `class_summaries`, gathered by the caller) over
/// `classes` classes.
#[pyfunction]
#[pyo3(signature = (embeddings, labels, ids, questions, summaries, *, classes, candidate_classes, rules, normalise))]
#[allow(clippy::too_many_arguments)]
fn block_pick<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    ids: PyReadonlyArray1<'py, i64>,
    questions: Bound<'py, PyDict>,
    summaries: Vec<Bound<'py, PyDict>>,
    classes: usize,
    candidate_classes: usize,
    rules: &str,
    normalise: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let rules = parse_rules(rules)?;
    let anchors = Rows::read("anchors", &embeddings, &labels, &ids, normalise)?;
    let bands = read_questions(&questions, anchors.ids.len())?;
    let mut level = LevelBuilder::new(classes, anchors.dim);
    for (b, part) in summaries.iter().enumerate() {
        let what = "class summaries";
        let part = ClassSummaries {
            classes: indices(&array::<i64>(part, what, "classes")?, what)?
                .into_iter()
                .map(|c| c as u32)
                .collect(),
            means: array::<f32>(part, what, "means")?.as_array().to_vec(),
            radius: array::<f32>(part, what, "radius")?.as_array().to_vec(),
        };
        level
            .add(b, &part)
            .map_err(|e| value_error(e.to_string()))?;
    }
    let (picks, candidates) = py.allow_threads(|| {
        let level = level.build(candidate_classes.max(1));
        (
            blocks::pick(anchors.block(), &bands, &level, &rules),
            level.candidates(),
        )
    });
    let out = PyDict::new(py);
    for (prefix, p) in [("guard_", picks.guard), ("", picks.bands)] {
        let to_i64 = |v: Vec<usize>| v.into_iter().map(|x| x as i64).collect();
        out.set_item(format!("{prefix}offsets"), i64_array(py, to_i64(p.offsets)))?;
        out.set_item(
            format!("{prefix}rows"),
            i64_array(py, p.rows.into_iter().map(i64::from).collect()),
        )?;
        out.set_item(format!("{prefix}whole"), PyArray1::from_vec(py, p.whole))?;
    }
    out.set_item("classes", classes)?;
    out.set_item("candidate_classes", candidates)?;
    Ok(out)
}

/// Step 2 on the classes path: an anchor block's questions answered among the members of one
/// corpus block in the classes `picks` (from `block_pick`) chose.
#[pyfunction]
#[pyo3(signature = (anchors, anchor_labels, anchor_ids, questions, picks, corpus, corpus_labels, corpus_ids, *, rules, normalise))]
#[allow(clippy::too_many_arguments)]
fn block_answer_picked<'py>(
    py: Python<'py>,
    anchors: PyReadonlyArray2<'py, f32>,
    anchor_labels: PyReadonlyArray1<'py, i64>,
    anchor_ids: PyReadonlyArray1<'py, i64>,
    questions: Bound<'py, PyDict>,
    picks: Bound<'py, PyDict>,
    corpus: PyReadonlyArray2<'py, f32>,
    corpus_labels: PyReadonlyArray1<'py, i64>,
    corpus_ids: PyReadonlyArray1<'py, i64>,
    rules: &str,
    normalise: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let rules = parse_rules(rules)?;
    let (anchors, corpus) = Rows::read_pair(
        (&anchors, &anchor_labels, &anchor_ids),
        (&corpus, &corpus_labels, &corpus_ids),
        normalise,
    )?;
    let bands = read_questions(&questions, anchors.ids.len())?;
    let classes: usize = picks
        .get_item("classes")?
        .ok_or_else(|| value_error("picks has no \"classes\""))?
        .extract()?;
    let picks = Picks {
        guard: picks_of(&picks, "guard_")?,
        bands: picks_of(&picks, "")?,
    };
    let answers = py
        .allow_threads(|| {
            blocks::answer_picked(
                anchors.block(),
                &bands,
                &picks,
                classes,
                corpus.block(),
                &rules,
            )
        })
        .map_err(|e| value_error(e.to_string()))?;
    answers_dict(py, answers)
}

/// Step 3: the answers of several corpus blocks to one anchor block's questions, as one.
#[pyfunction]
fn block_merge<'py>(
    py: Python<'py>,
    questions: Bound<'py, PyDict>,
    parts: Vec<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let bands = read_questions(&questions, usize::MAX)?;
    let parts: Vec<Answers> = parts.iter().map(read_answers).collect::<PyResult<_>>()?;
    let merged = py
        .allow_threads(|| blocks::merge(&bands, &parts))
        .map_err(|e| value_error(e.to_string()))?;
    answers_dict(py, merged)
}

/// Step 4: the anchor block's triplets (corpus rows) and statistics from merged answers
/// (`candidate_classes`: the classes path's, from `block_pick`).
#[pyfunction]
#[pyo3(signature = (embeddings, labels, ids, questions, answers, *, rules, corpus_rows, normalise, candidate_classes=None))]
#[allow(clippy::too_many_arguments)]
fn block_finalise<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    ids: PyReadonlyArray1<'py, i64>,
    questions: Bound<'py, PyDict>,
    answers: Bound<'py, PyDict>,
    rules: &str,
    corpus_rows: usize,
    normalise: bool,
    candidate_classes: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let rules = parse_rules(rules)?;
    let anchors = Rows::read("anchors", &embeddings, &labels, &ids, normalise)?;
    let bands = read_questions(&questions, anchors.ids.len())?;
    let answers = read_answers(&answers)?;
    let (triplets, stats) = py
        .allow_threads(|| {
            let (a, r) = (anchors.block(), &rules);
            blocks::finalise(a, &bands, &answers, r, corpus_rows, candidate_classes)
        })
        .map_err(|e| value_error(e.to_string()))?;
    let stats = serde_json::to_string(&stats).expect("stats serialise");
    triplet_columns(py, &triplets, stats)
}

/// Blocks' statistics (JSON text each) as one run's.
#[pyfunction]
fn merge_stats(parts: Vec<String>) -> PyResult<String> {
    let mut total = MineStats::default();
    for p in &parts {
        let s: MineStats = serde_json::from_str(p)
            .map_err(|e| value_error(format!("not a block's statistics: {e}")))?;
        total.add(&s);
    }
    Ok(serde_json::to_string(&total).expect("stats serialise"))
}

/// Triplets (rows of the corpus) written as `tripmine mine --out` writes them: the CSV with
/// each row's path and label, and the sidecar with the rules, the counts and `extra`'s fields
/// (JSON text), both replaced whole.
#[pyfunction]
#[pyo3(signature = (path, columns, *, paths, labels, rules, stats, backend, extra))]
#[allow(clippy::too_many_arguments)]
fn write_triplets(
    py: Python<'_>,
    path: std::path::PathBuf,
    columns: Bound<'_, PyDict>,
    paths: Vec<String>,
    labels: Vec<String>,
    rules: &str,
    stats: &str,
    backend: &str,
    extra: &str,
) -> PyResult<()> {
    let rules = parse_rules(rules)?;
    let stats: MineStats =
        serde_json::from_str(stats).map_err(|e| value_error(format!("stats: {e}")))?;
    let json = |what: &str, text: &str| -> PyResult<serde_json::Value> {
        serde_json::from_str(text).map_err(|e| value_error(format!("{what}: {e}")))
    };
    let (backend, extra) = (json("backend", backend)?, json("extra", extra)?);
    if paths.len() != labels.len() {
        return Err(value_error("paths and labels differ in length"));
    }
    let what = "columns";
    let anchor = indices(&array::<i64>(&columns, what, "anchor")?, what)?;
    let positive = indices(&array::<i64>(&columns, what, "positive")?, what)?;
    let negative = indices(&array::<i64>(&columns, what, "negative")?, what)?;
    let d_ap = array::<f32>(&columns, what, "d_ap")?.as_array().to_vec();
    let d_an = array::<f32>(&columns, what, "d_an")?.as_array().to_vec();
    let n = anchor.len();
    if [positive.len(), negative.len(), d_ap.len(), d_an.len()] != [n; 4] {
        return Err(value_error("columns of different lengths"));
    }
    if let Some(bad) = anchor
        .iter()
        .chain(&positive)
        .chain(&negative)
        .find(|&&r| r >= paths.len())
    {
        return Err(value_error(format!(
            "row {bad} is not among the corpus's {} rows",
            paths.len()
        )));
    }
    let mut sidecar = tripmine_core::mine::rules_sidecar(&rules, &backend, &stats);
    if let (Some(into), serde_json::Value::Object(fields)) = (sidecar.as_object_mut(), extra) {
        into.extend(fields);
    }
    py.allow_threads(|| {
        let rows = (0..n).map(|i| {
            let t = Triplet {
                anchor: anchor[i],
                positive: positive[i],
                negative: negative[i],
                d_ap: d_ap[i],
                d_an: d_an[i],
                kind: TripletKind::classify(d_ap[i], d_an[i], rules.margin),
            };
            TripletRow::new(&t, |r| (paths[r].as_str(), labels[r].as_str()))
        });
        tripmine_core::mine::write_triplet_set(&path, rows, sidecar)
    })
    .map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        pyo3::exceptions::PyOSError::new_err(message)
    })
}

fn relevant_dict<'py>(py: Python<'py>, r: eval_blocks::Relevant) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item(
        "offsets",
        i64_array(py, r.offsets.into_iter().map(|x| x as i64).collect()),
    )?;
    out.set_item("scores", PyArray1::from_vec(py, r.scores))?;
    Ok(out)
}

fn read_relevant(relevant: &Bound<'_, PyDict>, queries: usize) -> PyResult<eval_blocks::Relevant> {
    let what = "relevant";
    let r = eval_blocks::Relevant {
        offsets: indices(&array::<i64>(relevant, what, "offsets")?, what)?,
        scores: array::<f32>(relevant, what, "scores")?.as_array().to_vec(),
    };
    let consistent = r.offsets.len() == queries + 1
        && r.offsets.first() == Some(&0)
        && r.offsets.windows(2).all(|w| w[0] <= w[1])
        && r.offsets.last() == Some(&r.scores.len());
    if !consistent {
        return Err(value_error(format!(
            "relevant scores do not fit this block's {queries} queries (another anchor block's?)"
        )));
    }
    Ok(r)
}

fn counts_array(values: &PyReadonlyArray1<'_, i64>) -> PyResult<Vec<u64>> {
    values
        .as_array()
        .iter()
        .map(|&v| u64::try_from(v).map_err(|_| value_error(format!("counts: {v} is negative"))))
        .collect()
}

/// Evaluation step 1: each query's relevant scores (the block holds whole classes).
#[pyfunction]
#[pyo3(signature = (embeddings, labels, ids, *, normalise))]
fn eval_relevant<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray1<'py, i64>,
    ids: PyReadonlyArray1<'py, i64>,
    normalise: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let anchors = Rows::read("anchors", &embeddings, &labels, &ids, normalise)?;
    let r = py.allow_threads(|| eval_blocks::relevant(anchors.block()));
    relevant_dict(py, r)
}

/// Evaluation step 2: per relevant score, the other-label rows of one corpus block above it.
#[pyfunction]
#[pyo3(signature = (anchors, anchor_labels, anchor_ids, relevant, corpus, corpus_labels, corpus_ids, *, normalise))]
#[allow(clippy::too_many_arguments)]
fn eval_count<'py>(
    py: Python<'py>,
    anchors: PyReadonlyArray2<'py, f32>,
    anchor_labels: PyReadonlyArray1<'py, i64>,
    anchor_ids: PyReadonlyArray1<'py, i64>,
    relevant: Bound<'py, PyDict>,
    corpus: PyReadonlyArray2<'py, f32>,
    corpus_labels: PyReadonlyArray1<'py, i64>,
    corpus_ids: PyReadonlyArray1<'py, i64>,
    normalise: bool,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (anchors, corpus) = Rows::read_pair(
        (&anchors, &anchor_labels, &anchor_ids),
        (&corpus, &corpus_labels, &corpus_ids),
        normalise,
    )?;
    let r = read_relevant(&relevant, anchors.ids.len())?;
    let counts =
        py.allow_threads(|| eval_blocks::count_closer(anchors.block(), &r, corpus.block()));
    Ok(i64_array(
        py,
        counts.into_iter().map(|c| c as i64).collect(),
    ))
}

/// Evaluation steps 3 and 4: the corpus blocks' counts merged, and the anchor block's sums
/// of the metrics (JSON text; `eval_metrics` adds them up).
#[pyfunction]
fn eval_tally(
    relevant: Bound<'_, PyDict>,
    counts: Vec<PyReadonlyArray1<'_, i64>>,
) -> PyResult<String> {
    let offsets = array::<i64>(&relevant, "relevant", "offsets")?
        .as_array()
        .len();
    let r = read_relevant(&relevant, offsets.saturating_sub(1))?;
    let parts: Vec<Vec<u64>> = counts.iter().map(counts_array).collect::<PyResult<_>>()?;
    let merged = eval_blocks::merge(parts.iter().map(Vec::as_slice))
        .map_err(|e| value_error(e.to_string()))?;
    let t = eval_blocks::tally(&r, &merged).map_err(|e| value_error(e.to_string()))?;
    Ok(serde_json::to_string(&t).expect("tally serialises"))
}

/// The metrics object (`tripmine.evaluate`'s) from the anchor blocks' tallies.
#[pyfunction]
fn eval_metrics(tallies: Vec<String>) -> PyResult<String> {
    let mut total = eval_blocks::Tally::default();
    for t in &tallies {
        let t: eval_blocks::Tally = serde_json::from_str(t)
            .map_err(|e| value_error(format!("not an anchor block's tally: {e}")))?;
        total.add(&t);
    }
    Ok(total.metrics().to_json().to_string())
}

/// Writes a shard directory (`tripmine.write_shards`); returns its manifest as JSON text.
#[pyfunction]
#[pyo3(signature = (directory, embeddings, labels, *, paths, shard_rows))]
fn write_shards(
    py: Python<'_>,
    directory: std::path::PathBuf,
    embeddings: PyReadonlyArray2<'_, f32>,
    labels: Vec<String>,
    paths: Option<Vec<String>>,
    shard_rows: usize,
) -> PyResult<String> {
    let (data, n, dim) = rows("embeddings", &embeddings)?;
    if labels.len() != n {
        return Err(value_error(format!(
            "labels has {} entries for {n} rows",
            labels.len()
        )));
    }
    let rows = tripmine_core::shards::Rows {
        data,
        dim,
        labels: &labels,
        paths: paths.as_deref(),
        model: None,
    };
    let manifest = py
        .allow_threads(|| tripmine_core::shards::write(&directory, &rows, shard_rows))
        .map_err(value_error)?;
    Ok(serde_json::to_string(&manifest).expect("manifest serialises"))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(write_shards, m)?)?;
    m.add_function(wrap_pyfunction!(eval_relevant, m)?)?;
    m.add_function(wrap_pyfunction!(eval_count, m)?)?;
    m.add_function(wrap_pyfunction!(eval_tally, m)?)?;
    m.add_function(wrap_pyfunction!(eval_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(write_triplets, m)?)?;
    m.add_function(wrap_pyfunction!(mining_rules, m)?)?;
    m.add_function(wrap_pyfunction!(block_questions, m)?)?;
    m.add_function(wrap_pyfunction!(block_answer, m)?)?;
    m.add_function(wrap_pyfunction!(class_summaries, m)?)?;
    m.add_function(wrap_pyfunction!(block_pick, m)?)?;
    m.add_function(wrap_pyfunction!(block_answer_picked, m)?)?;
    m.add_function(wrap_pyfunction!(block_merge, m)?)?;
    m.add_function(wrap_pyfunction!(block_finalise, m)?)?;
    m.add_function(wrap_pyfunction!(merge_stats, m)?)?;
    Ok(())
}
