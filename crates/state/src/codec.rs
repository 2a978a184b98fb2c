//! A small, stable binary encoding of run-config overrides for storage.

use super::ConfigValue;

/// Encodes key/value pairs.
pub fn encode_config(items: &[(String, ConfigValue)]) -> Vec<u8> {
    let mut out = Vec::new();
    let put_bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for (k, v) in items {
        put_bytes(&mut out, k.as_bytes());
        match v {
            ConfigValue::Double(x) => {
                out.push(1);
                out.extend_from_slice(&x.to_le_bytes());
            }
            ConfigValue::Int(x) => {
                out.push(2);
                out.extend_from_slice(&x.to_le_bytes());
            }
            ConfigValue::UInt(x) => {
                out.push(3);
                out.extend_from_slice(&x.to_le_bytes());
            }
            ConfigValue::Bool(x) => {
                out.push(4);
                out.push(u8::from(*x));
            }
            ConfigValue::Str(s) => {
                out.push(5);
                put_bytes(&mut out, s.as_bytes());
            }
            ConfigValue::Bytes(b) => {
                out.push(6);
                put_bytes(&mut out, b);
            }
        }
    }
    out
}

/// Decodes what [`encode_config`] wrote; `None` if the bytes are damaged.
pub fn decode_config(mut b: &[u8]) -> Option<Vec<(String, ConfigValue)>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    fn bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize;
        take(b, n)
    }
    fn eight(b: &mut &[u8]) -> Option<[u8; 8]> {
        take(b, 8)?.try_into().ok()
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = String::from_utf8(bytes(&mut b)?.to_vec()).ok()?;
        let tag = take(&mut b, 1)?[0];
        let v = match tag {
            1 => ConfigValue::Double(f64::from_le_bytes(eight(&mut b)?)),
            2 => ConfigValue::Int(i64::from_le_bytes(eight(&mut b)?)),
            3 => ConfigValue::UInt(u64::from_le_bytes(eight(&mut b)?)),
            4 => ConfigValue::Bool(take(&mut b, 1)?[0] != 0),
            5 => ConfigValue::Str(String::from_utf8(bytes(&mut b)?.to_vec()).ok()?),
            6 => ConfigValue::Bytes(bytes(&mut b)?.to_vec()),
            _ => return None,
        };
        out.push((key, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let items = vec![
            ("a".to_owned(), ConfigValue::Double(0.5)),
            ("b.c".to_owned(), ConfigValue::Int(-3)),
            ("d".to_owned(), ConfigValue::UInt(u64::MAX)),
            ("e".to_owned(), ConfigValue::Bool(true)),
            ("f".to_owned(), ConfigValue::Str("x y".into())),
            ("g".to_owned(), ConfigValue::Bytes(vec![0, 1])),
        ];
        assert_eq!(decode_config(&encode_config(&items)), Some(items));
        assert_eq!(decode_config(&[1, 0, 0]), None);
    }
}
