//! Configuration values (`flwr.proto.Scalar`): run config, node config, overrides.

/// One configuration value.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    /// double.
    Double(f64),
    /// sint64.
    Int(i64),
    /// uint64.
    UInt(u64),
    /// bool.
    Bool(bool),
    /// string.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
}
