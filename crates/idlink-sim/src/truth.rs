//! The ground truth file: who really owns each device id, which accounts
//! signed in where, and what privacy state holds at the end. Written by the
//! simulator, read by the evaluator.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::population::{DeviceKind, IdOrigin, IdOwner, PersonClass, Population};

/// The whole truth document.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Truth {
    /// Parameters that produced the data, so a truth file explains itself.
    pub scenario: ScenarioTruth,
    /// Every device id that appears in the events, sorted by id.
    pub devices: Vec<DeviceTruth>,
    /// Accounts opted out at the end of the scenario (sorted): inferred
    /// links to them are violations.
    pub opted_out: Vec<String>,
    /// Erased accounts (sorted): they must not appear in links at all.
    pub erased_accounts: Vec<String>,
    /// Erased device ids (sorted): they must not appear in links at all.
    pub erased_devices: Vec<String>,
    /// Per-account context (household, workplace) used only to explain
    /// wrong links; optional so hand-made truth files can omit it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountTruth>,
}

/// Scenario parameters recorded in the truth file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScenarioTruth {
    /// Number of simulated people.
    pub people: u32,
    /// Number of simulated days.
    pub days: u32,
    /// Random seed.
    pub seed: u64,
    /// Scenario start (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Percent of home sessions aligned with a housemate's (written only
    /// when not 0, so default scenarios keep their bytes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub household_sync_percent: u32,
    /// Percent of app phones with a browser id of their own (written only
    /// when not 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub phone_browser_percent: u32,
}

fn is_zero(x: &u32) -> bool {
    *x == 0
}

/// The truth about one device id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceTruth {
    /// The id as it appears in events.
    pub device_id: String,
    /// Accounts of the people who use the device (sorted); a link to any of
    /// them is correct.
    pub owners: Vec<String>,
    /// Accounts that appeared signed in on this id in the events (sorted).
    pub signed_in: Vec<String>,
    /// True for bots: any link on them is a violation.
    pub bot: bool,
    /// Free-text tag saying why the device is interesting
    /// (e.g. `owner-unsigned+laptop`, `household-nonsigner+phone`).
    #[serde(default)]
    pub profile: String,
    /// Household the device lives in, to explain wrong links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub household: Option<String>,
    /// Workplaces of the device's users, to explain wrong links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offices: Vec<String>,
}

/// Context about one account, used to explain wrong links.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AccountTruth {
    /// The account id.
    pub account_id: String,
    /// Household of the account's person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub household: Option<String>,
    /// Workplace of the account's person, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office: Option<String>,
}

impl Truth {
    /// Reads a truth file.
    ///
    /// # Errors
    /// [`SimError::Io`] when the file cannot be read, [`SimError::Parse`]
    /// when it is not a truth document.
    pub fn read(path: &Path) -> Result<Truth, SimError> {
        let file = File::open(path)?;
        serde_json::from_reader(BufReader::new(file)).map_err(|e| SimError::Parse {
            file: path.to_path_buf(),
            line: e.line() as u64,
            reason: e.to_string(),
        })
    }

    /// Writes the truth file with one device per line, so it stays
    /// greppable even for a million devices.
    ///
    /// # Errors
    /// [`SimError::Io`] when the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), SimError> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(b"{\"scenario\":")?;
        serde_json::to_writer(&mut out, &self.scenario)?;
        write_list(&mut out, "devices", &self.devices)?;
        write_list(&mut out, "opted_out", &self.opted_out)?;
        write_list(&mut out, "erased_accounts", &self.erased_accounts)?;
        write_list(&mut out, "erased_devices", &self.erased_devices)?;
        if !self.accounts.is_empty() {
            write_list(&mut out, "accounts", &self.accounts)?;
        }
        out.write_all(b"\n}\n")?;
        out.flush()?;
        Ok(())
    }
}

fn write_list<W: Write, T: Serialize>(
    out: &mut W,
    name: &str,
    items: &[T],
) -> Result<(), SimError> {
    write!(out, ",\n\"{name}\":[")?;
    for (i, item) in items.iter().enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut *out, item)?;
    }
    out.write_all(b"\n]")?;
    Ok(())
}

fn household_name(h: u32) -> String {
    format!("h-{h:06}")
}

fn office_name(pop: &Population, o: u32) -> String {
    let small = pop.offices.get(o as usize).is_some_and(|x| x.small);
    format!("office-{}-{o:04}", if small { "small" } else { "large" })
}

/// Builds the truth document from the population after all days ran.
pub(crate) fn build(pop: &Population, scenario: ScenarioTruth, opted_out: &[u32]) -> Truth {
    let acct_text = |a: u32| pop.accounts.get(a as usize).map(|x| x.text.clone());
    let active: HashSet<u32> = pop
        .ids
        .iter()
        .flat_map(|r| r.signed_in.iter().copied())
        .collect();
    let mut devices = Vec::new();
    let mut erased_devices = Vec::new();
    for rec in &pop.ids {
        if rec.erased_at.is_some() {
            erased_devices.push(rec.text.clone());
        }
        if rec.events == 0 {
            continue;
        }
        let mut signed_in: Vec<String> =
            rec.signed_in.iter().filter_map(|&a| acct_text(a)).collect();
        signed_in.sort();
        let truth = match rec.owner {
            IdOwner::Bot(b) => {
                let bot = pop.bots.get(b as usize);
                let profile = match bot {
                    Some(x) if x.datacenter => "bot-datacenter",
                    Some(x) if x.victim.is_some() => "bot-residential-household",
                    _ => "bot-residential",
                };
                DeviceTruth {
                    device_id: rec.text.clone(),
                    owners: Vec::new(),
                    signed_in,
                    bot: true,
                    profile: profile.to_string(),
                    household: None,
                    offices: Vec::new(),
                }
            }
            IdOwner::Device(d) => {
                let Some(dev) = pop.devices.get(d as usize) else {
                    continue;
                };
                let users: Vec<u32> = dev.plans.iter().map(|p| p.person).collect();
                let mut owners: Vec<String> = users
                    .iter()
                    .filter_map(|&p| pop.persons.get(p as usize).and_then(|x| x.account))
                    .filter_map(acct_text)
                    .collect();
                owners.sort();
                owners.dedup();
                let mut offices: Vec<String> = users
                    .iter()
                    .filter_map(|&p| pop.persons.get(p as usize).and_then(|x| x.office))
                    .map(|o| office_name(pop, o))
                    .collect();
                offices.sort();
                offices.dedup();
                let mut profile = profile(
                    pop,
                    dev.kind,
                    &users,
                    !rec.signed_in.is_empty(),
                    rec.origin,
                    &active,
                );
                if dev.is_phone_browser {
                    profile.push_str("-browser");
                }
                DeviceTruth {
                    device_id: rec.text.clone(),
                    owners,
                    signed_in,
                    bot: false,
                    profile,
                    household: Some(household_name(dev.household)),
                    offices,
                }
            }
        };
        devices.push(truth);
    }
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    erased_devices.sort();
    let mut erased_accounts: Vec<String> = pop
        .accounts
        .iter()
        .filter(|a| a.erased_at.is_some())
        .map(|a| a.text.clone())
        .collect();
    erased_accounts.sort();
    let mut opted: Vec<String> = opted_out.iter().filter_map(|&a| acct_text(a)).collect();
    opted.sort();
    let mut accounts: Vec<AccountTruth> = pop
        .accounts
        .iter()
        .map(|a| {
            let person = pop.persons.get(a.person as usize);
            AccountTruth {
                account_id: a.text.clone(),
                household: person.map(|p| household_name(p.household)),
                office: person.and_then(|p| p.office).map(|o| office_name(pop, o)),
            }
        })
        .collect();
    accounts.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    Truth {
        scenario,
        devices,
        opted_out: opted,
        erased_accounts,
        erased_devices,
        accounts,
    }
}

/// The profile tag: the main category, then `+`-separated details.
fn profile(
    pop: &Population,
    kind: DeviceKind,
    users: &[u32],
    signed: bool,
    origin: IdOrigin,
    active: &HashSet<u32>,
) -> String {
    let mut tag = String::new();
    let first = users.first().and_then(|&p| pop.persons.get(p as usize));
    if kind == DeviceKind::SharedTablet {
        tag.push_str(if signed {
            "shared-tablet-signed"
        } else {
            "shared-tablet-unsigned"
        });
    } else if signed {
        tag.push_str("signed-in");
    } else if let Some(person) = first {
        let uses_account = person.account.is_some_and(|a| active.contains(&a));
        if person.class == PersonClass::Signer && uses_account {
            tag.push_str("owner-unsigned");
        } else {
            let housemate_signs = pop
                .households
                .get(person.household as usize)
                .is_some_and(|h| {
                    h.members.iter().any(|&m| {
                        Some(&m) != users.first()
                            && pop
                                .persons
                                .get(m as usize)
                                .and_then(|x| x.account)
                                .is_some_and(|a| active.contains(&a))
                    })
                });
            tag.push_str(if housemate_signs {
                "household-nonsigner"
            } else {
                "solo-nonsigner"
            });
            if person.account.is_none() {
                tag.push_str("+no-account");
            }
        }
    }
    if let Some(o) = first.and_then(|p| p.office)
        && pop.offices.get(o as usize).is_some_and(|x| x.small)
    {
        tag.push_str("+small-office");
    }
    match origin {
        IdOrigin::Original => {}
        IdOrigin::CookieReset => tag.push_str("+cookie-reset"),
        IdOrigin::EraseSuccessor => tag.push_str("+erase-successor"),
    }
    tag.push_str(match kind {
        DeviceKind::Phone => "+phone",
        DeviceKind::Laptop => "+laptop",
        DeviceKind::Desktop => "+desktop",
        DeviceKind::Tablet => "+tablet",
        DeviceKind::SharedTablet => "",
    });
    tag
}
