//! What an inserted document's `_id` may be, as mongod's `storageValidIdField` and
//! `BSONObj::storageValidEmbedded` decide: not an array, regex or undefined (53
//! `InvalidIdField`), and no `$`-prefixed field name at any depth of an object `_id` except
//! a DBRef's leading `$ref`, `$id` and optional `$db` (52 `DollarPrefixedFieldName`).
//! Top-level `$`-prefixed fields elsewhere in a document are allowed since MongoDB 5.0.

use bson::{Bson, Document};

use crate::error::{code, CmdError, CmdResult};

/// Refuses a document whose `_id` MongoDB would not store.
pub fn id_field(doc: &Document) -> CmdResult<()> {
    let type_name = match doc.get("_id") {
        Some(Bson::Array(_)) => "array",
        Some(Bson::RegularExpression(_)) => "regex",
        Some(Bson::Undefined) => "undefined",
        Some(Bson::Document(d)) => {
            return match dollar_field(d) {
                Some(field) => Err(CmdError::new(
                    code::DOLLAR_PREFIXED_FIELD_NAME,
                    format!("_id fields may not contain '$'-prefixed fields: {field} is not valid for storage."),
                )),
                None => Ok(()),
            }
        }
        _ => return Ok(()),
    };
    Err(CmdError::new(
        code::INVALID_ID_FIELD,
        format!("The '_id' value cannot be of type {type_name}"),
    ))
}

/// The first `$`-prefixed field name inside `d` (nested objects and arrays included).
fn dollar_field(d: &Document) -> Option<&str> {
    let fields: Vec<(&String, &Bson)> = d.iter().collect();
    let dbref = matches!(fields.first(), Some((k, Bson::String(_))) if k.as_str() == "$ref")
        && fields.get(1).is_some_and(|(k, _)| k.as_str() == "$id");
    for (i, (name, value)) in fields.into_iter().enumerate() {
        let dbref_field =
            dbref && (i < 2 || (i == 2 && name == "$db" && matches!(value, Bson::String(_))));
        if name.starts_with('$') && !dbref_field {
            return Some(name);
        }
        // mongod does not look inside a DBRef's `$id`.
        if dbref && i == 1 {
            continue;
        }
        if let Some(found) = dollar_field_in(value) {
            return Some(found);
        }
    }
    None
}

fn dollar_field_in(v: &Bson) -> Option<&str> {
    match v {
        Bson::Document(d) => dollar_field(d),
        Bson::Array(a) => a.iter().find_map(dollar_field_in),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn dollar_fields_at_any_depth_but_dbrefs() {
        let code_of = |id: Bson| id_field(&doc! {"_id": id}).err().map(|e| e.code);
        assert_eq!(
            code_of(Bson::Document(doc! {"a": [1, {"b": {"$c": 1}}]})),
            Some(52)
        );
        assert_eq!(
            code_of(Bson::Document(doc! {"$ref": "c", "$id": 1, "$db": "d"})),
            None
        );
        assert_eq!(
            code_of(Bson::Document(doc! {"$ref": "c", "$id": 1, "$x": 1})),
            Some(52)
        );
        assert_eq!(
            code_of(Bson::Document(doc! {"$id": 1, "$ref": "c"})),
            Some(52)
        );
        assert_eq!(code_of(Bson::Undefined), Some(53));
        assert_eq!(code_of(Bson::Int32(1)), None);
        assert_eq!(id_field(&doc! {"$top": 1}).err(), None);
    }
}
