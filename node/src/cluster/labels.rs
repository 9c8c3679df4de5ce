//! Metric label sets both backends use, so dashboards read the same series
//! shape whether publications travel over the mesh or through Redis.

use prometheus_client::encoding::EncodeLabelSet;

/// A node publications came from, by the name it authenticated with.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OriginLabels {
    pub origin: String,
}

/// Why something was refused or dropped.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}
