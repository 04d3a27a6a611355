//! The small subset of aggregation expressions the double evaluates: field paths (`"$a.b"`),
//! `$$ROOT` / `$$CURRENT`, `$literal`, constants and documents / arrays of those.

use bson::{Bson, Document};

use crate::error::{code, CmdError, CmdResult};

/// Checks that `expr` only uses supported expression operators.
pub fn validate(expr: &Bson) -> CmdResult<()> {
    match expr {
        Bson::Document(d) => {
            if let Some(op) = d.keys().next().filter(|k| k.starts_with('$')) {
                if op != "$literal" || d.len() != 1 {
                    return Err(CmdError::new(
                        code::INVALID_PIPELINE_OPERATOR,
                        format!("Unrecognized expression '{op}' (mongo-double evaluates only field paths and $literal)"),
                    ));
                }
                return Ok(());
            }
            d.values().try_for_each(validate)
        }
        Bson::Array(a) => a.iter().try_for_each(validate),
        _ => Ok(()),
    }
}

/// Evaluates `expr` against `root`; `None` is "missing".
pub fn eval(expr: &Bson, root: &Document) -> Option<Bson> {
    match expr {
        Bson::String(s) if s.starts_with("$$") => {
            let (var, rest) = match s[2..].split_once('.') {
                Some((v, r)) => (v, Some(r)),
                None => (&s[2..], None),
            };
            match (var, rest) {
                ("ROOT" | "CURRENT", None) => Some(Bson::Document(root.clone())),
                ("ROOT" | "CURRENT", Some(p)) => field_path(root, p),
                _ => None,
            }
        }
        Bson::String(s) if s.starts_with('$') => field_path(root, &s[1..]),
        Bson::Document(d) => match d.get("$literal") {
            Some(v) if d.len() == 1 => Some(v.clone()),
            _ => {
                let mut out = Document::new();
                for (k, v) in d {
                    if let Some(val) = eval(v, root) {
                        out.insert(k.clone(), val);
                    }
                }
                Some(Bson::Document(out))
            }
        },
        Bson::Array(a) => Some(Bson::Array(
            a.iter()
                .map(|e| eval(e, root).unwrap_or(Bson::Null))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Aggregation field-path semantics: arrays of documents map to arrays of the sub-field.
fn field_path(root: &Document, path: &str) -> Option<Bson> {
    let mut parts = path.split('.');
    let first = root.get(parts.next()?)?.clone();
    parts.try_fold(first, |cur, p| step(&cur, p))
}

fn step(cur: &Bson, p: &str) -> Option<Bson> {
    match cur {
        Bson::Document(d) => d.get(p).cloned(),
        Bson::Array(a) => Some(Bson::Array(a.iter().filter_map(|e| step(e, p)).collect())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn paths_and_literals() {
        let d = doc! {"a": {"b": 1}, "l": [{"x": 1}, {"x": 2}]};
        assert_eq!(eval(&Bson::String("$a.b".into()), &d), Some(Bson::Int32(1)));
        assert_eq!(
            eval(&Bson::String("$l.x".into()), &d),
            Some(bson::bson!([1, 2]))
        );
        assert_eq!(eval(&Bson::String("$nope".into()), &d), None);
        assert_eq!(
            eval(&bson::bson!({"$literal": "$x"}), &d),
            Some(Bson::String("$x".into()))
        );
        assert!(validate(&bson::bson!({"$concat": ["a"]})).is_err());
    }
}
