//! Query filters ("Query and Projection Operators" in the manual), parsed up front so that an
//! unknown operator is reported as MongoDB does (code 2, `unknown operator: $foo`).

use bson::{Bson, Document};

use super::compare::{as_i64, cmp, type_alias, type_code, type_rank, values_equal};
use super::path::{lookup, Found};
use crate::error::{CmdError, CmdResult};

/// A parsed filter.
#[derive(Debug, Clone)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
    Field(String, Vec<Cond>),
}

/// A condition on one field.
#[derive(Debug, Clone)]
pub enum Cond {
    Eq(Bson),
    Ne(Bson),
    Gt(Bson),
    Gte(Bson),
    Lt(Bson),
    Lte(Bson),
    In(Vec<Bson>),
    Nin(Vec<Bson>),
    Exists(bool),
    Not(Vec<Cond>),
    Size(i64),
    All(Vec<Bson>),
    ElemMatchConds(Vec<Cond>),
    ElemMatchDoc(Box<Filter>),
    Type(Vec<TypeSel>),
    Mod(i64, i64),
}

/// A `$type` selector.
#[derive(Debug, Clone)]
pub enum TypeSel {
    Code(i32),
    Alias(String),
}

impl Filter {
    /// Parses a filter document.
    pub fn parse(filter: &Document) -> CmdResult<Filter> {
        let mut parts = Vec::new();
        for (k, v) in filter {
            if let Some(op) = k.strip_prefix('$') {
                match op {
                    "and" | "or" | "nor" => {
                        let list = match v {
                            Bson::Array(a) if !a.is_empty() => a,
                            _ => {
                                return Err(CmdError::bad_value(format!(
                                    "${op} must be a nonempty array"
                                )))
                            }
                        };
                        let mut subs = Vec::new();
                        for item in list {
                            match item {
                                Bson::Document(d) => subs.push(Filter::parse(d)?),
                                _ => {
                                    return Err(CmdError::bad_value(format!(
                                        "$or/$and/$nor entries need to be full objects (in ${op})"
                                    )))
                                }
                            }
                        }
                        parts.push(match op {
                            "and" => Filter::And(subs),
                            "or" => Filter::Or(subs),
                            _ => Filter::Nor(subs),
                        });
                    }
                    "comment" => {}
                    _ => {
                        return Err(CmdError::bad_value(format!(
                            "unknown top level operator: {k}. If you have a field name that starts with a '$' symbol, consider using $getField or $setField."
                        )))
                    }
                }
            } else {
                parts.push(Filter::Field(k.clone(), parse_value_conds(v)?));
            }
        }
        Ok(Filter::And(parts))
    }

    /// Whether `doc` satisfies the filter.
    pub fn matches(&self, doc: &Document) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(doc)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(doc)),
            Filter::Nor(fs) => !fs.iter().any(|f| f.matches(doc)),
            Filter::Field(path, conds) => {
                let found = lookup(doc, path);
                conds.iter().all(|c| cond_matches(c, &found))
            }
        }
    }

    /// The `_id` values a matching document must have, when the filter pins `_id` with
    /// top-level equality or `$in` (lets the store use its `_id` table).
    pub fn id_values(&self) -> Option<&[Bson]> {
        let parts = match self {
            Filter::And(parts) => parts,
            _ => return None,
        };
        parts.iter().find_map(|p| match p {
            Filter::Field(f, conds) if f == "_id" => conds.iter().find_map(|c| match c {
                Cond::Eq(v) => Some(std::slice::from_ref(v)),
                Cond::In(list) => Some(list.as_slice()),
                _ => None,
            }),
            _ => None,
        })
    }

    /// Fields fixed by equality (`{a: 1}`, `{a: {$eq: 1}}`, inside `$and`), used to seed an
    /// upserted document.
    pub fn equality_fields(&self, out: &mut Vec<(String, Bson)>) {
        match self {
            Filter::And(fs) => fs.iter().for_each(|f| f.equality_fields(out)),
            Filter::Or(fs) if fs.len() == 1 => fs[0].equality_fields(out),
            Filter::Field(path, conds) => {
                for c in conds {
                    if let Cond::Eq(v) = c {
                        out.push((path.clone(), v.clone()));
                    }
                }
            }
            _ => {}
        }
    }
}

fn is_operator_doc(v: &Bson) -> Option<&Document> {
    match v {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Some(d),
        _ => None,
    }
}

fn parse_value_conds(v: &Bson) -> CmdResult<Vec<Cond>> {
    if let Bson::RegularExpression(_) = v {
        return Err(unsupported_regex());
    }
    match is_operator_doc(v) {
        Some(ops) => parse_ops(ops),
        None => Ok(vec![Cond::Eq(v.clone())]),
    }
}

fn unsupported_regex() -> CmdError {
    CmdError::bad_value("mongo-double does not support regular expressions ($regex)")
}

fn list_arg(op: &str, v: &Bson) -> CmdResult<Vec<Bson>> {
    match v {
        Bson::Array(a) => {
            if a.iter().any(|x| matches!(x, Bson::RegularExpression(_))) {
                return Err(unsupported_regex());
            }
            Ok(a.clone())
        }
        _ => Err(CmdError::bad_value(format!("{op} needs an array"))),
    }
}

fn parse_ops(ops: &Document) -> CmdResult<Vec<Cond>> {
    let mut out = Vec::new();
    for (op, arg) in ops {
        let cond = match op.as_str() {
            "$eq" => Cond::Eq(arg.clone()),
            "$ne" => Cond::Ne(arg.clone()),
            "$gt" => Cond::Gt(arg.clone()),
            "$gte" => Cond::Gte(arg.clone()),
            "$lt" => Cond::Lt(arg.clone()),
            "$lte" => Cond::Lte(arg.clone()),
            "$in" => Cond::In(list_arg("$in", arg)?),
            "$nin" => Cond::Nin(list_arg("$nin", arg)?),
            "$all" => Cond::All(list_arg("$all", arg)?),
            "$exists" => Cond::Exists(super::compare::truthy(arg)),
            "$not" => match arg {
                Bson::Document(d) if !d.is_empty() => {
                    if is_operator_doc(arg).is_none() {
                        return Err(CmdError::bad_value("$not needs an operator object"));
                    }
                    Cond::Not(parse_ops(d)?)
                }
                Bson::RegularExpression(_) => return Err(unsupported_regex()),
                _ => return Err(CmdError::bad_value("$not needs a regex or a document")),
            },
            "$size" => match as_i64(arg) {
                Some(n) if n >= 0 => Cond::Size(n),
                _ => return Err(CmdError::bad_value("$size needs a non-negative integer")),
            },
            "$elemMatch" => match arg {
                Bson::Document(d) => match is_operator_doc(arg) {
                    Some(_)
                        if !d
                            .keys()
                            .any(|k| matches!(k.as_str(), "$and" | "$or" | "$nor")) =>
                    {
                        Cond::ElemMatchConds(parse_ops(d)?)
                    }
                    _ => Cond::ElemMatchDoc(Box::new(Filter::parse(d)?)),
                },
                _ => return Err(CmdError::bad_value("$elemMatch needs an Object")),
            },
            "$type" => {
                let items = match arg {
                    Bson::Array(a) => a.clone(),
                    other => vec![other.clone()],
                };
                let mut sels = Vec::new();
                for it in items {
                    match (&it, as_i64(&it)) {
                        (_, Some(c)) => sels.push(TypeSel::Code(c as i32)),
                        (Bson::String(s), None) => sels.push(TypeSel::Alias(s.clone())),
                        _ => {
                            return Err(CmdError::bad_value(
                                "type must be represented as a number or a string",
                            ))
                        }
                    }
                }
                Cond::Type(sels)
            }
            "$mod" => match arg {
                Bson::Array(a) if a.len() == 2 => match (as_i64(&a[0]), as_i64(&a[1])) {
                    (Some(0), _) => return Err(CmdError::bad_value("divisor cannot be 0")),
                    (Some(d), Some(r)) => Cond::Mod(d, r),
                    _ => {
                        return Err(CmdError::bad_value(
                            "malformed mod, divisor and remainder must be numbers",
                        ))
                    }
                },
                _ => return Err(CmdError::bad_value("malformed mod, needs to be an array")),
            },
            "$regex" | "$options" => return Err(unsupported_regex()),
            other => return Err(CmdError::bad_value(format!("unknown operator: {other}"))),
        };
        out.push(cond);
    }
    Ok(out)
}

/// Calls `f` on the value itself and, for arrays, on each element (implicit array traversal).
fn any_expanded(found: &[Found<'_>], mut f: impl FnMut(Option<&Bson>) -> bool) -> bool {
    found.iter().any(|fv| match fv {
        Found::Missing => f(None),
        Found::Value(v) => {
            f(Some(v)) || matches!(v, Bson::Array(a) if a.iter().any(|e| f(Some(e))))
        }
    })
}

fn eq_one(v: Option<&Bson>, target: &Bson) -> bool {
    match v {
        None => matches!(target, Bson::Null),
        Some(x) => {
            values_equal(x, target)
                || (matches!(target, Bson::Null) && matches!(x, Bson::Undefined))
        }
    }
}

fn cmp_one(v: Option<&Bson>, target: &Bson, ok: fn(std::cmp::Ordering) -> bool) -> bool {
    let x = match v {
        Some(x) => x,
        None if matches!(target, Bson::Null) => &Bson::Null,
        None => return false,
    };
    // MinKey/MaxKey compare across types; everything else only within its type bracket.
    let bracket =
        matches!(target, Bson::MinKey | Bson::MaxKey) || type_rank(x) == type_rank(target);
    bracket && ok(cmp(x, target))
}

fn type_matches(v: &Bson, sels: &[TypeSel]) -> bool {
    sels.iter().any(|s| match s {
        TypeSel::Code(c) => type_code(v) == *c,
        TypeSel::Alias(a) if a == "number" => type_rank(v) == 10,
        TypeSel::Alias(a) => type_alias(v) == a,
    })
}

fn cond_matches(c: &Cond, found: &[Found<'_>]) -> bool {
    use std::cmp::Ordering::*;
    match c {
        Cond::Eq(t) => any_expanded(found, |v| eq_one(v, t)),
        Cond::Ne(t) => !any_expanded(found, |v| eq_one(v, t)),
        Cond::Gt(t) => any_expanded(found, |v| cmp_one(v, t, |o| o == Greater)),
        Cond::Gte(t) => any_expanded(found, |v| cmp_one(v, t, |o| o != Less)),
        Cond::Lt(t) => any_expanded(found, |v| cmp_one(v, t, |o| o == Less)),
        Cond::Lte(t) => any_expanded(found, |v| cmp_one(v, t, |o| o != Greater)),
        Cond::In(list) => any_expanded(found, |v| list.iter().any(|t| eq_one(v, t))),
        Cond::Nin(list) => !any_expanded(found, |v| list.iter().any(|t| eq_one(v, t))),
        Cond::Exists(want) => found.iter().any(|f| matches!(f, Found::Value(_))) == *want,
        Cond::Not(conds) => !conds.iter().all(|c| cond_matches(c, found)),
        Cond::Size(n) => found
            .iter()
            .any(|f| matches!(f, Found::Value(Bson::Array(a)) if a.len() as i64 == *n)),
        Cond::All(list) => {
            !list.is_empty() && list.iter().all(|t| any_expanded(found, |v| eq_one(v, t)))
        }
        Cond::ElemMatchConds(conds) => found.iter().any(|f| match f {
            Found::Value(Bson::Array(a)) => a
                .iter()
                .any(|e| conds.iter().all(|c| cond_matches(c, &[Found::Value(e)]))),
            _ => false,
        }),
        Cond::ElemMatchDoc(filter) => found.iter().any(|f| match f {
            Found::Value(Bson::Array(a)) => a
                .iter()
                .any(|e| matches!(e, Bson::Document(d) if filter.matches(d))),
            _ => false,
        }),
        Cond::Type(sels) => found.iter().any(|f| match f {
            Found::Value(v) => {
                type_matches(v, sels)
                    || matches!(v, Bson::Array(a) if a.iter().any(|e| type_matches(e, sels)))
            }
            Found::Missing => false,
        }),
        Cond::Mod(d, r) => any_expanded(found, |v| {
            v.and_then(super::compare::as_f64)
                .is_some_and(|x| (x.trunc() as i64) % d == *r)
        }),
    }
}

/// Matches a single value (an array element) against a `$pull`-style condition: operator
/// documents apply to the value, plain documents are a query on element documents, anything
/// else is equality.
pub fn value_condition(cond: &Bson) -> CmdResult<ValueCond> {
    if let Some(ops) = is_operator_doc(cond) {
        return Ok(ValueCond::Conds(parse_ops(ops)?));
    }
    match cond {
        Bson::Document(d) => Ok(ValueCond::Query(Filter::parse(d)?)),
        Bson::RegularExpression(_) => Err(unsupported_regex()),
        other => Ok(ValueCond::Eq(other.clone())),
    }
}

/// A condition on one value, see [`value_condition`].
#[derive(Debug, Clone)]
pub enum ValueCond {
    Conds(Vec<Cond>),
    Query(Filter),
    Eq(Bson),
}

impl ValueCond {
    pub fn matches(&self, v: &Bson) -> bool {
        match self {
            ValueCond::Conds(cs) => cs.iter().all(|c| cond_matches(c, &[Found::Value(v)])),
            ValueCond::Query(f) => matches!(v, Bson::Document(d) if f.matches(d)),
            ValueCond::Eq(t) => values_equal(v, t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn m(filter: Document, d: Document) -> bool {
        Filter::parse(&filter).expect("parse").matches(&d)
    }

    #[test]
    fn operators() {
        let d = doc! {"a": 5, "tags": ["x", "y"], "n": {"b": 2}, "arr": [{"k": 1}, {"k": 7}]};
        assert!(m(doc! {"a": 5.0}, d.clone()));
        assert!(m(doc! {"tags": "x"}, d.clone()));
        assert!(m(doc! {"tags": ["x", "y"]}, d.clone()));
        assert!(!m(doc! {"tags": ["y", "x"]}, d.clone()));
        assert!(m(doc! {"n.b": {"$gt": 1, "$lte": 2}}, d.clone()));
        assert!(!m(doc! {"a": {"$gt": "a"}}, d.clone()));
        assert!(m(doc! {"arr.k": 7}, d.clone()));
        assert!(m(doc! {"missing": null}, d.clone()));
        assert!(m(doc! {"missing": {"$exists": false}}, d.clone()));
        assert!(m(
            doc! {"tags": {"$nin": ["z"]}, "a": {"$ne": 4}},
            d.clone()
        ));
        assert!(m(
            doc! {"$or": [{"a": 1}, {"a": {"$in": [4, 5]}}]},
            d.clone()
        ));
        assert!(m(
            doc! {"arr": {"$elemMatch": {"k": {"$gt": 5}}}},
            d.clone()
        ));
        assert!(m(
            doc! {"tags": {"$size": 2}, "a": {"$type": "number"}},
            d.clone()
        ));
        let err = Filter::parse(&doc! {"a": {"$foo": 1}}).expect_err("unknown");
        assert_eq!((err.code, err.msg.as_str()), (2, "unknown operator: $foo"));
    }
}
