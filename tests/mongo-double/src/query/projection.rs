//! Projections for `find`/`findAndModify` (`projection`/`fields`) and the `$project` stage.

use bson::{Bson, Document};

use super::compare::truthy;
use super::expr;
use crate::error::{CmdError, CmdResult};

#[derive(Debug, Clone)]
enum Spec {
    Include,
    Exclude,
    Computed(Bson),
    Sub(Vec<(String, Spec)>),
}

/// A parsed projection.
#[derive(Debug, Clone)]
pub struct Projection {
    inclusion: bool,
    fields: Vec<(String, Spec)>,
    id: Option<Spec>,
}

fn insert_path(fields: &mut Vec<(String, Spec)>, path: &str, spec: Spec) -> CmdResult<()> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let pos = fields.iter().position(|(k, _)| k == head);
    match (rest, pos) {
        (None, None) => fields.push((head.to_string(), spec)),
        (Some(r), None) => {
            let mut sub = Vec::new();
            insert_path(&mut sub, r, spec)?;
            fields.push((head.to_string(), Spec::Sub(sub)));
        }
        (Some(r), Some(i)) => match &mut fields[i].1 {
            Spec::Sub(sub) => insert_path(sub, r, spec)?,
            _ => return Err(path_collision(path)),
        },
        (None, Some(_)) => return Err(path_collision(path)),
    }
    Ok(())
}

fn path_collision(path: &str) -> CmdError {
    CmdError::new(31250, format!("Path collision at {path}"))
}

fn parse_value(v: &Bson) -> CmdResult<Spec> {
    match v {
        Bson::Boolean(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => Ok(if truthy(v) {
            Spec::Include
        } else {
            Spec::Exclude
        }),
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let op = d.keys().next().map(String::as_str).unwrap_or_default();
            if matches!(op, "$slice" | "$elemMatch" | "$meta") {
                return Err(CmdError::bad_value(format!(
                    "projection operator {op} is not supported by mongo-double"
                )));
            }
            expr::validate(v)?;
            Ok(Spec::Computed(v.clone()))
        }
        Bson::Document(d) => {
            let mut sub = Vec::new();
            for (k, val) in d {
                insert_path(&mut sub, k, parse_value(val)?)?;
            }
            Ok(Spec::Sub(sub))
        }
        other => {
            expr::validate(other)?;
            Ok(Spec::Computed(other.clone()))
        }
    }
}

/// Inclusion (`Some(true)`), exclusion (`Some(false)`) or neither (`None`) for a spec tree;
/// a mix is an error, as in MongoDB.
fn mode_of(fields: &[(String, Spec)], acc: &mut Option<bool>, prefix: &str) -> CmdResult<()> {
    for (k, s) in fields {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let this = match s {
            Spec::Include | Spec::Computed(_) => true,
            Spec::Exclude => false,
            Spec::Sub(sub) => {
                mode_of(sub, acc, &path)?;
                continue;
            }
        };
        match *acc {
            Some(true) if !this => {
                return Err(CmdError::new(
                    31254,
                    format!("Cannot do exclusion on field {path} in inclusion projection"),
                ))
            }
            Some(false) if this => {
                return Err(CmdError::new(
                    31253,
                    format!("Cannot do inclusion on field {path} in exclusion projection"),
                ))
            }
            _ => *acc = Some(this),
        }
    }
    Ok(())
}

impl Projection {
    /// Parses a projection document.
    pub fn parse(spec: &Document) -> CmdResult<Projection> {
        let mut fields = Vec::new();
        let mut id = None;
        for (k, v) in spec {
            let s = parse_value(v)?;
            if k == "_id" {
                id = Some(s);
            } else {
                insert_path(&mut fields, k, s)?;
            }
        }
        let mut mode = None;
        mode_of(&fields, &mut mode, "")?;
        if let (Some(Spec::Sub(sub)), _) = (&id, mode) {
            mode_of(sub, &mut mode, "_id")?;
        }
        let inclusion = match (mode, &id) {
            (Some(m), _) => m,
            (None, Some(Spec::Exclude)) => false,
            (None, _) => true,
        };
        Ok(Projection {
            inclusion,
            fields,
            id,
        })
    }

    /// Applies the projection.
    pub fn apply(&self, doc: &Document) -> Document {
        let mut out = Document::new();
        match &self.id {
            Some(Spec::Exclude) => {}
            Some(Spec::Computed(e)) => {
                if let Some(v) = expr::eval(e, doc) {
                    out.insert("_id", v);
                }
            }
            Some(Spec::Sub(sub)) => {
                if let Some(v) = doc.get("_id") {
                    if let Some(p) = project_value(v, sub, self.inclusion, doc) {
                        out.insert("_id", p);
                    }
                }
            }
            Some(Spec::Include) | None => {
                if let Some(v) = doc.get("_id") {
                    out.insert("_id", v.clone());
                }
            }
        }
        let body = project_doc(doc, &self.fields, self.inclusion, doc);
        for (k, v) in body {
            if k != "_id" {
                out.insert(k, v);
            }
        }
        out
    }
}

fn project_doc(
    doc: &Document,
    fields: &[(String, Spec)],
    inclusion: bool,
    root: &Document,
) -> Document {
    let mut out = Document::new();
    for (k, v) in doc {
        match fields.iter().find(|(f, _)| f == k).map(|(_, s)| s) {
            Some(Spec::Include) => {
                out.insert(k.clone(), v.clone());
            }
            Some(Spec::Exclude) | Some(Spec::Computed(_)) => {}
            Some(Spec::Sub(sub)) => {
                if let Some(p) = project_value(v, sub, inclusion, root) {
                    out.insert(k.clone(), p);
                }
            }
            None if !inclusion => {
                out.insert(k.clone(), v.clone());
            }
            None => {}
        }
    }
    for (k, s) in fields {
        match s {
            Spec::Computed(e) => {
                if let Some(v) = expr::eval(e, root) {
                    out.insert(k.clone(), v);
                }
            }
            Spec::Sub(sub) if !doc.contains_key(k) && sub.iter().any(|(_, s)| has_computed(s)) => {
                out.insert(
                    k.clone(),
                    project_doc(&Document::new(), sub, inclusion, root),
                );
            }
            _ => {}
        }
    }
    out
}

fn has_computed(s: &Spec) -> bool {
    match s {
        Spec::Computed(_) => true,
        Spec::Sub(sub) => sub.iter().any(|(_, s)| has_computed(s)),
        _ => false,
    }
}

fn project_value(
    v: &Bson,
    sub: &[(String, Spec)],
    inclusion: bool,
    root: &Document,
) -> Option<Bson> {
    match v {
        Bson::Document(d) => Some(Bson::Document(project_doc(d, sub, inclusion, root))),
        Bson::Array(a) => Some(Bson::Array(
            a.iter()
                .filter_map(|e| match e {
                    Bson::Document(_) | Bson::Array(_) => project_value(e, sub, inclusion, root),
                    other if !inclusion => Some(other.clone()),
                    _ => None,
                })
                .collect(),
        )),
        other if !inclusion => Some(other.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn inclusion_exclusion_and_id() {
        let d = doc! {"_id": 1, "a": 1, "b": {"c": 2, "d": 3}, "e": 4};
        let p = Projection::parse(&doc! {"a": 1, "b.c": 1}).expect("parse");
        assert_eq!(p.apply(&d), doc! {"_id": 1, "a": 1, "b": {"c": 2}});
        let p = Projection::parse(&doc! {"_id": 0, "a": 1}).expect("parse");
        assert_eq!(p.apply(&d), doc! {"a": 1});
        let p = Projection::parse(&doc! {"b": 0, "e": false}).expect("parse");
        assert_eq!(p.apply(&d), doc! {"_id": 1, "a": 1});
        let p = Projection::parse(&doc! {"_id": 0}).expect("parse");
        assert_eq!(p.apply(&d), doc! {"a": 1, "b": {"c": 2, "d": 3}, "e": 4});
        let p = Projection::parse(&doc! {"x": "$b.d"}).expect("parse");
        assert_eq!(p.apply(&d), doc! {"_id": 1, "x": 3});
        assert_eq!(
            Projection::parse(&doc! {"a": 1, "e": 0})
                .expect_err("mix")
                .code,
            31254
        );
    }
}
