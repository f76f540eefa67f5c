//! The `device-links.jsonl` format: read by the evaluator, written by the
//! baseline. Only the fields the evaluator needs are required; unknown
//! fields are ignored so the engine can add evidence freely.

use serde::{Deserialize, Serialize};

/// One line as read: a device and its links.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct LinkRecord {
    /// The device id the links belong to.
    pub device_id: String,
    /// The device's links (absent means none).
    #[serde(default)]
    pub links: Vec<LinkEntry>,
}

/// One link as read.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct LinkEntry {
    /// The linked account.
    pub account_id: String,
    /// `login` or `inferred`; anything other than `login` is scored as
    /// inferred, the stricter reading.
    #[serde(default)]
    pub link_type: String,
}

impl LinkEntry {
    /// True for deterministic links from a sign-in.
    pub(crate) fn is_login(&self) -> bool {
        self.link_type == "login"
    }
}

/// One line as written by the baseline.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OutRecord {
    /// Device id.
    pub device_id: String,
    /// Its links, logins first.
    pub links: Vec<OutLink>,
}

/// One link as written by the baseline.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OutLink {
    /// Linked account.
    pub account_id: String,
    /// `login` or `inferred`.
    pub link_type: &'static str,
    /// 1.0 for logins; a flat guess for the naive inference.
    pub confidence: f64,
    /// First supporting event time (RFC 3339).
    pub first_seen: String,
    /// Last supporting event time (RFC 3339).
    pub last_seen: String,
    /// Why the link exists (free-form).
    pub evidence: serde_json::Value,
}
