//! Aggregation stages: `$match`, `$project`, `$addFields`/`$set`, `$unset`, `$replaceRoot`/
//! `$replaceWith`, `$sort`, `$skip`, `$limit`, `$count` and `$group` (with `$sum`, `$avg`, `$min`,
//! `$max`, `$first`, `$last`, `$push`, `$addToSet`, `$count` accumulators).

use bson::{Bson, Document};

use super::compare::{as_i64, cmp, key_bytes};
use super::expr;
use super::matcher::Filter;
use super::path;
use super::projection::Projection;
use super::sort::SortSpec;
use crate::error::{code, CmdError, CmdResult};

/// One parsed stage.
#[derive(Debug, Clone)]
pub enum Stage {
    Match(Filter),
    Project(Projection),
    AddFields(Vec<(String, Bson)>),
    Unset(Vec<String>),
    ReplaceRoot(Bson),
    Sort(SortSpec),
    Skip(u64),
    Limit(u64),
    Count(String),
    Group(Group),
}

#[derive(Debug, Clone, Copy)]
enum Acc {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
    Count,
}

/// A `$group` stage.
#[derive(Debug, Clone)]
pub struct Group {
    id: Bson,
    accs: Vec<(String, Acc, Bson)>,
}

fn stage_doc<'a>(name: &str, v: &'a Bson) -> CmdResult<&'a Document> {
    match v {
        Bson::Document(d) => Ok(d),
        _ => Err(CmdError::failed_to_parse(format!(
            "the {name} stage specification must be an object"
        ))),
    }
}

fn count_arg(name: &str, v: &Bson) -> CmdResult<u64> {
    match as_i64(v) {
        Some(n) if n >= 0 && (name == "$skip" || n > 0) => Ok(n as u64),
        _ => Err(CmdError::bad_value(format!(
            "invalid argument to {name} stage: expected a {} number",
            if name == "$skip" {
                "non-negative"
            } else {
                "positive"
            }
        ))),
    }
}

/// Parses an aggregation pipeline.
pub fn parse(stages: &[Bson]) -> CmdResult<Vec<Stage>> {
    stages.iter().map(parse_stage).collect()
}

/// Parses one stage document `{$name: spec}`.
pub fn parse_stage(stage: &Bson) -> CmdResult<Stage> {
    let d = match stage {
        Bson::Document(d) if d.len() == 1 => d,
        _ => {
            return Err(CmdError::new(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            ))
        }
    };
    let (name, spec) = match d.iter().next() {
        Some(kv) => kv,
        None => return Err(CmdError::new(40323, "empty pipeline stage")),
    };
    Ok(match name.as_str() {
        "$match" => Stage::Match(Filter::parse(stage_doc(name, spec)?)?),
        "$project" => {
            let d = stage_doc(name, spec)?;
            if d.is_empty() {
                return Err(CmdError::new(
                    51272,
                    "projection specification must have at least one field",
                ));
            }
            Stage::Project(Projection::parse(d)?)
        }
        "$addFields" | "$set" => {
            let d = stage_doc(name, spec)?;
            let mut fields = Vec::new();
            for (k, v) in d {
                expr::validate(v)?;
                fields.push((k.clone(), v.clone()));
            }
            Stage::AddFields(fields)
        }
        "$unset" => match spec {
            Bson::String(s) => Stage::Unset(vec![s.clone()]),
            Bson::Array(a) => Stage::Unset(
                a.iter()
                    .map(|x| match x {
                        Bson::String(s) => Ok(s.clone()),
                        _ => Err(CmdError::bad_value(
                            "$unset specification must be a string or an array of strings",
                        )),
                    })
                    .collect::<CmdResult<_>>()?,
            ),
            _ => {
                return Err(CmdError::bad_value(
                    "$unset specification must be a string or an array",
                ))
            }
        },
        "$replaceRoot" => {
            let new_root = stage_doc(name, spec)?.get("newRoot").ok_or_else(|| {
                CmdError::new(40231, "no newRoot specified for the $replaceRoot stage")
            })?;
            expr::validate(new_root)?;
            Stage::ReplaceRoot(new_root.clone())
        }
        "$replaceWith" => {
            expr::validate(spec)?;
            Stage::ReplaceRoot(spec.clone())
        }
        "$sort" => Stage::Sort(SortSpec::parse(stage_doc(name, spec)?)?),
        "$skip" => Stage::Skip(count_arg(name, spec)?),
        "$limit" => Stage::Limit(count_arg(name, spec)?),
        "$count" => match spec {
            Bson::String(s) if !s.is_empty() && !s.starts_with('$') && !s.contains('.') => {
                Stage::Count(s.clone())
            }
            _ => {
                return Err(CmdError::new(
                    40156,
                    "the count field must be a non-empty string without '$' or '.'",
                ))
            }
        },
        "$group" => Stage::Group(parse_group(stage_doc(name, spec)?)?),
        other => {
            return Err(CmdError::new(
                code::UNRECOGNIZED_PIPELINE_STAGE,
                format!("Unrecognized pipeline stage name: '{other}'"),
            ))
        }
    })
}

fn parse_group(d: &Document) -> CmdResult<Group> {
    let id = d
        .get("_id")
        .ok_or_else(|| CmdError::new(15955, "a group specification must include an _id"))?;
    expr::validate(id)?;
    let mut accs = Vec::new();
    for (k, v) in d.iter().filter(|(k, _)| k.as_str() != "_id") {
        let spec = match v {
            Bson::Document(s) if s.len() == 1 => s,
            _ => {
                return Err(CmdError::new(
                    40234,
                    format!("The field '{k}' must be an accumulator object"),
                ))
            }
        };
        let (op, arg) = match spec.iter().next() {
            Some(kv) => kv,
            None => {
                return Err(CmdError::new(
                    40234,
                    format!("The field '{k}' must be an accumulator object"),
                ))
            }
        };
        let acc = match op.as_str() {
            "$sum" => Acc::Sum,
            "$avg" => Acc::Avg,
            "$min" => Acc::Min,
            "$max" => Acc::Max,
            "$first" => Acc::First,
            "$last" => Acc::Last,
            "$push" => Acc::Push,
            "$addToSet" => Acc::AddToSet,
            "$count" => Acc::Count,
            other => {
                return Err(CmdError::new(
                    15952,
                    format!("unknown group operator '{other}'"),
                ))
            }
        };
        expr::validate(arg)?;
        accs.push((k.clone(), acc, arg.clone()));
    }
    Ok(Group {
        id: id.clone(),
        accs,
    })
}

/// Whether a stage only transforms or filters single documents (allowed after `$changeStream`).
pub fn is_per_document(stage: &Stage) -> bool {
    matches!(
        stage,
        Stage::Match(_)
            | Stage::Project(_)
            | Stage::AddFields(_)
            | Stage::Unset(_)
            | Stage::ReplaceRoot(_)
    )
}

/// Applies per-document stages to one document; `None` when it was filtered out.
pub fn apply_one(stages: &[Stage], doc: Document) -> CmdResult<Option<Document>> {
    let mut cur = doc;
    for st in stages {
        cur = match st {
            Stage::Match(f) => {
                if !f.matches(&cur) {
                    return Ok(None);
                }
                cur
            }
            Stage::Project(p) => p.apply(&cur),
            Stage::AddFields(fields) => {
                let mut out = cur.clone();
                for (k, e) in fields {
                    match expr::eval(e, &cur) {
                        Some(v) => {
                            path::set(&mut out, k, v)?;
                        }
                        None => {
                            path::unset(&mut out, k);
                        }
                    }
                }
                out
            }
            Stage::Unset(fields) => {
                let mut out = cur;
                for f in fields {
                    path::unset(&mut out, f);
                }
                out
            }
            Stage::ReplaceRoot(e) => match expr::eval(e, &cur) {
                Some(Bson::Document(d)) => d,
                other => {
                    return Err(CmdError::new(
                        40228,
                        format!(
                            "'newRoot' expression must evaluate to an object, but resulting value was: {}",
                            other.map(|v| v.to_string()).unwrap_or_else(|| "MISSING".into())
                        ),
                    ))
                }
            },
            _ => return Err(CmdError::internal("stage is not per-document")),
        };
    }
    Ok(Some(cur))
}

/// Runs a full pipeline over `docs`.
pub fn run(stages: &[Stage], mut docs: Vec<Document>) -> CmdResult<Vec<Document>> {
    for st in stages {
        docs = match st {
            Stage::Sort(s) => {
                s.sort(&mut docs);
                docs
            }
            Stage::Skip(n) => docs.into_iter().skip(*n as usize).collect(),
            Stage::Limit(n) => docs.into_iter().take(*n as usize).collect(),
            Stage::Count(name) => {
                if docs.is_empty() {
                    Vec::new()
                } else {
                    vec![bson::doc! {name.clone(): docs.len() as i32}]
                }
            }
            Stage::Group(g) => run_group(g, &docs),
            per_doc => {
                let mut out = Vec::with_capacity(docs.len());
                for d in docs {
                    if let Some(x) = apply_one(std::slice::from_ref(per_doc), d)? {
                        out.push(x);
                    }
                }
                out
            }
        };
    }
    Ok(docs)
}

/// Running state of one accumulator.
#[derive(Debug, Clone)]
enum AccState {
    Sum {
        int: i64,
        dbl: f64,
        wide: bool,
        float: bool,
        n: u64,
    },
    Pick(Option<Bson>),
    List(Vec<Bson>),
}

fn add_number(state: &mut AccState, v: &Bson) {
    if let AccState::Sum {
        int,
        dbl,
        wide,
        float,
        n,
    } = state
    {
        match v {
            Bson::Int32(i) => add_int(int, dbl, wide, float, i64::from(*i)),
            Bson::Int64(i) => {
                *wide = true;
                add_int(int, dbl, wide, float, *i)
            }
            Bson::Double(d) => {
                *float = true;
                *dbl += d;
            }
            _ => return,
        }
        *n += 1;
    }
}

fn add_int(int: &mut i64, dbl: &mut f64, wide: &mut bool, float: &mut bool, x: i64) {
    match int.checked_add(x) {
        Some(s) => *int = s,
        None => {
            *float = true;
            *dbl += x as f64;
        }
    }
    if i32::try_from(*int).is_err() {
        *wide = true;
    }
}

fn sum_value(int: i64, dbl: f64, wide: bool, float: bool) -> Bson {
    if float {
        Bson::Double(dbl + int as f64)
    } else if wide {
        Bson::Int64(int)
    } else {
        Bson::Int32(int as i32)
    }
}

fn run_group(g: &Group, docs: &[Document]) -> Vec<Document> {
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut groups: std::collections::HashMap<Vec<u8>, (Bson, Vec<AccState>)> =
        std::collections::HashMap::new();
    for d in docs {
        let id = expr::eval(&g.id, d).unwrap_or(Bson::Null);
        let key = key_bytes(&id);
        let entry = groups.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            let states = g
                .accs
                .iter()
                .map(|(_, acc, _)| match acc {
                    Acc::Sum | Acc::Avg | Acc::Count => AccState::Sum {
                        int: 0,
                        dbl: 0.0,
                        wide: false,
                        float: false,
                        n: 0,
                    },
                    Acc::Min | Acc::Max | Acc::First | Acc::Last => AccState::Pick(None),
                    Acc::Push | Acc::AddToSet => AccState::List(Vec::new()),
                })
                .collect();
            (id, states)
        });
        for ((_, acc, e), state) in g.accs.iter().zip(entry.1.iter_mut()) {
            let v = expr::eval(e, d);
            match (acc, state) {
                (Acc::Count, st) => add_number(st, &Bson::Int32(1)),
                (Acc::Sum | Acc::Avg, st) => {
                    if let Some(v) = v {
                        add_number(st, &v)
                    }
                }
                (Acc::First, AccState::Pick(p)) if p.is_none() => {
                    *p = Some(v.unwrap_or(Bson::Null));
                }
                (Acc::Last, AccState::Pick(p)) => *p = Some(v.unwrap_or(Bson::Null)),
                (Acc::Min | Acc::Max, AccState::Pick(p)) => {
                    if let Some(v) = v.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) {
                        let better = match p {
                            None => true,
                            Some(cur) => {
                                let o = cmp(&v, cur);
                                if matches!(acc, Acc::Min) {
                                    o.is_lt()
                                } else {
                                    o.is_gt()
                                }
                            }
                        };
                        if better {
                            *p = Some(v);
                        }
                    }
                }
                (Acc::Push, AccState::List(l)) => {
                    if let Some(v) = v {
                        l.push(v)
                    }
                }
                (Acc::AddToSet, AccState::List(l)) => {
                    if let Some(v) = v {
                        if !l.iter().any(|x| key_bytes(x) == key_bytes(&v)) {
                            l.push(v)
                        }
                    }
                }
                _ => {}
            }
        }
    }
    order
        .into_iter()
        .filter_map(|k| groups.remove(&k))
        .map(|(id, states)| {
            let mut out = bson::doc! {"_id": id};
            for ((name, acc, _), st) in g.accs.iter().zip(states) {
                let v = match (acc, st) {
                    (Acc::Avg, AccState::Sum { int, dbl, n, .. }) => {
                        if n == 0 {
                            Bson::Null
                        } else {
                            Bson::Double((dbl + int as f64) / n as f64)
                        }
                    }
                    (
                        _,
                        AccState::Sum {
                            int,
                            dbl,
                            wide,
                            float,
                            ..
                        },
                    ) => sum_value(int, dbl, wide, float),
                    (_, AccState::Pick(p)) => p.unwrap_or(Bson::Null),
                    (_, AccState::List(l)) => Bson::Array(l),
                };
                out.insert(name.clone(), v);
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn count_documents_shape() {
        let docs: Vec<Document> = (0..5).map(|i| doc! {"_id": i, "k": i % 2}).collect();
        let stages = parse(&[
            Bson::Document(doc! {"$match": {"k": 1}}),
            Bson::Document(doc! {"$group": {"_id": 1, "n": {"$sum": 1}}}),
        ])
        .expect("parse");
        assert_eq!(
            run(&stages, docs.clone()).expect("run"),
            vec![doc! {"_id": 1, "n": 2}]
        );
        let stages = parse(&[Bson::Document(
            doc! {"$group": {"_id": "$k", "total": {"$sum": "$_id"}, "avg": {"$avg": "$_id"}}},
        )])
        .expect("parse");
        assert_eq!(
            run(&stages, docs).expect("run"),
            vec![
                doc! {"_id": 0, "total": 6, "avg": 2.0},
                doc! {"_id": 1, "total": 4, "avg": 2.0}
            ]
        );
        let err = parse(&[Bson::Document(doc! {"$lookup": {}})]).expect_err("unknown");
        assert_eq!(err.code, 40324);
    }
}
