//! Engine and input-validation configuration.
//!
//! One struct per component, each with `deny_unknown_fields` (a typo in a
//! config file is an error, not a silently ignored setting), a doc comment
//! per field, defaults matching `config/default.toml`, and a `validate()`
//! that checks settings against each other. File loading lives in the
//! binary; this module only parses text.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The TOML text did not parse or named an unknown setting.
    #[error("config does not parse: {0}")]
    Parse(String),
    /// A setting is out of range or contradicts another.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Everything the core needs, as read from a TOML file.
///
/// Sections belonging to the I/O edges (`kafka`, `http`, `log`) are parsed
/// by the binary, which flattens them beside these; the core ignores them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Validation of incoming events (the dead-letter rules).
    pub input: InputConfig,
    /// Event-time settings: lateness and watermarks.
    pub time: TimeConfig,
    /// Which addresses may count as evidence, and how they are bucketed.
    pub addresses: AddressConfig,
    /// Scoring and decision rules for links.
    pub linking: LinkingConfig,
    /// Bot detection: devices that behave like bots get no inferred links.
    pub bots: BotConfig,
    /// Opt-out, erasure and the keyed hashing that keeps ids out of output.
    pub privacy: PrivacyConfig,
}

/// Rules that turn a raw line or message into an event or a dead letter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Largest accepted line or message in bytes; larger ones are dead
    /// letters before any parsing, so one huge record cannot exhaust memory.
    pub max_message_bytes: usize,
    /// Longest accepted `device_id` / `account_id` in bytes (contract: 256).
    pub max_id_bytes: usize,
    /// How far ahead of the validating process's clock a `ts` may be, in
    /// minutes; producers with broken clocks would otherwise drag the
    /// watermark into the future and make every other event late.
    pub max_future_skew_minutes: i64,
    /// Earliest accepted `ts` (RFC 3339); older ones are junk defaults
    /// such as the epoch.
    pub min_ts: String,
    /// Extra id values that clients send when they have no id (compared
    /// case-insensitively), on top of the built-in ones (empty, `null`,
    /// `undefined`, `0`, all zeros or dashes).
    pub junk_ids: Vec<String>,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_id_bytes: 256,
            max_future_skew_minutes: 24 * 60,
            min_ts: "2000-01-01T00:00:00Z".into(),
            junk_ids: ["none", "nil", "n/a", "unknown", "(null)", "nan", "false"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Event-time settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    /// How far behind the greatest `ts` seen the watermark trails, in
    /// minutes. Disorder within this bound never changes the result;
    /// activity older than the watermark is late and adds no evidence.
    pub allowed_lateness_minutes: i64,
}

impl Default for TimeConfig {
    fn default() -> Self {
        Self {
            allowed_lateness_minutes: 10,
        }
    }
}

/// Address bucketing and exclusion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AddressConfig {
    /// IPv6 prefix length that forms a bucket: a home's /64 stays put while
    /// privacy extensions rotate the interface id.
    pub ipv6_prefix_len: u8,
    /// Files of CIDR ranges (one per line, `#` comments) whose addresses
    /// never count: datacenters, VPNs, proxies. Paths are relative to the
    /// config file's directory; the binary loads them. Any length: the
    /// ranges are merged and searched by bisection.
    pub exclude_cidr_files: Vec<String>,
    /// Inline CIDR ranges that never count, beside the files.
    pub exclude_cidrs: Vec<String>,
    /// A bucket with more distinct devices than this in one UTC day is
    /// crowded (public Wi-Fi, offices, carriers) and that day counts for
    /// nothing. At most 32: no household has more, and the engine keeps
    /// facts about a bucket-day's devices (signed in, bot) as 32-bit masks.
    pub max_devices_per_bucket_day: u32,
    /// A bucket with more distinct signed-in accounts than this in one UTC
    /// day is crowded likewise.
    pub max_accounts_per_bucket_day: u32,
}

impl Default for AddressConfig {
    fn default() -> Self {
        Self {
            ipv6_prefix_len: 64,
            exclude_cidr_files: vec!["cidr/datacenter.txt".into(), "cidr/vpn.txt".into()],
            exclude_cidrs: Vec::new(),
            max_devices_per_bucket_day: 10,
            max_accounts_per_bucket_day: 3,
        }
    }
}

/// How co-location evidence becomes an inferred link.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkingConfig {
    /// An unsigned sighting within this many minutes of a signed-in
    /// sighting on the same bucket is co-location.
    pub window_minutes: i64,
    /// Time-gap weighting: a co-location `g` minutes apart weighs
    /// `exp(-g / gap_scale_minutes)`, so same-session use counts most.
    pub gap_scale_minutes: f64,
    /// How strongly an address shared by several unexplained devices
    /// weakens its evidence: weights divide by `unknown ^ exponent`
    /// (0 ignores sharing, 1 splits evidence evenly among the devices).
    pub ambiguity_exponent: f64,
    /// Evidence older than this many days is forgotten; younger evidence
    /// decays linearly towards it.
    pub evidence_horizon_days: i64,
    /// Minimum distinct days of evidence before a device may be inferred.
    pub min_days: u32,
    /// Minimum score (see ARCHITECTURE.md) of the leading account.
    pub min_score: f64,
    /// Minimum mean weight of a day of evidence (the score divided by
    /// the days of evidence, each day counted by its decay, so that steady
    /// use keeps its mean as it ages): the device must meet the account's
    /// signed-in use minutes apart consistently, not merely often. A
    /// housemate's phone meets it on many evenings by chance, with weak
    /// weights; a person's own devices meet it in the same session.
    pub min_mean_weight: f64,
    /// Minimum share of the device's total evidence (anonymous removed
    /// evidence included) that the leading account must hold.
    pub min_share: f64,
    /// A day of close use: a day on which the device was seen at most this
    /// many minutes from the account's signed-in use on the same bucket.
    pub close_gap_minutes: f64,
    /// Minimum coverage: the leading account's days of close use as a
    /// share of the days the device was seen at all (within the horizon,
    /// at most the last 32 days). A device used beside the account on a
    /// few of its many days is someone else's, however often they meet.
    /// 0 turns it off.
    pub min_coverage: f64,
    /// Whether a device that has a sign-in link may also get an inferred
    /// link to another account. Off by default: a device someone signed
    /// in on is explained already.
    pub infer_for_signed_in_devices: bool,
    /// Whether a phone is refused an inferred link to an account that was
    /// signed in, on an address the phone shared with it that day, only on
    /// phones of the other platform (iPhone against Android, read from
    /// `user_agent`). People carry one phone; a household's phones are
    /// often of both makes, so such a phone is a housemate's. A phone's own
    /// browser shares its app's platform and is not refused.
    pub refuse_platform_clash: bool,
    /// A sign-in link unused for this many days is removed.
    pub login_link_ttl_days: i64,
    /// Most sign-in links one device keeps (a family tablet has several);
    /// the least recently used goes first.
    pub max_accounts_per_device: usize,
    /// Most devices one account shows, on both output topics: its sign-in
    /// devices, most recently used first, then its inferred devices,
    /// strongest first. A link past the cap stays in state unpublished
    /// (the cap is a view, see `engine/cap.rs`).
    pub max_devices_per_account: usize,
    /// How many strongest supporting sightings an inferred link explains.
    pub max_support: usize,
}

impl Default for LinkingConfig {
    fn default() -> Self {
        Self {
            window_minutes: 30,
            gap_scale_minutes: 2.0,
            ambiguity_exponent: 0.5,
            evidence_horizon_days: 30,
            min_days: 2,
            min_score: 2.0,
            min_mean_weight: 0.5,
            min_share: 0.8,
            close_gap_minutes: 5.0,
            min_coverage: 0.2,
            infer_for_signed_in_devices: false,
            refuse_platform_clash: true,
            login_link_ttl_days: 400,
            max_accounts_per_device: 8,
            max_devices_per_account: 64,
            max_support: 3,
        }
    }
}

/// Bot detection thresholds, per device and UTC day.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BotConfig {
    /// More events than this in one day marks the device a bot.
    pub max_events_per_day: u32,
    /// More distinct buckets than this in one day marks the device a bot.
    pub max_buckets_per_day: u32,
    /// Activity in more than this many distinct hours of one UTC day marks
    /// the device a bot: people sleep.
    pub max_active_hours_per_day: u32,
    /// How many days a bot mark lasts after the last offending day.
    pub mark_days: i64,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            max_events_per_day: 300,
            max_buckets_per_day: 8,
            max_active_hours_per_day: 16,
            mark_days: 30,
        }
    }
}

/// Privacy settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Secret for the keyed hashes of buckets in output and of erased ids
    /// in erase markers. Override in production (`IDLINK_HASH_SECRET`).
    pub hash_secret: String,
    /// How long an erase marker is kept, in days. Must cover the sign-in
    /// link lifetime so that no event old enough to be blocked could
    /// still create a link once the marker is gone.
    pub erase_marker_ttl_days: i64,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            hash_secret: "idlink-development-secret-change-me".into(),
            erase_marker_ttl_days: 400,
        }
    }
}

impl Config {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting's range and the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let i = &self.input;
        if i.max_message_bytes < 64 {
            return bad(format!(
                "input.max_message_bytes = {} is below 64",
                i.max_message_bytes
            ));
        }
        if !(1..=4096).contains(&i.max_id_bytes) {
            return bad(format!(
                "input.max_id_bytes = {} must be 1..=4096",
                i.max_id_bytes
            ));
        }
        if i.max_id_bytes >= i.max_message_bytes {
            return bad("input.max_id_bytes must be below input.max_message_bytes".into());
        }
        if i.max_future_skew_minutes < 0 {
            return bad("input.max_future_skew_minutes must not be negative".into());
        }
        if crate::time::Millis::parse_rfc3339(&i.min_ts).is_none() {
            return bad(format!("input.min_ts = {:?} is not RFC 3339", i.min_ts));
        }
        let t = &self.time;
        if !(0..=7 * 24 * 60).contains(&t.allowed_lateness_minutes) {
            return bad("time.allowed_lateness_minutes must be 0..=10080".into());
        }
        let a = &self.addresses;
        if !(32..=128).contains(&a.ipv6_prefix_len) {
            return bad("addresses.ipv6_prefix_len must be 32..=128".into());
        }
        for c in &a.exclude_cidrs {
            if c.parse::<ipnetwork::IpNetwork>().is_err() {
                return bad(format!(
                    "addresses.exclude_cidrs: {c:?} is not a CIDR range"
                ));
            }
        }
        if !(2..=32).contains(&a.max_devices_per_bucket_day) {
            return bad(
                "addresses.max_devices_per_bucket_day must be from 2 to 32 (more devices a day \
                 is never one household)"
                    .into(),
            );
        }
        if a.max_accounts_per_bucket_day < 1 {
            return bad("addresses.max_accounts_per_bucket_day must be at least 1".into());
        }
        let l = &self.linking;
        if !(1..=24 * 60).contains(&l.window_minutes) {
            return bad("linking.window_minutes must be 1..=1440".into());
        }
        if !(l.gap_scale_minutes > 0.0 && l.gap_scale_minutes.is_finite()) {
            return bad("linking.gap_scale_minutes must be a positive number".into());
        }
        if !(1..=365).contains(&l.evidence_horizon_days) {
            return bad("linking.evidence_horizon_days must be 1..=365".into());
        }
        if !(0.0..=2.0).contains(&l.ambiguity_exponent) {
            return bad("linking.ambiguity_exponent must be 0..=2".into());
        }
        if l.min_days < 1 || i64::from(l.min_days) > l.evidence_horizon_days {
            return bad("linking.min_days must be 1..=evidence_horizon_days".into());
        }
        if !(l.min_score > 0.0 && l.min_score.is_finite()) {
            return bad("linking.min_score must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&l.min_mean_weight) {
            return bad("linking.min_mean_weight must be 0..=1".into());
        }
        if !(l.min_share > 0.5 && l.min_share <= 1.0) {
            return bad(
                "linking.min_share must be in (0.5, 1]: below a half, two accounts could both lead"
                    .into(),
            );
        }
        // At or past window_minutes, every co-location is close use.
        if !(l.close_gap_minutes >= 0.0 && l.close_gap_minutes.is_finite()) {
            return bad("linking.close_gap_minutes must be a number of minutes, 0 or more".into());
        }
        if !(0.0..=1.0).contains(&l.min_coverage) {
            return bad("linking.min_coverage must be 0..=1".into());
        }
        if l.login_link_ttl_days < 1 {
            return bad("linking.login_link_ttl_days must be at least 1".into());
        }
        if l.max_accounts_per_device < 1 || l.max_devices_per_account < 1 {
            return bad(
                "linking.max_accounts_per_device and max_devices_per_account must be at least 1"
                    .into(),
            );
        }
        if l.max_support > 16 {
            return bad("linking.max_support must be at most 16".into());
        }
        // Co-location is found at the later of two sightings; the earlier
        // must still be buffered, and a late event could otherwise pair
        // with a sighting already released.
        if t.allowed_lateness_minutes > 0 && l.window_minutes > 24 * 60 {
            return bad("linking.window_minutes must stay below a day".into());
        }
        let b = &self.bots;
        if b.max_events_per_day >= u32::from(u16::MAX) {
            return bad("bots.max_events_per_day must be below 65535".into());
        }
        if b.mark_days >= i64::from(u16::MAX) {
            return bad("bots.mark_days must be below 65535".into());
        }
        if b.max_events_per_day < 1
            || b.max_buckets_per_day < 1
            || b.mark_days < 1
            || b.max_active_hours_per_day < 1
        {
            return bad("bots.* thresholds must be at least 1".into());
        }
        let p = &self.privacy;
        if p.hash_secret.len() < 16 {
            return bad("privacy.hash_secret must be at least 16 bytes".into());
        }
        if p.erase_marker_ttl_days < l.login_link_ttl_days {
            return bad(format!(
                "privacy.erase_marker_ttl_days ({}) must be at least linking.login_link_ttl_days ({}): \
                 an old event arriving after its marker expired could otherwise re-create an erased link",
                p.erase_marker_ttl_days, l.login_link_ttl_days
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_settings_are_errors() {
        let err = Config::from_toml("[linking]\nwindow_minuets = 5\n").unwrap_err();
        assert!(err.to_string().contains("window_minuets"), "{err}");
    }

    #[test]
    fn settings_are_checked_against_each_other() {
        let err = Config::from_toml(
            "[privacy]\nerase_marker_ttl_days = 10\n[linking]\nlogin_link_ttl_days = 20\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("erase_marker_ttl_days"), "{err}");
    }
}
