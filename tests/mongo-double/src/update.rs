//! Update documents ("Update Operators" in the manual): modifier updates, replacements and
//! pipeline updates, plus the change-stream `updateDescription` each one produces.

use bson::{Bson, DateTime, Document, Timestamp};

use crate::error::{code, CmdError, CmdResult};
use crate::query::compare::{as_i64, cmp, docs_identical, identical, values_equal};
use crate::query::matcher::{value_condition, ValueCond};
use crate::query::path::{self, cmp_paths, is_prefix, Unset};
use crate::query::pipeline::{self, Stage};
use crate::query::sort::SortSpec;

/// A parsed update.
#[derive(Debug, Clone)]
pub enum Update {
    Replacement(Document),
    Modifiers(Vec<ModOp>),
    Pipeline(Vec<Stage>),
}

/// One operator applied to one path.
#[derive(Debug, Clone)]
pub struct ModOp {
    path: String,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Bson),
    Mul(Bson),
    Min(Bson),
    Max(Bson),
    CurrentDate { timestamp: bool },
    Push(PushSpec),
    AddToSet(Vec<Bson>),
    Pop { first: bool },
    Pull(ValueCond),
    PullAll(Vec<Bson>),
    Rename(String),
}

#[derive(Debug, Clone)]
struct PushSpec {
    each: Vec<Bson>,
    position: Option<i64>,
    slice: Option<i64>,
    sort: Option<PushSort>,
}

#[derive(Debug, Clone)]
enum PushSort {
    Value(bool),
    Fields(SortSpec),
}

/// What changed, for the change event's `updateDescription`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateDesc {
    updated: Vec<String>,
    removed: Vec<String>,
    truncated: Vec<(String, i32)>,
}

impl UpdateDesc {
    fn record_set(&mut self, p: String) {
        if self.updated.iter().any(|u| is_prefix(u, &p)) {
            return;
        }
        self.updated.retain(|u| !is_prefix(&p, u));
        self.removed.retain(|r| !is_prefix(&p, r));
        self.updated.push(p);
    }

    fn record_unset(&mut self, p: String) {
        self.updated.retain(|u| !is_prefix(&p, u));
        if !self.removed.iter().any(|r| is_prefix(r, &p)) {
            self.removed.push(p);
        }
    }

    /// The `updateDescription` document, with values read from the post-image.
    pub fn render(&self, post: &Document) -> Document {
        let mut updated = Document::new();
        for p in &self.updated {
            updated.insert(p.clone(), path::get(post, p).cloned().unwrap_or(Bson::Null));
        }
        let truncated: Vec<Bson> = self
            .truncated
            .iter()
            .map(|(f, n)| Bson::Document(bson::doc! {"field": f.clone(), "newSize": *n}))
            .collect();
        bson::doc! {
            "updatedFields": updated,
            "removedFields": self.removed.clone(),
            "truncatedArrays": truncated,
        }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty() && self.truncated.is_empty()
    }
}

/// The result of applying an update to one document.
#[derive(Debug, Clone)]
pub struct Applied {
    pub doc: Document,
    pub changed: bool,
    /// `None` for replacements (a `replace` event), `Some` for modifier / pipeline updates.
    pub desc: Option<UpdateDesc>,
}

fn unknown_modifier(name: &str) -> CmdError {
    CmdError::failed_to_parse(format!(
        "Unknown modifier: {name}. Expected a valid update modifier or pipeline-style update specified as an array"
    ))
}

fn check_path(p: &str) -> CmdResult<()> {
    if p.is_empty() || p.split('.').any(|c| c.is_empty()) {
        return Err(CmdError::new(
            56,
            format!("An empty update path is not valid. (path: '{p}')"),
        ));
    }
    if p.split('.')
        .any(|c| c == "$" || (c.starts_with("$[") && c.ends_with(']')))
    {
        return Err(CmdError::bad_value(format!(
            "mongo-double does not support positional update operators (path '{p}')"
        )));
    }
    Ok(())
}

fn numeric_arg(op: &str, p: &str, v: &Bson) -> CmdResult<Bson> {
    match v {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => Ok(v.clone()),
        _ => Err(CmdError::type_mismatch(format!(
            "Cannot {op} with non-numeric argument: {{{p}: {v}}}"
        ))),
    }
}

fn parse_push(arg: &Bson) -> CmdResult<PushSpec> {
    let d = match arg {
        Bson::Document(d) if d.contains_key("$each") => d,
        other => {
            return Ok(PushSpec {
                each: vec![other.clone()],
                position: None,
                slice: None,
                sort: None,
            })
        }
    };
    let mut spec = PushSpec {
        each: Vec::new(),
        position: None,
        slice: None,
        sort: None,
    };
    for (k, v) in d {
        match k.as_str() {
            "$each" => match v {
                Bson::Array(a) => spec.each = a.clone(),
                _ => return Err(CmdError::bad_value("The argument to $each in $push must be an array")),
            },
            "$position" => {
                spec.position = Some(as_i64(v).ok_or_else(|| {
                    CmdError::bad_value("The value for $position must be an integer value")
                })?)
            }
            "$slice" => {
                spec.slice = Some(as_i64(v).ok_or_else(|| {
                    CmdError::bad_value("The value for $slice must be an integer value")
                })?)
            }
            "$sort" => {
                spec.sort = Some(match (v, as_i64(v)) {
                    (_, Some(1)) => PushSort::Value(true),
                    (_, Some(-1)) => PushSort::Value(false),
                    (Bson::Document(s), _) => PushSort::Fields(SortSpec::parse(s)?),
                    _ => return Err(CmdError::bad_value("The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields")),
                })
            }
            other => {
                return Err(CmdError::bad_value(format!(
                    "Unrecognized clause in $push: {}",
                    other.trim_start_matches('$')
                )))
            }
        }
    }
    Ok(spec)
}

impl Update {
    /// Parses the `u` of an update statement (or `update` of findAndModify).
    pub fn parse(u: &Bson) -> CmdResult<Update> {
        match u {
            Bson::Array(stages) => {
                let parsed = pipeline::parse(stages)?;
                if let Some(bad) = parsed
                    .iter()
                    .find(|s| !pipeline::is_per_document(s) || matches!(s, Stage::Match(_)))
                {
                    return Err(CmdError::new(
                        code::INVALID_OPTIONS,
                        format!("stage {bad:?} is not allowed to be used within an update"),
                    ));
                }
                Ok(Update::Pipeline(parsed))
            }
            Bson::Document(d) => {
                let is_mod = d.keys().next().is_some_and(|k| k.starts_with('$'));
                if !is_mod {
                    if let Some(k) = d.keys().find(|k| k.starts_with('$')) {
                        return Err(CmdError::bad_value(format!(
                            "The dollar ($) prefixed field '{k}' in '{k}' is not allowed in the context of an update's replacement document."
                        )));
                    }
                    return Ok(Update::Replacement(d.clone()));
                }
                Self::parse_modifiers(d)
            }
            _ => Err(CmdError::failed_to_parse(
                "Update argument must be either an object or an array",
            )),
        }
    }

    fn parse_modifiers(d: &Document) -> CmdResult<Update> {
        let mut ops = Vec::new();
        for (name, arg) in d {
            let fields = match arg {
                Bson::Document(f) => f,
                _ => {
                    if !name.starts_with('$') {
                        return Err(unknown_modifier(name));
                    }
                    return Err(CmdError::failed_to_parse(format!(
                        "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{name}: {arg}}}",
                        crate::query::compare::type_alias(arg)
                    )));
                }
            };
            for (p, v) in fields {
                check_path(p)?;
                let op = match name.as_str() {
                    "$set" => Op::Set(v.clone()),
                    "$setOnInsert" => Op::SetOnInsert(v.clone()),
                    "$unset" => Op::Unset,
                    "$inc" => Op::Inc(numeric_arg("increment", p, v)?),
                    "$mul" => Op::Mul(numeric_arg("multiply", p, v)?),
                    "$min" => Op::Min(v.clone()),
                    "$max" => Op::Max(v.clone()),
                    "$currentDate" => Op::CurrentDate {
                        timestamp: match v {
                            Bson::Boolean(_) => false,
                            Bson::Document(t) => match t.get_str("$type") {
                                Ok("date") => false,
                                Ok("timestamp") => true,
                                _ => return Err(CmdError::bad_value("The '$type' string field is required to be 'date' or 'timestamp'")),
                            },
                            _ => return Err(CmdError::bad_value(format!("{v} is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({{$type: 'timestamp/date'}})."))),
                        },
                    },
                    "$push" => Op::Push(parse_push(v)?),
                    "$addToSet" => Op::AddToSet(match v {
                        Bson::Document(e) if e.contains_key("$each") => match e.get("$each") {
                            Some(Bson::Array(a)) => a.clone(),
                            _ => return Err(CmdError::type_mismatch("The argument to $each in $addToSet must be an array")),
                        },
                        other => vec![other.clone()],
                    }),
                    "$pop" => Op::Pop {
                        first: match as_i64(v) {
                            Some(-1) => true,
                            Some(1) => false,
                            _ => return Err(CmdError::failed_to_parse(format!("$pop expects 1 or -1, found: {v}"))),
                        },
                    },
                    "$pull" => Op::Pull(value_condition(v)?),
                    "$pullAll" => Op::PullAll(match v {
                        Bson::Array(a) => a.clone(),
                        _ => return Err(CmdError::bad_value("$pullAll requires an array argument")),
                    }),
                    "$rename" => match v {
                        Bson::String(to) => {
                            check_path(to)?;
                            Op::Rename(to.clone())
                        }
                        _ => return Err(CmdError::bad_value("The 'to' field for $rename must be a string")),
                    },
                    other => return Err(unknown_modifier(other)),
                };
                ops.push(ModOp {
                    path: p.clone(),
                    op,
                });
            }
        }
        // Conflicts: no target path may equal or contain another one.
        let mut targets: Vec<&str> = ops.iter().map(|o| o.path.as_str()).collect();
        targets.extend(ops.iter().filter_map(|o| match &o.op {
            Op::Rename(to) => Some(to.as_str()),
            _ => None,
        }));
        targets.sort_by(|a, b| cmp_paths(a, b));
        for w in targets.windows(2) {
            if is_prefix(w[0], w[1]) {
                return Err(CmdError::new(
                    code::CONFLICTING_UPDATE_OPERATORS,
                    format!(
                        "Updating the path '{}' would create a conflict at '{}'",
                        w[1], w[0]
                    ),
                ));
            }
        }
        // MongoDB 5.0+ applies fields in lexicographic (numeric-aware) path order.
        ops.sort_by(|a, b| cmp_paths(&a.path, &b.path));
        Ok(Update::Modifiers(ops))
    }

    /// Applies the update to `old`. `is_insert` is true when building an upserted document
    /// (`$setOnInsert` applies only then); `now` is the operation's cluster time.
    pub fn apply(&self, old: &Document, is_insert: bool, now: Timestamp) -> CmdResult<Applied> {
        match self {
            Update::Replacement(r) => {
                let mut doc = Document::new();
                match (old.get("_id"), r.get("_id")) {
                    (Some(a), Some(b)) if !values_equal(a, b) => {
                        return Err(CmdError::new(
                            code::IMMUTABLE_FIELD,
                            format!("After applying the update, the (immutable) field '_id' was found to have been altered to _id: {b}"),
                        ))
                    }
                    (Some(a), _) => {
                        doc.insert("_id", a.clone());
                    }
                    (None, _) => {}
                }
                for (k, v) in r {
                    if !doc.contains_key(k) {
                        doc.insert(k.clone(), v.clone());
                    }
                }
                let changed = !docs_identical(old, &doc);
                Ok(Applied {
                    doc,
                    changed,
                    desc: None,
                })
            }
            Update::Modifiers(ops) => {
                let mut doc = old.clone();
                let mut desc = UpdateDesc::default();
                for m in ops {
                    apply_op(&mut doc, m, is_insert, now, &mut desc)?;
                }
                if let Some(id) = old.get("_id") {
                    if !doc.get("_id").is_some_and(|n| identical(n, id)) {
                        return Err(CmdError::new(
                            code::IMMUTABLE_FIELD,
                            "Performing an update on the path '_id' would modify the immutable field '_id'",
                        ));
                    }
                }
                let changed = !desc.is_empty();
                Ok(Applied {
                    doc,
                    changed,
                    desc: Some(desc),
                })
            }
            Update::Pipeline(stages) => {
                let mut doc = pipeline::apply_one(stages, old.clone())?
                    .ok_or_else(|| CmdError::internal("pipeline update dropped the document"))?;
                if let Some(id) = old.get("_id") {
                    match doc.get("_id") {
                        None => {
                            let mut with_id = bson::doc! {"_id": id.clone()};
                            with_id.extend(doc);
                            doc = with_id;
                        }
                        Some(n) if !identical(n, id) => {
                            return Err(CmdError::new(
                                code::IMMUTABLE_FIELD,
                                "Performing an update on the path '_id' would modify the immutable field '_id'",
                            ))
                        }
                        Some(_) => {}
                    }
                }
                let mut desc = UpdateDesc::default();
                diff_docs(old, &doc, "", &mut desc);
                let changed = !docs_identical(old, &doc);
                Ok(Applied {
                    doc,
                    changed,
                    desc: Some(desc),
                })
            }
        }
    }
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// Structural diff used for pipeline updates (the server's `$v: 2` delta).
fn diff_docs(old: &Document, new: &Document, prefix: &str, desc: &mut UpdateDesc) {
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        desc.removed.push(join(prefix, k));
    }
    for (k, nv) in new {
        let p = join(prefix, k);
        match (old.get(k), nv) {
            (Some(ov), _) if identical(ov, nv) => {}
            (Some(Bson::Document(o)), Bson::Document(n)) => diff_docs(o, n, &p, desc),
            (Some(Bson::Array(o)), Bson::Array(n)) => {
                if n.len() < o.len() {
                    desc.truncated.push((p.clone(), n.len() as i32));
                }
                for (i, nv) in n.iter().enumerate() {
                    let ip = format!("{p}.{i}");
                    match (o.get(i), nv) {
                        (Some(ov), _) if identical(ov, nv) => {}
                        (Some(Bson::Document(od)), Bson::Document(nd)) => {
                            diff_docs(od, nd, &ip, desc)
                        }
                        _ => desc.updated.push(ip),
                    }
                }
            }
            _ => desc.updated.push(p),
        }
    }
}

fn describe_id(doc: &Document) -> String {
    match doc.get("_id") {
        Some(id) => format!("{{_id: {id}}}"),
        None => "{}".to_string(),
    }
}

fn set_value(doc: &mut Document, p: &str, v: Bson, desc: &mut UpdateDesc) -> CmdResult<()> {
    if path::get(doc, p).is_some_and(|cur| identical(cur, &v)) {
        return Ok(());
    }
    let n = path::set(doc, p, v)?;
    let logged: Vec<&str> = p.split('.').take(n).collect();
    desc.record_set(logged.join("."));
    Ok(())
}

fn arith(op: &str, cur: &Bson, arg: &Bson) -> Option<Bson> {
    let mul = op == "$mul";
    match (cur, arg) {
        (Bson::Int32(a), Bson::Int32(b)) => {
            let r = if mul {
                a.checked_mul(*b)
            } else {
                a.checked_add(*b)
            };
            Some(match r {
                Some(x) => Bson::Int32(x),
                None => {
                    let (a, b) = (i64::from(*a), i64::from(*b));
                    Bson::Int64(if mul { a * b } else { a + b })
                }
            })
        }
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
            let (a, b) = (as_i64(cur)?, as_i64(arg)?);
            let r = if mul {
                a.checked_mul(b)
            } else {
                a.checked_add(b)
            };
            Some(match r {
                Some(x) => Bson::Int64(x),
                None => Bson::Double(if mul {
                    a as f64 * b as f64
                } else {
                    a as f64 + b as f64
                }),
            })
        }
        _ => {
            let a = crate::query::compare::as_f64(cur)?;
            let b = crate::query::compare::as_f64(arg)?;
            Some(Bson::Double(if mul { a * b } else { a + b }))
        }
    }
}

fn array_at<'a>(doc: &'a Document, p: &str, op: &str) -> CmdResult<Option<&'a Vec<Bson>>> {
    match path::get(doc, p) {
        None => Ok(None),
        Some(Bson::Array(a)) => Ok(Some(a)),
        Some(other) => Err(CmdError::bad_value(format!(
            "The field '{p}' must be an array but is of type {} in document {} ({op})",
            crate::query::compare::type_alias(other),
            describe_id(doc)
        ))),
    }
}

fn apply_op(
    doc: &mut Document,
    m: &ModOp,
    is_insert: bool,
    now: Timestamp,
    desc: &mut UpdateDesc,
) -> CmdResult<()> {
    let p = m.path.as_str();
    match &m.op {
        Op::Set(v) => set_value(doc, p, v.clone(), desc),
        Op::SetOnInsert(v) if is_insert => set_value(doc, p, v.clone(), desc),
        Op::SetOnInsert(_) => Ok(()),
        Op::Unset => {
            match path::unset(doc, p) {
                Unset::Removed => desc.record_unset(p.to_string()),
                Unset::NulledArrayElement => desc.record_set(p.to_string()),
                Unset::Nothing => {}
            }
            Ok(())
        }
        Op::Inc(arg) | Op::Mul(arg) => {
            let name = if matches!(m.op, Op::Inc(_)) {
                "$inc"
            } else {
                "$mul"
            };
            let new = match path::get(doc, p) {
                None if name == "$inc" => arg.clone(),
                None => match arg {
                    Bson::Int32(_) => Bson::Int32(0),
                    Bson::Int64(_) => Bson::Int64(0),
                    _ => Bson::Double(0.0),
                },
                Some(cur) => arith(name, cur, arg).ok_or_else(|| {
                    CmdError::type_mismatch(format!(
                        "Cannot apply {name} to a value of non-numeric type. {} has the field '{}' of non-numeric type {}",
                        describe_id(doc),
                        p.rsplit('.').next().unwrap_or(p),
                        crate::query::compare::type_alias(cur)
                    ))
                })?,
            };
            set_value(doc, p, new, desc)
        }
        Op::Min(v) | Op::Max(v) => {
            let is_min = matches!(m.op, Op::Min(_));
            let replace = match path::get(doc, p) {
                None => true,
                Some(cur) => {
                    let o = cmp(v, cur);
                    if is_min {
                        o.is_lt()
                    } else {
                        o.is_gt()
                    }
                }
            };
            if replace {
                set_value(doc, p, v.clone(), desc)?;
            }
            Ok(())
        }
        Op::CurrentDate { timestamp } => {
            let v = if *timestamp {
                Bson::Timestamp(now)
            } else {
                Bson::DateTime(DateTime::now())
            };
            set_value(doc, p, v, desc)
        }
        Op::Push(spec) => {
            let existing = array_at(doc, p, "$push")?.cloned();
            let plain_append =
                spec.position.is_none() && spec.slice.is_none() && spec.sort.is_none();
            let mut arr = existing.clone().unwrap_or_default();
            let at = match spec.position {
                None => arr.len(),
                Some(pos) if pos < 0 => arr.len().saturating_sub(pos.unsigned_abs() as usize),
                Some(pos) => (pos as usize).min(arr.len()),
            };
            for (i, v) in spec.each.iter().enumerate() {
                arr.insert(at + i, v.clone());
            }
            match &spec.sort {
                Some(PushSort::Value(asc)) => {
                    arr.sort_by(|a, b| if *asc { cmp(a, b) } else { cmp(b, a) })
                }
                Some(PushSort::Fields(s)) => {
                    let mut docs: Vec<Document> = Vec::new();
                    let mut others: Vec<Bson> = Vec::new();
                    for v in arr.drain(..) {
                        match v {
                            Bson::Document(d) => docs.push(d),
                            other => others.push(other),
                        }
                    }
                    s.sort(&mut docs);
                    arr = others;
                    arr.extend(docs.into_iter().map(Bson::Document));
                }
                None => {}
            }
            if let Some(s) = spec.slice {
                if s >= 0 {
                    arr.truncate(s as usize);
                } else {
                    let keep = s.unsigned_abs() as usize;
                    if arr.len() > keep {
                        arr.drain(..arr.len() - keep);
                    }
                }
            }
            match existing {
                // Appending to a non-empty array is logged per new element ("arr.N");
                // anything else replaces the whole field.
                Some(old) if plain_append && !old.is_empty() => {
                    let start = old.len();
                    path::set(doc, p, Bson::Array(arr.clone()))?;
                    for i in start..arr.len() {
                        desc.record_set(format!("{p}.{i}"));
                    }
                    Ok(())
                }
                _ => set_value(doc, p, Bson::Array(arr), desc),
            }
        }
        Op::AddToSet(items) => {
            let existing = array_at(doc, p, "$addToSet")?.cloned();
            let mut arr = existing.clone().unwrap_or_default();
            let start = arr.len();
            for v in items {
                if !arr.iter().any(|x| values_equal(x, v)) {
                    arr.push(v.clone());
                }
            }
            match existing {
                Some(old) if !old.is_empty() => {
                    if arr.len() > start {
                        path::set(doc, p, Bson::Array(arr.clone()))?;
                        for i in start..arr.len() {
                            desc.record_set(format!("{p}.{i}"));
                        }
                    }
                    Ok(())
                }
                _ => set_value(doc, p, Bson::Array(arr), desc),
            }
        }
        Op::Pop { first } => {
            let mut arr = match path::get(doc, p) {
                None => return Ok(()),
                Some(Bson::Array(a)) => a.clone(),
                Some(other) => {
                    return Err(CmdError::type_mismatch(format!(
                        "Path '{p}' contains an element of non-array type '{}'",
                        crate::query::compare::type_alias(other)
                    )))
                }
            };
            if arr.is_empty() {
                return Ok(());
            }
            if *first {
                arr.remove(0);
            } else {
                arr.pop();
            }
            set_value(doc, p, Bson::Array(arr), desc)
        }
        Op::Pull(_) | Op::PullAll(_) => {
            let arr = match path::get(doc, p) {
                None => return Ok(()),
                Some(Bson::Array(a)) => a.clone(),
                Some(_) => {
                    return Err(CmdError::bad_value(
                        "Cannot apply $pull to a non-array value",
                    ))
                }
            };
            let kept: Vec<Bson> = arr
                .iter()
                .filter(|e| match &m.op {
                    Op::Pull(c) => !c.matches(e),
                    Op::PullAll(list) => !list.iter().any(|x| values_equal(x, e)),
                    _ => true,
                })
                .cloned()
                .collect();
            if kept.len() != arr.len() {
                set_value(doc, p, Bson::Array(kept), desc)?;
            }
            Ok(())
        }
        Op::Rename(to) => {
            let v = match path::get(doc, p) {
                None => return Ok(()),
                Some(v) => v.clone(),
            };
            if path::unset(doc, p) == Unset::Removed {
                desc.record_unset(p.to_string());
            }
            set_value(doc, to, v, desc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn run(old: Document, u: Document) -> (Document, Document) {
        let a = Update::parse(&Bson::Document(u))
            .expect("parse")
            .apply(
                &old,
                false,
                Timestamp {
                    time: 1,
                    increment: 1,
                },
            )
            .expect("apply");
        let desc = a.desc.expect("desc").render(&a.doc);
        (a.doc, desc)
    }

    #[test]
    fn set_nested_and_descriptions() {
        let (d, desc) = run(
            doc! {"_id": 1, "a": {"x": 1}, "n": 1, "gone": true, "l": [1]},
            doc! {"$set": {"a.b.c": 5, "a.x": 1, "z": 2}, "$inc": {"n": 2}, "$unset": {"gone": ""}, "$push": {"l": 2}},
        );
        assert_eq!(
            d,
            doc! {"_id": 1, "a": {"x": 1, "b": {"c": 5}}, "n": 3, "l": [1, 2], "z": 2}
        );
        assert_eq!(
            desc,
            doc! {"updatedFields": {"a.b": {"c": 5}, "l.1": 2, "n": 3, "z": 2}, "removedFields": ["gone"], "truncatedArrays": []}
        );
    }

    #[test]
    fn errors() {
        let p = |u: Document| Update::parse(&Bson::Document(u));
        assert_eq!(p(doc! {"$foo": {"a": 1}}).expect_err("unknown").code, 9);
        assert_eq!(
            p(doc! {"$set": {"a": 1, "a.b": 2}})
                .expect_err("conflict")
                .code,
            40
        );
        let u = p(doc! {"$set": {"_id": 2}}).expect("parse");
        let err = u
            .apply(
                &doc! {"_id": 1},
                false,
                Timestamp {
                    time: 1,
                    increment: 1,
                },
            )
            .expect_err("immutable");
        assert_eq!(err.code, 66);
        let u = p(doc! {"$inc": {"s": 1}}).expect("parse");
        let err = u
            .apply(
                &doc! {"_id": 1, "s": "x"},
                false,
                Timestamp {
                    time: 1,
                    increment: 1,
                },
            )
            .expect_err("type");
        assert_eq!(err.code, 14);
    }

    #[test]
    fn push_each_slice_and_min_max() {
        let (d, _) = run(
            doc! {"_id": 1, "l": [3, 1], "lo": 5, "hi": 5},
            doc! {"$push": {"l": {"$each": [2, 0], "$sort": 1, "$slice": 3}}, "$min": {"lo": 2}, "$max": {"hi": 1}},
        );
        assert_eq!(d, doc! {"_id": 1, "l": [0, 1, 2], "lo": 2, "hi": 5});
    }

    #[test]
    fn array_update_descriptions() {
        // As in the manual's "Array Updates" example of the update change event.
        let (_, d) = run(doc! {"_id": 1, "s": []}, doc! {"$push": {"s": 0.85}});
        assert_eq!(
            d.get_document("updatedFields").expect("u"),
            &doc! {"s": [0.85]}
        );
        let (_, d) = run(doc! {"_id": 1, "s": [0.85]}, doc! {"$push": {"s": 0.94}});
        assert_eq!(
            d.get_document("updatedFields").expect("u"),
            &doc! {"s.1": 0.94}
        );
        let (_, d) = run(
            doc! {"_id": 1, "s": [0.85, 0.94]},
            doc! {"$pull": {"s": 0.94}},
        );
        assert_eq!(
            d.get_document("updatedFields").expect("u"),
            &doc! {"s": [0.85]}
        );
    }
}
