//! Sort specifications (`sort`, `$sort`): multi-key, BSON type order, arrays sort by their
//! smallest (ascending) or largest (descending) element.

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::compare::{as_i64, cmp};
use super::path::{lookup, Found};
use crate::error::{CmdError, CmdResult};

/// A parsed sort specification.
#[derive(Debug, Clone)]
pub struct SortSpec(Vec<(String, bool)>);

impl SortSpec {
    pub fn parse(spec: &Document) -> CmdResult<SortSpec> {
        let mut keys = Vec::new();
        for (k, v) in spec {
            let asc = match as_i64(v) {
                Some(1) => true,
                Some(-1) => false,
                _ => {
                    return Err(CmdError::new(
                        15975,
                        format!("$sort key ordering must be 1 (for ascending) or -1 (for descending) (field {k})"),
                    ))
                }
            };
            if k != "$natural" {
                keys.push((k.clone(), asc));
            }
        }
        Ok(SortSpec(keys))
    }

    fn key(&self, doc: &Document) -> Vec<Bson> {
        self.0
            .iter()
            .map(|(path, asc)| {
                let mut vals: Vec<&Bson> = Vec::new();
                for f in lookup(doc, path) {
                    match f {
                        Found::Missing => vals.push(&Bson::Null),
                        Found::Value(Bson::Array(a)) if !a.is_empty() => vals.extend(a.iter()),
                        Found::Value(Bson::Array(_)) => vals.push(&Bson::Null),
                        Found::Value(v) => vals.push(v),
                    }
                }
                let pick = if *asc {
                    vals.into_iter().min_by(|a, b| cmp(a, b))
                } else {
                    vals.into_iter().max_by(|a, b| cmp(a, b))
                };
                pick.cloned().unwrap_or(Bson::Null)
            })
            .collect()
    }

    fn cmp_keys(&self, a: &[Bson], b: &[Bson]) -> Ordering {
        for (((_, asc), x), y) in self.0.iter().zip(a).zip(b) {
            let o = cmp(x, y);
            if o != Ordering::Equal {
                return if *asc { o } else { o.reverse() };
            }
        }
        Ordering::Equal
    }

    /// Stable sort of `docs`.
    pub fn sort(&self, docs: &mut Vec<Document>) {
        self.sort_by(docs, |d| d)
    }

    /// Stable sort of items by the document `doc` returns for each.
    pub fn sort_by<T>(&self, items: &mut Vec<T>, doc: impl Fn(&T) -> &Document) {
        if self.0.is_empty() {
            return;
        }
        let mut keyed: Vec<(Vec<Bson>, T)> =
            items.drain(..).map(|t| (self.key(doc(&t)), t)).collect();
        keyed.sort_by(|a, b| self.cmp_keys(&a.0, &b.0));
        items.extend(keyed.into_iter().map(|(_, t)| t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn multi_key_and_types() {
        let mut docs = vec![
            doc! {"_id": 1, "a": 2, "b": "x"},
            doc! {"_id": 2, "a": "s"},
            doc! {"_id": 3, "a": 2, "b": "a"},
            doc! {"_id": 4},
            doc! {"_id": 5, "a": 1.5},
        ];
        SortSpec::parse(&doc! {"a": 1, "b": -1})
            .expect("parse")
            .sort(&mut docs);
        let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").expect("id")).collect();
        assert_eq!(ids, vec![4, 5, 1, 3, 2]);
    }
}
