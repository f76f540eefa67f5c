//! Scores a `device-links.jsonl` file against a simulator truth file:
//! precision of login and inferred links, recall of true ownership, and
//! privacy/bot violations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::SimError;
use crate::jsonl::for_each_line;
use crate::links::LinkRecord;
use crate::truth::{AccountTruth, DeviceTruth, Truth};

/// How many wrong inferred links are kept for debugging.
const WRONG_KEPT: usize = 20;
/// How many violations the text report prints (all are kept in the struct).
const VIOLATIONS_SHOWN: usize = 20;

/// An inferred link that the truth says is wrong, with a best guess at why
/// the engine was fooled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WrongLink {
    /// The device the link hangs on.
    pub device_id: String,
    /// The account it wrongly points to.
    pub account_id: String,
    /// Trap category derived from truth (household member without
    /// sign-in, office colleague, bot, unrelated, ...).
    pub reason: String,
}

/// The evaluation report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evaluation {
    /// Links of type `login`.
    pub login_links: u64,
    /// Login links whose account owns the device.
    pub login_correct: u64,
    /// `login_correct / login_links` (1.0 when there are none).
    pub login_precision: f64,
    /// Links of any other type (normally `inferred`).
    pub inferred_links: u64,
    /// Inferred links whose account owns the device.
    pub inferred_correct: u64,
    /// `inferred_correct / inferred_links` (1.0 when there are none): the
    /// number the engine is judged on.
    pub inferred_precision: f64,
    /// True (device, owner) pairs that could be found: device not a bot and
    /// not erased, account not erased, seen in events, and not opted out
    /// (unless it signed in on that device).
    pub owned_pairs: u64,
    /// Owned pairs present as a link of any type.
    pub owned_pairs_found: u64,
    /// `owned_pairs_found / owned_pairs`.
    pub recall: f64,
    /// Owned pairs where the owner never signed in on the device: only
    /// inference can find these.
    pub unsigned_pairs: u64,
    /// Unsigned pairs present as a link.
    pub unsigned_pairs_found: u64,
    /// `unsigned_pairs_found / unsigned_pairs`.
    pub unsigned_recall: f64,
    /// Unsigned pairs and those found, by the kind of device its truth
    /// profile names (`laptop`, `phone`, `phone-browser`,
    /// `shared-tablet-unsigned`, ...), so that a scenario's hard cases show
    /// on their own.
    pub unsigned_by_device_kind: BTreeMap<String, PairCount>,
    /// Readable sentences, one per violation: erased ids present, inferred
    /// links to opted-out accounts, links on bots.
    pub violations: Vec<String>,
    /// The first wrong inferred links (at most 20), for debugging.
    pub wrong_inferred: Vec<WrongLink>,
    /// Count of all wrong inferred links per reason category.
    pub wrong_inferred_by_reason: BTreeMap<String, u64>,
}

/// Pairs of one kind, and how many of them are linked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairCount {
    /// Pairs.
    pub pairs: u64,
    /// Pairs present as a link.
    pub found: u64,
}

/// The kind of device a truth profile names: its last `+` part, or its
/// first for a shared tablet (whose profile starts with its kind).
fn device_kind(profile: &str) -> &str {
    let first = profile.split('+').next().unwrap_or(profile);
    if first.starts_with("shared-tablet") {
        return first;
    }
    profile.rsplit('+').next().unwrap_or(profile)
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Scores the links file at `links` against the truth file at `truth`.
///
/// # Errors
/// [`SimError::Io`] when a file cannot be read, [`SimError::Parse`] for a
/// malformed truth document or links line.
pub fn evaluate(truth: &Path, links: &Path) -> Result<Evaluation, SimError> {
    let truth = Truth::read(truth)?;
    let devices: HashMap<&str, &DeviceTruth> = truth
        .devices
        .iter()
        .map(|d| (d.device_id.as_str(), d))
        .collect();
    let accounts: HashMap<&str, &AccountTruth> = truth
        .accounts
        .iter()
        .map(|a| (a.account_id.as_str(), a))
        .collect();
    let opted_out: HashSet<&str> = truth.opted_out.iter().map(String::as_str).collect();
    let erased_accounts: HashSet<&str> = truth.erased_accounts.iter().map(String::as_str).collect();
    let erased_devices: HashSet<&str> = truth.erased_devices.iter().map(String::as_str).collect();

    let mut eval = Evaluation::default();
    let mut found: HashSet<(String, String)> = HashSet::new();
    for_each_line(links, |_, line| {
        let rec: LinkRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let device = devices.get(rec.device_id.as_str()).copied();
        if erased_devices.contains(rec.device_id.as_str()) {
            eval.violations.push(format!(
                "erased device {} is still present in the links",
                rec.device_id
            ));
        }
        for link in &rec.links {
            let owned = device.is_some_and(|d| d.owners.contains(&link.account_id));
            let kind = if link.is_login() { "login" } else { "inferred" };
            if erased_accounts.contains(link.account_id.as_str()) {
                eval.violations.push(format!(
                    "erased account {} is still linked ({kind}) to device {}",
                    link.account_id, rec.device_id
                ));
            }
            if device.is_some_and(|d| d.bot) {
                eval.violations.push(format!(
                    "bot device {} is linked ({kind}) to account {}",
                    rec.device_id, link.account_id
                ));
            }
            if link.is_login() {
                eval.login_links += 1;
                eval.login_correct += u64::from(owned);
            } else {
                if opted_out.contains(link.account_id.as_str()) {
                    eval.violations.push(format!(
                        "inferred link from device {} to opted-out account {}",
                        rec.device_id, link.account_id
                    ));
                }
                eval.inferred_links += 1;
                if owned {
                    eval.inferred_correct += 1;
                } else {
                    let reason =
                        wrong_reason(device, accounts.get(link.account_id.as_str()).copied());
                    *eval
                        .wrong_inferred_by_reason
                        .entry(reason.clone())
                        .or_insert(0) += 1;
                    if eval.wrong_inferred.len() < WRONG_KEPT {
                        eval.wrong_inferred.push(WrongLink {
                            device_id: rec.device_id.clone(),
                            account_id: link.account_id.clone(),
                            reason,
                        });
                    }
                }
            }
            found.insert((rec.device_id.clone(), link.account_id.clone()));
        }
        Ok(())
    })?;

    let active: HashSet<&str> = truth
        .devices
        .iter()
        .flat_map(|d| d.signed_in.iter().map(String::as_str))
        .collect();
    for d in &truth.devices {
        if d.bot || erased_devices.contains(d.device_id.as_str()) {
            continue;
        }
        for owner in &d.owners {
            let signed_here = d.signed_in.contains(owner);
            if erased_accounts.contains(owner.as_str())
                || !active.contains(owner.as_str())
                || (opted_out.contains(owner.as_str()) && !signed_here)
            {
                continue;
            }
            let hit = found.contains(&(d.device_id.clone(), owner.clone()));
            eval.owned_pairs += 1;
            eval.owned_pairs_found += u64::from(hit);
            if !signed_here {
                eval.unsigned_pairs += 1;
                eval.unsigned_pairs_found += u64::from(hit);
                let kind = eval
                    .unsigned_by_device_kind
                    .entry(device_kind(&d.profile).to_string())
                    .or_default();
                kind.pairs += 1;
                kind.found += u64::from(hit);
            }
        }
    }
    eval.login_precision = ratio(eval.login_correct, eval.login_links);
    eval.inferred_precision = ratio(eval.inferred_correct, eval.inferred_links);
    eval.recall = ratio(eval.owned_pairs_found, eval.owned_pairs);
    eval.unsigned_recall = ratio(eval.unsigned_pairs_found, eval.unsigned_pairs);
    Ok(eval)
}

/// Best guess at the trap behind a wrong inferred link.
fn wrong_reason(device: Option<&DeviceTruth>, account: Option<&AccountTruth>) -> String {
    let Some(d) = device else {
        return "device not in truth".into();
    };
    if d.bot {
        return format!("bot ({})", d.profile);
    }
    if let Some(a) = account {
        if a.household.is_some() && a.household == d.household {
            return if d.profile.starts_with("shared-tablet") {
                "shared household device".into()
            } else if d.profile.starts_with("owner-unsigned") {
                "housemate instead of the owner".into()
            } else if d.owners.is_empty() {
                "household member without account".into()
            } else {
                "household member without sign-in".into()
            };
        }
        if let Some(o) = &a.office
            && d.offices.contains(o)
        {
            return if o.contains("small") {
                "office colleague (small office)".into()
            } else {
                "office colleague (large office)".into()
            };
        }
    }
    let category = d.profile.split('+').next().unwrap_or("");
    if category.is_empty() {
        "unrelated".into()
    } else {
        format!("unrelated ({category})")
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "login links:     {:>8}  correct {:>8}  precision {:.4}",
            self.login_links, self.login_correct, self.login_precision
        )?;
        writeln!(
            f,
            "inferred links:  {:>8}  correct {:>8}  precision {:.4}",
            self.inferred_links, self.inferred_correct, self.inferred_precision
        )?;
        writeln!(
            f,
            "owned pairs:     {:>8}  found   {:>8}  recall    {:.4}",
            self.owned_pairs, self.owned_pairs_found, self.recall
        )?;
        writeln!(
            f,
            "unsigned pairs:  {:>8}  found   {:>8}  recall    {:.4}",
            self.unsigned_pairs, self.unsigned_pairs_found, self.unsigned_recall
        )?;
        for (kind, n) in &self.unsigned_by_device_kind {
            writeln!(
                f,
                "  {kind:<22}{:>8}  found   {:>8}  recall    {:.4}",
                n.pairs,
                n.found,
                ratio(n.found, n.pairs)
            )?;
        }
        writeln!(f, "violations:      {:>8}", self.violations.len())?;
        for v in self.violations.iter().take(VIOLATIONS_SHOWN) {
            writeln!(f, "  - {v}")?;
        }
        if self.violations.len() > VIOLATIONS_SHOWN {
            writeln!(
                f,
                "  ... and {} more",
                self.violations.len() - VIOLATIONS_SHOWN
            )?;
        }
        if !self.wrong_inferred_by_reason.is_empty() {
            writeln!(f, "wrong inferred links by reason:")?;
            for (reason, n) in &self.wrong_inferred_by_reason {
                writeln!(f, "  {n:>8}  {reason}")?;
            }
        }
        if !self.wrong_inferred.is_empty() {
            writeln!(f, "first wrong inferred links:")?;
            for w in &self.wrong_inferred {
                writeln!(f, "  - {} -> {}: {}", w.device_id, w.account_id, w.reason)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::device_kind;

    #[test]
    fn a_profile_names_its_device_kind_wherever_it_stands() {
        assert_eq!(device_kind("owner-unsigned+laptop"), "laptop");
        assert_eq!(
            device_kind("owner-unsigned+cookie-reset+phone-browser"),
            "phone-browser"
        );
        assert_eq!(
            device_kind("shared-tablet-unsigned+cookie-reset"),
            "shared-tablet-unsigned"
        );
        assert_eq!(device_kind("shared-tablet-signed"), "shared-tablet-signed");
        assert_eq!(device_kind("signed-in"), "signed-in");
    }
}
