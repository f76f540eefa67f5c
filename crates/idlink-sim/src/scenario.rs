//! Scenario parameters and the day-by-day driver that writes
//! `events.jsonl` and `truth.json`.

use std::fmt;
use std::fs::{self, File};
use std::path::Path;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc, Weekday};
use serde::Serialize;

use crate::activity::{ActivityGen, DayInfo};
use crate::bots;
use crate::disorder;
use crate::error::SimError;
use crate::event::{EventWriter, TextTable};
use crate::population::Population;
use crate::privacy::PrivacyPlan;
use crate::rng::{self, mix};
use crate::timefmt::rfc3339_ms;
use crate::truth::{self, ScenarioTruth};

/// Longest scenario accepted; keeps ms offsets and day counters far from
/// any overflow and catches typos like `--days 30000`.
const MAX_DAYS: u32 = 3660;

/// What to simulate. The same scenario always produces the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Number of people; devices, accounts and bots scale with it
    /// (about 2.3 device ids per person).
    pub people: u32,
    /// Number of simulated days, generated and written one at a time.
    pub days: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Start of day 0. Days are 24-hour periods from here; weekdays and
    /// weekends follow the calendar date of each period's start.
    pub start: DateTime<Utc>,
    /// Percent of home sessions that start within ten minutes of a
    /// housemate's home session that day instead of on their own
    /// schedule: households that go online together, the hard case for
    /// telling a housemate's device from the owner's. 0 (the default)
    /// keeps every schedule independent.
    pub household_sync_percent: u32,
    /// Percent of app phones whose owner also browses on them in the
    /// phone's browser, under a cookie of its own: one phone seen under
    /// two ids (the install id, signed in or not, and a cookie never
    /// signed in) with the same platform's user agents. Half the sessions
    /// of such a phone end in the browser. 0 (the default) gives every
    /// phone one id.
    pub phone_browser_percent: u32,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            people: 2000,
            days: 30,
            seed: 1,
            start: default_start(),
            household_sync_percent: 0,
            phone_browser_percent: 0,
        }
    }
}

/// 2026-01-05T00:00:00Z, a Monday.
fn default_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// Counts describing what a scenario wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Lines written to `events.jsonl` (activity, sign-ins and privacy requests).
    pub events: u64,
    /// Device ids in the truth file (ids that appear in events, bots included).
    pub devices: u64,
    /// Accounts that exist in the population (including ones never used).
    pub accounts: u64,
    /// Privacy requests (opt-out, opt-in, erase) among the events.
    pub privacy_requests: u64,
}

impl fmt::Display for SimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events: {}, devices: {}, accounts: {}, privacy requests: {}",
            self.events, self.devices, self.accounts, self.privacy_requests
        )
    }
}

impl Scenario {
    /// Simulates the scenario, writing `dir/events.jsonl` and
    /// `dir/truth.json` (the directory is created if needed).
    ///
    /// # Errors
    /// [`SimError::InvalidScenario`] for zero people or days (or more than
    /// ten years, or a percentage above 100), [`SimError::Io`] when the files cannot be written.
    pub fn write(&self, dir: &Path) -> Result<SimStats, SimError> {
        if self.people == 0 || self.days == 0 {
            return Err(SimError::InvalidScenario(
                "people and days must both be at least 1".into(),
            ));
        }
        if self.household_sync_percent > 100 || self.phone_browser_percent > 100 {
            return Err(SimError::InvalidScenario(
                "household_sync_percent and phone_browser_percent are percentages, at most 100"
                    .into(),
            ));
        }
        if self.days > MAX_DAYS {
            return Err(SimError::InvalidScenario(format!(
                "at most {MAX_DAYS} days"
            )));
        }
        fs::create_dir_all(dir)?;
        let salt = mix(self.seed ^ 0x1d11_4b5e);
        let mut pop = Population::build(
            self.people,
            self.days,
            self.phone_browser_percent,
            salt,
            &mut rng::stream(self.seed, 0),
        );
        let mut privacy = PrivacyPlan::draw(&mut pop, self.days, &mut rng::stream(self.seed, 1));
        let file = File::create(dir.join("events.jsonl"))?;
        let mut writer = EventWriter::new(file, self.start.timestamp_millis(), salt);
        let id_texts = TextTable::new(pop.ids.iter().map(|r| r.text.as_str()));
        let account_texts = TextTable::new(pop.accounts.iter().map(|a| a.text.as_str()));
        let mut activity = ActivityGen::new(self.household_sync_percent);
        let mut day_events = Vec::new();
        for day in 0..self.days {
            let mut rng = rng::stream(self.seed, 1000 + u64::from(day));
            pop.start_day(day, &mut rng);
            let weekday = (self.start + Duration::days(i64::from(day))).weekday();
            let info = DayInfo {
                day,
                weekend: matches!(weekday, Weekday::Sat | Weekday::Sun),
            };
            day_events.clear();
            for p in 0..pop.persons.len() as u32 {
                activity.person_day(&mut pop, p, info, &mut rng, &mut day_events);
            }
            for b in 0..pop.bots.len() {
                bots::bot_day(&mut pop, b, day, &mut rng, &mut day_events);
            }
            privacy.emit_day(day, &mut day_events);
            disorder::order_day(&mut day_events, &mut rng);
            for ev in &day_events {
                writer.write(ev, &id_texts, &account_texts)?;
            }
        }
        let events = writer.written;
        writer.finish()?;
        let scenario = ScenarioTruth {
            people: self.people,
            days: self.days,
            seed: self.seed,
            start: Some(rfc3339_ms(self.start.timestamp_millis())),
            household_sync_percent: self.household_sync_percent,
            phone_browser_percent: self.phone_browser_percent,
        };
        let truth = truth::build(&pop, scenario, &privacy.opted_out_at_end());
        truth.write(&dir.join("truth.json"))?;
        Ok(SimStats {
            events,
            devices: truth.devices.len() as u64,
            accounts: pop.accounts.len() as u64,
            privacy_requests: privacy.len(),
        })
    }
}
