//! BSON comparison as MongoDB orders values ("Comparison/Sort Order" in the manual).

use std::cmp::Ordering;

use bson::{Bson, Document};

/// Canonical type rank: MinKey < Null < Numbers < String < Object < Array < BinData <
/// ObjectId < Boolean < Date < Timestamp < Regex < ... < MaxKey.
pub fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 5,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

/// Numeric value as f64 (`None` for non-numbers and Decimal128).
pub fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    }
}

fn cmp_numbers(a: &Bson, b: &Bson) -> Ordering {
    let int = |v: &Bson| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        return x.cmp(&y);
    }
    match (as_f64(a), as_f64(b)) {
        // NaN sorts below every other number, and equals itself.
        (Some(x), Some(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        },
        // Decimal128 has no arithmetic in the bson crate: order by raw bytes.
        _ => decimal_bytes(a).cmp(&decimal_bytes(b)),
    }
}

fn decimal_bytes(v: &Bson) -> Vec<u8> {
    match v {
        Bson::Decimal128(d) => d.bytes().to_vec(),
        _ => Vec::new(),
    }
}

fn str_of(v: &Bson) -> &str {
    match v {
        Bson::String(s) | Bson::Symbol(s) => s,
        _ => "",
    }
}

/// Total order over BSON values as MongoDB sorts them.
pub fn cmp(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 10 => cmp_numbers(a, b),
        _ if ra == 15 => str_of(a).cmp(str_of(b)),
        (Bson::Document(x), Bson::Document(y)) => cmp_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                let o = cmp(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Documents compare field by field: type rank, then field name, then value.
pub fn cmp_docs(x: &Document, y: &Document) -> Ordering {
    let mut xi = x.iter();
    let mut yi = y.iter();
    loop {
        match (xi.next(), yi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let o = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.cmp(kb))
                    .then_with(|| cmp(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Query equality: numbers compare by value across types, documents are order-sensitive.
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    type_rank(a) == type_rank(b) && cmp(a, b) == Ordering::Equal
}

/// Exact equality including numeric type and field order (used to detect no-op updates).
pub fn identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => docs_identical(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| identical(p, q))
        }
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Order-sensitive exact document equality.
pub fn docs_identical(x: &Document, y: &Document) -> bool {
    x.len() == y.len()
        && x.iter()
            .zip(y.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
}

/// A byte key such that `key(a) == key(b)` exactly when `values_equal(a, b)`.
pub fn key_bytes(v: &Bson) -> Vec<u8> {
    let mut out = Vec::new();
    push_key(v, &mut out);
    out
}

fn push_key(v: &Bson, out: &mut Vec<u8>) {
    out.push(type_rank(v));
    match v {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
            let int = match v {
                Bson::Int32(i) => Some(i64::from(*i)),
                Bson::Int64(i) => Some(*i),
                Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e18 => Some(*d as i64),
                _ => None,
            };
            match (int, v) {
                (Some(i), _) => {
                    out.push(b'i');
                    out.extend_from_slice(&i.to_be_bytes());
                }
                (None, Bson::Double(d)) if d.is_nan() => out.push(b'n'),
                (None, Bson::Double(d)) => {
                    out.push(b'd');
                    out.extend_from_slice(&d.to_bits().to_be_bytes());
                }
                _ => {}
            }
        }
        Bson::Decimal128(d) => out.extend_from_slice(&d.bytes()),
        Bson::String(s) | Bson::Symbol(s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        Bson::Document(d) => {
            for (k, val) in d {
                out.extend_from_slice(k.as_bytes());
                out.push(0);
                push_key(val, out);
            }
            out.push(0xFF);
        }
        Bson::Array(a) => {
            for val in a {
                push_key(val, out);
            }
            out.push(0xFF);
        }
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => {}
        other => {
            let encoded = bson::to_vec(&bson::doc! {"": other.clone()}).unwrap_or_default();
            out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
            out.extend_from_slice(&encoded);
        }
    }
}

/// The `$type` alias of a value ("double", "string", "object", ...).
pub fn type_alias(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// The numeric `$type` code of a value.
pub fn type_code(v: &Bson) -> i32 {
    match v {
        Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::Undefined => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Null => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::Symbol(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::Int32(_) => 16,
        Bson::Timestamp(_) => 17,
        Bson::Int64(_) => 18,
        Bson::Decimal128(_) => 19,
        Bson::MinKey => -1,
        Bson::MaxKey => 127,
    }
}

/// Truthiness as used by projections and `$exists`-style flags.
pub fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        _ => true,
    }
}

/// An integer argument (accepting int32, int64 and integral doubles).
pub fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.is_finite() => Some(*d as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    #[test]
    fn type_bracketing_and_numbers() {
        assert_eq!(cmp(&Bson::Null, &Bson::Int32(0)), Ordering::Less);
        assert_eq!(
            cmp(&Bson::Int32(5), &Bson::String("a".into())),
            Ordering::Less
        );
        assert_eq!(cmp(&Bson::Int32(2), &Bson::Double(2.0)), Ordering::Equal);
        assert_eq!(cmp(&Bson::Int64(3), &Bson::Double(2.5)), Ordering::Greater);
        let oid = Bson::ObjectId(ObjectId::new());
        assert_eq!(cmp(&Bson::Document(doc! {}), &oid), Ordering::Less);
        assert_eq!(key_bytes(&Bson::Int32(1)), key_bytes(&Bson::Double(1.0)));
        assert_ne!(
            key_bytes(&Bson::Int32(1)),
            key_bytes(&Bson::String("1".into()))
        );
        assert!(!identical(&Bson::Int32(1), &Bson::Int64(1)));
        assert!(!docs_identical(
            &doc! {"a": 1, "b": 2},
            &doc! {"b": 2, "a": 1}
        ));
    }
}
