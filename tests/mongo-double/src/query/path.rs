//! Dotted field paths ("Dot Notation" in the manual): lookup with array traversal for queries,
//! plain lookup / creation / removal for updates and projections.

use bson::{Bson, Document};

use crate::error::{code, CmdError, CmdResult};

/// A value reached by a query path; `Missing` when the path does not exist on some branch.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    Missing,
    Value(&'a Bson),
}

/// All values a query path reaches, traversing arrays of sub-documents the way the query
/// engine does (`{"a.b": 1}` matches `{a: [{b: 1}]}`); numeric components also index arrays.
pub fn lookup<'a>(doc: &'a Document, path: &str) -> Vec<Found<'a>> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    lookup_in_doc(doc, &parts, &mut out);
    out
}

fn lookup_in_doc<'a>(doc: &'a Document, parts: &[&str], out: &mut Vec<Found<'a>>) {
    match doc.get(parts[0]) {
        None => out.push(Found::Missing),
        Some(v) => lookup_in_value(v, &parts[1..], out),
    }
}

fn lookup_in_value<'a>(v: &'a Bson, rest: &[&str], out: &mut Vec<Found<'a>>) {
    if rest.is_empty() {
        out.push(Found::Value(v));
        return;
    }
    match v {
        Bson::Document(d) => lookup_in_doc(d, rest, out),
        Bson::Array(arr) => {
            let before = out.len();
            if let Ok(i) = rest[0].parse::<usize>() {
                if let Some(elem) = arr.get(i) {
                    lookup_in_value(elem, &rest[1..], out);
                }
            }
            for elem in arr {
                if let Bson::Document(d) = elem {
                    lookup_in_doc(d, rest, out);
                }
            }
            if out.len() == before {
                out.push(Found::Missing);
            }
        }
        _ => out.push(Found::Missing),
    }
}

/// Plain lookup: documents by field name, arrays by numeric index only.
pub fn get<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = match cur {
            Bson::Document(d) => d.get(p)?,
            Bson::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Mutable plain lookup.
pub fn get_mut<'a>(doc: &'a mut Document, path: &str) -> Option<&'a mut Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get_mut(parts.next()?)?;
    for p in parts {
        cur = match cur {
            Bson::Document(d) => d.get_mut(p)?,
            Bson::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Largest gap of nulls a numeric path may create in an array.
const MAX_BACKFILL: usize = 1_500_000;

fn describe(field: &str, v: &Bson) -> String {
    format!("{{{field}: {v}}}")
}

/// Sets `path` to `value`, creating missing intermediate documents (and padding arrays with
/// nulls for numeric components). Returns how many leading components of `path` identify the
/// outermost field that changed (the first created component, or the whole path).
pub fn set(doc: &mut Document, path: &str, value: Bson) -> CmdResult<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(CmdError::new(
            code::BAD_VALUE,
            format!("An empty update path is not valid: '{path}'"),
        ));
    }
    set_in_doc(doc, &parts, 0, value)
}

fn set_in_doc(doc: &mut Document, parts: &[&str], depth: usize, value: Bson) -> CmdResult<usize> {
    let key = parts[depth];
    if depth + 1 == parts.len() {
        let existed = doc.contains_key(key);
        doc.insert(key, value);
        return Ok(if existed { parts.len() } else { depth + 1 });
    }
    if !doc.contains_key(key) {
        let mut child = Document::new();
        set_in_doc(&mut child, parts, depth + 1, value)?;
        doc.insert(key, child);
        return Ok(depth + 1);
    }
    match doc.get_mut(key) {
        Some(child) => set_in_value(child, key, parts, depth + 1, value),
        None => Err(CmdError::internal("field vanished during update")),
    }
}

fn set_in_value(
    cur: &mut Bson,
    name: &str,
    parts: &[&str],
    depth: usize,
    value: Bson,
) -> CmdResult<usize> {
    match cur {
        Bson::Document(d) => set_in_doc(d, parts, depth, value),
        Bson::Array(arr) => {
            let key = parts[depth];
            let idx = key.parse::<usize>().map_err(|_| {
                CmdError::new(
                    code::PATH_NOT_VIABLE,
                    format!(
                        "Cannot create field '{key}' in element {}",
                        describe(name, &Bson::Array(arr.clone()))
                    ),
                )
            })?;
            let last = depth + 1 == parts.len();
            if idx >= arr.len() + MAX_BACKFILL {
                return Err(CmdError::new(
                    code::BAD_VALUE,
                    format!("can't backfill array to larger than {MAX_BACKFILL} elements"),
                ));
            }
            if idx >= arr.len() {
                arr.resize(idx + 1, Bson::Null);
                if last {
                    arr[idx] = value;
                } else {
                    let mut child = Document::new();
                    set_in_doc(&mut child, parts, depth + 1, value)?;
                    arr[idx] = Bson::Document(child);
                }
                return Ok(depth + 1);
            }
            if last {
                arr[idx] = value;
                return Ok(parts.len());
            }
            set_in_value(&mut arr[idx], key, parts, depth + 1, value)
        }
        other => Err(CmdError::new(
            code::PATH_NOT_VIABLE,
            format!(
                "Cannot create field '{}' in element {}",
                parts[depth],
                describe(name, other)
            ),
        )),
    }
}

/// What [`unset`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Unset {
    Nothing,
    Removed,
    /// `$unset` of an array element sets it to null instead of shifting the array.
    NulledArrayElement,
}

/// Removes `path`.
pub fn unset(doc: &mut Document, path: &str) -> Unset {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let container = match parent {
        None => return remove_key(doc, last),
        Some(p) => match get_mut(doc, p) {
            Some(c) => c,
            None => return Unset::Nothing,
        },
    };
    match container {
        Bson::Document(d) => remove_key(d, last),
        Bson::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a[i] = Bson::Null;
                Unset::NulledArrayElement
            }
            _ => Unset::Nothing,
        },
        _ => Unset::Nothing,
    }
}

fn remove_key(d: &mut Document, key: &str) -> Unset {
    if d.remove(key).is_some() {
        Unset::Removed
    } else {
        Unset::Nothing
    }
}

/// Compares paths component-wise, numeric components numerically (the order MongoDB 5.0+
/// applies update operators in).
pub fn cmp_paths(a: &str, b: &str) -> std::cmp::Ordering {
    let mut ai = a.split('.');
    let mut bi = b.split('.');
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(p), Ok(q)) => p.cmp(&q),
                    _ => x.cmp(y),
                };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// True when `prefix` equals `path` or is a dotted-component prefix of it.
pub fn is_prefix(prefix: &str, path: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn set_creates_and_reports_outermost_change() {
        let mut d = doc! {"a": {"x": 1}};
        assert_eq!(set(&mut d, "a.b.c", Bson::Int32(1)).expect("set"), 2);
        assert_eq!(d, doc! {"a": {"x": 1, "b": {"c": 1}}});
        assert_eq!(set(&mut d, "a.x", Bson::Int32(2)).expect("set"), 2);
        let mut e = doc! {"n": 5};
        assert_eq!(
            set(&mut e, "n.m", Bson::Int32(1))
                .expect_err("not viable")
                .code,
            28
        );
        let mut arr = doc! {"l": [1]};
        assert_eq!(set(&mut arr, "l.2", Bson::Int32(3)).expect("set"), 2);
        assert_eq!(arr, doc! {"l": [1, null, 3]});
    }

    #[test]
    fn lookup_traverses_arrays() {
        let d = doc! {"a": [{"b": 1}, {"b": 2}, {"c": 3}]};
        let vals: Vec<_> = lookup(&d, "a.b")
            .into_iter()
            .filter_map(|f| match f {
                Found::Value(v) => Some(v.clone()),
                Found::Missing => None,
            })
            .collect();
        assert_eq!(vals, vec![Bson::Int32(1), Bson::Int32(2)]);
        assert_eq!(get(&d, "a.1.b"), Some(&Bson::Int32(2)));
        assert!(is_prefix("a", "a.b") && !is_prefix("a", "ab"));
        assert_eq!(cmp_paths("a.10", "a.9"), std::cmp::Ordering::Greater);
    }
}
